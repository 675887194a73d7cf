"""Mamba1 mixer in the MambaInLlama layout (unfused projections; M1's fused in_proj is split on import).

    in_proj_x [d_xb, d_model]  in_proj_z [d_inner, d_model]  B_proj [d_xb, d_model]  C_proj [d_inner, d_model]
    dt_proj_down [dt_rank, d_model]  dt_proj [d_inner, dt_rank] + bias  A_log [d_inner, N]  D [d_inner]
    conv1d [d_inner, 1, K]  out_proj [d_model, d_inner]
x and B come out at the key/value width and are split into N-wide chunks that are repeated (repeat_kv order) up to
d_inner / N chunks; x is repeated before the conv. Chunk j of C pairs with B chunk j // (d_inner / d_xb). Every
projection reads the layer input, as attention's q/k/v do. Forward:
    u = silu(conv(repeat(x)));  delta = softplus(dt_proj(dt_proj_down(h)));  y = scan(u, delta, -exp(A_log), B, C, D)
    out = out_proj(y * silu(z))
"""
from __future__ import annotations


import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from transformers import initialization as init

from ..ops import backends
from .common import cached_states, init_dt_bias, init_linear_and_conv, mask_padding, run_conv


class MambaMixer(nn.Module):
    def __init__(self, config, layer_idx: int, device=None, dtype=None):
        super().__init__()
        self.layer_idx = layer_idx
        self.d_model, self.d_xb = config.hidden_size, config.d_xb
        self.d_inner, self.d_state = config.d_inner_mamba, config.mamba_d_state
        self.dt_rank = config.dt_rank_mamba
        self.repeat = self.d_inner // self.d_xb
        kw = dict(device=device, dtype=dtype)
        self.in_proj_x = nn.Linear(self.d_model, self.d_xb, bias=False, **kw)
        self.in_proj_z = nn.Linear(self.d_model, self.d_inner, bias=False, **kw)
        self.B_proj = nn.Linear(self.d_model, self.d_xb, bias=False, **kw)
        self.C_proj = nn.Linear(self.d_model, self.d_inner, bias=False, **kw)
        self.dt_proj_down = nn.Linear(self.d_model, self.dt_rank, bias=False, **kw)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True, **kw)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, config.d_conv, groups=self.d_inner,
                                padding=config.d_conv - 1, bias=config.conv_bias, **kw)
        self.A_log = nn.Parameter(torch.empty(self.d_inner, self.d_state, **kw))
        self.D = nn.Parameter(torch.empty(self.d_inner, **kw))
        self.out_proj = nn.Linear(self.d_inner, self.d_model, bias=False, **kw)

    @torch.no_grad()
    def reset_parameters(self, std: float = 0.02) -> None:
        """Mamba1 defaults: S4D-real A (log 1..N), D = 1, dt log-uniform [1e-3, 1e-1], dt_proj U(+-rank^-1/2)."""
        init_linear_and_conv(self, std)
        bound = self.dt_rank ** -0.5
        init.uniform_(self.dt_proj.weight, -bound, bound)
        init_dt_bias(self.dt_proj.bias)
        A = torch.arange(1, self.d_state + 1, dtype=torch.float32, device=self.A_log.device).expand(self.d_inner, -1)
        init.copy_(self.A_log, torch.log(A))
        init.ones_(self.D)

    def repeat_kv(self, t: torch.Tensor) -> torch.Tensor:
        """[b, T, d_xb] -> [b, T, d_xb / N * repeat, N]: each N-wide chunk repeated (chunk j <- j // repeat)."""
        return rearrange(t, "b t (g n) -> b t g n", n=self.d_state).repeat_interleave(self.repeat, dim=2)

    def forward(self, hidden_states, cache=None, pad_mask=None, seq_idx=None, return_ssm_output: bool = False):
        """Same contract as Mamba2Mixer.forward; the returned scan output is y [b, T, d_inner] before the gate."""
        b, T, _ = hidden_states.shape
        conv_state, ssm_state = cached_states(cache, self.layer_idx)
        x = rearrange(self.repeat_kv(self.in_proj_x(hidden_states)), "b t g n -> b t (g n)")
        z = self.in_proj_z(hidden_states)
        delta = F.softplus(self.dt_proj(self.dt_proj_down(hidden_states)).float())  # [b, T, d_inner]
        A = -torch.exp(self.A_log.float())
        y = None
        if ssm_state is not None and T == 1:  # decode: one fused kernel when available (B read per group in place)
            Bg = rearrange(self.B_proj(hidden_states[:, 0]), "b (g n) -> b g n", n=self.d_state)
            Cg = rearrange(self.C_proj(hidden_states[:, 0]), "b (g n) -> b g n", n=self.d_state)
            y = backends.fused_mamba1_step(mask_padding(x, pad_mask)[:, 0], conv_state, self.conv1d.weight[:, 0],
                                           self.conv1d.bias, delta[:, 0], A, Bg, Cg, self.D, ssm_state)
            y = y[:, None] if y is not None else None
        if y is None:
            u = run_conv(self.conv1d, x, cache, self.layer_idx, conv_state, pad_mask, seq_idx)
            B = self.repeat_kv(self.B_proj(hidden_states))  # [b, T, d_inner / N, N]
            C = rearrange(self.C_proj(hidden_states), "b t (g n) -> b t g n", n=self.d_state)
            if ssm_state is not None and T == 1:
                y, final = backends.selective_update(ssm_state, u[:, 0], delta[:, 0], A, B[:, 0], C[:, 0], self.D)
                y = y[:, None]
            else:
                y, final = backends.scan_mamba1(u, delta, A, B, C, self.D, ssm_state, seq_idx)
            if cache is not None:
                cache.update_recurrent_state(final, self.layer_idx)
        out = self.out_proj((y.float() * F.silu(z.float())).to(hidden_states.dtype))
        return (out, y) if return_ssm_output else out
