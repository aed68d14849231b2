"""The alpha rule (``robustness.alpha_rule``): the largest robust gain within the clean-accuracy budget, judged on
the smaller of the standard and straight-through accuracies."""
from __future__ import annotations

import pytest

from mstransform.core.errors import UsageError
from mstransform.robustness.alpha_rule import SweepRow, choose_alpha


def test_alpha_selection_rule():
    rows = [SweepRow(0.0, 90.0, 40.0, 40.0), SweepRow(0.1, 89.8, 44.0, 41.0), SweepRow(0.2, 89.6, 50.0, 42.5),
            SweepRow(0.3, 88.0, 60.0, 45.0)]
    alpha, reason = choose_alpha(rows, max_clean_drop=0.5)
    assert alpha == 0.2 and "+2.50" in reason  # 0.3 is over the clean budget; gain is judged on min(std, BPDA)
    assert choose_alpha(rows, max_clean_drop=5.0)[0] == 0.3
    masked = [SweepRow(0.0, 90.0, 40.0, 40.0), SweepRow(0.2, 89.9, 60.0, 38.0)]  # gain only under masking
    assert choose_alpha(masked)[0] == 0.0
    with pytest.raises(UsageError):
        choose_alpha([SweepRow(0.2, 1, 1, 1)])
