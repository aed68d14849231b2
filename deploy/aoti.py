"""AOTInductor packages of hardened PyTorch models: a ``.pt2`` that runs without model code.

``torch._inductor.aoti_compile_and_package`` compiles a ``torch.export`` program ahead of time
into a package that Python (``torch._inductor.aoti_load_package``) and C++
(``torch::inductor::AOTIModelPackageLoader`` in libtorch) load and run with no Python model
definition. The hardened GraphModule is exported again (its MeanSparse modules are plain torch
ops, so Inductor fuses them into the surrounding kernels), with the batch dimension dynamic when
the caller asks for it, and the package is written atomically.
"""
from __future__ import annotations

from pathlib import Path

from mstransform.core.errors import ModelError
from mstransform.core.fileio import atomic_output, remove_quietly


def package_module(module, example: tuple, output: str | Path, *, dynamic_batch: tuple[int, int] | None = (1, 1024)
                   ) -> Path:
    """Export ``module`` on ``example`` and compile it into an AOTInductor package at ``output``.

    ``dynamic_batch`` (min, max) makes dimension 0 of every input dynamic; None keeps the
    example's shapes."""
    import torch

    shapes = None
    if dynamic_batch is not None:
        batch = torch.export.Dim("batch", min=dynamic_batch[0], max=dynamic_batch[1])
        shapes = tuple({0: batch} for _ in example)
    try:
        program = torch.export.export(module, tuple(example), dynamic_shapes=shapes)
    except Exception as e:  # torch raises many types, with long texts
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"torch.export cannot export the hardened model: {first}") from None
    with atomic_output(output) as tmp:
        staged = tmp.with_suffix(".pt2")  # the packager insists on the .pt2 suffix
        try:
            torch._inductor.aoti_compile_and_package(program, package_path=str(staged))
            staged.replace(tmp)
        finally:
            remove_quietly(staged)
    return Path(output)


def load_package(path: str | Path):
    """The compiled model of a package, callable like the module it was made from."""
    import torch

    return torch._inductor.aoti_load_package(str(path))
