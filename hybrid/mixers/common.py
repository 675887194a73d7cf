"""What both Mamba mixers share: the causal conv with its decode state, padding masks, and default inits."""
from __future__ import annotations

import math

import torch
from torch import nn
from transformers import initialization as init

from ..ops import backends


def mask_padding(t: torch.Tensor, pad_mask: torch.Tensor | None) -> torch.Tensor:
    """Zero the positions of t [b, T, ...] where pad_mask [b, T] is 0, so pads leave the state untouched."""
    if pad_mask is None:
        return t
    return t * pad_mask.view(*pad_mask.shape, *([1] * (t.dim() - 2))).to(t.dtype)


def cached_states(cache, layer_idx):
    """(conv state [b, C, K], ssm state) held for this layer, or (None, None) before the first token."""
    if cache is None or not cache.has_previous_state(layer_idx):
        return None, None
    return cache.get_conv_state(layer_idx), cache.get_recurrent_state(layer_idx)


def run_conv(conv: nn.Conv1d, xs: torch.Tensor, cache, layer_idx: int, conv_state, pad_mask, seq_idx):
    """silu(causal depthwise conv(xs)) for xs [b, T, C], reading and advancing the layer's conv state."""
    weight = conv.weight[:, 0]  # [C, K]
    K = weight.shape[1]
    xs = mask_padding(xs, pad_mask)
    if conv_state is not None and xs.shape[1] == 1:
        out = backends.conv1d_update(xs[:, 0], conv_state, weight, conv.bias, activation="silu")[:, None]
    else:
        init = conv_state[..., 1:] if conv_state is not None else None  # the K-1 inputs before xs
        out = backends.conv1d(xs, weight, conv.bias, initial_state=init, seq_idx=seq_idx, activation="silu")
        if cache is not None:
            cache.update_conv_state(xs.transpose(1, 2), layer_idx, conv_kernel_size=K)
    return mask_padding(out, pad_mask)


def inverse_softplus(y: torch.Tensor) -> torch.Tensor:
    return y + torch.log(-torch.expm1(-y))


def init_dt_bias(param: torch.Tensor, dt_min=1e-3, dt_max=1e-1, floor=1e-4) -> None:
    """dt_bias = softplus^-1(dt) with dt log-uniform in [dt_min, dt_max] (Mamba's default, spec section Mamba2)."""
    u = torch.rand(param.shape, dtype=torch.float32, device=param.device)
    dt = torch.exp(u * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    init.copy_(param, inverse_softplus(dt.clamp(min=floor)))


def init_linear_and_conv(mixer: nn.Module, std: float) -> None:
    """Projections N(0, std), conv as torch's default. Guarded: weights already loaded are left alone."""
    for m in mixer.children():
        if isinstance(m, nn.Linear):
            init.normal_(m.weight, std=std)
            if m.bias is not None:
                init.zeros_(m.bias)
        elif isinstance(m, nn.Conv1d):
            init.kaiming_uniform_(m.weight, a=math.sqrt(5))
            if m.bias is not None:
                bound = 1 / math.sqrt(m.weight.shape[1] * m.weight.shape[2])
                init.uniform_(m.bias, -bound, bound)
        m._is_hf_initialized = True  # the parent initialised it; transformers must not redo it
