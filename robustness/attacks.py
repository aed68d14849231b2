"""Robustness evaluation of ONNX models: standard, black-box and straight-through, side by side.

Every accuracy is measured on the deployed ``.onnx`` file by ONNX Runtime (or OpenVINO). Gradients for
white-box attacks come from the differentiable twin (:mod:`mstransform.robustness.twin`),
proved equal to the deployed model first (:mod:`mstransform.robustness.twin_check`). Attacks come
from libraries, not from here: APGD-CE, APGD-DLR and Square from ``pyautoattack`` (the
``eval`` extra); PGD from ``torchattacks`` when it is installed. PGD is not in the default set:
``torchattacks`` declares torchvision, which pulls a multi-GB CUDA torch, so no extra can
install it, and APGD-CE is PGD with an adaptive step that is at least as strong.

* ``apgd-ce``, ``apgd-dlr``, ``pgd``: white-box through the twin's true gradient, which is
  zero wherever a sparsify operator replaced a value (gradient masking);
* ``square``: black-box, querying the ONNX Runtime session itself;
* ``bpda``: APGD-CE through the twin with every sparsify operator's backward replaced by
  the identity (straight-through): the adaptive attack RobustBench used on MeanSparse;
* ``worst-case``: a sample counts as robust only if it survives every attack run.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

import numpy as np

from mstransform.core.errors import DataError, DependencyError, UsageError, VerificationError
from mstransform.core.options import DEFAULT_ATTACKS, MAX_BATCH, MAX_ITERS, Device, Runtime, check_count, choice
from mstransform.robustness.chunks import Work, accuracy, blank, chunk_ranges, chunk_seed, encode
from mstransform.runtime.accuracy import is_class_scores, not_class_scores
from mstransform.runtime.data import DataSource
from mstransform.runtime.session import check_runtime_choice, open_session, providers_for, run_step

ATTACKS = ("apgd-ce", "apgd-dlr", "pgd", "square", "bpda")


@dataclass
class AttackConfig:
    eps: float = 0.1
    norm: str = "Linf"
    n: int = 500
    batch_size: int = 250
    seed: int = 0
    apgd_iters: int = 100
    pgd_steps: int = 20
    square_queries: int = 1000
    attacks: tuple[str, ...] = DEFAULT_ATTACKS

    def __post_init__(self):
        if self.norm not in ("Linf", "L2"):
            raise UsageError(f"must be Linf or L2, not {self.norm!r}", param="norm")
        if not isinstance(self.eps, (int, float)) or not 0 < self.eps <= (1 if self.norm == "Linf" else 1e3):
            raise UsageError(f"must be in (0, 1] for Linf (pixels lie in [0, 1]), got {self.eps}", param="eps")
        check_count(self.n, "n", high=10_000_000)
        check_count(self.batch_size, "batch_size", high=MAX_BATCH)
        for name in ("apgd_iters", "pgd_steps", "square_queries"):
            check_count(getattr(self, name), name, high=MAX_ITERS)
        check_count(self.seed, "seed", low=0, high=2**32 - 1)
        unknown = [a for a in self.attacks if a not in ATTACKS]
        if unknown:
            raise UsageError(f"unknown attack(s) {unknown}; choose from {', '.join(ATTACKS)}", param="attacks")
        if not self.attacks:
            raise UsageError("names no attack", param="attacks")


@dataclass
class ModelResult:
    label: str
    path: str
    n: int
    twin_max_rel_diff: float
    sites: int
    twin_edge_flips: int
    accuracy: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    verdicts: dict[str, str] = field(default_factory=dict)  # per image: 1 correct, 0 wrong, . another shard's


def load_labelled(path, specs, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` samples scaled to [0, 1] and their labels (attacks assume that box)."""
    xs, ys = [], []
    for batch in DataSource(path, specs, batch_size=max(1, min(n, 1000)), limit=n):
        if batch.labels is None:
            raise DataError(f"{path} has no labels; evaluation needs a 'labels' array")
        if batch.labels.dtype.kind not in "iu":
            raise DataError(f"{path} has labels of type {batch.labels.dtype}; labels must be integers")
        xs.append(next(iter(batch.inputs.values())))
        ys.append(batch.labels)
    x, y = np.concatenate(xs), np.concatenate(ys).astype(np.int64)
    if x.min() < 0 or x.max() > 1:
        raise DataError("evaluation data must lie in [0, 1] after scaling (attacks work in pixel space)")
    if y.min() < 0:
        raise DataError(f"labels must be >= 0, found {int(y.min())}")
    return x, y


def check_classifier(session, x: np.ndarray, y: np.ndarray) -> None:
    """Refuse a model whose first output is not a score per class for the labels given."""
    out = session.get_outputs()[0]
    name = session.get_inputs()[0].name
    logits = np.asarray(run_step(session, [out.name], {name: x[:1]}, DataError,
                                 "a first classification of the data")[0])
    if not is_class_scores(logits, 1):
        raise not_class_scores(out.name, logits, "evaluation")
    if int(y.max()) >= logits.shape[1]:
        raise DataError(f"label {int(y.max())} is outside the model's {logits.shape[1]} classes")


class _OrtPredict:
    """The ONNX Runtime session as a torch callable (for the black-box Square attack)."""

    def __init__(self, session):
        self.session, self.name = session, session.get_inputs()[0].name

    def __call__(self, x):
        import torch

        out = self.session.run(None, {self.name: x.detach().cpu().numpy().astype(np.float32)})[0]
        return torch.from_numpy(out).to(x.device)


def _predict(session, x: np.ndarray, batch: int) -> np.ndarray:
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x[i:i + batch]})[0].argmax(1) for i in range(0, len(x), batch)])


def _attack(name: str, twin, session, x, y, cfg: AttackConfig, device: str = "cpu", seed: int | None = None):
    import torch

    seed = cfg.seed if seed is None else seed

    try:
        from pyautoattack.autopgd_base import APGDAttack
        from pyautoattack.square import SquareAttack
    except ImportError:
        raise DependencyError("pyautoattack is not installed: pip install 'mstransform[eval]'") from None
    xt, yt = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
    if name in ("apgd-ce", "apgd-dlr", "bpda"):
        loss = "dlr" if name == "apgd-dlr" else "ce"
        atk = APGDAttack(twin, n_iter=cfg.apgd_iters, norm=cfg.norm, eps=cfg.eps, seed=seed, loss=loss,
                         device=device)
        twin.straight_through = name == "bpda"
        try:
            return atk.perturb(xt, yt).detach().cpu().numpy()
        finally:
            twin.straight_through = False
    if name == "pgd":
        try:
            import torchattacks
        except ImportError:
            raise DependencyError("the pgd attack needs torchattacks, which no extra installs (it declares "
                                  "torchvision): pip install --no-deps torchattacks==3.5.1 scipy; or leave pgd out "
                                  "(apgd-ce is at least as strong)") from None
        torch.manual_seed(seed)
        atk = (torchattacks.PGD(twin, eps=cfg.eps, alpha=2.5 * cfg.eps / cfg.pgd_steps, steps=cfg.pgd_steps)
               if cfg.norm == "Linf" else
               torchattacks.PGDL2(twin, eps=cfg.eps, alpha=2.5 * cfg.eps / cfg.pgd_steps, steps=cfg.pgd_steps))
        return atk(xt, yt).detach().cpu().numpy()
    if name == "square":
        atk = SquareAttack(_OrtPredict(session), norm=cfg.norm, n_queries=cfg.square_queries, eps=cfg.eps,
                           seed=seed, device=device)
        return atk.perturb(xt, yt).detach().cpu().numpy()
    raise UsageError(f"unknown attack {name!r}")


def _check_budget(adv: np.ndarray, x: np.ndarray, cfg: AttackConfig, name: str) -> None:
    delta = (adv - x).reshape(len(x), -1)
    size = np.abs(delta).max(1) if cfg.norm == "Linf" else np.sqrt((delta.astype(np.float64) ** 2).sum(1))
    if np.any(size > cfg.eps * (1 + 1e-4) + 1e-6) or adv.min() < -1e-6 or adv.max() > 1 + 1e-6:
        raise VerificationError(f"attack {name} left the threat model (largest perturbation {size.max():.4g}, eps "
                                f"{cfg.eps}; pixels in [{adv.min():.4g}, {adv.max():.4g}]): its accuracy would not "
                                "count; check the attack library's version")


def evaluate_model(label: str, path, x: np.ndarray, y: np.ndarray, cfg: AttackConfig, log=None,
                   threads: int | None = None, device: Device | str | None = None,
                   runtime: Runtime | str = Runtime.ONNXRUNTIME, chunks=None, store=None,
                   index: int = 0, work=None) -> ModelResult:
    """Every attack of ``cfg`` on one model. ``device``: ONNX Runtime's provider and the torch device
    of the twin and the white-box attacks (CUDA runs them in full float32: TF32 off). ``runtime``
    runs the clean accuracy, the black-box attack and every adversarial check (OpenVINO or ONNX
    Runtime); the twin is always checked against ONNX Runtime.

    ``chunks``: the ``(start, stop)`` image ranges to attack (default: all of ``x`` in chunks of
    ``cfg.batch_size``); each is seeded from ``(cfg.seed, start)`` (:mod:`~.chunks`). ``store``: a
    :class:`~.chunks.ChunkStore` that finished chunks are read from and written to, as model ``index``.
    ``work``: the :class:`~.chunks.Work` whose bar counts the chunks (default: a bar of this model's own).
    ``log`` (a callable taking one line) hears the model's accuracies."""
    check_runtime_choice(runtime, device)
    with _full_precision():
        return _evaluate(label, path, x, y, cfg, log, threads, device, runtime, chunks, store, index, work)


@contextlib.contextmanager
def _full_precision():
    """TF32 convolutions and matmuls would move the twin by ~1e-3 on CUDA: the twin check needs float32."""
    import torch

    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _evaluate(label, path, x, y, cfg, log, threads, device, runtime, chunks, store, index, work) -> ModelResult:
    import torch

    from mstransform.robustness.twin import OnnxTwin
    from mstransform.robustness.twin_check import check_twin

    dev = "cuda" if device is not None and choice(Device, device, "device") is Device.CUDA else "cpu"
    if dev == "cuda" and not torch.cuda.is_available():
        raise DependencyError("device cuda: this torch build sees no CUDA device (torch.cuda.is_available() is False)")
    providers = providers_for(device, torch.cuda.current_device() if dev == "cuda" else None)
    session = open_session(path, runtime=runtime, threads=threads, providers=providers)
    check_classifier(session, x, y)
    twin = OnnxTwin(path).eval().to(dev)
    twin_report = check_twin(twin, path, x[: min(len(x), 64)], threads=threads, providers=providers)
    chunks = chunk_ranges(len(x), cfg.batch_size) if chunks is None else chunks
    res = ModelResult(label, str(path), sum(b - a for a, b in chunks), twin_report.max_rel_diff, len(twin.units),
                      twin_report.flips)
    names = ["clean", *cfg.attacks, "worst-case"]
    verdicts = {k: blank(len(x)) for k in names}
    res.seconds = {k: 0.0 for k in cfg.attacks}
    own = work is None
    work = Work(1, sum(b - a for a, b in chunks), len(chunks), cfg) if own else work
    for start, stop in chunks:
        done = store.load(index, start, stop) if store is not None else None
        took = None
        if done is None:
            t0 = time.perf_counter()
            done = _attack_chunk(twin, session, x[start:stop], y[start:stop], cfg, dev, chunk_seed(cfg.seed, start))
            took = time.perf_counter() - t0
            if store is not None:
                store.save(index, start, stop, *done)
        got, seconds = done
        for k in names:
            verdicts[k][start:stop] = got[k]
        for k in cfg.attacks:
            res.seconds[k] += seconds[k]
        work.chunk_done(took)
    if own:
        work.close()
    res.verdicts = {k: "".join(v) for k, v in verdicts.items()}
    res.accuracy = {k: accuracy(v) for k, v in res.verdicts.items()}
    if log:
        log(f"{label}: " + ", ".join(f"{k} {res.accuracy[k]:.2f}%" for k in cfg.attacks))
    return res


def _attack_chunk(twin, session, x, y, cfg, dev, seed) -> tuple[dict[str, str], dict[str, float]]:
    """Every attack on one chunk: its verdicts (clean, each attack, worst case) and each attack's seconds."""
    clean = _predict(session, x, cfg.batch_size) == y
    verdicts, seconds, survivors = {"clean": encode(clean)}, {}, clean.copy()
    for name in cfg.attacks:
        t0 = time.perf_counter()
        if name == "bpda" and not twin.units and "apgd-ce" in verdicts:  # no operator: BPDA is APGD-CE, seed and all
            correct = np.array([c == "1" for c in verdicts["apgd-ce"]], dtype=bool)
        else:
            adv = _attack(name, twin, session, x, y, cfg, dev, seed).astype(np.float32)
            _check_budget(adv, x, cfg, name)
            correct = (_predict(session, adv, cfg.batch_size) == y) & clean
        survivors &= correct
        verdicts[name], seconds[name] = encode(correct), time.perf_counter() - t0
    verdicts["worst-case"] = encode(survivors)
    return verdicts, seconds
