"""The CUDA sources compile with the nvcc installed here (compile only: CUDA code never rots unseen)."""
import os
import shutil
import subprocess

import pytest

CSRC = os.path.join(os.path.dirname(__file__), "..", "..", "csrc", "cuda")


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="no nvcc on this machine")
@pytest.mark.parametrize("name", ["mamba2_step", "ssd_scan", "conv1d", "mamba1_step"])
def test_cuda_kernels_compile(tmp_path, name):
    src = os.path.join(CSRC, f"{name}.cu")
    res = subprocess.run(["nvcc", "-std=c++17", "-O3", "-arch=sm_80", "-c", src, "-o", str(tmp_path / "k.o")],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path / "k.o").stat().st_size > 0
