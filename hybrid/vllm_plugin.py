"""vLLM plugin: serves this project's hybrids (config.json model_type "hybrid") with vLLM, for what the
GraniteMoeHybrid export cannot express (Mamba1 layers, Qwen3 q/k norms, sliding-window attention, a gated-norm eps
that differs from the teacher's, MLP biases).

Installed as the `vllm.general_plugins` entry point `hybrid_distill = hybrid.vllm_plugin:register`, so with this
package and vLLM installed

    vllm serve runs/smollm2-h50/final

works without flags. `register` adds the architecture "HybridForCausalLM" to vLLM's model registry, pointing at
`hybrid.vllm_model.HybridVLLMForCausalLM` (imported by vLLM only when such a checkpoint is loaded), and makes
transformers' AutoConfig know model_type "hybrid".

This module imports nothing from vLLM at import time: the layout helpers below are plain torch, shared by the vLLM
model and by the CPU tests that check them against this project's own Mamba1 mixer.

Layout of a Mamba1 (MambaInLlama) mixer in vLLM's kernels. Channels form g = d_inner / N groups of N consecutive
channels; B and C are per group (x and B computed at key/value width and repeated per chunk, as in training). vLLM's
`selective_scan_fn` takes B, C as (ngroups, dstate, tokens) and uses group c // (d_inner / g) for channel c, which is
our grouping. Its `selective_state_update` takes the multi-head form state (batch, heads, dim, dstate), A (heads, dim,
dstate), B (batch, groups, dstate): we pass heads = groups = g and dim = N, a view of the (batch, d_inner, N) state.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

ARCHITECTURE = "HybridForCausalLM"
MODEL_CLASS = "hybrid.vllm_model:HybridVLLMForCausalLM"


def register() -> None:
    """Entry point of `vllm.general_plugins`: register our architecture with vLLM (idempotent)."""
    try:
        from vllm import ModelRegistry
    except ImportError as e:
        raise ImportError("hybrid.vllm_plugin.register needs vLLM (pip install vllm); it is called by vLLM itself "
                          "through the vllm.general_plugins entry point") from e
    from . import modeling  # noqa: F401  (registers model_type "hybrid" with transformers' AutoConfig)
    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCHITECTURE, MODEL_CLASS)


def mamba1_inputs(mixer, hidden_states: torch.Tensor):
    """Token-major projections of a Mamba1 mixer (ours or the vLLM one: same parameter names).

    hidden_states [T, d_model] -> x [T, d_inner] (repeated before the conv), z [T, d_inner], B [T, g, N] (repeated),
    C [T, g, N], dt [T, d_inner] without dt_proj's bias (the kernels add it, then softplus).
    """
    T = hidden_states.shape[0]
    N = mixer.A_log.shape[1]
    d_inner = mixer.A_log.shape[0]
    d_xb = mixer.in_proj_x.weight.shape[0]
    repeat = d_inner // d_xb

    def repeat_chunks(t):  # [T, d_xb] -> [T, g, N], chunk j <- chunk j // repeat
        return t.view(T, d_xb // N, N).repeat_interleave(repeat, dim=1)

    x = repeat_chunks(mixer.in_proj_x(hidden_states)).reshape(T, d_inner)
    z = mixer.in_proj_z(hidden_states)
    B = repeat_chunks(mixer.B_proj(hidden_states))
    C = mixer.C_proj(hidden_states).view(T, d_inner // N, N)
    dt = F.linear(mixer.dt_proj_down(hidden_states), mixer.dt_proj.weight)
    return x, z, B, C, dt


def mamba1_scan_args(u, dt, B, C, z):
    """Prefill operands in `selective_scan_fn`'s varlen layout: u [d_inner, T] (channel-major, as the conv returns
    it), dt and z [d_inner, T], B and C [g, N, T]."""
    return dict(u=u, delta=dt.transpose(0, 1), B=B.permute(1, 2, 0), C=C.permute(1, 2, 0), z=z.transpose(0, 1))


def mamba1_step_args(ssm_state, u, dt, A, B, C, D, z, dt_bias):
    """Decode operands in `selective_state_update`'s multi-head layout (heads = groups = g, dim = N).

    ssm_state [blocks, d_inner, N]; u, dt, z [batch, d_inner]; A [d_inner, N]; B, C [batch, g, N]; D, dt_bias
    [d_inner]. Every result is a view (the state is updated in place through it).
    """
    g, N = B.shape[-2], B.shape[-1]
    heads = lambda t: t.unflatten(-1, (g, N))  # noqa: E731
    return dict(state=ssm_state.unflatten(1, (g, N)), x=heads(u), dt=heads(dt), A=A.unflatten(0, (g, N)), B=B, C=C,
                D=heads(D), z=heads(z), dt_bias=heads(dt_bias))
