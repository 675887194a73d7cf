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

Those figures time one weight again and again, so it stays in the caches (`bench linear --warm`). In a model every
weight comes from memory once per step, and there oneDNN's and MKL's products of 16 rows stream the weights at 4-9
GB/s, a fifth of the ~40 GB/s the machine reads (a decode step of SmolLM2-135M at batch 16 spent 71 of its ~135 ms
in them: `python recipes/smollm2-135m/decode_profile.py --prepack onednn`). `hybrid-distill bench linear` (weights from memory, 16 rows, float32, one run on an
AVX512-BF16 AMD EPYC, 2 threads):

    576 -> 576     F.linear   223 us   oneDNN   199 us   csrc   113 us (11.8 GB/s)
    576 -> 1536    F.linear   605 us   oneDNN   409 us   csrc   217 us (16.3 GB/s)
    1536 -> 576    F.linear   564 us   oneDNN   427 us   csrc   297 us (11.9 GB/s)
    576 -> 49152   F.linear 30000 us   oneDNN 14099 us   csrc  6706 us (16.9 GB/s)

and in bfloat16 (`--dtype bfloat16`) oneDNN 186 / 352 / 269 / 9161 us against csrc 80 / 166 / 237 / 3913 us. Where the project's
kernels build (csrc/cpu/skinny_linear.cpp: AVX-512 for float32, AVX512-BF16 for bfloat16) the weights are packed
for that kernel instead ("csrc"), which reads each one front to back once; it runs calls of up to `SKINNY_ROWS`
rows (a decode step's batch). Larger calls (prefill), where oneDNN is the faster of the two, run on a second,
oneDNN-packed copy when both copies fit in half the available memory, else on F.linear. HYBRID_PREPACK=onednn keeps
oneDNN alone.
"""
from __future__ import annotations

import contextlib
import os
import warnings

import torch
import torch.nn.functional as F
from torch import nn

_state: dict[str, bool] = {}
KINDS = ("csrc", "onednn")
SKINNY_ROWS = 64  # the few-rows kernel takes calls of up to this many rows; beyond (prefill), oneDNN or F.linear
LABELS = {"csrc": "csrc-skinny", "onednn": "onednn-packed", None: "aten"}


class Packed(int):
    """What `prepacked_linears` yields: the number of layers packed (an int, as before), and `kind`, the packing
    they run on ("csrc", "onednn", or None where nothing is packed); `label` names it in benchmark rows."""

    def __new__(cls, n: int, kind: str | None):
        obj = super().__new__(cls, n)
        obj.kind = kind if n else None
        return obj

    @property
    def label(self) -> str:
        return LABELS[self.kind]


def _skinny():
    """The csrc module when its few-rows linear kernel builds here, else None (checked once)."""
    if "skinny" not in _state:
        from .ops.csrc import extension
        ext = extension()
        _state["skinny"] = ext if ext is not None and hasattr(ext, "skinny_linear_supported") else None
    return _state["skinny"]


def skinny_supported(dtype: torch.dtype) -> bool:
    ext = _skinny()
    return ext is not None and dtype in (torch.float32, torch.bfloat16) and \
        bool(ext.skinny_linear_supported(dtype == torch.bfloat16))


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


def _flag() -> str:
    flag = os.environ.get("HYBRID_PREPACK", "1").strip()
    if flag not in ("0", "1", "onednn"):
        raise ValueError(f"HYBRID_PREPACK={flag!r} must be 0, 1 or onednn")
    return flag


def prepack_default(device: torch.device) -> bool:
    """Whether generation prepacks by default: on the CPU, where oneDNN or the csrc kernel works, unless
    HYBRID_PREPACK=0."""
    return _flag() != "0" and torch.device(device).type == "cpu" and (op_works() or _skinny() is not None)


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def packing_kind(dtype: torch.dtype, kind: str | None = None) -> str | None:
    """The packing a linear of `dtype` gets: `kind` when given ("csrc" needs the kernel for the dtype: ValueError
    otherwise), else "csrc" where the few-rows kernel builds for it (unless HYBRID_PREPACK=onednn), else "onednn"
    where oneDNN has the dtype, else None. bfloat16 on a CPU with AMX goes to oneDNN, whose AMX tiles beat the
    kernel's AVX512-BF16 dot products there (a decode step at batch 16: 1.05-1.15x, recipes/smollm2-135m/README.md)."""
    if kind is not None and kind not in KINDS:
        raise ValueError(f"packing kind {kind!r} is not one of {KINDS}")
    if kind == "csrc" and not skinny_supported(dtype):
        raise ValueError(f"packing kind 'csrc': no few-rows kernel for {dtype} in this build (csrc/ needs AVX-512, "
                         "and AVX512-BF16 for bfloat16)")
    if kind is None:
        amx = dtype == torch.bfloat16 and "amx_bf16" in cpu_flags()
        kind = "csrc" if _flag() != "onednn" and not amx and skinny_supported(dtype) else "onednn"
    return kind if kind == "csrc" or (op_works() and dtype_supported(dtype)) else None


def _packable(m: nn.Module, kind: str = "onednn") -> bool:
    if not (type(m) is nn.Linear and type(m.weight) is nn.Parameter and m.weight.device.type == "cpu"  # not DTensor
            and "forward" not in vars(m)):  # an instance forward: a hook owns it
        return False
    return skinny_supported(m.weight.dtype) if kind == "csrc" else dtype_supported(m.weight.dtype)


class _PackedForward:
    def __init__(self, module: nn.Linear):
        self.module = module
        self.packed = module.weight.detach().to_mkldnn()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        m = self.module
        if torch.is_grad_enabled() or x.dtype != m.weight.dtype or x.device.type != "cpu":
            return F.linear(x, m.weight, m.bias)
        return packed_linear(x, self.packed, m.bias)


class _SkinnyForward:
    """The few-rows kernel for calls of up to SKINNY_ROWS rows (decode); larger ones (prefill) on a oneDNN-packed
    copy where `large` (and oneDNN has the dtype), else F.linear."""

    def __init__(self, module: nn.Linear, large: bool = True):
        self.module, self.ext = module, _skinny()
        w = module.weight.detach()
        self.packed = self.ext.skinny_pack_cpu(w)
        self.large = w.to_mkldnn() if large and op_works() and dtype_supported(w.dtype) else None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        m = self.module
        if torch.is_grad_enabled() or x.dtype != m.weight.dtype or x.device.type != "cpu":
            return F.linear(x, m.weight, m.bias)
        if x.numel() <= SKINNY_ROWS * x.shape[-1]:
            return self.ext.skinny_linear_cpu(x, self.packed, m.bias, m.out_features)
        return F.linear(x, m.weight, m.bias) if self.large is None else packed_linear(x, self.large, m.bias)


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
def prepacked_linears(model: nn.Module, enabled: bool | str | None = None):
    """Inside this block every packable nn.Linear of `model` (CPU, float32 or bfloat16) runs on a packed copy of
    its weight taken on entry: for the csrc few-rows kernel where it builds, else for oneDNN (`packing_kind`).
    Yields `Packed`: the number of layers packed, and the kind.
    enabled None: `prepack_default` for the model's device; True: pack with the default kind; "csrc" or "onednn":
    pack with that kind; False: nothing.

    The copies take as much memory as those weights; where they would take more than half of what the system has
    available, nothing is packed (one warning): a slower generation rather than an out-of-memory kill."""
    p = next(model.parameters())
    if enabled is None:
        enabled = prepack_default(p.device)
    kind = packing_kind(p.dtype, enabled if isinstance(enabled, str) else None) if enabled else None
    mods = [m for m in model.modules() if _packable(m, kind)] if kind else []
    need, avail = sum(m.weight.numel() * m.weight.element_size() for m in mods), available_memory()
    large = kind == "csrc" and (avail is None or 2 * need <= avail // 2)  # csrc: a oneDNN copy for prefill too
    if mods and avail is not None and need > avail // 2:
        if "memory" not in _state:
            _state["memory"] = True
            warnings.warn(f"not packing linear weights ({kind}): the copies need {need / 2**30:.1f} GiB and "
                          f"{avail / 2**30:.1f} GiB is available; using F.linear", stacklevel=3)
        mods = []
    make = (lambda m: _SkinnyForward(m, large)) if kind == "csrc" else _PackedForward
    with _forwards(mods, make) as n:
        yield Packed(n, kind)


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
