"""CPU inference with linear weights packed once for oneDNN, for the length of one generation.

PyTorch's dense CPU `F.linear` runs MKL's sgemm. At decode shapes (a batch of rows times a weight matrix) oneDNN
with the weight reordered into its own blocked layout is faster; on this project's AMD EPYC machine (AVX-512, 2
threads), one run of `hybrid-distill bench linear` (16 rows, float32, median of 40 calls):

    576 -> 576   (SmolLM2 attention q/o)   F.linear    96 us   packed    71 us   1.34x
    576 -> 1536  (SmolLM2 MLP up)          F.linear   257 us   packed   164 us   1.56x
    1536 -> 576  (SmolLM2 MLP down)        F.linear   246 us   packed   128 us   1.92x
    576 -> 49152 (vocabulary head)         F.linear  12.8 ms   packed   5.3 ms   2.41x

MKL is known to take slower code paths on non-Intel CPUs; on Intel CPUs the margin may be smaller (not measured
here: run the benchmark to see).
Every nn.Linear on the CPU is packed on entry of `prepacked_linears` (so it uses the current weights: a GRPO
rollout after an optimizer step packs the new ones) and restored on exit; nothing persists, nothing is written
to the model's parameters. The packed op has no backward, so a call with gradients enabled takes `F.linear`.
Results equal `F.linear` up to float rounding (another summation order; tests/hybrid/test_prepack.py).
"""
from __future__ import annotations

import contextlib
import os
import warnings

import torch
import torch.nn.functional as F
from torch import nn

_state: dict[str, bool] = {}


def op_works() -> bool:
    """Whether oneDNN's packed linear runs here (built with mkldnn, and a tiny call succeeds); checked once."""
    if "ok" not in _state:
        ok = torch.backends.mkldnn.is_available()
        if ok:
            try:
                w = torch.randn(8, 4)
                x = torch.ones(2, 4)
                ok = torch.allclose(packed_linear(x, w.to_mkldnn(), None), F.linear(x, w), atol=1e-5)
            except Exception as e:  # noqa: BLE001 - any failure means "not here": the aten path always works
                warnings.warn(f"oneDNN packed linear unavailable ({type(e).__name__}: {e}); using F.linear",
                              stacklevel=3)
                ok = False
        _state["ok"] = ok
    return _state["ok"]


def packed_linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """F.linear on a weight packed by `weight.to_mkldnn()`: [..., in] x [out, in] (oneDNN layout) -> [..., out]."""
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


def dtype_supported(dtype: torch.dtype) -> bool:
    if dtype == torch.float32:
        return True
    return dtype == torch.bfloat16 and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def prepack_default(device: torch.device) -> bool:
    """Whether generation prepacks by default: on the CPU, where oneDNN works, unless HYBRID_PREPACK=0."""
    flag = os.environ.get("HYBRID_PREPACK", "1").strip()
    if flag not in ("0", "1"):
        raise ValueError(f"HYBRID_PREPACK={flag!r} must be 0 or 1")
    return flag == "1" and torch.device(device).type == "cpu" and op_works()


def _packable(m: nn.Module) -> bool:
    return (type(m) is nn.Linear and type(m.weight) is nn.Parameter and m.weight.device.type == "cpu"  # not DTensor
            and dtype_supported(m.weight.dtype) and "forward" not in vars(m))  # an instance forward: a hook owns it


class _PackedForward:
    def __init__(self, module: nn.Linear):
        self.module = module
        self.packed = module.weight.detach().to_mkldnn()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        m = self.module
        if torch.is_grad_enabled() or x.dtype != m.weight.dtype or x.device.type != "cpu":
            return F.linear(x, m.weight, m.bias)
        return packed_linear(x, self.packed, m.bias)


def available_memory() -> int | None:
    """Bytes of memory the system can still give (MemAvailable), or None where /proc/meminfo does not say."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


@contextlib.contextmanager
def prepacked_linears(model: nn.Module, enabled: bool | None = None):
    """Inside this block every packable nn.Linear of `model` (CPU, float32 or bfloat16 where oneDNN has it) runs
    on a oneDNN-packed copy of its weight taken on entry. Yields the number of layers packed.
    enabled None: `prepack_default` for the model's device.

    The copies take as much memory as those weights; where they would take more than half of what the system has
    available, nothing is packed (one warning): a slower generation rather than an out-of-memory kill."""
    if enabled is None:
        enabled = prepack_default(next(model.parameters()).device)
    mods = [m for m in model.modules() if _packable(m)] if enabled and op_works() else []
    need, avail = sum(m.weight.numel() * m.weight.element_size() for m in mods), available_memory()
    if mods and avail is not None and need > avail // 2:
        if "memory" not in _state:
            _state["memory"] = True
            warnings.warn(f"not packing linear weights for oneDNN: the copies need {need / 2**30:.1f} GiB and "
                          f"{avail / 2**30:.1f} GiB is available; using F.linear", stacklevel=3)
        mods = []
    with _forwards(mods, _PackedForward) as n:
        yield n


@contextlib.contextmanager
def _forwards(mods: list, make):
    """Give each module of `mods` the instance forward make(module) for the block; restored on exit."""
    try:
        for m in mods:
            m.forward = make(m)
        yield len(mods)
    finally:
        for m in mods:
            vars(m).pop("forward", None)



# ---- training: the same packed products inside autograd ----
class _Packs:
    """A linear weight packed for oneDNN as used forward ([out, in]) and for the input gradient ([in, out]),
    repacked only when the weight has changed since (an optimizer step bumps its version counter)."""

    def __init__(self, weight: torch.Tensor):
        self.weight, self.key, self.packed = weight, None, None

    def get(self) -> tuple[torch.Tensor, torch.Tensor]:
        w = self.weight
        key = (w.data_ptr(), w._version)
        if key != self.key:
            d = w.detach()
            self.packed, self.key = (d.to_mkldnn(), d.t().contiguous().to_mkldnn()), key
        return self.packed


class PackedLinearFunction(torch.autograd.Function):
    """F.linear whose forward and input-gradient products run on oneDNN-packed weights; the weight gradient
    (x^T g) stays an aten product. Equal to F.linear in values and gradients up to float rounding."""

    @staticmethod
    def forward(ctx, x, weight, bias, packs):
        ctx.save_for_backward(x)
        ctx.packs, ctx.has_bias = packs, bias is not None
        return packed_linear(x, packs.get()[0], bias)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        g = grad.contiguous()
        gx = packed_linear(g, ctx.packs.get()[1], None) if ctx.needs_input_grad[0] else None
        g2 = g.reshape(-1, g.shape[-1])
        gw = g2.t().mm(x.reshape(-1, x.shape[-1])) if ctx.needs_input_grad[1] else None
        gb = g2.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return gx, gw, gb, None


class _PackedTrainForward:
    def __init__(self, module: nn.Linear):
        self.module, self.packs = module, _Packs(module.weight)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        m = self.module
        if x.dtype != m.weight.dtype or x.device.type != "cpu" or torch.is_autocast_enabled("cpu"):
            return F.linear(x, m.weight, m.bias)
        return PackedLinearFunction.apply(x, m.weight, m.bias, self.packs)


@contextlib.contextmanager
def packed_training_linears(model: nn.Module, enabled: bool = True):
    """Inside this block every packable nn.Linear of `model` trains through PackedLinearFunction: forward and
    input-gradient products on packed weights, repacked after each change of the weight. Outside autocast and
    on the CPU only; anything else takes F.linear. Yields the number of layers switched."""
    mods = [m for m in model.modules() if _packable(m)] if enabled and op_works() else []
    with _forwards(mods, _PackedTrainForward) as n:
        yield n
