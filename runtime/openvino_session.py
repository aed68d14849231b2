"""OpenVINO as a second runtime for hardened ONNX files.

OpenVINO reads the ``.onnx`` file itself. Its CPU plugin keeps a site's tensor in the convolution's
own layout; with dynamic dims it runs each sparsify operator as two elementwise kernels, at a static
shape its Snippets take the operator and its activation into one kernel (``docs/cpu-layout.md``:
Snippets skip dynamic nodes). So the session compiles the model again for each concrete feed shape it
meets -- a few, cached -- and runs that specialisation: ResNet-50 hardened/base 1.04-1.07x at batch 8
against 1.10x (same file, same outputs bit for bit). :class:`OpenVinoSession` exposes the part
of ``onnxruntime.InferenceSession`` that mstransform uses (``get_inputs``, ``get_outputs``,
``get_providers``, ``run``), so accuracy, prediction and the black-box attack run on either
runtime unchanged. Inference precision is pinned to f32: on CPUs with bf16 units OpenVINO would
otherwise default to bf16, which moves values across the band edge.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from mstransform.core.errors import DependencyError, ModelError
from mstransform.core.options import check_count


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


class OpenVinoSession:
    """One OpenVINO model (device ``CPU`` by default) with an ORT-like ``run``, compiled for each feed shape."""

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
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ModelError(f"OpenVINO cannot load the model: {first}") from None
        self.request = self.compiled.create_infer_request()
        self._config = config
        self._static = not specialise or all(not p.get_partial_shape().is_dynamic for p in self.compiled.inputs)
        self._by_shape: dict[tuple, tuple] = {}  # feed shapes -> (compiled, request), most recent last
        self._bf16 = ov.Type.bf16
        self.version, self.device = ov.get_version().split("-")[0], device
        self._inputs = [_Port(p.get_any_name()) for p in self.compiled.inputs]
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
