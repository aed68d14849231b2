"""OpenVINO as a second runtime for hardened ONNX files.

OpenVINO reads the ``.onnx`` file itself. Its CPU plugin keeps a site's tensor in the convolution's
own layout; with dynamic dims it runs each sparsify operator as two elementwise kernels, at a static
shape its Snippets take the operator and its activation into one kernel (``docs/cpu-layout.md``:
Snippets skip dynamic nodes). So the session compiles the model again for each concrete feed shape it
meets -- a few, cached -- and runs that specialisation: ResNet-50 hardened/base 1.04-1.07x at batch 8
against 1.10x (same file, same outputs bit for bit). :class:`OpenVinoSession` is a
:class:`~mstransform.runtime.session.Session`, opened through the ``openvino`` row of
``runtime.session.RUNTIMES``, so calibration, accuracy, prediction and the black-box attack run on
either runtime unchanged. Inference precision is pinned to f32: on CPUs with bf16 units OpenVINO would
otherwise default to bf16, which moves values across the band edge.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from mstransform.core.errors import DependencyError, ModelError
from mstransform.core.options import check_count
from mstransform.runtime.session import first_line, open_session, run_step


def import_openvino():
    try:
        import openvino
    except ImportError:
        raise DependencyError("openvino is not installed: pip install 'mstransform[openvino]'") from None
    return openvino


def _source(model):
    """What ``Core.read_model`` takes: a path, or the serialized bytes of an in-memory model."""
    import io

    import onnx_ir as ir

    if not isinstance(model, ir.Model):
        return str(model)
    if any(isinstance(v.const_value, ir.ExternalTensor) for v in model.graph.initializers.values()):
        raise ModelError("OpenVINO reads in-memory models without external data only; run this one on ONNX Runtime")
    return io.BytesIO(ir.serde.serialize_model(model).SerializeToString())


@dataclass(frozen=True)
class _Port:
    name: str
    shape: tuple | None = None  # ONNX Runtime's spelling: an int per static dim, None per dynamic one


def _shape(port) -> tuple | None:
    shape = port.get_partial_shape()
    if shape.rank.is_dynamic:
        return None
    return tuple(d.get_length() if d.is_static else None for d in shape)


class OpenVinoSession:
    """One OpenVINO model (device ``CPU`` by default) as a ``Session``, compiled for each feed shape."""

    runtime = "OpenVINO"
    why = ""
    SHAPES = 4  # specialisations kept; a calibration meets two (the batch and a short last one)

    def __init__(self, model, *, threads: int | None = None, device: str = "CPU", specialise: bool = True):
        """``model``: an ONNX file, or an in-memory ``onnx_ir`` model (read from bytes, never written).
        ``specialise=False`` runs every feed on the one dynamic compile (the self-check compares two
        graphs, one with inner tensors exposed, which a static compile fuses differently)."""
        ov = import_openvino()
        if threads is not None:
            check_count(threads, "threads", high=256)
        config = {"INFERENCE_PRECISION_HINT": "f32"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        try:
            self._core = ov.Core()
            self._model = self._core.read_model(_source(model))
            self.compiled = self._core.compile_model(self._model, device, config)
        except Exception as e:  # OpenVINO raises RuntimeError with multi-line text
            raise ModelError(f"OpenVINO cannot load the model: {first_line(e)}") from None
        self.request = self.compiled.create_infer_request()
        self._config = config
        self._static = not specialise or all(not p.get_partial_shape().is_dynamic for p in self.compiled.inputs)
        self._by_shape: dict[tuple, tuple] = {}  # feed shapes -> (compiled, request), most recent last
        self._bf16 = ov.Type.bf16
        self.version, self.device = ov.get_version().split("-")[0], device
        self._inputs = [_Port(p.get_any_name(), _shape(p)) for p in self.compiled.inputs]
        self._outputs = [_Port(p.get_any_name()) for p in self.compiled.outputs]

    def get_inputs(self) -> list[_Port]:
        return self._inputs

    def get_outputs(self) -> list[_Port]:
        return self._outputs

    def get_providers(self) -> list[str]:
        return [f"OpenVINO {self.device}"]

    def describe(self) -> str:
        return f"OpenVINO {self.version} on {self.device} (f32)"

    def run(self, names: list[str] | None, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        feed = {k: np.ascontiguousarray(v) for k, v in feed.items()}
        compiled, request = self._specialised(feed)
        result = request.infer(feed)
        names = names or [p.name for p in self._outputs]
        return [self._array(compiled, result, n) for n in names]

    def _specialised(self, feed: dict[str, np.ndarray]):
        """The model compiled for these feed shapes (the dynamic compile where it cannot be reshaped)."""
        if self._static:
            return self.compiled, self.request
        key = tuple(sorted((k, v.shape) for k, v in feed.items()))
        if key in self._by_shape:
            self._by_shape[key] = self._by_shape.pop(key)  # most recently used last
            return self._by_shape[key]
        try:
            model = self._model.clone()
            model.reshape({k: list(v.shape) for k, v in feed.items()})
            compiled = self._core.compile_model(model, self.device, self._config)
            entry = (compiled, compiled.create_infer_request())
        except Exception:  # noqa: BLE001 -- a model whose shapes cannot be fixed runs on the dynamic compile
            entry = (self.compiled, self.request)
        if len(self._by_shape) >= self.SHAPES:
            self._by_shape.pop(next(iter(self._by_shape)))
        self._by_shape[key] = entry
        return entry

    def _array(self, compiled, result, name: str) -> np.ndarray:
        port = compiled.output(name)
        array = np.array(result[port])
        if port.get_element_type() == self._bf16:  # OpenVINO hands bf16 bits over in a float16 array
            import ml_dtypes

            array = array.view(np.uint16).view(ml_dtypes.bfloat16)
        return array


def layer_counts(compiled) -> Counter[str]:
    """The layer types of OpenVINO's runtime model of ``compiled`` (what its CPU plugin actually runs).

    ``Reorder`` counts layout conversions of tensors, ``Reorder(const)`` those of constants (run once,
    at compile time); ``fused`` counts sparsify nodes (named ``mstransform/...``) that a Convolution
    took into its post-ops. ``docs/cpu-layout.md`` reads these counts for each formulation."""
    counts: Counter[str] = Counter()
    for op in compiled.get_runtime_model().get_ordered_ops():
        rt = op.get_rt_info()
        kind = rt["layerType"].astype(str)
        if kind == "Reorder":
            src = op.input(0).get_source_output().get_node().get_rt_info()["layerType"].astype(str)
            kind = "Reorder(const)" if src == "Const" else "Reorder"
        elif kind == "Convolution":
            counts["fused"] += sum("mstransform/" in n for n in rt["originalLayersNames"].astype(str).split(","))
        counts[kind] += 1
    return counts


# -- OpenVINO against ONNX Runtime on a hardened model: which decisions differ, and how far from the edge --

@dataclass
class OperatorGap:
    """One sparsify operator as both runtimes ran it on the same feed."""

    name: str  # the operator's input tensor
    values: int
    flips: int  # decisions that differ between the runtimes (and change the value)
    max_input_diff: float  # max |x_ov - x_ort| over the tensor entering the operator
    scale: float  # max |x_ort|
    edge: np.ndarray  # per flip: ONNX Runtime's distance | |x - c| - t | to the band edge
    allowed: np.ndarray  # per flip: that value's |x_ov - x_ort| plus four ulps (its type) of the tensor's scale


@dataclass
class RuntimeGap:
    """OpenVINO against ONNX Runtime on one hardened model and feed (:func:`runtime_gap`)."""

    operators: list[OperatorGap]
    output_diff: float  # max |out_ov - out_ort| over the graph outputs, relative to max |out_ort|

    @property
    def flips(self) -> int:
        return sum(op.flips for op in self.operators)

    @property
    def values(self) -> int:
        return sum(op.values for op in self.operators)

    @property
    def far(self) -> int:
        """Flips farther from the band edge than their inputs' difference explains: a wrong operator."""
        return sum(int(np.count_nonzero(op.edge > op.allowed)) for op in self.operators)

    def first_flip(self) -> OperatorGap | None:
        return next((op for op in self.operators if op.flips), None)

    def to_dict(self) -> dict:
        """The comparison for machines: decisions compared and differing, per operator and in all."""
        return {"values": int(self.values), "flips": int(self.flips), "far": self.far,
                "output_diff": float(self.output_diff),
                "operators": [{"name": op.name, "values": int(op.values), "flips": int(op.flips),
                               "max_input_diff": float(op.max_input_diff), "scale": float(op.scale)}
                              for op in self.operators]}

    def format(self) -> str:
        """One line for people: whether the runtimes' decisions agree, and where they first differ."""
        first = self.first_flip()
        if first is None:
            return (f"OpenVINO vs ONNX Runtime: every decision of {len(self.operators)} operator(s) agrees "
                    f"({self.values} values); outputs within {self.output_diff:.2g} of scale")
        return (f"OpenVINO vs ONNX Runtime: {self.flips} of {self.values} decisions differ, "
                f"{self.flips - self.far} within their inputs' difference of the band edge; the first at "
                f"{first.name!r}, where the inputs differ by {first.max_input_diff / max(first.scale, 1e-30):.2g} "
                f"of scale; outputs within {self.output_diff:.2g} of scale")


def _run(session, names: list[str], feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    return run_step(session, names, feed, ModelError, "comparing OpenVINO with ONNX Runtime on the probe")


def runtime_gap(path, feed: dict[str, np.ndarray], *, threads: int | None = None) -> RuntimeGap:
    """Run the hardened model at ``path`` on ``feed`` in OpenVINO (f32) and ONNX Runtime (CPU), every
    sparsify operator's input exposed, and compare their decisions.

    Both runtimes compute each operator exactly (the self-check proves it against numpy on each one's
    own input), so a decision can differ only where the inputs differ across the band edge: the first
    such differences come from rounding upstream (convolutions and matrix products summed in another
    order), and a flipped value moves by up to the threshold, which later layers carry forward, so
    later operators see larger input differences and flip more. Each flip is recorded with its distance
    to the edge and the difference that allows it (:attr:`RuntimeGap.far` counts flips it does not explain).
    Operators of the main graph only (not inside ``If``/``Loop``/``Scan`` bodies). One session per runtime:
    the graph outputs come from the same run as the exposed inputs (exposing changes no output; the
    self-check proves that on each runtime)."""
    import onnx_ir as ir

    from mstransform.core.operator import in_band, unit_roundoff
    from mstransform.passes.graph.expose import exposed
    from mstransform.passes.onnx.recognise import find_sparsify_ops

    model = ir.load(str(path))
    ops = find_sparsify_ops(model.graph)
    outputs = [v.name for v in model.graph.outputs]
    with exposed(model, [op.x for op in ops]) as seen:
        names = list(dict.fromkeys([*outputs, *(seen.name_of(op.x) for op in ops)]))
        runs = [dict(zip(names, _run(open_session(model, runtime=runtime, providers=["CPUExecutionProvider"],
                                                  threads=threads, specialise=False), names, feed)))
                for runtime in ("onnxruntime", "openvino")]
    ort_got, ov_got = runs
    ort_out, ov_out = [ort_got[n] for n in outputs], [ov_got[n] for n in outputs]
    scale = max((float(np.max(np.abs(o))) for o in ort_out if o.size), default=0.0)
    diff = max((float(np.max(np.abs(a.astype(np.float64) - b))) for a, b in zip(ov_out, ort_out) if b.size),
               default=0.0)
    gaps = []
    for op in ops:
        x_ort, x_ov = ort_got[seen.name_of(op.x)], ov_got[seen.name_of(op.x)]
        c = np.broadcast_to(op.center, x_ort.shape)
        t = np.broadcast_to(op.threshold, x_ort.shape)
        same_value = (x_ort == c) & (x_ov == c)
        flips = (in_band(x_ort, c, t, None) != in_band(x_ov, c, t, None)) & ~same_value
        moved = np.abs(x_ov.astype(np.float64) - x_ort.astype(np.float64))
        top = float(np.max(np.abs(x_ort))) if x_ort.size else 0.0
        edge = np.abs(np.abs(x_ort.astype(np.float64) - c) - t)[flips]
        allowed = moved[flips] + 8 * unit_roundoff(x_ort.dtype) * max(top, 1e-30)  # four ulps of the scale
        gaps.append(OperatorGap(op.x.name, x_ort.size, int(np.count_nonzero(flips)),
                                float(moved.max()) if moved.size else 0.0, top, edge, allowed))
    return RuntimeGap(gaps, diff / max(scale, 1e-30))
