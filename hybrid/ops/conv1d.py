"""Causal depthwise conv1d (the short conv in front of every Mamba SSM) and its one-step update.

Shapes: x [b, T, C], weight [C, K], bias [C] or None, initial_state [b, C, K-1] (the K-1 inputs before x[:, 0])
or None, seq_idx [b, T] or None. Output y[:, t, c] = bias[c] + sum_k weight[c, k] * x[:, t - (K-1) + k, c], where
inputs before the sequence come from initial_state (zeros if None) and inputs from another document (seq_idx
differs) count as zero. The conv state kept for decoding is the last K inputs, [b, C, K], as transformers' linear
attention cache stores it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

ACTIVATIONS = {None: lambda t: t, "silu": F.silu}


def causal_conv1d(x, weight, bias=None, initial_state=None, seq_idx=None, activation=None):
    """Vectorised form: one shifted multiply-add per tap."""
    b, T, C = x.shape
    K = weight.shape[1]
    assert weight.shape == (C, K), f"weight {tuple(weight.shape)} != {(C, K)}"
    left = initial_state.transpose(1, 2) if initial_state is not None else x.new_zeros(b, K - 1, C)
    assert left.shape == (b, K - 1, C), f"initial_state {tuple(initial_state.shape)} != {(b, C, K - 1)}"
    xp = torch.cat([left.to(x.dtype), x], dim=1)  # [b, K-1+T, C]
    if seq_idx is not None:
        # A tap reads x[t - j]; it counts only inside the same document (and the initial state belongs to doc 0
        # of the row, so it is kept only where seq_idx equals the row's first document).
        sp = torch.cat([seq_idx[:, :1].expand(b, K - 1), seq_idx], dim=1)
    y = x.new_zeros(b, T, C, dtype=torch.float32)
    for k in range(K):
        tap = xp[:, k:k + T].float()
        if seq_idx is not None:
            tap = tap * (sp[:, k:k + T] == seq_idx).unsqueeze(-1)
        y = y + tap * weight[:, k].float()
    if bias is not None:
        y = y + bias.float()
    return ACTIVATIONS[activation](y).to(x.dtype)


def causal_conv1d_ref(x, weight, bias=None, initial_state=None, seq_idx=None, activation=None):
    """Per-output-position loop: the definition."""
    b, T, C = x.shape
    K = weight.shape[1]
    y = torch.zeros(b, T, C, dtype=torch.float32, device=x.device)
    for t in range(T):
        acc = torch.zeros(b, C, dtype=torch.float32, device=x.device) if bias is None else bias.float().expand(b, C).clone()
        for k in range(K):
            s = t - (K - 1) + k
            if s >= 0:
                v = x[:, s].float()
                if seq_idx is not None:
                    v = v * (seq_idx[:, s] == seq_idx[:, t]).float()[:, None]
            elif initial_state is not None:
                v = initial_state[:, :, K - 1 + s].float()
                if seq_idx is not None:
                    v = v * (seq_idx[:, 0] == seq_idx[:, t]).float()[:, None]
            else:
                continue
            acc = acc + weight[:, k].float() * v
        y[:, t] = acc
    return ACTIVATIONS[activation](y).to(x.dtype)


def conv_state_from_inputs(x, K):
    """The decode state after consuming x [b, T, C]: its last K inputs as [b, C, K], zero-padded on the left."""
    xt = x.transpose(1, 2)
    T = xt.shape[-1]
    return F.pad(xt, (K - T, 0)) if T < K else xt[..., T - K:].clone(memory_format=torch.contiguous_format)


def causal_conv1d_update(x, conv_state, weight, bias=None, activation=None):
    """One decode step. x [b, C]; conv_state [b, C, K] (the last K inputs, updated in place). Returns y [b, C]."""
    conv_state.copy_(torch.roll(conv_state, shifts=-1, dims=-1))
    conv_state[:, :, -1] = x.to(conv_state.dtype)
    y = (conv_state.float() * weight.float()).sum(-1)
    if bias is not None:
        y = y + bias.float()
    return ACTIVATIONS[activation](y).to(x.dtype)
