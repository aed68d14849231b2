"""Build a TensorRT engine from a (hardened) ONNX model with the TensorRT Python API.

TensorRT is imported lazily: without it, :func:`build_engine` raises
:class:`DependencyError` with the install hint. Written against the documented API
(``tensorrt.Builder``, ``OnnxParser.parse_from_file``, ``IBuilderConfig``,
``IOptimizationProfile``, ``ITimingCache``); never run on these machines, which cannot
install TensorRT -- see the README's deployment section.

Two API generations: TensorRT 10 builds weakly typed networks by default, and ``--fp16`` /
``--bf16`` set ``BuilderFlag.FP16``/``BF16`` so TensorRT may pick reduced-precision kernels.
TensorRT 11 removed weak typing and those flags ("Migrating from TensorRT 10.x to 11.x",
NVIDIA docs): every network is strongly typed and precision comes from the ONNX model's own
types, so an fp16/bf16 engine is built from an fp16/bf16 model (exported in that precision, or
converted with NVIDIA ModelOpt AutoCast) and the flags are refused with that advice.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mstransform.core.errors import DependencyError, ModelError, UsageError
from mstransform.core.fileio import atomic_output


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
        out[name] = triple
    return ShapeProfile(out)


def trt_major(trt) -> int:
    return int(str(trt.__version__).split(".")[0])


def network_flags(trt, major: int) -> int:
    """Creation flags: explicit batch before 10 (implicit batch existed), strong typing from 11."""
    flag = trt.NetworkDefinitionCreationFlag
    if major < 10 and hasattr(flag, "EXPLICIT_BATCH"):
        return 1 << int(flag.EXPLICIT_BATCH)
    if major >= 11 and hasattr(flag, "STRONGLY_TYPED"):
        return 1 << int(flag.STRONGLY_TYPED)
    return 0


def build_engine(onnx_path: str | Path, plan_path: str | Path, *, fp16: bool = False, bf16: bool = False,
                 profile: ShapeProfile | None = None, workspace_mib: int = 1024,
                 timing_cache: str | Path | None = None) -> Path:
    """Parse ``onnx_path``, build a serialized engine and write it atomically to ``plan_path``."""
    trt = import_tensorrt()
    major = trt_major(trt)
    if major >= 11 and (fp16 or bf16):
        raise UsageError(f"TensorRT {trt.__version__} builds strongly typed networks only (no FP16/BF16 builder "
                         "flags): build from a model whose types are fp16/bf16 (export it in that precision, or "
                         "convert it with NVIDIA ModelOpt AutoCast) and leave out --fp16/--bf16")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt, major))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = []
        for i in range(parser.num_errors):
            err = parser.get_error(i)
            node = err.node_name() if hasattr(err, "node_name") else err.node()
            errors.append(f"node {node}: {err.desc()}")
        raise ModelError("TensorRT's ONNX parser rejected the model: " + "; ".join(errors or ["unknown error"]))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    if bf16:
        config.set_flag(trt.BuilderFlag.BF16)
    dynamic = [network.get_input(i) for i in range(network.num_inputs)
               if any(d < 0 for d in network.get_input(i).shape)]
    if dynamic:
        if profile is None:
            raise UsageError("the model has dynamic input dims: pass --shapes MIN/OPT/MAX")
        opt_profile = builder.create_optimization_profile()
        for tensor in dynamic:
            if tensor.name not in profile.shapes:
                raise UsageError(f"--shapes gives no shapes for dynamic input {tensor.name!r}")
            opt_profile.set_shape(tensor.name, *profile.shapes[tensor.name])
        config.add_optimization_profile(opt_profile)
    cache_path = Path(timing_cache) if timing_cache else None
    if cache_path is not None:
        blob = cache_path.read_bytes() if cache_path.is_file() else b""
        config.set_timing_cache(config.create_timing_cache(blob), ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ModelError("TensorRT could not build an engine (see the messages above)")
    with atomic_output(plan_path) as tmp:
        tmp.write_bytes(bytes(serialized))
    if cache_path is not None:
        with atomic_output(cache_path) as tmp:
            tmp.write_bytes(bytes(config.get_timing_cache().serialize()))
    return Path(plan_path)
