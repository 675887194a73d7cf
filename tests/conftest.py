"""Shared by every test folder: tests/ is on the import path (pytest puts a conftest's folder there), so every test
imports `helpers`; and the declared `gpu` marker skips its tests, with the reason, where there is no CUDA device."""
import os

import pytest
import torch

# Training's mixed_precision="auto" picks bf16 on CPUs whose bf16 GEMMs measure faster; the suite's numerics are
# float32 on every machine.
os.environ.setdefault("HYBRID_CPU_BF16", "0")


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
