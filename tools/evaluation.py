"""Robustness evaluation of several ONNX models side by side: the workflow behind ``mstransform eval``.

Every model and the data are opened and checked before the first attack runs (an unreadable
second model must not cost minutes of attacks on the first), and every model must take the
same input as the first.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path


from mstransform.core.errors import DataError
from mstransform.passes.prepare import load_model
from mstransform.robustness.attacks import AttackConfig, ModelResult, check_classifier, evaluate_model, load_labelled
from mstransform.robustness.reports import format_table, write_reports
from mstransform.runtime.inputs import input_specs
from mstransform.runtime.session import describe, open_session, providers_for


@dataclass
class EvalReport:
    results: list[ModelResult]
    cfg: AttackConfig
    data: str
    n: int
    seconds: float
    runtime: str = ""  # one line: the runtime and provider every accuracy was measured on

    def table(self) -> str:
        return (f"{self.cfg.norm} eps={self.cfg.eps:g}, {self.n} images from {self.data}, seed {self.cfg.seed}; "
                f"accuracy in %; every figure measured on the .onnx file by {self.runtime} ({self.seconds:.0f} s)\n"
                + format_table(self.results))

    def write(self, json_path=None, csv_path=None) -> None:
        write_reports(self.results, self.cfg, json_path, csv_path)


def evaluate(models: list[str | Path], data, cfg: AttackConfig, *, progress=None, threads: int | None = None,
             device=None, runtime=None) -> EvalReport:
    """Clean, white-box, black-box and straight-through accuracy of each model on labelled ``data``.

    ``device`` (cpu or cuda) runs ONNX Runtime on that provider and the twin and attacks there;
    ``runtime`` (onnxruntime or openvino) is what every accuracy is measured on."""
    specs = input_specs(load_model(models[0]))
    for path in models[1:]:
        other = input_specs(load_model(path))
        if [(s.name, s.shape) for s in other] != [(s.name, s.shape) for s in specs]:
            raise DataError(f"{path} takes inputs {[(s.name, s.shape) for s in other]}, not those of {models[0]} "
                            f"{[(s.name, s.shape) for s in specs]}; compare models of one architecture")
    x, y = load_labelled(data, specs, cfg.n)
    for path in models:
        session = open_session(path, runtime=runtime, threads=threads, providers=providers_for(device))
        check_classifier(session, x, y)
    t0 = time.perf_counter()
    results = [evaluate_model(Path(m).stem, m, x, y, cfg, progress=progress, threads=threads, device=device,
                              runtime=runtime or "onnxruntime") for m in models]
    return EvalReport(results, cfg, str(data), len(x), time.perf_counter() - t0, describe(session))


__all__ = ["AttackConfig", "EvalReport", "evaluate"]
