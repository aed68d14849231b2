"""ONNX Runtime sessions, made from files or in-memory ``onnx_ir`` models.

In-memory models are serialized to bytes, so calibration and self-checks never write
an augmented model anywhere. Models whose weights live in external data files keep
them there: the session is told which folder to read them from.
"""
from __future__ import annotations

import functools
import os
import re
from pathlib import Path

import onnx_ir as ir

from mstransform.core.errors import DependencyError, ModelError, UsageError
from mstransform.core.options import check_count

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


def check_runtime_choice(runtime=None, device=None, providers: list | None = None) -> None:
    """OpenVINO runs on its CPU plugin here: a CUDA device or ONNX Runtime providers do not apply to it."""
    from mstransform.core.options import Device, Runtime, choice

    if runtime is None or choice(Runtime, runtime, "runtime") is not Runtime.OPENVINO:
        return
    if device is not None and choice(Device, device, "device") is Device.CUDA:
        raise UsageError("cuda does not apply to OpenVINO, which runs on its CPU plugin here", param="device")
    if providers and {_provider_name(p) for p in providers} != {"CPUExecutionProvider"}:
        raise UsageError("belong to ONNX Runtime; OpenVINO runs on its CPU plugin here", param="providers")


def open_session(model, *, runtime=None, providers: list[str] | None = None, threads: int | None = None,
                 memory_pattern: bool = True, specialise: bool = True):
    """A session on ``runtime`` (ONNX Runtime by default, or OpenVINO): both answer ``run`` alike.

    ``model`` is a file or an in-memory ``onnx_ir`` model; ``providers`` and ``memory_pattern``
    are ONNX Runtime's, ``specialise`` OpenVINO's (a compile per feed shape)."""
    from mstransform.core.options import Runtime, choice

    if runtime is not None and choice(Runtime, runtime, "runtime") is Runtime.OPENVINO:
        from mstransform.runtime.openvino_session import OpenVinoSession

        return OpenVinoSession(model, threads=threads, specialise=specialise)
    return make_session(model, providers=providers, threads=threads, memory_pattern=memory_pattern)


def describe(session, why: str = "") -> str:
    """One line naming the runtime and provider that runs ``session``."""
    if hasattr(session, "describe"):
        return session.describe()
    ort = import_ort()
    used = session.get_providers()[0]
    return f"ONNX Runtime {ort.__version__} on {used}" + (f" ({why})" if why else "")


def providers_for(device) -> list[str] | None:
    """ONNX Runtime providers for a :class:`Device` (None: the preferred order TensorRT > CUDA > CPU)."""
    from mstransform.core.options import Device, choice

    if device is None:
        return None
    device = choice(Device, device, "device")
    return ["CPUExecutionProvider"] if device is Device.CPU else ["CUDAExecutionProvider", "CPUExecutionProvider"]


def make_session(model: ir.Model | str | Path, *, providers: list[str] | None = None, threads: int | None = None,
                 optimize: bool = True, memory_pattern: bool = True):
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
    chosen, _ = choose_providers(providers)
    try:
        if isinstance(model, ir.Model):
            base = _external_base_dir(model)
            if base is not None:
                opts.add_session_config_entry("session.model_external_initializers_file_folder_path", str(base))
            data = ir.serde.serialize_model(model).SerializeToString()
            return ort.InferenceSession(data, sess_options=opts, providers=chosen)
        if not encodable(model):  # ONNX Runtime takes UTF-8 paths only; read the bytes here
            with open(model, "rb") as f:
                data = f.read()
            opts.add_session_config_entry("session.model_external_initializers_file_folder_path",
                                          str(Path(model).resolve().parent))
            return ort.InferenceSession(data, sess_options=opts, providers=chosen)
        return ort.InferenceSession(str(model), sess_options=opts, providers=chosen)
    except Exception as e:  # ORT raises its own exception types
        raise ModelError(f"ONNX Runtime cannot load the model: {first_line(e)}") from None


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


def run_step(session, fetch: list[str] | None, feed: dict, error, step: str,
             axes: dict[str, int | None] | None = None) -> list:
    """``session.run``, with a failure turned into ``error`` (an MstError class): one line naming
    ``step`` and the runtime's reason.

    A run that fails on several samples is tried once more on one sample (cut along ``axes``, else
    along each input's declared dynamic axis 0): where that runs, the model declares its batch
    dynamic but its graph holds batch 1 (an export that traced batch 1 into a ``Reshape``), and the
    line says so and what to do."""
    from mstransform.core.errors import MstError

    try:
        return session.run(fetch, feed)
    except MstError:
        raise
    except Exception as e:  # ORT and OpenVINO raise their own exception types
        runtime = "OpenVINO" if hasattr(session, "describe") else "ONNX Runtime"
        reason = first_line(e)
    batch = batch_of_one(session, feed, axes)
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


def batch_of_one(session, feed: dict, axes: dict[str, int | None] | None = None) -> tuple[int, dict] | None:
    """(samples in ``feed``, ``feed`` cut to its first sample) where ``feed`` holds more than one sample
    along a dynamic batch axis; None otherwise. Without ``axes``, an input's batch axis is its axis 0
    where the session declares that dim dynamic."""
    if axes is None:
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
