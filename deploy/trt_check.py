"""Static TensorRT compatibility check: no GPU, no TensorRT install needed.

It compares a model with the operator support matrix of the TensorRT ONNX parser
(``data/trt_onnx_ops.json``, generated from ``docs/operators.md`` of onnx/onnx-tensorrt at
each release commit named in the file) and with the deployment rules that matter for
sparsify operators (``docs/deployment.md``):

* every op of the default domain in the release's supported set, for its element type;
* default-domain opset inside the release's range;
* sparsify constants broadcastable as TensorRT requires: same rank as the guarded tensor,
  each dim 1 or equal to the tensor's;
* no bool graph inputs or outputs (they trip TensorRT's Myelin backend);
* ``LessOrEqual``/``GreaterOrEqual`` flagged (the parser decomposes them into two comparisons and an Or);
* with ``fp16``: constants representable in half precision (no overflow, no nonzero
  threshold that underflows to zero).

TensorRT 11 (``--trt-version 11``) removed weak typing: there is no FP16/BF16 builder flag, the
engine runs in the model's own types, and INT8 needs Q/DQ nodes. The check says so where it
matters (``--fp16`` on a model whose float tensors are FP32; INT8 tensors without Q/DQ). Its parser
facts are NVIDIA's (``data/trt_onnx_11.json``, each with its source): opsets 9 to 25 (the ONNX Opset
Guide's 11.x column) and the 10.1 support matrix plus the operators NVIDIA's release notes say the
parser added since 10.1 (``Swish`` in 11.0, ``Attention``, ``RMSNormalization``, ...), whose element
types are not stated and so not checked.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import onnx_ir as ir

from mstransform.core.errors import CompatibilityError, UsageError
from mstransform.passes.onnx.recognise import find_sparsify_ops

TABLE = Path(__file__).parent / "data" / "trt_onnx_ops.json"
LATER = {"11": Path(__file__).parent / "data" / "trt_onnx_11.json"}  # generations stated as changes to a table
DEFAULT_VERSION = "10.1"
TYPE_NAMES = {ir.DataType.FLOAT: "FP32", ir.DataType.FLOAT16: "FP16", ir.DataType.BFLOAT16: "BF16",
              ir.DataType.INT32: "INT32", ir.DataType.INT64: "INT64", ir.DataType.BOOL: "BOOL",
              ir.DataType.INT8: "INT8", ir.DataType.UINT8: "UINT8", ir.DataType.DOUBLE: "DOUBLE"}
FP16_MAX = 65504.0
FP16_TINY = 2.0**-24  # smallest positive subnormal


@dataclass(frozen=True)
class Finding:
    level: str  # "error" | "warning"
    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.level}: {self.where}: {self.message}"


@dataclass
class TrtCheck:
    """What the static TensorRT check found for one release."""

    version: str
    findings: list[Finding]
    fp16: bool

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "error"]

    def to_dict(self) -> dict:
        """The check for machines (``check-trt --json``); ``ok`` is False where a finding blocks the build."""
        return {"trt_version": self.version, "fp16": self.fp16, "ok": not self.errors,
                "findings": [{"level": f.level, "where": f.where, "message": f.message} for f in self.findings]}

    def format(self) -> str:
        """The check for people: one line per finding, then, where none blocks the build, the verdict."""
        lines = [str(f) for f in self.findings]
        if not self.errors:
            lines.append(f"ok: compatible with the TensorRT {self.version} ONNX parser's operator table"
                         + (" and fp16 constants" if self.fp16 else "") + f" ({len(self.findings)} warning(s))")
        return "\n".join(lines)

    def raise_for_errors(self) -> None:
        """CompatibilityError (exit 9) naming the first blocking problem, if any."""
        if self.errors:
            raise CompatibilityError(f"{len(self.errors)} problem(s) for TensorRT {self.version}; "
                                     f"first: {self.errors[0]}")


@lru_cache(maxsize=1)
def support_table() -> dict:
    return json.loads(TABLE.read_text())


STRONGLY_TYPED_FROM = 11


@lru_cache(maxsize=None)
def later_facts(version: str) -> dict:
    return json.loads(LATER[version].read_text())


def versions() -> list[str]:
    known = [*support_table()["versions"], *LATER]
    return sorted(known, key=lambda v: tuple(int(x) for x in v.split(".")))


def release_table(version: str) -> dict:
    """The parser's ops (with their types) and opset range for ``version``.

    A generation in ``LATER`` is its base table with NVIDIA's stated changes: the added operators
    (types not stated: an empty list, so no type test) and its own opset range.
    """
    tables = support_table()["versions"]
    if version in tables:
        return tables[version]
    if version not in LATER:
        raise UsageError(f"unknown TensorRT version {version!r}; known: {', '.join(versions())}", param="trt_version")
    facts = later_facts(version)
    ops = {**tables[facts["base"]]["ops"], **{op: [] for op in facts["added_ops"]}}
    return {"ops": ops, "opset_min": facts["opset_min"], "opset_max": facts["opset_max"]}


def check_trt(model: ir.Model, version: str = DEFAULT_VERSION, fp16: bool = False) -> list[Finding]:
    findings = []
    table = release_table(version)
    ops = table["ops"]
    if int(version.split(".")[0]) >= STRONGLY_TYPED_FROM:
        findings += _strong_typing(model, version, fp16)
    opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx"))
    if opset is None or not table["opset_min"] <= opset <= table["opset_max"]:
        findings.append(Finding("error", "model", f"opset {opset} is outside TensorRT {version}'s range "
                                                  f"{table['opset_min']}..{table['opset_max']}"))
    for v in [*model.graph.inputs, *model.graph.outputs]:
        if v.dtype == ir.DataType.BOOL:
            findings.append(Finding("error", f"graph I/O '{v.name}'", "bool graph input/output (breaks Myelin); keep masks internal"))
    for node in model.graph:
        where = f"node '{node.name}' ({node.op_type})"
        if node.domain not in ("", "ai.onnx"):
            findings.append(Finding("error", where, f"custom domain '{node.domain}' needs a TensorRT plugin"))
            continue
        if node.op_type not in ops:
            findings.append(Finding("error", where, f"not supported by the TensorRT {version} ONNX parser"))
            continue
        types = ops[node.op_type]
        dtype = next((v.dtype for v in node.inputs if v is not None and v.dtype is not None), None)
        name = TYPE_NAMES.get(dtype)
        if types and name and name not in types and node.op_type not in ("Shape", "Cast", "Constant"):
            level = "warning" if name in ("INT64", "DOUBLE") else "error"
            findings.append(Finding(level, where, f"input type {name} not in the supported types {types}"))
        if node.op_type in ("LessOrEqual", "GreaterOrEqual"):
            findings.append(Finding("warning", where, "decomposed by the parser into two comparisons and an Or; "
                                                      "prefer strict Less/Greater"))
    findings += _sparsify_constants(model, fp16)
    return findings


def _strong_typing(model: ir.Model, version: str, fp16: bool) -> list[Finding]:
    """What TensorRT 11's removal of weak typing means for this model."""
    out = []
    floats = {v.dtype for v in _values(model) if v.dtype in (ir.DataType.FLOAT, ir.DataType.FLOAT16,
                                                                ir.DataType.BFLOAT16)}
    if fp16 and ir.DataType.FLOAT in floats:
        out.append(Finding("error", "model", f"TensorRT {version} has no FP16 builder flag (strongly typed only): "
                                             "this model's FP32 tensors stay FP32; harden it with --precision fp16 "
                                             "(or export it in fp16), then check that model"))
    has_qdq = any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph)
    if not has_qdq and any(v.dtype == ir.DataType.INT8 for v in _values(model)):
        out.append(Finding("error", "model", f"INT8 tensors without Q/DQ nodes: TensorRT {version} takes INT8 "
                                             "only through explicit quantization"))
    return out


def _values(model: ir.Model):
    yield from model.graph.inputs
    yield from model.graph.initializers.values()
    for node in model.graph:
        yield from node.outputs


def _sparsify_constants(model: ir.Model, fp16: bool) -> list[Finding]:
    out = []
    for op in find_sparsify_ops(model.graph):
        data = op.x
        for v in op.constants:
            if v.const_value is None:
                continue
            shape = tuple(v.const_value.shape)
            if data is not None and data.shape is not None:
                dims = list(data.shape)
                ok = len(shape) == len(dims) and all(s == 1 or not isinstance(d, int) or s == d
                                                     for s, d in zip(shape, dims))
                if not ok:
                    out.append(Finding("error", f"constant '{v.name}'",
                                       f"shape {list(shape)} does not broadcast against {dims} with equal rank"))
            if fp16:
                arr = np.asarray(v.const_value.numpy(), dtype=np.float64)
                if np.any(np.abs(arr) > FP16_MAX):
                    out.append(Finding("error", f"constant '{v.name}'", "overflows fp16 (|value| > 65504)"))
                tiny = (arr != 0) & (np.abs(arr) < FP16_TINY)
                if np.any(tiny):
                    out.append(Finding("warning", f"constant '{v.name}'",
                                       f"{int(tiny.sum())} nonzero value(s) underflow to 0 in fp16"))
    return out
