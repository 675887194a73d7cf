"""Shared by every test folder: tests/ is on the import path (pytest puts a conftest's folder there), so every test
imports `helpers`; and the declared `gpu` marker skips its tests, with the reason, where there is no CUDA device."""
import importlib.util
import os

import pytest
import torch

# Training's mixed_precision="auto" picks bf16 on CPUs whose bf16 GEMMs measure faster; the suite's numerics are
# float32 on every machine.
os.environ.setdefault("HYBRID_CPU_BF16", "0")

# The Triton lane (tests/triton_lane) runs mamba_ssm's Triton kernels through Triton's interpreter, which @triton.jit
# chooses as it defines a kernel, triton's own library included, at the session's first `import triton` (torch and
# transformers import it early): so it is set here, where the lane can run (mamba_ssm present, no CUDA to compile for).
if importlib.util.find_spec("mamba_ssm") is not None and not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (tests/gpu/run.sh runs these on a lent GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """accelerate keeps one process-wide state (mixed precision among it) that its next Accelerator must match;
    a command sets it once per process, but tests build many trainers in one process, so each starts afresh."""
    yield
    from accelerate.state import AcceleratorState  # here: only tests that trained need it, and it is slow to import
    AcceleratorState._reset_state(reset_partial_state=True)
