"""A stand-in for the ``tensorrt`` module, built from the committed facts of one bindings generation
(``deploy/data/trt_bindings_<major>.json``, read from the real wheels by ``scripts/trt_facts.py``).

It cannot declare what TensorRT lacks: each modelled class keeps only the members its generation's
facts list (a modelled member that no generation has, or whose kind or recorded signature the facts
do not give, stops the build of the stand-in), each method checks its arguments against the
signature recorded from the bindings, the enums are the recorded members with their values, and
every public name read is kept in ``touched`` (names asked for and missing in ``probed``).

TensorRT's behaviour is modelled only as far as the engine builder meets it, in the ways the
bindings and NVIDIA's own code document it: the parser reads the ONNX file and rejects nodes of a
custom domain (and any op type in ``Scenario.unsupported_ops``) with one ``ParserError`` per node;
``create_timing_cache`` returns None for bytes it cannot read and ``set_timing_cache`` returns
False for a cache of another device or version unless ``ignore_mismatch`` (NVIDIA/TensorRT
``shared/utils/cacheUtils.cpp`` checks both); ``build_serialized_network`` returns ``IHostMemory``,
a buffer-protocol object that is not bytes, or None when the build fails.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import inspect
import json
from dataclasses import dataclass
from pathlib import Path

from trt_recording import _checked, _enum, _Recorded, _RecordedType

FACTS_DIR = Path(__file__).resolve().parents[2] / "deploy" / "data"
GENERATIONS = ("10", "11")
CACHE_MAGIC = b"mstransform stand-in timing cache\n"


class StandInError(Exception):
    """The stand-in would declare something its facts do not hold."""


@functools.lru_cache(maxsize=None)
def load_facts(major: str) -> dict:
    return json.loads((FACTS_DIR / f"trt_bindings_{major}.json").read_text())


@dataclass
class Scenario:
    device: str = "stand-in GPU 0"
    unsupported_ops: frozenset = frozenset()  # op types the parser rejects besides custom domains
    build_fails: bool = False
    lose_cache: bool = False  # get_timing_cache() returns None after the build (documented when none is set)


# --- what the builder meets of TensorRT --------------------------------------------------------


def _st(obj) -> "StandIn":
    return type(obj)._standin


class Logger:
    def __init__(self, min_severity=None):
        self._severity = min_severity


class Builder:
    def __init__(self, logger):
        self._logger = logger

    def create_network(self, flags=0):
        st = _st(self)
        st.calls.append(("network", flags))
        known = sum(1 << int(v) for v in st.enums["NetworkDefinitionCreationFlag"])
        return None if flags & ~known else st.make("INetworkDefinition", flags)

    def create_builder_config(self):
        return _st(self).make("IBuilderConfig")

    def create_optimization_profile(self):
        return _st(self).make("IOptimizationProfile")

    def build_serialized_network(self, network, config):
        st = _st(self)
        st.calls.append(("build",))
        if st.scenario.build_fails:
            return None
        key = hashlib.sha256(repr(network._describe()).encode()).hexdigest()[:16]
        config._time(key)
        return st.host_memory(f"stand-in plan: TensorRT {st.version}, {network._describe()}".encode())


class INetworkDefinition:
    def _setup(self, flags):
        self._flags, self._inputs = flags, []

    def _describe(self):
        return {"flags": self._flags, "inputs": [(t._name, t._shape) for t in self._inputs]}

    @property
    def num_inputs(self):
        return len(self._inputs)

    def get_input(self, index):
        return self._inputs[index] if 0 <= index < len(self._inputs) else None


class ITensor:
    def _setup(self, name, shape):
        self._name, self._shape = name, tuple(shape)

    @property
    def name(self):
        return self._name

    @property
    def shape(self):
        return self._shape


class OnnxParser:
    def __init__(self, network, logger):
        self._network, self._errors = network, []

    def parse_from_file(self, model):
        import onnx

        st = _st(self)
        st.calls.append(("parse", model))
        proto = onnx.load(model, load_external_data=False)
        initialized = {t.name for t in proto.graph.initializer}
        for value in proto.graph.input:
            if value.name not in initialized:
                dims = [d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim]
                self._network._inputs.append(st.make("ITensor", value.name, dims))
        for index, node in enumerate(proto.graph.node):
            if node.domain not in ("", "ai.onnx") or node.op_type in st.scenario.unsupported_ops:
                self._errors.append(st.make("ParserError", index, node))
        return not self._errors

    @property
    def num_errors(self):
        return len(self._errors)

    def get_error(self, index):
        return self._errors[index] if 0 <= index < len(self._errors) else None


class ParserError:
    def _setup(self, index, node):
        self._index, self._node = index, node

    def code(self):
        return _st(self).enums["ErrorCode"]["UNSUPPORTED_NODE"]

    def desc(self):
        domain = self._node.domain or "ai.onnx"
        return f"stand-in parser: no importer for operator {domain}:{self._node.op_type}\n(no plugin either)"

    def node(self):
        return self._index

    def node_name(self):
        return self._node.name

    def node_operator(self):
        return self._node.op_type


class IBuilderConfig:
    def _setup(self):
        self._profiles, self._cache = [], None

    def set_memory_pool_limit(self, pool, pool_size):
        _st(self).calls.append(("pool", pool.name, pool_size))

    def set_flag(self, flag):
        _st(self).calls.append(("flag", flag.name))

    def add_optimization_profile(self, profile):
        _st(self).calls.append(("profile", dict(profile._shapes)))
        self._profiles.append(profile)
        return len(self._profiles) - 1

    def create_timing_cache(self, serialized_timing_cache):
        return _st(self).timing_cache_from(bytes(memoryview(serialized_timing_cache)))

    def set_timing_cache(self, cache, ignore_mismatch):
        st = _st(self)
        if not isinstance(cache, st.classes["ITimingCache"]):
            raise TypeError("set_timing_cache(): incompatible function arguments (cache must be an ITimingCache)")
        accepted = bool(ignore_mismatch) or cache._made_by == (st.version, st.scenario.device)
        st.calls.append(("set_timing_cache", ignore_mismatch, accepted))
        if accepted:
            self._cache = cache
        return accepted

    def get_timing_cache(self):
        return None if _st(self).scenario.lose_cache else self._cache

    def _time(self, key):
        if self._cache is not None:
            _st(self).calls.append(("cache", "hit" if key in self._cache._entries else "miss"))
            if key not in self._cache._entries:
                self._cache._entries.append(key)


class IOptimizationProfile:
    def _setup(self):
        self._shapes = {}

    def set_shape(self, input, min, opt, max):  # noqa: A002 -- TensorRT's parameter names
        self._shapes[input] = (tuple(min), tuple(opt), tuple(max))


class ITimingCache:
    def _setup(self, made_by, entries):
        self._made_by, self._entries = made_by, list(entries)

    def serialize(self):
        st = _st(self)
        body = {"tensorrt": self._made_by[0], "device": self._made_by[1], "entries": self._entries}
        return st.host_memory(CACHE_MAGIC + json.dumps(body).encode())


class IHostMemory:
    """Mixed into a ctypes byte array: the buffer protocol and nothing else, like the real class."""

    __slots__ = ()

    @property
    def nbytes(self):
        return ctypes.sizeof(self)

    @property
    def dtype(self):
        return _st(self).enums["DataType"]["UINT8"]

    def __len__(self):
        raise TypeError("object of type 'IHostMemory' has no len()")

    def __getitem__(self, index):
        raise TypeError("'IHostMemory' object is not subscriptable")

    def __iter__(self):
        raise TypeError("'IHostMemory' object is not iterable")


MODELLED = [Logger, Builder, INetworkDefinition, ITensor, OnnxParser, ParserError, IBuilderConfig,
            IOptimizationProfile, ITimingCache, IHostMemory]


# --- the module ------------------------------------------------------------------------------


def _kind(value) -> str:
    if isinstance(value, property):
        return "property"
    return "method" if inspect.isfunction(value) else "attribute"


def _members(model) -> dict:
    return {k: v for k, v in vars(model).items() if not k.startswith("_") or k == "__init__"}


def check_modelled_names() -> None:
    """Every modelled member exists in some generation's facts (the ones a generation lacks are dropped there)."""
    for model in MODELLED:
        known = set().union(*(set(load_facts(g)["classes"][model.__name__]["members"]) | {"__init__"}
                              for g in GENERATIONS))
        invented = sorted(set(_members(model)) - known)
        if invented:
            raise StandInError(f"the stand-in's {model.__name__} has {invented}, which no TensorRT facts file lists")


class _Module(_Recorded):
    """``import tensorrt``: names read from it are recorded as ("tensorrt", name)."""


class StandIn:
    """One generation's stand-in; ``module`` is what ``import tensorrt`` would give."""

    def __init__(self, major: str, scenario: Scenario | None = None):
        check_modelled_names()
        self.facts = load_facts(major)
        self.version = self.facts["version"]
        self.scenario = scenario or Scenario()
        self.touched: set[tuple[str, str]] = set()
        self.probed: set[tuple[str, str]] = set()
        self.calls: list[tuple] = []
        module_type = type("tensorrt", (_Module,), {"_standin": self})
        self.module = object.__new__(module_type)
        self.module.__dict__["__version__"] = self.version
        self.enums = {name: _enum(name, e["members"], self) for name, e in self.facts["enums"].items()}
        self.classes = {model.__name__: self._expose(model) for model in MODELLED}
        for name, value in [*self.enums.items(), *self.classes.items()]:
            if "." not in name:
                self.module.__dict__[name] = value
        self._check_module()

    def _expose(self, model) -> type:
        """``model`` with the members its generation's facts list, each checked against its recorded signature."""
        facts = self.facts["classes"][model.__name__]
        members, used = set(facts["members"]), facts["used"]
        namespace = {k: v for k, v in vars(model).items()
                     if k.startswith("_") and k not in ("__init__", "__dict__", "__weakref__")}
        for attr, value in _members(model).items():
            if attr not in members and attr != "__init__":
                continue  # TensorRT of this generation lacks it: so does the stand-in
            if attr not in used:
                raise StandInError(f"{model.__name__}.{attr} is modelled but its signature is not recorded: "
                                   "add it to USED in scripts/trt_facts.py and regenerate the facts")
            if not used[attr]["kind"].startswith(_kind(value)):
                raise StandInError(f"{model.__name__}.{attr} is a {_kind(value)} here, a {used[attr]['kind']} in "
                                   f"TensorRT {self.version}")
            namespace[attr] = (_checked(value, used[attr], f"{model.__name__}.{attr}")
                               if inspect.isfunction(value) else value)
        if model.__name__ == "Logger":
            severity = self.enums["ILogger.Severity"]
            namespace.update({m: severity[m] for m in used if m in severity.__members__})
        namespace["_standin"] = self
        if model is IHostMemory:
            return type("IHostMemory", (_Recorded,), namespace)  # a template: see host_memory()
        return _RecordedType(model.__name__, (_Recorded,), namespace)

    def _check_module(self) -> None:
        names = set(self.facts["module_names"])
        extra = sorted(n for n in self.module.__dict__ if not n.startswith("_") and n not in names)
        if extra:
            raise StandInError(f"the stand-in module declares {extra}, which TensorRT {self.version} lacks")

    def missing(self, owner: str, attr: str) -> str:
        self.probed.add((owner, attr))
        known = self.facts["classes"].get(owner) or self.facts["enums"].get(owner) or {}
        if attr in known.get("members", self.facts["module_names"] if owner == "tensorrt" else ()):
            return f"{owner}.{attr} exists in TensorRT {self.version} but the stand-in does not model it"
        return f"TensorRT {self.version} has no {owner}.{attr}"

    def make(self, name: str, *args):
        obj = object.__new__(self.classes[name])
        obj._setup(*args)
        return obj

    def host_memory(self, data: bytes):
        cls = type("IHostMemory", (self.classes["IHostMemory"], ctypes.c_ubyte * len(data)), {"__slots__": ()})
        return cls.from_buffer_copy(data)

    def timing_cache_from(self, data: bytes):
        """A cache from serialized bytes: empty means new; bytes of no stand-in cache give None (corrupt)."""
        if not data:
            return self.make("ITimingCache", (self.version, self.scenario.device), [])
        if not data.startswith(CACHE_MAGIC):
            return None
        try:
            body = json.loads(data[len(CACHE_MAGIC):])
            return self.make("ITimingCache", (body["tensorrt"], body["device"]), body["entries"])
        except (ValueError, KeyError, TypeError):
            return None

    def cache_bytes(self, *, version: str | None = None, device: str | None = None, entries=()) -> bytes:
        """Serialized cache bytes as another machine would have written them."""
        body = {"tensorrt": version or self.version, "device": device or self.scenario.device,
                "entries": list(entries)}
        return CACHE_MAGIC + json.dumps(body).encode()

    def flag_names(self, flags: int) -> set[str]:
        """The creation-flag members whose bits ``flags`` sets, by the facts' values."""
        members = self.facts["enums"]["NetworkDefinitionCreationFlag"]["members"]
        return {name for name, bit in members.items() if flags & (1 << bit)}


def build(major: str, scenario: Scenario | None = None):
    """The stand-in ``tensorrt`` module of generation ``major`` (its StandIn is ``module._standin``)."""
    return StandIn(major, scenario).module


def standin_of(module) -> StandIn:
    return type(module)._standin
