"""Mamba1 selective scan (Gu & Dao 2023, Algorithm 2): chunked form, sequential twin, one-step update.

Recurrence per channel d and state index n:
    h_t[d, n] = exp(delta_t[d] * A[d, n]) * h_{t-1}[d, n] + delta_t[d] * B_t[g(d), n] * u_t[d]
    y_t[d]    = sum_n C_t[g(d), n] * h_t[d, n] + D[d] * u_t[d]
with channel groups: g(d) = d // (Dm // G) (MambaInLlama: one group of d_state channels per C chunk).
Shapes: u, delta [b, T, Dm] (delta already positive); A [Dm, N]; B, C [b, T, G, N]; D [Dm] or None;
initial_state [b, Dm, N] or None; seq_idx [b, T] or None (the state resets where it changes).
Returns y [b, T, Dm] (dtype of u) and the final state [b, Dm, N] in fp32.
"""
from __future__ import annotations

import torch
from einops import rearrange

from .ssd import doc_starts, segsum


def _expand_groups(B, Dm):
    """[b, T, G, N] -> [b, T, Dm, N]: channel d reads group d // (Dm // G)."""
    return B.float().repeat_interleave(Dm // B.shape[2], dim=2)


def selective_scan(u, delta, A, B, C, D=None, initial_state=None, seq_idx=None, chunk_size: int = 8):
    """Chunked scan: within a chunk all steps at once (log-decays summed directly), chunks in sequence."""
    b, T, Dm = u.shape
    N = A.shape[1]
    assert delta.shape == u.shape and A.shape == (Dm, N), f"delta {tuple(delta.shape)} A {tuple(A.shape)}"
    assert B.shape == C.shape and B.shape[:2] == (b, T) and Dm % B.shape[2] == 0, f"B {tuple(B.shape)}"
    h = torch.zeros(b, Dm, N, dtype=torch.float32, device=u.device)
    if initial_state is not None:
        h = initial_state.float()
    Bd, Cd = _expand_groups(B, Dm), _expand_groups(C, Dm)  # [b, T, Dm, N]
    # log-decay per (t, d, n); new documents start with -inf, i.e. a reset state.
    a = delta.float()[..., None] * A.float()  # [b, T, Dm, N]
    if seq_idx is not None:
        a = a.masked_fill(doc_starts(seq_idx)[..., None, None], float("-inf"))
    X = (delta.float() * u.float())[..., None] * Bd  # [b, T, Dm, N]
    ys = []
    for s0 in range(0, T, chunk_size):
        ac = rearrange(a[:, s0:s0 + chunk_size], "b l d n -> b d n l")
        w = torch.exp(segsum(ac))  # [b, d, n, t, s]
        hc = torch.einsum("bdnts,bsdn->btdn", w, X[:, s0:s0 + chunk_size])
        hc = hc + torch.exp(torch.cumsum(ac, dim=-1)).permute(0, 3, 1, 2) * h[:, None]
        ys.append(torch.einsum("btdn,btdn->btd", hc, Cd[:, s0:s0 + chunk_size]))
        h = hc[:, -1]
    y = torch.cat(ys, dim=1) if ys else u.new_zeros(b, 0, Dm, dtype=torch.float32)
    if D is not None:
        y = y + u.float() * D.float()
    return y.to(u.dtype), h


def selective_scan_ref(u, delta, A, B, C, D=None, initial_state=None, seq_idx=None):
    """One step at a time: the definition."""
    b, T, Dm = u.shape
    h = torch.zeros(b, Dm, A.shape[1], dtype=torch.float32, device=u.device)
    if initial_state is not None:
        h = initial_state.float().clone()
    ys = []
    for t in range(T):
        if seq_idx is not None and t > 0:
            h = h * (seq_idx[:, t] == seq_idx[:, t - 1]).float()[:, None, None]
        y, h = selective_state_step(h, u[:, t], delta[:, t], A, B[:, t], C[:, t], D)
        ys.append(y)
    y = torch.stack(ys, dim=1) if ys else u.new_zeros(b, 0, Dm)
    return y.to(u.dtype), h


def selective_state_step(state, u, delta, A, B, C, D=None):
    """One decode step. state [b, Dm, N] fp32; u, delta [b, Dm]; B, C [b, G, N]. Returns (y [b, Dm], new state)."""
    Dm = u.shape[1]
    Bd = B.float().repeat_interleave(Dm // B.shape[1], dim=1)  # [b, Dm, N]
    Cd = C.float().repeat_interleave(Dm // C.shape[1], dim=1)
    df = delta.float()
    state = state * torch.exp(df[..., None] * A.float()) + (df * u.float())[..., None] * Bd
    y = (state * Cd).sum(-1)
    if D is not None:
        y = y + u.float() * D.float()
    return y.to(u.dtype), state
