"""Mamba2 state-space duality (SSD) scan: chunked form, its sequential twin, and the one-step update.

Recurrence per head h (Mamba2 paper, Dao & Gu 2024, eq. 1 with scalar A):
    S_t = exp(dt_t * A_h) * S_{t-1} + dt_t * x_t B_t^T        S: [headdim, d_state]
    y_t = S_t C_t + D_h * x_t
Shapes (layout [batch, seqlen, heads, dim]):
    x  [b, T, H, P]   dt [b, T, H] (already positive, after softplus)   A [H] (negative)
    B  [b, T, G, N]   C  [b, T, G, N]   with H % G == 0: head h reads group h // (H // G)
    D  [H] or None    initial_state [b, H, P, N] or None    seq_idx [b, T] int or None
Returns y [b, T, H, P] (dtype of x) and the final state [b, H, P, N] in fp32.

Packed documents: where seq_idx changes between t-1 and t the state is reset (S_{t-1} is dropped), which the
chunked form realises by setting that step's log-decay to -inf. Every sum of log-decays below is formed as a
direct (masked) cumulative sum, never as a difference of cumulative sums, so -inf never meets -inf.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange, repeat


def _check(x, dt, A, B, C, D, initial_state, seq_idx):
    b, T, H, P = x.shape
    assert dt.shape == (b, T, H), f"dt {tuple(dt.shape)} != {(b, T, H)}"
    assert A.shape == (H,), f"A {tuple(A.shape)} != {(H,)}"
    assert B.shape[:2] == (b, T) and B.shape == C.shape, f"B {tuple(B.shape)} C {tuple(C.shape)}"
    assert H % B.shape[2] == 0, f"heads {H} not a multiple of groups {B.shape[2]}"
    assert D is None or D.shape == (H,), f"D {tuple(D.shape)}"
    N = B.shape[3]
    assert initial_state is None or initial_state.shape == (b, H, P, N), f"initial_state {tuple(initial_state.shape)}"
    assert seq_idx is None or seq_idx.shape == (b, T), f"seq_idx {tuple(seq_idx.shape)}"


def doc_starts(seq_idx: torch.Tensor) -> torch.Tensor:
    """[b, T] bool: True where a new document starts (seq_idx differs from the previous step's)."""
    start = torch.zeros_like(seq_idx, dtype=torch.bool)
    start[:, 1:] = seq_idx[:, 1:] != seq_idx[:, :-1]
    return start


def _log_decay(dt, A, seq_idx):
    """dt * A per step [b, T, H] in fp32, with -inf where a new document starts."""
    a = dt.float() * A.float()
    if seq_idx is not None:
        a = a.masked_fill(doc_starts(seq_idx)[..., None], float("-inf"))
    return a


def segsum(a: torch.Tensor) -> torch.Tensor:
    """[..., L] -> [..., L, L] with out[..., i, j] = sum_{k=j+1}^{i} a[k] for j <= i, -inf above the diagonal."""
    L = a.shape[-1]
    a = repeat(a, "... l -> ... l s", s=L)
    below = torch.tril(torch.ones(L, L, dtype=torch.bool, device=a.device), diagonal=-1)
    a = a.masked_fill(~below, 0)
    out = torch.cumsum(a, dim=-2)
    keep = torch.tril(torch.ones(L, L, dtype=torch.bool, device=a.device), diagonal=0)
    return out.masked_fill(~keep, float("-inf"))


def ssd_chunked(x, dt, A, B, C, D=None, chunk_size: int = 128, initial_state=None, seq_idx=None):
    """Chunked SSD scan (the quadratic-within-chunk, linear-across-chunks form of `ssd_minimal`)."""
    _check(x, dt, A, B, C, D, initial_state, seq_idx)
    b, T, H, P = x.shape
    G = B.shape[2]
    out_dtype = x.dtype
    L = chunk_size
    pad = (-T) % L
    a = _log_decay(dt, A, seq_idx)  # [b, T, H]
    xdt = x.float() * dt.float()[..., None]  # [b, T, H, P]
    Bh = repeat(B.float(), "b t g n -> b t (g r) n", r=H // G)
    Ch = repeat(C.float(), "b t g n -> b t (g r) n", r=H // G)
    if pad:
        # dt = 0 on padding: decay 1 and no input, so the final state is unchanged.
        a = F.pad(a, (0, 0, 0, pad))
        xdt, Bh, Ch = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (xdt, Bh, Ch))
    # 1. split into chunks: [b, c, l, ...]
    xdt, Bh, Ch = (rearrange(t, "b (c l) h d -> b c l h d", l=L) for t in (xdt, Bh, Ch))
    a = rearrange(a, "b (c l) h -> b h c l", l=L)
    # 2. intra-chunk (diagonal blocks): y = sum_{s<=t} (C_t . B_s) exp(a_{s+1..t}) dt_s x_s
    seg = segsum(a)  # [b, h, c, l, s]
    y = torch.einsum("bclhn,bcshn,bhcls,bcshp->bclhp", Ch, Bh, torch.exp(seg), xdt)
    # 3. state contributed by each chunk, decayed to the chunk's end: exp(a_{s+1..L-1}) = exp(seg[..., -1, s])
    states = torch.einsum("bclhn,bhcl,bclhp->bchpn", Bh, torch.exp(seg[..., -1, :]), xdt)
    # 4. pass states across chunks (a chunk-level scan of the same form)
    if initial_state is None:
        initial_state = torch.zeros(b, H, P, Bh.shape[-1], dtype=torch.float32, device=x.device)
    states = torch.cat([initial_state.float()[:, None], states], dim=1)  # [b, c+1, h, p, n]
    chunk_total = torch.cumsum(a, dim=-1)[..., -1]  # [b, h, c]: direct sum over each chunk
    decay_chunk = torch.exp(segsum(F.pad(chunk_total, (1, 0))))  # [b, h, c+1, c+1]
    states = torch.einsum("bhzc,bchpn->bzhpn", decay_chunk, states)
    states, final_state = states[:, :-1], states[:, -1]
    # 5. state -> output within each chunk: decay from the chunk start to t is a direct cumulative sum
    decay_in = torch.exp(torch.cumsum(a, dim=-1))  # [b, h, c, l]
    y = y + torch.einsum("bclhn,bchpn,bhcl->bclhp", Ch, states, decay_in)
    y = rearrange(y, "b c l h p -> b (c l) h p")[:, :T]
    if D is not None:
        y = y + x.float() * D.float()[:, None]
    return y.to(out_dtype), final_state


def ssd_ref(x, dt, A, B, C, D=None, initial_state=None, seq_idx=None):
    """Sequential recurrence, one step at a time: the definition the chunked scan must equal."""
    _check(x, dt, A, B, C, D, initial_state, seq_idx)
    b, T, H, P = x.shape
    G, N = B.shape[2], B.shape[3]
    r = H // G
    S = torch.zeros(b, H, P, N, dtype=torch.float32, device=x.device)
    if initial_state is not None:
        S = initial_state.float().clone()
    ys = []
    for t in range(T):
        if seq_idx is not None and t > 0:
            new_doc = (seq_idx[:, t] != seq_idx[:, t - 1]).float()[:, None, None, None]
            S = S * (1 - new_doc)
        y, S = ssd_step(S, x[:, t], dt[:, t], A, B[:, t].repeat_interleave(r, 1), C[:, t].repeat_interleave(r, 1), D)
        ys.append(y)
    y = torch.stack(ys, dim=1) if ys else x.new_zeros(b, 0, H, P)
    return y.to(x.dtype), S


def ssd_step(state, x, dt, A, B, C, D=None):
    """One decode step. state [b, H, P, N] fp32; x [b, H, P]; dt [b, H]; B, C [b, G, N]. Returns (y, new state)."""
    H, G = x.shape[1], B.shape[1]
    Bh = B.float().repeat_interleave(H // G, dim=1)  # [b, H, N]
    Ch = C.float().repeat_interleave(H // G, dim=1)
    dtf = dt.float()
    decay = torch.exp(dtf * A.float())[..., None, None]  # [b, H, 1, 1]
    state = state * decay + (dtf[..., None] * x.float())[..., None] * Bh[:, :, None, :]
    y = torch.einsum("bhpn,bhn->bhp", state, Ch)
    if D is not None:
        y = y + x.float() * D.float()[:, None]
    return y.to(x.dtype), state
