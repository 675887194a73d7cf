"""The project's own kernels (csrc/), compiled on first use and cached by torch (~/.cache/torch_extensions).

`extension()` returns the compiled module (named hybrid._C in the docs), or None when it cannot be built here
(no compiler, no sources): then the PyTorch path runs, after one warning. The sources are the checkout's csrc/, or in
an installed package (`pip install .`, a wheel) the copy setup.py ships inside it as hybrid/_csrc.
"""
from __future__ import annotations

import logging
import os

logger = logging.getLogger(__name__)


def _sources_dir() -> str:
    """hybrid/_csrc where the package is installed (setup.py ships csrc/ there as package data), else csrc/ at the
    root of the checkout the package is imported from (a source tree or an editable install)."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # .../hybrid
    installed = os.path.join(package, "_csrc")
    return installed if os.path.isdir(installed) else os.path.join(os.path.dirname(package), "csrc")


CSRC = _sources_dir()
SOURCES = ["binding.cpp", "cpu/mamba2_step.cpp", "cpu/ssd_scan.cpp", "cpu/conv1d.cpp", "cpu/mamba1_step.cpp",
           "cpu/skinny_linear.cpp", "cpu/decode_attention.cpp"]
CUDA_SOURCES = ["cuda/mamba2_step.cu", "cuda/mamba2_step_torch.cpp", "cuda/ssd_scan.cu", "cuda/conv1d.cu",
                "cuda/mamba1_step.cu", "cuda/scan_ops_torch.cpp"]  # only when torch has CUDA
_state: dict = {}


def _digest() -> str:
    import hashlib
    h = hashlib.sha256()
    for root, _, files in sorted(os.walk(CSRC)):
        for name in sorted(files):
            with open(os.path.join(root, name), "rb") as f:
                h.update(name.encode() + f.read())
    return h.hexdigest()[:16]


def extension():
    if "module" in _state:
        return _state["module"]
    module = None
    try:
        import torch
        from torch.utils.cpp_extension import load
        cuda = torch.cuda.is_available() and torch.version.cuda is not None
        paths = [os.path.join(CSRC, s) for s in SOURCES + (CUDA_SOURCES if cuda else [])]
        missing = [p for p in paths if not os.path.isfile(p)]
        if missing:
            raise FileNotFoundError(f"kernel sources not found: {missing}")
        # -fno-math-errno -fno-trapping-math: lets the compiler vectorise exp/clamp inner loops (no errno, no FP traps
        # relied on); -fopenmp: at::parallel_for is inlined OpenMP and runs serially without it.
        flags = ["-O3", "-march=native", "-fopenmp", "-fno-math-errno", "-fno-trapping-math"]
        flags += ["-DWITH_CUDA"] if cuda else []
        # torch rebuilds when a listed source or a flag changes, not when a header does: a digest of every file in
        # csrc/ as a flag makes header edits rebuild too
        flags += [f"-DHYBRID_CSRC_DIGEST={_digest()}"]
        module = load(name="hybrid_C_cuda" if cuda else "hybrid_C", sources=paths, extra_cflags=flags,
                      extra_cuda_cflags=["-O3"], extra_ldflags=["-fopenmp"], verbose=False)
    except Exception as err:  # noqa: BLE001 - any build failure means: use the PyTorch path
        logger.warning("hybrid._C (csrc/) could not be built (%s); using the PyTorch path", err)
    _state["module"] = module
    return module
