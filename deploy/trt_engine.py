"""Build a TensorRT engine from a (hardened) ONNX model with the TensorRT Python API.

TensorRT is imported lazily: without it, :func:`build_engine` raises
:class:`DependencyError` with the install hint. Every TensorRT name used here is in the facts
files read from the real Python bindings (``data/trt_bindings_10.json``, ``_11.json``; see
``scripts/trt_facts.py``), and the tests drive this module through a stand-in built from them. No
engine was ever built with it on these machines, which cannot install TensorRT's libraries -- see
the README's deployment section.

Failures are one line each and leave no partial file: a parser rejection names the node, a timing
cache TensorRT cannot read or rejects (another GPU or version) stops the build before it starts,
and the plan and the cache are written to temporary files and renamed only once both are complete.

Two API generations: TensorRT 10 builds weakly typed networks by default, and ``--fp16`` /
``--bf16`` set ``BuilderFlag.FP16``/``BF16`` so TensorRT may pick reduced-precision kernels.
TensorRT 11 removed weak typing and those flags ("Migrating from TensorRT 10.x to 11.x",
NVIDIA docs): every network is strongly typed and precision comes from the ONNX model's own
types, so an fp16/bf16 engine is built from an fp16/bf16 model (exported in that precision, or
hardened with ``--precision fp16``) and the flags are refused with that advice.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

from mstransform.core.errors import DependencyError, ModelError, UsageError
from mstransform.core.fileio import atomic_output
from mstransform.core.guards import check_outputs
from mstransform.passes.graph.external_data import with_references


@dataclass(frozen=True)
class ShapeProfile:
    """min/opt/max shapes per input for one optimization profile."""

    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]


def import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError:
        raise DependencyError("TensorRT is not installed: pip install tensorrt (on a machine with an NVIDIA GPU "
                              "and driver), or use trtexec --onnx=MODEL --saveEngine=PLAN") from None
    return trt


def parse_shapes(spec: str | None, inputs: dict[str, tuple]) -> ShapeProfile | None:
    """``--shapes MIN/OPT/MAX`` as batch sizes (``1/8/64``) or full ``input:1x3x224x224/...`` lists."""
    if spec is None:
        return None
    out = {}
    if ":" not in spec:
        try:
            lo, opt, hi = (int(b) for b in spec.split("/"))
        except ValueError:
            raise UsageError(f"--shapes {spec!r}: expected MIN/OPT/MAX batch sizes like 1/8/64") from None
        if not 1 <= lo <= opt <= hi:
            raise UsageError(f"--shapes {spec!r}: need 1 <= MIN <= OPT <= MAX")
        for name, shape in inputs.items():
            if any(d is None for d in shape[1:]):
                raise UsageError(f"input {name!r} has dynamic dims besides the batch; give full shapes")
            rest = tuple(shape[1:])
            out[name] = ((lo, *rest), (opt, *rest), (hi, *rest))
        return ShapeProfile(out)
    for part in spec.split(","):
        name, _, dims = part.partition(":")
        try:
            triple = tuple(tuple(int(d) for d in s.split("x")) for s in dims.split("/"))
        except ValueError:
            raise UsageError(f"--shapes {part!r}: expected NAME:AxBxC/AxBxC/AxBxC") from None
        if len(triple) != 3:
            raise UsageError(f"--shapes {part!r}: expected three shapes MIN/OPT/MAX")
        lo, opt, hi = triple
        if len({len(lo), len(opt), len(hi)}) != 1:
            raise UsageError(f"--shapes {part!r}: MIN, OPT and MAX must have the same rank")
        if not all(1 <= a <= b <= c for a, b, c in zip(lo, opt, hi)):
            raise UsageError(f"--shapes {part!r}: need 1 <= MIN <= OPT <= MAX in every dim")
        if name in out:
            raise UsageError(f"--shapes names input {name!r} twice")
        out[name] = triple
    return ShapeProfile(out)


def trt_major(trt) -> int:
    return int(str(trt.__version__).split(".")[0])


def network_flags(trt, major: int) -> int:
    """Creation flags: EXPLICIT_BATCH before 10, when implicit batch still existed; none from 10 on.

    In 10.x EXPLICIT_BATCH (0) is deprecated and ignored and networks are weakly typed unless
    STRONGLY_TYPED (1) is asked for, which would forbid the FP16/BF16 builder flags. In 11.x
    STRONGLY_TYPED (0) is deprecated and ignored, strong typing being always on, and bit 1 is
    PREFER_JIT_PYTHON_PLUGINS: no bit is needed (values from the bindings' facts files).
    """
    if major < 10:
        return 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    return 0


def _one_line(text) -> str:
    return " ".join(str(text).split())


def _parser_error(err) -> str:
    """One ``IParserError`` as ``node 3 'name' (Op): description``."""
    index, name, op = err.node(), _one_line(err.node_name()), _one_line(err.node_operator())
    where = "model" if index < 0 else f"node {index}" + (f" '{name}'" if name else "") + (f" ({op})" if op else "")
    return f"{where}: {_one_line(err.desc())}"


def _parse(trt, network, logger, onnx_path: Path):
    parser = trt.OnnxParser(network, logger)
    if parser.parse_from_file(str(onnx_path)):
        return parser
    count = parser.num_errors
    shown = [_parser_error(parser.get_error(i)) for i in range(min(count, 3))]
    more = f" (and {count - 3} more)" if count > 3 else ""
    raise ModelError("TensorRT's ONNX parser rejected the model: " + "; ".join(shown or ["no error reported"]) + more)


def _configure(trt, builder, network, config, fp16: bool, bf16: bool, profile: ShapeProfile | None,
               workspace_mib: int) -> None:
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    if bf16:
        config.set_flag(trt.BuilderFlag.BF16)
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    dynamic = [t for t in inputs if any(d < 0 for d in t.shape)]
    if not dynamic:
        return
    if profile is None:
        raise UsageError("the model has dynamic input dims: pass --shapes MIN/OPT/MAX")
    opt_profile = builder.create_optimization_profile()
    for tensor in dynamic:
        if tensor.name not in profile.shapes:
            raise UsageError(f"--shapes gives no shapes for dynamic input {tensor.name!r}")
        dims = list(tensor.shape)
        for given in profile.shapes[tensor.name]:
            if len(given) != len(dims) or any(d >= 0 and g != d for g, d in zip(given, dims)):
                raise UsageError(f"--shapes gives input {tensor.name!r} shape {'x'.join(map(str, given))}, which "
                                 f"does not fit its dims {dims} (-1: dynamic)")
        opt_profile.set_shape(tensor.name, *profile.shapes[tensor.name])
    config.add_optimization_profile(opt_profile)


def _read_cache(path: Path) -> bytes:
    """The cache file's bytes; empty (a new cache) when there is none yet."""
    if not path.exists():
        return b""
    try:
        return path.read_bytes()
    except OSError as e:
        raise UsageError(f"timing cache {path} cannot be read ({e.strerror or e})") from None


def _attach_timing_cache(trt, config, path: Path):
    """Load ``path`` into ``config``, refusing a cache TensorRT cannot read or rejects; returns the cache."""
    cache = config.create_timing_cache(_read_cache(path))
    if cache is None:
        raise UsageError(f"timing cache {path} is corrupt or not a TensorRT {trt.__version__} timing cache; "
                         "delete it or pass another --timing-cache file")
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        raise UsageError(f"TensorRT {trt.__version__} rejected timing cache {path} (made on another GPU or "
                         "TensorRT version); delete it or pass another --timing-cache file")
    return cache


def _serialized_cache(config, path: Path):
    """The config's timing cache after the build, as ``IHostMemory``."""
    cache = config.get_timing_cache()
    blob = None if cache is None else cache.serialize()
    if blob is None:
        raise ModelError(f"TensorRT returned no timing cache to write to {path}; nothing was written")
    return blob


def _write_outputs(plan_path: Path, plan, cache_path: Path | None, cache_blob) -> None:
    """Write the plan (and the cache) to temporary files; rename them only when both are complete."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(atomic_output(plan_path)).write_bytes(plan)
        if cache_path is not None:
            stack.enter_context(atomic_output(cache_path)).write_bytes(cache_blob)


def build_engine(onnx_path: str | Path, plan_path: str | Path, *, fp16: bool = False, bf16: bool = False,
                 profile: ShapeProfile | None = None, workspace_mib: int = 1024,
                 timing_cache: str | Path | None = None) -> Path:
    """Parse ``onnx_path``, build a serialized engine and write it atomically to ``plan_path``.

    With ``timing_cache`` the cache file is read if present (refused in one line if TensorRT cannot
    read it or rejects it) and written back with the plan after a successful build.
    """
    plan_path, cache_path = check_outputs([plan_path, timing_cache], with_references(onnx_path))
    trt = import_tensorrt()
    major = trt_major(trt)
    if major >= 11 and (fp16 or bf16):
        raise UsageError(f"TensorRT {trt.__version__} builds strongly typed networks only (no FP16/BF16 builder "
                         "flags): build from a model whose types are fp16/bf16 (harden it with --precision fp16 or "
                         "bf16, or export it in that precision) and leave out --fp16/--bf16")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt, major))
    if network is None:
        raise ModelError(f"TensorRT {trt.__version__} could not create a network definition (see the messages above)")
    # the parser holds the network's weights and the config uses the cache: both live until the build is done
    parser = _parse(trt, network, logger, Path(onnx_path))
    config = builder.create_builder_config()
    _configure(trt, builder, network, config, fp16, bf16, profile, workspace_mib)
    cache = _attach_timing_cache(trt, config, cache_path) if cache_path is not None else None
    plan = builder.build_serialized_network(network, config)
    if plan is None or plan.nbytes == 0:
        raise ModelError("TensorRT could not build an engine (see the messages above); nothing was written")
    cache_blob = _serialized_cache(config, cache_path) if cache is not None else None
    _write_outputs(plan_path, plan, cache_path, cache_blob)
    del parser
    return Path(plan_path)
