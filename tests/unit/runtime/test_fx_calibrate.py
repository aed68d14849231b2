"""The FX pass on any device and dtype: statistics against float64 numpy, outputs against the paper's
operator applied by hand. CUDA cases skip with their reason where no GPU is present."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

import mstransform as mst

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")


class Tiny(nn.Module):
    """conv -> ReLU -> conv -> GELU -> pool -> linear: two sites whose inputs we can recompute."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.c1, self.c2, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1), nn.Linear(8, 4)
        self.a1, self.a2 = nn.ReLU(), nn.GELU()

    def forward(self, x):
        return self.fc(self.a2(self.c2(self.a1(self.c1(x)))).mean((2, 3)))


def _site_inputs(model: Tiny, x: torch.Tensor) -> list[np.ndarray]:
    with torch.no_grad():
        h1 = model.c1(x)
        h2 = model.c2(model.a1(h1))
    return [h1.double().cpu().numpy(), h2.double().cpu().numpy()]


def _reference(model, xs):
    """float64 numpy per-channel mean and population variance over all batches, axis 1."""
    parts = [_site_inputs(model, x) for x in xs]
    out = []
    for i in range(2):
        a = np.concatenate([p[i] for p in parts])
        out.append((a.mean(axis=(0, 2, 3)), a.var(axis=(0, 2, 3))))
    return out


def _check_stats(stats, ref, rtol):
    assert len(stats) == 2
    for s, (mean, var) in zip(stats.sites.values(), ref):
        np.testing.assert_allclose(s.moments.mean, mean, rtol=rtol, atol=rtol * np.abs(mean).max())
        np.testing.assert_allclose(s.moments.var, var, rtol=rtol)


def _calibrate_and_check(device: str, dtype: torch.dtype):
    model = Tiny().to(device=device, dtype=dtype).eval()
    xs = [torch.randn(5, 3, 8, 8, device=device, dtype=dtype) + 3.0 for _ in range(3)]  # large mean-to-spread
    loader = [(x, torch.zeros(len(x), dtype=torch.long)) for x in xs]  # (inputs, labels) batches
    ep = torch.export.export(model, (xs[0],))
    stats = mst.calibrate(ep, iter(loader), progress=False)
    assert stats.samples == 15
    _check_stats(stats, _reference(model, xs), rtol=1e-9)  # the sites' own values, reduced in float64
    hardened = mst.harden_torch(ep, stats, alpha=0.5)
    x = xs[1]
    with torch.no_grad():
        got = hardened(x)
        h1, h2 = _site_inputs(model, x)
        s1, s2 = stats.sites.values()
        def op(h, s):
            c = torch.tensor(s.moments.mean, dtype=dtype, device=device).reshape(1, -1, 1, 1)
            t = torch.tensor(0.5 * np.sqrt(s.moments.var), dtype=dtype, device=device).reshape(1, -1, 1, 1)
            return torch.where((h - c).abs() < t, c, h)
        want = model.fc(model.a2(op(model.c2(model.a1(op(model.c1(x), s1))), s2)).mean((2, 3)))
    assert got.device == x.device and got.dtype == dtype
    assert torch.equal(got, want)  # the same ops in the same dtype: bit-identical
    assert not torch.equal(got, model(x))  # and the operator did change something
    return hardened, x


def test_bf16_model_calibrates_and_hardens_on_cpu():
    _calibrate_and_check("cpu", torch.bfloat16)


def test_float32_batches_feed_a_bf16_model():
    """A DataLoader yields float32 (on the CPU); the batches are moved to the model's dtype and device,
    so the statistics are those of the bf16 inputs the model itself sees."""
    model = Tiny().to(torch.bfloat16).eval()
    xs = [torch.randn(4, 3, 8, 8) + 3.0 for _ in range(2)]
    stats = mst.calibrate(model, iter([(x, torch.zeros(4, dtype=torch.long)) for x in xs]), progress=False)
    _check_stats(stats, _reference(model, [x.to(torch.bfloat16) for x in xs]), rtol=1e-9)


def test_dataloader_dicts_and_limit_stream():
    model = Tiny().eval()
    xs = [torch.randn(4, 3, 8, 8) for _ in range(5)]
    seen = []

    def lazy():  # a generator: calibration must not hold it all at once
        for x in xs:
            seen.append(len(seen))
            yield {"image": x, "labels": torch.zeros(4)}

    stats = mst.calibrate(model, lazy(), limit=10, progress=False)
    assert stats.samples == 10 and len(seen) == 3  # two full batches and half of the third, then it stopped
    _check_stats(stats, _reference(model, [xs[0], xs[1], xs[2][:2]]), rtol=1e-9)


@CUDA
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cuda_calibrate_and_harden(dtype):
    hardened, x = _calibrate_and_check("cuda", dtype)
    assert all(b.device.type == "cuda" for b in hardened.buffers())
    hardened.to("cpu")  # the operators follow .to()
    assert all(b.device.type == "cpu" for b in hardened.buffers())


@CUDA
def test_cuda_compiled_matches_eager():
    hardened, x = _calibrate_and_check("cuda", torch.float32)
    compiled = torch.compile(hardened)
    x = torch.randn(256, 3, 8, 8, device="cuda") + 3.0
    with torch.no_grad():
        a, b = compiled(x), hardened(x)
    # Fused kernels may round a value at a band edge the other way, which moves that sample's output
    # by up to a threshold: compare per sample and allow such rare flips, never a loose tolerance.
    same = torch.isclose(a, b, rtol=1e-5, atol=1e-5).all(dim=1)
    assert same.float().mean() >= 0.95, f"{int((~same).sum())} of {len(same)} samples differ"


def _ort_has_cuda() -> bool:
    from mstransform.runtime.session import choose_providers

    return "CUDAExecutionProvider" in choose_providers()[0]


@pytest.mark.skipif(_ort_has_cuda(), reason="CUDA provider present: the refusal cannot be shown")
@pytest.mark.parametrize("command", ["calibrate", "eval", "sweep", "run"])
def test_device_cuda_without_cuda_is_one_line(command, tmp_path):
    from helpers import EXAMPLE, run_cli

    model, data = EXAMPLE / "model.onnx", EXAMPLE / "val.npz"
    args = {"calibrate": ["calibrate", model, "--data", data, "-o", tmp_path / "s.npz"],
            "eval": ["eval", model, "--data", data, "-n", "8"],
            "sweep": ["sweep", model, "--stats", tmp_path / "none.npz", "--data", data, "-n", "8"],
            "run": ["run", model, "--data", data]}[command]
    if command == "sweep":
        import mstransform as mst

        mst.calibrate(model, data, limit=64, progress=False).save(tmp_path / "none.npz")
    r = run_cli(*args, "--device", "cuda")
    assert r.code != 0 and r.err.count("\n") == 1 and "CUDAExecutionProvider" in r.err, r.err
    assert not (tmp_path / "s.npz").exists()


@CUDA
def test_cuda_eval_runs_twin_and_attacks_on_the_gpu(tmp_path):
    from helpers import EXAMPLE, run_cli

    model = EXAMPLE / "model.onnx"
    r = run_cli("eval", model, "--data", EXAMPLE / "test.npz", "-n", "64", "--apgd-iters", "5",
                "--square-queries", "20", "--device", "cuda", "--json", tmp_path / "r.json")
    assert r.code == 0, r.err
    import json

    (res,) = json.loads((tmp_path / "r.json").read_text())["results"]
    assert res["twin_max_rel_diff"] <= 1e-4 and res["accuracy"]["clean"] > 80
    assert res["accuracy"]["worst-case"] <= res["accuracy"]["clean"]


# -- statistics against float64 numpy, on the CPU ------------------------------------------------------

def test_fx_stats_exact_against_numpy():
    class Act(torch.nn.Module):
        def forward(self, x):
            return torch.relu(x)

    x = (np.random.default_rng(0).standard_normal((37, 3, 4, 4)) * 3 + 1).astype(np.float32)
    for bs in (1, 5, 37):
        ep = torch.export.export(Act(), (torch.zeros(2, 3, 4, 4),),
                                 dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=64)}})
        stats = mst.calibrate(ep, x, batch_size=bs)
        (s,) = stats.sites.values()
        np.testing.assert_allclose(s.moments.mean, x.astype(np.float64).mean(axis=(0, 2, 3)), rtol=1e-12)
        np.testing.assert_allclose(s.moments.var, x.astype(np.float64).var(axis=(0, 2, 3)), rtol=1e-9)
        assert s.moments.absmax is None  # max |x| only when asked, as on the ONNX path
    (s,) = mst.calibrate(ep, x, batch_size=5, extent=True).sites.values()
    np.testing.assert_array_equal(s.moments.absmax, np.abs(x).max(axis=(0, 2, 3)))


def test_a_torch_model_with_no_site_is_an_error_not_empty_stats():
    """As on the ONNX path: a program whose graph holds no catalogue activation (a Conv then ``torch.sin``)
    gives one ModelError, never a Stats with no site that would harden nothing."""
    from mstransform.core.errors import ModelError

    class SineHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return torch.sin(self.conv(x))

    program = torch.export.export(SineHead().eval(), (torch.randn(1, 3, 8, 8),))
    with pytest.raises(ModelError, match="no sites to calibrate"):
        mst.calibrate(program, torch.randn(4, 3, 8, 8))
