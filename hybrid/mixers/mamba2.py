"""Head-aligned Mamba2 mixer of the MambaInLlama family, parameter for parameter.

One SSM head per query head (nheads = n_heads), headdim = d_state = the teacher's head_dim. x and B are produced
at the key/value width d_xb and shared by query heads like GQA; C is produced at query width d_inner. Names and
shapes match released checkpoints (see shared spec):
    in_proj  [d_inner + 2*d_xb + d_inner + nheads, d_model]   rows z, x, B, C, dt
    conv1d   [d_inner + 2*d_xb, 1, K]                         over [x, B, C] before the GQA repeat
    dt_bias, A_log, D [nheads];  norm.weight [d_inner];  out_proj [d_model, d_inner]
Forward: z, xBC, dt = in_proj(h); x, B, C = silu(conv(xBC)); y = SSD(x, softplus(dt + dt_bias), -exp(A_log), B, C, D);
out = out_proj(rmsnorm_per_head(y * silu(z))).
"""
from __future__ import annotations


import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from transformers import initialization as init

from ..ops import backends
from .common import cached_states, init_dt_bias, init_linear_and_conv, run_conv

RELEASED_GATED_NORM_EPS = 1e-5  # mamba_ssm's RMSNormGated default, used by the released Mamba2 hybrids


class GatedRMSNorm(nn.Module):
    """RMSNorm(y * silu(z)) per group of `group_size` channels (mamba_ssm RMSNormGated, norm_before_gate=False)."""

    def __init__(self, dim: int, group_size: int, eps: float = RELEASED_GATED_NORM_EPS, device=None, dtype=None):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))
        self.group_size, self.eps = group_size, eps

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        dtype = y.dtype
        g = y.float() * F.silu(z.float())
        g = rearrange(g, "... (h p) -> ... h p", p=self.group_size)
        g = g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + self.eps)
        return (rearrange(g, "... h p -> ... (h p)") * self.weight.float()).to(dtype)


class Mamba2Mixer(nn.Module):
    def __init__(self, config, layer_idx: int, device=None, dtype=None):
        super().__init__()
        self.layer_idx = layer_idx
        self.d_model, self.d_inner, self.d_xb = config.hidden_size, config.d_inner, config.d_xb
        self.nheads, self.headdim = config.num_attention_heads, config.head_dim
        self.n_kv = config.num_key_value_heads
        self.d_state = self.headdim
        self.chunk_size = config.chunk_size
        kw = dict(device=device, dtype=dtype)
        d_in_proj = 2 * self.d_inner + 2 * self.d_xb + self.nheads
        self.in_proj = nn.Linear(self.d_model, d_in_proj, bias=False, **kw)
        conv_dim = self.d_inner + 2 * self.d_xb
        self.conv1d = nn.Conv1d(conv_dim, conv_dim, config.d_conv, groups=conv_dim, padding=config.d_conv - 1,
                                bias=config.conv_bias, **kw)
        self.dt_bias = nn.Parameter(torch.empty(self.nheads, **kw))
        self.A_log = nn.Parameter(torch.empty(self.nheads, **kw))
        self.D = nn.Parameter(torch.empty(self.nheads, **kw))
        self.norm = GatedRMSNorm(self.d_inner, group_size=self.headdim, eps=config.gated_norm_eps, **kw)
        self.out_proj = nn.Linear(self.d_inner, self.d_model, bias=False, **kw)

    @torch.no_grad()
    def reset_parameters(self, std: float = 0.02) -> None:
        """Default init (spec): A_log = log U(1, 16), D = 1, dt log-uniform [1e-3, 1e-1], norm 1, projections N(0, std)."""
        init_linear_and_conv(self, std)
        init_dt_bias(self.dt_bias)
        init.copy_(self.A_log, torch.log(torch.empty(self.nheads, device=self.A_log.device).uniform_(1, 16)))
        init.ones_(self.D)
        init.ones_(self.norm.weight)
        self.norm._is_hf_initialized = True

    def split_in_proj(self, zxbcdt: torch.Tensor):
        """[..., d_in_proj] -> z [d_inner], xBC [d_inner + 2 d_xb], dt [nheads] (the spec's row order)."""
        return torch.split(zxbcdt, [self.d_inner, self.d_inner + 2 * self.d_xb, self.nheads], dim=-1)

    def ssm_inputs(self, xBC: torch.Tensor):
        """Post-conv xBC [b, T, C] -> x [b, T, H, P] and B [b, T, H, N] repeated from kv heads (repeat_kv order), C."""
        x, B, C = torch.split(xBC, [self.d_xb, self.d_xb, self.d_inner], dim=-1)
        r = self.nheads // self.n_kv
        x = rearrange(x, "b t (g p) -> b t g p", p=self.headdim).repeat_interleave(r, dim=2)
        B = rearrange(B, "b t (g n) -> b t g n", n=self.d_state).repeat_interleave(r, dim=2)
        C = rearrange(C, "b t (h n) -> b t h n", n=self.d_state)
        return x, B, C

    def forward(self, hidden_states, cache=None, pad_mask=None, seq_idx=None, return_ssm_output: bool = False):
        """hidden_states [b, T, d_model] -> [b, T, d_model].

        cache: the model's HybridCache (decode state is read and advanced), or None (training / full forward).
        pad_mask [b, T]: 1 for tokens, 0 for (left) padding. seq_idx [b, T]: document index for packed rows.
        return_ssm_output: also return the scan output y [b, T, H, P] before the gated norm (for tests / alignment).
        """
        b, T, _ = hidden_states.shape
        conv_state, ssm_state = cached_states(cache, self.layer_idx)
        z, xBC, dt = self.split_in_proj(self.in_proj(hidden_states))
        A = -torch.exp(self.A_log.float())
        y = None
        if ssm_state is not None and T == 1:  # decode: one fused kernel when available (states in place)
            y = backends.fused_mamba2_step(xBC[:, 0], conv_state, self.conv1d.weight[:, 0], self.conv1d.bias,
                                           dt[:, 0], self.dt_bias, A, self.D, ssm_state, self.n_kv, self.d_xb)
            y = y[:, None] if y is not None else None
        if y is None:
            xBC = run_conv(self.conv1d, xBC, cache, self.layer_idx, conv_state, pad_mask, seq_idx)
            x, B, C = self.ssm_inputs(xBC)
            dt = F.softplus(dt.float() + self.dt_bias.float())  # [b, T, H]
            if ssm_state is not None and T == 1:
                y, final = backends.ssd_update(ssm_state, x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0], self.D)
                y = y[:, None]
            else:
                y, final = backends.ssd_scan(x, dt, A, B, C, self.D, self.chunk_size, ssm_state, seq_idx)
            if cache is not None:
                cache.update_recurrent_state(final, self.layer_idx)
        out = self.out_proj(self.norm(rearrange(y, "b t h p -> b t (h p)"), z))
        return (out, y) if return_ssm_output else out
