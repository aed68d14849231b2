"""Sessions: the :class:`Session` protocol, the table of runtimes that open them, and ONNX Runtime's.

Every runtime is one row of :data:`RUNTIMES` (its name as ``core.options.Runtime`` spells it -> its
:class:`Opener`); :func:`open_session`, :func:`check_runtime_choice`, :func:`describe` and
:func:`run_step` derive from that row and the session's own answers, with no branch per runtime.
ONNX Runtime sessions are made from files or in-memory ``onnx_ir`` models: in-memory models are
serialized to bytes, so calibration and self-checks never write an augmented model anywhere; models
whose weights live in external data files keep them there (the session is told which folder).
"""
from __future__ import annotations

import enum
import functools
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import onnx_ir as ir

from mstransform.core.errors import DependencyError, ModelError, UsageError
from mstransform.core.options import Device, check_count, choice


@runtime_checkable
class Session(Protocol):
    """An open model on one runtime: what calibration, inference, bench and the checks ask of it."""

    runtime: str  # the runtime as error lines name it ("ONNX Runtime", "OpenVINO")
    why: str  # why it runs where it does (ONNX Runtime's provider order, what the build lacks); may be ""

    def run(self, names: list[str] | None, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The values of ``names`` (None: every graph output) computed on ``feed``."""

    def get_inputs(self) -> list:
        """The graph inputs: ports with ``name`` and ``shape`` (an int per static dim)."""

    def get_outputs(self) -> list:
        """The graph outputs: ports with ``name``."""

    def get_providers(self) -> list[str]:
        """Where it runs, best first (ONNX Runtime's provider names; another runtime its own)."""

    def describe(self) -> str:
        """One line: the runtime, its version and where it runs."""


class OrtSession:
    """An ``onnxruntime.InferenceSession`` as a :class:`Session`: its own bound methods, nothing copied."""

    runtime = "ONNX Runtime"

    def __init__(self, inner, version: str, why: str = ""):
        self.inner, self.version, self.why = inner, version, why
        self.run = inner.run  # the session's own method: no Python call in between on the calibration path
        self.get_inputs, self.get_outputs, self.get_providers = inner.get_inputs, inner.get_outputs, inner.get_providers

    def describe(self) -> str:
        return f"ONNX Runtime {self.version} on {self.get_providers()[0]}"


@dataclass(frozen=True)
class Settings:
    """What a command asks of a session; each runtime reads the part that is its own."""

    providers: list | None = None  # ONNX Runtime's execution providers (None: the preferred order)
    threads: int | None = None  # intra-op threads (None: the runtime's default)
    memory_pattern: bool = True  # ONNX Runtime's memory pattern (off for many-output graphs)
    specialise: bool = True  # OpenVINO's compile per feed shape


@dataclass(frozen=True)
class Opener:
    """One runtime: how it opens a model, and which devices and ONNX Runtime providers apply to it."""

    title: str  # as error lines name it
    open: Callable[[object, Settings], Session]  # (a file or an in-memory ``onnx_ir`` model, settings)
    devices: frozenset[Device] = frozenset(Device)
    providers: frozenset[str] | None = None  # the only ONNX Runtime providers it accepts (None: any)
    where: str = ""  # where it runs, for a refused device or provider ("its CPU plugin")
    against_reference: bool = False  # the self-check also compares its operators' decisions with ONNX Runtime's

    def check(self, device=None, providers: list | None = None) -> None:
        """Refuse a device or ONNX Runtime providers that do not apply to this runtime."""
        if device is not None and (device := choice(Device, device, "device")) not in self.devices:
            raise UsageError(f"{device.value} does not apply to {self.title}, which runs on {self.where} here",
                             param="device")
        if self.providers is not None and providers and {_provider_name(p) for p in providers} - self.providers:
            raise UsageError(f"belong to ONNX Runtime; {self.title} runs on {self.where} here", param="providers")


PREFERRED = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def import_ort():
    try:
        import onnxruntime as ort
    except ImportError:
        raise DependencyError("onnxruntime is not installed: pip install 'mstransform[cpu]' "
                              "(or 'mstransform[gpu]' for onnxruntime-gpu; never both)") from None
    _quiet(ort)
    return ort


@functools.cache
def _quiet(ort) -> None:
    """ONNX Runtime's process-wide logger prints errors (a failed run) on its own: only fatal ones here."""
    ort.set_default_logger_severity(4)


# the shared libraries each GPU provider needs at session start; ORT logs a loud error and falls back
# when they are missing, so they are checked first and the provider is not asked for
_NEEDS = {"TensorrtExecutionProvider": ("libnvinfer.so.10", "libnvinfer.so.11", "libnvinfer.so"),
          "CUDAExecutionProvider": ("libcudart.so.13", "libcudart.so.12", "libcudart.so")}


def library_loads(names: tuple[str, ...]) -> bool:
    """Whether any of ``names`` loads in this process (after ORT's own preloading of pip CUDA libraries)."""
    import ctypes

    for name in names:
        try:
            ctypes.CDLL(name)
            return True
        except OSError:
            continue
    return False


def _usable(ort, provider: str) -> bool:
    if provider not in _NEEDS:
        return True
    if provider == "CUDAExecutionProvider":
        _preload_cuda(ort)
    return library_loads(_NEEDS[provider])


@functools.cache
def _preload_cuda(ort) -> None:
    """Load the nvidia-* pip packages' libraries where they exist, once per process; quiet otherwise."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is not None:
        try:
            preload(cuda=True, cudnn=True, msvc=False)
        except Exception:  # noqa: BLE001 -- preloading is best effort
            pass


def choose_providers(requested: list[str] | None = None) -> tuple[list[str], str]:
    """The providers to ask for, best first, and a sentence on why.

    A GPU provider that this onnxruntime build lists is asked for only when its libraries load
    (TensorRT's ``libnvinfer``, CUDA's runtime), so ONNX Runtime never logs a failed start."""
    ort = import_ort()
    available = ort.get_available_providers()
    if requested is not None and (isinstance(requested, str) or not isinstance(requested, (list, tuple))):
        raise UsageError(f"must be a list of provider names, not {type(requested).__name__}", param="providers")
    if requested:  # names, or (name, options) pairs as ONNX Runtime takes them
        names = [_provider_name(p) for p in requested]
        unknown = [p for p in names if p not in ort.get_all_providers()]
        if unknown:
            raise UsageError(f"names {unknown[0]!r}, which ONNX Runtime does not know (available here: "
                             f"{', '.join(available)})", param="providers")
        missing = [p for p in names if p not in available]
        if missing:  # a device or provider this machine lacks: a missing dependency, not a bad model
            raise DependencyError(f"execution provider(s) {missing} are not in this onnxruntime build (available: "
                                  f"{available}); CUDA and TensorRT need the onnxruntime-gpu package (never beside "
                                  "onnxruntime) and a GPU")
        unusable = [p for p in names if p in _NEEDS and not _usable(ort, p)]
        if unusable:
            raise DependencyError(f"execution provider {unusable[0]} cannot start: none of "
                                  f"{', '.join(_NEEDS[unusable[0]])} loads on this machine")
        return list(requested), "as requested"
    chosen, notes = [], []
    for p in PREFERRED:
        if p not in available:
            if p != "CPUExecutionProvider":
                notes.append(f"{_short(p)} not in this onnxruntime build")
        elif _usable(ort, p):
            chosen.append(p)
        else:
            notes.append(f"{_short(p)} skipped: {_NEEDS[p][0]} does not load")
    return chosen, "; ".join(["preferred order TensorRT > CUDA > CPU", *notes])


def _provider_name(p) -> str:
    """A provider as ONNX Runtime takes it: a name, or a (name, options) pair."""
    if isinstance(p, str):
        return p
    if isinstance(p, (tuple, list)) and len(p) == 2 and isinstance(p[0], str) and isinstance(p[1], dict):
        return p[0]
    raise UsageError(f"holds {p!r:.60}; a provider is a name or a (name, options dict) pair", param="providers")


def _short(provider: str) -> str:
    return provider.replace("ExecutionProvider", "")


def _onnxruntime(model, settings: Settings) -> Session:
    return make_session(model, providers=settings.providers, threads=settings.threads,
                        memory_pattern=settings.memory_pattern)


def _openvino(model, settings: Settings) -> Session:
    from mstransform.runtime.openvino_session import OpenVinoSession  # imports this module

    return OpenVinoSession(model, threads=settings.threads, specialise=settings.specialise)


# every runtime, by the name ``core.options.Runtime`` gives it (the user's choice; core cannot import this)
RUNTIMES: dict[str, Opener] = {
    "onnxruntime": Opener("ONNX Runtime", _onnxruntime),
    "openvino": Opener("OpenVINO", _openvino, frozenset({Device.CPU}), frozenset({"CPUExecutionProvider"}),
                       "its CPU plugin", against_reference=True),
}
DEFAULT_RUNTIME = "onnxruntime"


def opener(runtime=None) -> Opener:
    """The row of :data:`RUNTIMES` for ``runtime`` (a name or a ``Runtime``; None: ONNX Runtime)."""
    name = DEFAULT_RUNTIME if runtime is None else runtime.value if isinstance(runtime, enum.Enum) else runtime
    if not isinstance(name, str) or name not in RUNTIMES:
        raise UsageError(f"must be one of {', '.join(RUNTIMES)}, not {runtime!r}", param="runtime")
    return RUNTIMES[name]


def check_runtime_choice(runtime=None, device=None, providers: list | None = None) -> None:
    """Refuse an unknown runtime, or a device or providers that do not apply to it (OpenVINO runs on its CPU
    plugin here: a CUDA device or ONNX Runtime providers other than the CPU one do not apply)."""
    opener(runtime).check(device, providers)


def open_session(model, *, runtime=None, device=None, providers: list | None = None, threads: int | None = None,
                 memory_pattern: bool = True, specialise: bool = True) -> Session:
    """A session on ``runtime`` (ONNX Runtime by default; any row of :data:`RUNTIMES`), after
    :func:`check_runtime_choice`. ``model`` is a file or an in-memory ``onnx_ir`` model; ``providers``
    (else those of ``device``) and ``memory_pattern`` are ONNX Runtime's, ``specialise`` OpenVINO's
    (a compile per feed shape)."""
    row = opener(runtime)
    row.check(device, providers)
    if providers is None:
        providers = providers_for(device)
    return row.open(model, Settings(providers, threads, memory_pattern, specialise))


def describe(session: Session, why: str = "") -> str:
    """One line naming the runtime and provider that runs ``session`` (and ``why``, where given)."""
    return session.describe() + (f" ({why})" if why else "")


def providers_for(device, gpu: int | None = None) -> list | None:
    """ONNX Runtime providers for a :class:`Device` (None: the preferred order TensorRT > CUDA > CPU); on CUDA,
    ``gpu`` pins the GPU (torch's current device: under torchrun, each rank's own)."""
    if device is None:
        return None
    device = choice(Device, device, "device")
    if device is Device.CPU:
        return ["CPUExecutionProvider"]
    cuda = "CUDAExecutionProvider" if gpu is None else ("CUDAExecutionProvider", {"device_id": gpu})
    return [cuda, "CPUExecutionProvider"]


def make_session(model: ir.Model | str | Path, *, providers: list[str] | None = None, threads: int | None = None,
                 optimize: bool = True, memory_pattern: bool = True) -> OrtSession:
    """An ONNX Runtime session of ``model`` on ``providers`` (None: the preferred order, :func:`choose_providers`)."""
    ort = import_ort()
    if threads is not None:
        check_count(threads, "threads", high=max_threads())
    opts = ort.SessionOptions()
    opts.log_severity_level = 4  # errors come back as exceptions, reported in one line; ORT's log stays silent
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    if not memory_pattern:  # ORT re-plans its memory pattern over the first runs: slow for many-output graphs
        opts.enable_mem_pattern = False
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    chosen, why = choose_providers(providers)
    try:
        source = str(model)
        if isinstance(model, ir.Model):
            base = _external_base_dir(model)
            if base is not None:
                opts.add_session_config_entry("session.model_external_initializers_file_folder_path", str(base))
            source = ir.serde.serialize_model(model).SerializeToString()
        elif not encodable(model):  # ONNX Runtime takes UTF-8 paths only; read the bytes here
            with open(model, "rb") as f:
                source = f.read()
            opts.add_session_config_entry("session.model_external_initializers_file_folder_path",
                                          str(Path(model).resolve().parent))
        inner = ort.InferenceSession(source, sess_options=opts, providers=chosen)
    except Exception as e:  # ORT raises its own exception types
        raise ModelError(f"ONNX Runtime cannot load the model: {first_line(e)}") from None
    return OrtSession(inner, ort.__version__, why)


def encodable(path) -> bool:
    """Whether a path can be handed to the C++ side of onnx / ONNX Runtime (UTF-8 only)."""
    try:
        str(path).encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def first_line(e: BaseException) -> str:
    """A runtime's exception as one line, its reason kept: ONNX Runtime and OpenVINO raise multi-line
    texts whose first line often ends before the reason (``Got invalid dimensions for input: x for the
    following indices`` / `` index: 0 Got: 4 Expected: 8``), so the lines are joined, not cut."""
    text = " ".join(line.strip() for line in str(e).strip().splitlines() if line.strip())
    text = _SOURCE_LOCATION.sub("", text)  # ORT's "<file>.h:91 <function>(<args>) <condition> was false. "
    if not text:
        return type(e).__name__
    return text if len(text) <= MAX_REASON else text[:MAX_REASON - 3] + "..."


MAX_REASON = 600  # characters of a runtime's reason kept in an error line
_SOURCE_LOCATION = re.compile(r"/\S+\.(?:h|hpp|cc|cpp):\d+ .*? was false\. ")


def run_step(session: Session, fetch: list[str] | None, feed: dict, error, step: str) -> list:
    """``session.run``, with a failure turned into ``error`` (an MstError class): one line naming
    ``step`` and the runtime's reason.

    A run that fails on several samples is tried once more on one sample (cut along each input's
    declared dynamic axis 0): where that runs, the model declares its batch
    dynamic but its graph holds batch 1 (an export that traced batch 1 into a ``Reshape``), and the
    line says so and what to do."""
    from mstransform.core.errors import MstError

    try:
        return session.run(fetch, feed)
    except MstError:
        raise
    except Exception as e:  # ORT and OpenVINO raise their own exception types
        runtime = session.runtime
        reason = first_line(e)
    batch = _batch_of_one(session, feed)
    if batch is not None:
        try:
            session.run(fetch, batch[1])
        except Exception:  # noqa: BLE001 -- it fails at batch 1 too: the first reason is the one to report
            pass
        else:
            raise error(f"{step}: the model declares its batch dynamic but runs only at batch 1 ({runtime} failed "
                        f"at batch {batch[0]}: {reason}); the graph holds batch 1, as an export traced at batch 1 "
                        "into a Reshape does: give batch size 1 (--batch-size 1)") from None
    raise error(f"{step}: {runtime} failed: {reason}") from None


def _batch_of_one(session: Session, feed: dict) -> tuple[int, dict] | None:
    """(samples in ``feed``, ``feed`` cut to its first sample) where ``feed`` holds more than one sample
    along a dynamic batch axis; None otherwise. An input's batch axis is its axis 0 where the session
    declares that dim dynamic."""
    declared = {i.name: getattr(i, "shape", None) for i in session.get_inputs()}
    axes = {k: 0 for k, shape in declared.items() if shape and not isinstance(shape[0], int)}
    cut, sizes = dict(feed), set()
    for name, axis in axes.items():
        x = feed.get(name)
        if axis is None or x is None or getattr(x, "ndim", 0) <= axis:
            continue
        sizes.add(x.shape[axis])
        index = [slice(None)] * x.ndim
        index[axis] = slice(0, 1)
        cut[name] = x[tuple(index)]
    if len(sizes) != 1 or sizes == {1} or sizes == {0}:
        return None
    return sizes.pop(), cut


def max_threads() -> int:
    """More intra-op threads than four per core only oversubscribe the machine (one request for
    thousands left a machine at a load near 900 for minutes)."""
    return 4 * (os.cpu_count() or 1)


def _external_base_dir(model: ir.Model) -> Path | None:
    for v in model.graph.initializers.values():
        t = v.const_value
        if isinstance(t, ir.ExternalTensor):
            return Path(t.base_dir)
    return None
