"""The Triton lane: hybrid.ops.backends' CUDA dispatch run on CPU tensors, with mamba_ssm's Triton kernels executed
by Triton's interpreter (TRITON_INTERPRET=1), so the argument order, layouts, seq_idx, initial and final states and
groups that our code hands the kernels are checked against the torch path without a GPU.

Set-up (what .ci/run does; without it every test here is skipped, with the reason):
    pip install --no-deps triton==3.7.1      # the Triton torch 2.13 was built against
    MAMBA_SKIP_CUDA_BUILD=TRUE MAMBA_FORCE_BUILD=TRUE \
        pip install --no-deps --no-build-isolation mamba-ssm==2.3.2.post1
(SKIP: no nvcc build; FORCE: build the wheel here rather than download a prebuilt one from the project's release page,
which the sandbox cannot reach.) Run: pytest -m triton_lane.

What stands in for CUDA here, and why:
- mamba_ssm/__init__.py imports the compiled extensions, which the skip-build install lacks, so while its Triton
  modules are imported the package is registered as a bare namespace; afterwards `import mamba_ssm` fails as before,
  and the guarded imports in backends.py keep seeing "not available".
- backends._on_cuda runs its own gate (backend choice, kernel present) with a CPU tensor taken for a CUDA one.
- The kernels launch inside `torch.cuda.device(x.device.index)`, a no-op here; the backward's grids read an SM count.
- Autotuning times configs on a device, so each autotuned kernel keeps one config (any config is exact).
- fp32 only: the interpreter would compute bf16 on the raw bits.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import math
import os
import sys
import types

import pytest
import torch

TRITON_MODULES = ("mamba_ssm.ops.triton.ssd_combined", "mamba_ssm.ops.triton.selective_state_update")


def _missing() -> str | None:
    """Why the lane cannot run here, or None."""
    for name in ("triton", "mamba_ssm"):
        if importlib.util.find_spec(name) is None:
            return f"{name} is not installed (the Triton lane's set-up is in tests/triton_lane/conftest.py)"
    return None


def _block_product(config) -> int:
    return math.prod(v for k, v in config.kwargs.items() if k.startswith("BLOCK_SIZE"))


def _one_config(kernel) -> None:
    """Keep one config in every autotuner around `kernel` (Heuristics and Autotuner wrap each other by .fn): the
    largest blocks, as the interpreter's time goes by the number of program instances and block-loop steps."""
    from triton.runtime.autotuner import Autotuner
    while kernel is not None:
        if isinstance(kernel, Autotuner):
            kernel.configs = [max(kernel.configs, key=_block_product)]
        kernel = getattr(kernel, "fn", None)


def _import_triton_modules() -> dict[str, types.ModuleType]:
    spec = importlib.util.find_spec("mamba_ssm")  # finds the package without running its __init__
    namespace = types.ModuleType("mamba_ssm")
    namespace.__path__ = list(spec.submodule_search_locations)
    sys.modules["mamba_ssm"] = namespace
    try:
        modules = {name.rsplit(".", 1)[1]: importlib.import_module(name) for name in TRITON_MODULES}
    finally:
        del sys.modules["mamba_ssm"]
    for module in [m for n, m in sys.modules.items() if n.startswith("mamba_ssm.ops.triton.")]:
        for value in vars(module).values():
            _one_config(value)
    return modules


@pytest.fixture(scope="session")
def mamba_triton():
    """mamba_ssm's Triton modules, interpreted ({"ssd_combined": ..., "selective_state_update": ...})."""
    reason = _missing()
    if reason:
        pytest.skip(reason)
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction
    if not isinstance(tl.standard.cumsum, InterpretedFunction):
        pytest.skip("triton was imported without TRITON_INTERPRET=1 (tests/conftest.py sets it where the lane can run)")
    from hybrid.ops import backends  # first, so its own guarded imports see the real (unimportable) package
    if backends._mamba_chunk_scan is not None:
        pytest.skip("mamba_ssm imports with its CUDA extensions here: tests/gpu runs the compiled kernels")
    try:
        return _import_triton_modules()
    except Exception as e:  # noqa: BLE001 - e.g. a triton whose API this mamba_ssm release does not know
        pytest.skip(f"mamba_ssm's Triton modules do not import under the interpreter: {type(e).__name__}: {e}")


class KernelCalls:
    """The routed kernel, counting its calls, so a test can tell the Triton path really ran."""

    def __init__(self, fn):
        self.fn, self.calls = fn, []

    def __call__(self, *args, **kwargs):
        self.calls.append(kwargs)
        return self.fn(*args, **kwargs)


@pytest.fixture
def interpreted(mamba_triton, monkeypatch):
    """mamba_ssm's Triton modules, launchable on CPU tensors for the length of the test."""
    monkeypatch.setattr(torch.cuda, "device", lambda index: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda device=None: types.SimpleNamespace(multi_processor_count=os.cpu_count() or 1))
    return mamba_triton


@pytest.fixture
def routed(interpreted, monkeypatch):
    """backends routed to the interpreted mamba_chunk_scan_combined for CPU tensors; returns its KernelCalls.

    Choose the path as on a GPU machine: `backends.use("mamba_ssm")` (or "auto") for the kernel, "torch" for the
    reference."""
    from hybrid.ops import backends
    kernel = KernelCalls(interpreted["ssd_combined"].mamba_chunk_scan_combined)
    monkeypatch.setattr(backends, "_mamba_chunk_scan", kernel)
    gate = backends._on_cuda
    as_cuda = types.SimpleNamespace(is_cuda=True)
    monkeypatch.setattr(backends, "_on_cuda",
                        lambda k, name, t: gate(k, name, as_cuda if t.device.type == "cpu" else t))
    backends.reset()
    yield kernel
    backends.reset()
