"""Which implementation runs each op.

Order: mamba_ssm / causal_conv1d (installed, CUDA tensors) > the project's csrc kernels (hybrid._C, CPU and CUDA;
forward only, so they run when no gradient is needed) > the PyTorch reference path, which always works and is
the only differentiable one. `HYBRID_KERNELS=torch|csrc|mamba_ssm` forces one: it is read once, at the first op
that asks, and `use("csrc")` (or "torch", "mamba_ssm", "auto") switches the choice for the length of a block, so a
benchmark compares backends in one process without writing the environment. The choice is logged once and
reported by `active_backend` (benchmarks print it). The fast and reference forwards share a signature (see
ssd.py, selective_scan.py, conv1d.py), so callers never branch on the backend.
"""
from __future__ import annotations

import contextlib
import logging
import os
from typing import Optional

import torch
from einops import rearrange

from .conv1d import causal_conv1d, causal_conv1d_update
from .selective_scan import selective_scan, selective_state_step
from .ssd import ssd_chunked, ssd_step

logger = logging.getLogger(__name__)

try:  # Mamba2 chunked scan (Triton)
    from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined as _mamba_chunk_scan
except Exception:  # noqa: BLE001 - any import failure (missing, ABI mismatch) means "not available"
    _mamba_chunk_scan = None
try:  # Mamba1 selective scan (CUDA)
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn as _mamba_selective_scan
except Exception:  # noqa: BLE001
    _mamba_selective_scan = None
try:
    from causal_conv1d import causal_conv1d_fn as _cuda_conv1d
except Exception:  # noqa: BLE001
    _cuda_conv1d = None

_VALID = ("auto", "torch", "csrc", "mamba_ssm")
_warned: set[str] = set()
_logged: set[str] = set()
_choice: dict[str, str] = {}  # "now": the backend choice in force, once resolved


def _checked(choice, source: str) -> str:
    name = (choice.strip().lower() or "auto") if isinstance(choice, str) else choice
    if name not in _VALID:
        raise ValueError(f"{source}={choice!r} is not one of {_VALID}")
    return name


def kernel_choice() -> str:
    """The backend choice in force: the innermost `use` block's, else HYBRID_KERNELS ("auto" when unset), read at
    the first call and kept, so every op of a run sees one setting."""
    if "now" not in _choice:
        _choice["now"] = _checked(os.environ.get("HYBRID_KERNELS", "auto"), "HYBRID_KERNELS")
    return _choice["now"]


def reset() -> None:
    """Forget the resolved choice: the next op reads HYBRID_KERNELS again (for a process that changed it)."""
    _choice.pop("now", None)


@contextlib.contextmanager
def use(choice: str):
    """Run the block with backend `choice` ("auto", "torch", "csrc", "mamba_ssm"); the previous choice comes back
    on exit, exception or not, so blocks nest."""
    previous = _choice.get("now")
    _choice["now"] = _checked(choice, "backend")
    try:
        yield
    finally:
        if previous is None:
            reset()
        else:
            _choice["now"] = previous


def _on_cuda(kernel, name: str, tensor: torch.Tensor) -> bool:
    """Whether the installed CUDA kernel `kernel` runs op `name` on `tensor` (warns once where it is missing)."""
    choice = kernel_choice()
    if choice == "torch" or not tensor.is_cuda:
        return False
    if kernel is None:
        if name not in _warned:
            _warned.add(name)
            logger.warning("%s kernel not installed; using the PyTorch path on CUDA (slow). pip install '.[cuda]'", name)
        return False
    return True


def active_backend(device: torch.device | str = "cpu") -> str:
    """Name of the backend the mixers use on `device` for inference (for logs and benchmark output)."""
    choice = kernel_choice()
    if choice == "torch":
        return "torch"
    if torch.device(device).type == "cuda" and _mamba_chunk_scan is not None and choice != "csrc":
        return "mamba_ssm"
    return "csrc" if csrc_available() else "torch"


_traceable: list[bool] = []


@contextlib.contextmanager
def traceable():
    """A block traced by torch.compile: csrc kernels that torch.compile cannot see into (pybind calls, which would
    split the graph) are skipped for the PyTorch path, and those wrapped as torch.library custom ops (the decode
    attention, the fused Mamba2 step) still run, inside the graph. The backend choice in force still applies ("torch" skips them all)."""
    _traceable.append(True)
    try:
        yield
    finally:
        _traceable.pop()


def _no_grad_needed(*tensors) -> bool:
    return not torch.is_grad_enabled() or not any(t is not None and t.requires_grad for t in tensors)


def _csrc_fn(name: str, tensor: torch.Tensor, *others, custom_op: bool = False):
    """The csrc kernel `name`_{cpu,cuda} for tensor's device when csrc is selected, built and no grad is needed
    (the kernels have no backward): the one gate every csrc op passes. custom_op: the caller runs it through a
    torch.library custom op under torch.compile (allowed inside `traceable`)."""
    if tensor.device.type not in ("cpu", "cuda") or not _no_grad_needed(tensor, *others):
        return None
    if _traceable and not custom_op:
        return None
    if kernel_choice() == "mamba_ssm" or not csrc_available():
        return None
    from . import csrc
    fn = getattr(csrc.extension(), f"{name}_{tensor.device.type}", None)
    if not torch.compiler.is_compiling() and fn is not None and name not in _logged:  # (logging breaks a graph)
        _logged.add(name)
        logger.info("%s: csrc kernel (%s)", name, tensor.device.type)
    return fn


def csrc_available() -> bool:
    """Whether the project's CPU kernels are selected and built (a choice of "csrc" insists on them)."""
    choice = kernel_choice()
    if choice not in ("auto", "csrc"):
        return False
    from . import csrc
    ok = csrc.extension() is not None
    if choice == "csrc" and not ok:
        raise RuntimeError("the csrc backend is selected (HYBRID_KERNELS=csrc or use('csrc')) but hybrid._C could "
                           "not be built (see the warning above)")
    return ok


def fused_mamba2_step(xBC, conv_state, conv_w, conv_b, dt, dt_bias, A, D, ssm_state, n_kv, d_xb):
    """The fused decode step of csrc/cpu/mamba2_step.cpp when it applies (CPU, built), else None.

    xBC [b, C] pre-conv; conv_state [b, C, K] and ssm_state [b, H, P, N] (fp32) are advanced in place.
    Returns y [b, H, P] (before the gated norm).
    """
    compiling = torch.compiler.is_compiling()
    if compiling and not _custom_op_ready(xBC):
        return None
    fn = _csrc_fn("mamba2_step", xBC, conv_w, conv_b, dt, dt_bias, A, D, custom_op=True)
    if fn is None or not (xBC.dtype == conv_state.dtype == conv_w.dtype == dt.dtype):  # e.g. autocast: torch path
        return None
    args = (xBC.contiguous(), conv_state, conv_w.contiguous(), conv_b, dt.contiguous(), dt_bias, A, D, ssm_state,
            n_kv, d_xb)
    return _mamba2_step_op(*args) if compiling else fn(*args)


@torch.library.custom_op("hybrid::mamba2_step", mutates_args=("conv_state", "ssm_state"))
def _mamba2_step_op(xBC: torch.Tensor, conv_state: torch.Tensor, conv_w: torch.Tensor, conv_b: Optional[torch.Tensor],
                    dt: torch.Tensor, dt_bias: torch.Tensor, A: torch.Tensor, D: torch.Tensor, ssm_state: torch.Tensor,
                    n_kv: int, d_xb: int) -> torch.Tensor:
    """csrc's fused Mamba2 decode step (CPU) as a custom op that advances its two states in place, for a compiled
    decode step (`traceable`)."""
    from . import csrc
    return csrc.extension().mamba2_step_cpu(xBC, conv_state, conv_w, conv_b, dt, dt_bias, A, D, ssm_state, n_kv,
                                            d_xb)


@_mamba2_step_op.register_fake
def _(xBC, conv_state, conv_w, conv_b, dt, dt_bias, A, D, ssm_state, n_kv, d_xb):
    b, heads, head_dim, _ = ssm_state.shape
    return xBC.new_empty((b, heads, head_dim))


def _custom_op_ready(tensor: torch.Tensor) -> bool:
    """Inside a traced graph, a csrc custom op runs only on the CPU (the ops wrap the CPU kernels) and only once the
    extension is loaded (building or loading it cannot happen inside a graph)."""
    from . import csrc
    return tensor.device.type == "cpu" and "module" in csrc._state


def fused_mamba1_step(x, conv_state, conv_w, conv_b, delta, A, B, C, D, ssm_state):
    """The fused Mamba1 decode step (csrc/*/mamba1_step.*) when it applies, else None.

    x [b, Di] pre-conv; conv_state [b, Di, K] and ssm_state [b, Di, N] (fp32) advance in place; B [b, GB, N] and
    C [b, GC, N] are read per channel group in place. Returns y [b, Di] (before the gate).
    """
    fn = _csrc_fn("mamba1_step", x, conv_w, conv_b, delta, A, B, C, D)
    if fn is None or not conv_state.is_contiguous() or ssm_state.dtype != torch.float32:
        return None
    if not (x.dtype == conv_state.dtype == conv_w.dtype == B.dtype == C.dtype):
        return None
    return fn(x.contiguous(), conv_state, conv_w.contiguous(), conv_b, delta, A, B.contiguous(), C.contiguous(), D,
              ssm_state)[0]


def ssd_scan(x, dt, A, B, C, D=None, chunk_size=128, initial_state=None, seq_idx=None):
    """Mamba2 scan; see ssd.ssd_chunked for shapes. Returns (y, final_state fp32)."""
    if _on_cuda(_mamba_chunk_scan, "mamba_ssm.mamba_chunk_scan_combined", x):
        y, final = _mamba_chunk_scan(
            x, dt, A, B, C, chunk_size, D=D, initial_states=initial_state,
            seq_idx=None if seq_idx is None else seq_idx.to(torch.int32), return_final_states=True,
        )
        return y, final.float()
    fn = _csrc_fn("ssd_scan", x, dt, A, B, C, D, initial_state)
    if fn is not None:
        y, final = fn(x.contiguous(), dt, A, B.contiguous(), C.contiguous(), D, initial_state, seq_idx)
        return y, final
    return ssd_chunked(x, dt, A, B, C, D, chunk_size, initial_state, seq_idx)


def scan_mamba1(u, delta, A, B, C, D=None, initial_state=None, seq_idx=None):
    """Mamba1 scan; see selective_scan.selective_scan. The CUDA kernel has no initial state or seq_idx."""
    if initial_state is None and seq_idx is None and _on_cuda(_mamba_selective_scan, "mamba_ssm.selective_scan_fn", u):
        y, last = _mamba_selective_scan(
            rearrange(u, "b t d -> b d t").contiguous(), rearrange(delta, "b t d -> b d t").contiguous(),
            A.float(), rearrange(B, "b t g n -> b g n t").contiguous(), rearrange(C, "b t g n -> b g n t").contiguous(),
            D=None if D is None else D.float(), return_last_state=True,
        )
        return rearrange(y, "b d t -> b t d"), last.float()
    return selective_scan(u, delta, A, B, C, D, initial_state, seq_idx)


def conv1d(x, weight, bias=None, initial_state=None, seq_idx=None, activation=None):
    """Causal depthwise conv; see conv1d.causal_conv1d. x [b, T, C]."""
    if _on_cuda(_cuda_conv1d, "causal_conv1d_fn", x) and initial_state is None:
        y = _cuda_conv1d(
            rearrange(x, "b t c -> b c t"), weight, bias,
            seq_idx=None if seq_idx is None else seq_idx.to(torch.int32), activation=activation,
        )
        return rearrange(y, "b c t -> b t c")
    fn = _csrc_fn("causal_conv1d", x, weight, bias, initial_state) if activation in (None, "silu") else None
    if fn is not None:
        return fn(x.contiguous(), weight, bias, initial_state, seq_idx, activation == "silu")
    return causal_conv1d(x, weight, bias, initial_state, seq_idx, activation)


conv1d_update = causal_conv1d_update
ssd_update = ssd_step
selective_update = selective_state_step


@torch.library.custom_op("hybrid::decode_attention", mutates_args=())
def _decode_attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor],
                         scale: float) -> torch.Tensor:
    """csrc's decode attention as a torch.library custom op, so that torch.compile calls it from inside the graph
    (an opaque pybind call would break the graph)."""
    from . import csrc
    return csrc.extension().decode_attention_cpu(q, k, v, mask, scale)


@_decode_attention_op.register_fake
def _(q, k, v, mask, scale):
    return q.new_empty(q.shape)


def decode_attention(query, key, value, attention_mask=None, scale=None):
    """Attention of a one-token query over a KV cache by csrc/cpu/decode_attention.cpp when it applies (CPU, csrc
    built and selected, no gradient needed, float32 or bfloat16, equal key and value shapes), else None.

    query [b, H, 1, D]; key, value [b, Hkv, T, D] with H a multiple of Hkv (grouped-query heads are folded onto
    their key/value head, never repeated); attention_mask None, additive, or boolean (True: attend) of shape
    [b or 1, 1, 1, >= T]. Returns [b, 1, H, D], as transformers' attention forwards do. Slots whose additive mask is
    below -1e30 are skipped (their weight is 0 anyway)."""
    if query.dim() != 4 or query.shape[2] != 1 or key.shape != value.shape or key.dim() != 4:
        return None
    b, h, _, d = query.shape
    kv_heads, t = key.shape[1], key.shape[2]
    if h % kv_heads or key.shape[0] != b or key.shape[3] != d or t == 0:
        return None
    if not (query.dtype == key.dtype == value.dtype) or query.dtype not in (torch.float32, torch.bfloat16):
        return None
    if key.stride(-1) != 1 or value.stride(-1) != 1:
        return None
    if torch.compiler.is_compiling() and not _custom_op_ready(query):
        return None
    fn = _csrc_fn("decode_attention", query, key, value, custom_op=True)
    if fn is None:
        return None
    mask = None
    if attention_mask is not None:
        m = attention_mask
        if m.dim() != 4 or m.shape[1] != 1 or m.shape[2] != 1 or m.shape[-1] < t or m.shape[0] not in (1, b):
            return None
        if m.dtype != torch.bool and not m.dtype.is_floating_point:
            return None
        m = m[:, 0, 0, :t].expand(b, t)
        mask = torch.zeros(m.shape, dtype=query.dtype, device=m.device).masked_fill(~m, float("-inf")) \
            if m.dtype == torch.bool else m
    q = query.reshape(b, kv_heads, h // kv_heads, d)
    q = q if q.stride(-1) == 1 else q.contiguous()
    scale = float(d ** -0.5 if scale is None else scale)
    if torch.compiler.is_compiling():
        out = _decode_attention_op(q, key, value, mask, scale)
    else:
        out = fn(q, key, value, mask, scale)
    return out.reshape(b, 1, h, d)
