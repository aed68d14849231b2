"""Choosing alpha honestly: the rule applied to a sweep over a held-out split of the training data."""
from __future__ import annotations

from dataclasses import dataclass

from mstransform.core.errors import UsageError


@dataclass
class SweepRow:
    alpha: float
    clean: float
    standard: float  # APGD-CE through the true gradient
    bpda: float  # APGD-CE straight-through

    @property
    def robust(self) -> float:
        """The honest robust figure: the worse of the standard and the adaptive attack."""
        return min(self.standard, self.bpda)


def choose_alpha(rows: list[SweepRow], max_clean_drop: float = 0.5) -> tuple[float, str]:
    """The alpha with the largest worst-case robust gain over alpha = 0 within the clean budget.

    ``rows`` must contain alpha = 0 (the base model). Returns (alpha, reason); alpha 0
    when no alpha improves the worst-case robust accuracy within the budget.
    """
    if not max_clean_drop >= 0:
        raise UsageError(f"must be >= 0 points, got {max_clean_drop}", param="max_clean_drop")
    base = next((r for r in rows if r.alpha == 0), None)
    if base is None:
        raise UsageError("the sweep needs alpha 0 (the base model) as its reference")
    allowed = [r for r in rows if base.clean - r.clean <= max_clean_drop + 1e-9]
    best = max(allowed, key=lambda r: (round(r.robust - base.robust, 9), -r.alpha))
    if best.alpha == 0 or best.robust <= base.robust:
        return 0.0, (f"no alpha raises the worst-case robust accuracy (min of standard and straight-through) "
                     f"within a {max_clean_drop:g}-point clean budget; keep the base model")
    return best.alpha, (f"alpha {best.alpha:g}: worst-case robust {best.robust:.2f}% vs {base.robust:.2f}% "
                        f"(+{best.robust - base.robust:.2f}), clean {best.clean:.2f}% vs {base.clean:.2f}%")
