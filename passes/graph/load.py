"""Reading an ONNX file into an ``onnx_ir`` model ready for site finding, and the small passes
that prepare it for writing back.

:func:`load_model` refuses, with one line, anything that is not a usable ONNX model (wrong
bytes, unknown opset, missing or escaping external data); then it names unnamed nodes
(:class:`NameAfterOutputsPass`), fills in names onnx-ir needs, spells legacy ``-1``/``0`` dims as
dynamic (:class:`DynamicDimsPass`) and infers shapes, marking what
it inferred so :class:`DropInferredPass` can forget it before the model is written. The passes that
prepare it for writing: :class:`ProvenancePass` (how it was hardened, in its metadata) and
:class:`UpgradeOpsetPass` (ONNX's version converter, to the first opset that has what the model lacks:
the operator's ``Where`` for an opset-7 export, bf16 ``Conv`` for TensorRT 11), each model it returns
prepared again as a loaded one is.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import onnx
import onnx.version_converter
import onnx_ir as ir
from onnx_ir.passes import FunctionalPass, InPlacePass, PassResult, PreconditionError
from onnx_ir.passes.common import NameFixPass, ShapeInferencePass

from mstransform.core.errors import ModelError
from mstransform.core.guards import check_readable, path_arg

INFERRED = "mstransform.inferred"
ORIGIN = "mstransform.path"  # meta key: the file a model was loaded from


class NameAfterOutputsPass(InPlacePass):
    """Give unnamed nodes the dynamo exporter's convention, ``node_<first output>``.

    The dynamo exporter names nodes ``node_<fx name>``, but nodes it inlines from onnxscript
    functions come out unnamed or as ``n4``, ``n0_2``; their outputs still carry the FX names,
    so this keeps site names equal to the FX pass's. Names already taken are left as they are.
    """

    GENERIC = re.compile(r"n\d+(_\d+)*")

    def call(self, model: ir.Model) -> PassResult:
        taken = {n.name for n in model.graph if n.name}
        changed = False
        for node in model.graph:
            unnamed = not node.name or self.GENERIC.fullmatch(node.name)
            candidate = f"node_{node.outputs[0].name}" if node.outputs and node.outputs[0].name else None
            if unnamed and candidate and candidate not in taken:
                node.name = candidate
                taken.add(candidate)
                changed = True
        return PassResult(model, changed)


class DefaultDomainPass(InPlacePass):
    """``ai.onnx``, the long spelling of the default domain, spelled ``""`` as the passes write it,
    so every node the tool inserts falls under the opset import actually in force."""

    def call(self, model: ir.Model) -> PassResult:
        changed = False
        if "ai.onnx" in model.opset_imports:
            version = model.opset_imports.pop("ai.onnx")
            model.opset_imports[""] = max(version, model.opset_imports.get("", 0))
            changed = True
        for node in model.graph.all_nodes():
            if node.domain == "ai.onnx":
                node.domain = ""
                changed = True
        return PassResult(model, changed)


class DynamicDimsPass(InPlacePass):
    """Spell every dynamic dim of the graph's inputs and outputs the standard way: a symbolic dim.

    Old torch and tf2onnx exports write ``-1`` and Paddle2ONNX ``0`` where they mean "any size";
    ONNX reads both as sizes (shape inference then infers ``-2`` after an upsampling, ONNX Runtime
    a zero-size tensor), so they are made symbolic (``unk__<k>``) before anything reads them."""

    def call(self, model: ir.Model) -> PassResult:
        changed, k = False, 0
        for v in [*model.graph.inputs, *model.graph.outputs]:
            if v.shape is None or all(not isinstance(d, int) or d > 0 for d in v.shape):
                continue
            dims = []
            for d in v.shape:
                if isinstance(d, int) and d <= 0:
                    dims.append(ir.SymbolicDim(f"unk__{k}"))
                    k += 1
                else:
                    dims.append(d)
            v.shape = ir.Shape(dims)
            changed = True
        return PassResult(model, changed)


class MarkedShapeInferencePass(InPlacePass):
    """Shape inference that marks each annotation it added, so it can be dropped again."""

    def call(self, model: ir.Model) -> PassResult:
        annotated = {id(v) for v in _node_outputs(model) if v.type is not None or v.shape is not None}
        result = ShapeInferencePass(strict_mode=False)(model)
        for v in _node_outputs(model):
            if id(v) not in annotated and (v.type is not None or v.shape is not None):
                v.meta[INFERRED] = True
        return PassResult(model, result.modified)


class DropInferredPass(InPlacePass):
    """Forget the shapes this tool inferred, so the written graph carries only its own annotations.

    ONNX Runtime picks kernels and fusions from value_info; a model written with extra
    annotations can compute different low-order bits even where nothing was inserted.
    """

    def call(self, model: ir.Model) -> PassResult:
        changed = False
        for v in _node_outputs(model):
            if v.meta.get(INFERRED):
                v.shape, v.type = None, None
                changed = True
        return PassResult(model, changed)


class ProvenancePass(InPlacePass):
    """Record how a model was hardened in its ``metadata_props`` (read back by ``mstransform``)."""

    def __init__(self, props: dict[str, str]):
        super().__init__()
        self.props = dict(props)

    def call(self, model: ir.Model) -> PassResult:
        changed = any(model.metadata_props.get(k) != v for k, v in self.props.items())
        model.metadata_props.update(self.props)
        return PassResult(model, changed)


def _node_outputs(m: ir.Model):
    for node in m.graph:
        yield from node.outputs


def _check_external_data(proto: onnx.ModelProto, path: Path) -> None:
    folder = path.parent.resolve()
    for init in proto.graph.initializer:
        if init.data_location != onnx.TensorProto.EXTERNAL:
            continue
        loc = next((e.value for e in init.external_data if e.key == "location"), None)
        if loc is None:
            raise ModelError(f"tensor {init.name!r} of {path} is external but names no data file")
        target = (folder / loc).resolve()
        if Path(loc).is_absolute() or folder not in target.parents:
            raise ModelError(f"external data {loc!r} of tensor {init.name!r} points outside the model's folder; "
                             "refusing to read it")
        if not target.is_file():
            raise ModelError(f"external data file {loc!r} of tensor {init.name!r} is missing next to {path}")
        offset = int(next((e.value for e in init.external_data if e.key == "offset"), 0) or 0)
        length = next((e.value for e in init.external_data if e.key == "length"), None)
        size = target.stat().st_size
        if length is not None and offset + int(length) > size:
            raise ModelError(f"external data file {loc!r} is truncated: tensor {init.name!r} needs bytes "
                             f"{offset}..{offset + int(length)}, the file holds {size}")
        if target.stat().st_nlink > 1:  # onnx refuses it when reading the weights ("hard link attack")
            raise ModelError(f"external data file {loc!r} of tensor {init.name!r} has more than one hard link; "
                             "onnx refuses to read such files: copy it (cp) instead of linking it")


def load_model(model: str | Path | ir.Model) -> ir.Model:
    """Load an ONNX model (external data stays memory-mapped), name unnamed nodes, infer shapes."""
    if isinstance(model, ir.Model):
        return model
    path = path_arg(model, "model")  # str, bytes or os.PathLike; anything else is refused naming the parameter
    try:
        is_file = path.is_file()
    except OSError as e:  # a symlink loop, a name too long
        raise ModelError(f"model path {path} cannot be read ({e.strerror or e})") from None
    if not is_file:
        if path.is_symlink() and not path.exists():
            raise ModelError(f"model path {path} is a broken or looping symbolic link and cannot be read")
        raise ModelError(f"model file {path} does not exist" if not path.exists() else
                         f"model path {path} is not a regular file")
    check_readable(path, ModelError, "model file")  # permission, I/O error: one line, not "not an ONNX model"
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf raises DecodeError and others
        raise ModelError(f"{path} is not an ONNX model ({type(e).__name__}); pass an exported .onnx file") from None
    if not proto.graph.node and not proto.graph.output:
        raise ModelError(f"{path} is not an ONNX model (no graph); pass an exported .onnx file")
    if not proto.graph.output:
        raise ModelError(f"{path} has no graph outputs: nothing it computes can be read")
    _check_external_data(proto, path)
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None or opset < 7 or opset > onnx.defs.onnx_opset_version():
        raise ModelError(f"{path} uses ONNX opset {opset}; supported opsets are 7..{onnx.defs.onnx_opset_version()}")
    try:
        m = ir.serde.deserialize_model(proto)
    except Exception as e:
        raise ModelError(f"{path} is a malformed ONNX model: {str(e).splitlines()[0]}") from None
    return _prepared(m, path)


OPERATOR_OPSET = 9  # the opset from which Where, Sign and Less on every float type exist


class UpgradeOpsetPass(FunctionalPass):
    """A new model at the first standard opset from ``opset`` on where ``lacking`` finds nothing (ONNX's
    version converter); ``reason`` says in its errors why that opset.

    ``lacking(model)`` names, in one line, what the model still lacks at an opset of ``opset`` or above
    (None: nothing), e.g. an op that takes no bf16 tensors. Run it only where :meth:`missing` finds
    something (it returns a new model by contract)."""

    def __init__(self, opset: int = OPERATOR_OPSET, reason: str = "the first with the operator's ops",
                 lacking: Callable[[ir.Model], str | None] | None = None):
        super().__init__()
        self.opset, self.reason, self.lacking = opset, reason, lacking

    def missing(self, model: ir.Model) -> str | None:
        """What ``model`` lacks that a newer opset gives (one line), or None."""
        current = model.opset_imports.get("", 1)
        if current < self.opset:
            return f"the model is at opset {current}, below {self.opset}"
        return None if self.lacking is None else self.lacking(model)

    def requires(self, model: ir.Model) -> None:
        if self.missing(model) is None:
            raise PreconditionError(f"the model at opset {model.opset_imports.get('', 1)} needs no upgrade "
                                    f"({self.reason})")

    def call(self, model: ir.Model) -> PassResult:
        current = model.opset_imports.get("", 1)
        DropInferredPass()(model)  # the annotations this tool inferred must not become the model's own
        proto = ir.to_proto(model)
        latest = onnx.defs.onnx_opset_version()
        still = self.missing(model)
        for target in range(max(current + 1, self.opset), latest + 1):
            try:
                upgraded = ir.from_proto(onnx.version_converter.convert_version(proto, target))
            except Exception as e:  # onnx raises RuntimeError / ConvertError from C++
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise ModelError(f"ONNX's version converter cannot take this model from opset {current} to {target}, "
                                 f"{self.reason}: {first}") from None
            still = self.missing(upgraded)
            if still is None:
                upgraded.ir_version = max(upgraded.ir_version or 0, model.ir_version or 0)
                return PassResult(reprepared(upgraded, model), True)
        raise ModelError(f"{still} at any ONNX opset up to {latest}")  # what the newest opset still lacks


def reprepared(model: ir.Model, like: ir.Model) -> ir.Model:
    """``model`` (rebuilt from a proto by another tool) prepared as :func:`load_model` prepares, with
    ``like``'s origin: its external-data folder and path."""
    origin = like.meta.get(ORIGIN)
    return _prepared(model, None if origin is None else Path(origin))


def _prepared(model: ir.Model, path: Path | None) -> ir.Model:
    """Names and shapes as the passes expect them; external data read next to ``path``."""
    if path is not None:
        model.meta[ORIGIN] = str(path)
        ir.external_data.set_base_dir(model.graph, path.parent)
    ir.passes.Sequential(NameAfterOutputsPass(), NameFixPass(), DefaultDomainPass(), DynamicDimsPass(),
                         MarkedShapeInferencePass())(model)
    return model
