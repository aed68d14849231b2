"""Sessions (``runtime.session``): the GPU providers are asked for only where their libraries load, with the
reason for each one skipped."""
from __future__ import annotations

import pytest

def test_gpu_providers_are_asked_for_only_when_their_libraries_load(monkeypatch):
    """onnxruntime-gpu lists TensorRT and CUDA even where libnvinfer/libcudart are missing; asking for
    them there makes ONNX Runtime log an error and fall back. They must be skipped, with the reason."""
    import onnxruntime

    from mstransform.core.errors import DependencyError
    from mstransform.runtime import session

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: list(session.PREFERRED))
    loads = {"libcudart.so.13"}
    monkeypatch.setattr(session, "library_loads", lambda names: bool(loads & set(names)))
    chosen, why = session.choose_providers()
    assert chosen == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert "Tensorrt skipped: libnvinfer.so.10 does not load" in why
    loads.clear()
    assert session.choose_providers()[0] == ["CPUExecutionProvider"]
    with pytest.raises(DependencyError, match="TensorrtExecutionProvider cannot start"):  # a missing dependency: exit 8
        session.choose_providers(["TensorrtExecutionProvider", "CPUExecutionProvider"])


def test_providers_for_a_device_and_a_pinned_gpu():
    """CPU: the CPU provider alone; CUDA: CUDA then CPU, pinned to a GPU where given (a torchrun rank's own)."""
    from mstransform.runtime.session import providers_for

    assert providers_for(None) is None
    assert providers_for("cpu") == ["CPUExecutionProvider"]
    assert providers_for("cuda") == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert providers_for("cuda", 3) == [("CUDAExecutionProvider", {"device_id": 3}), "CPUExecutionProvider"]
