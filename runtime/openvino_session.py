"""OpenVINO as a second runtime for hardened ONNX files.

OpenVINO reads the ``.onnx`` file itself. Its CPU plugin fuses the Sub/Abs/Less/Where chain of a
sparsify operator into the surrounding kernels in its blocked layout, where ONNX Runtime breaks
its Conv+activation fusions (``docs/deployment.md``). :class:`OpenVinoSession` exposes the part
of ``onnxruntime.InferenceSession`` that mstransform uses (``get_inputs``, ``get_outputs``,
``get_providers``, ``run``), so accuracy, prediction and the black-box attack run on either
runtime unchanged. Inference precision is pinned to f32: on CPUs with bf16 units OpenVINO would
otherwise default to bf16, which moves values across the band edge.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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
    """One compiled OpenVINO model (device ``CPU`` by default) with an ORT-like ``run``."""

    def __init__(self, model, *, threads: int | None = None, device: str = "CPU"):
        """``model``: an ONNX file, or an in-memory ``onnx_ir`` model (read from bytes, never written)."""
        ov = import_openvino()
        if threads is not None:
            check_count(threads, "threads", high=256)
        config = {"INFERENCE_PRECISION_HINT": "f32"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        try:
            core = ov.Core()
            self.compiled = core.compile_model(core.read_model(_source(model)), device, config)
        except Exception as e:  # OpenVINO raises RuntimeError with multi-line text
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ModelError(f"OpenVINO cannot load the model: {first}") from None
        self.request = self.compiled.create_infer_request()
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
        result = self.request.infer({k: np.ascontiguousarray(v) for k, v in feed.items()})
        names = names or [p.name for p in self._outputs]
        return [self._array(result, n) for n in names]

    def _array(self, result, name: str) -> np.ndarray:
        port = self.compiled.output(name)
        array = np.array(result[port])
        if port.get_element_type() == self._bf16:  # OpenVINO hands bf16 bits over in a float16 array
            import ml_dtypes

            array = array.view(np.uint16).view(ml_dtypes.bfloat16)
        return array
