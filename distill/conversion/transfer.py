"""Attention -> Mamba weight transfer (MambaInLlama, Wang et al. 2024, sec. 2) and `hybridize`.

Reading attention as linear attention without the softmax, a head's output sum_s (q_t . k_s) v_s is an SSM with
x <- V, B <- K, C <- Q and no decay; so the mixer's x, B, C projections start from the teacher's v_proj, k_proj,
q_proj and out_proj from o_proj. The MLP and both norms stay the teacher's (they are the same modules in the
hybrid layer). What has no attention counterpart keeps the mixer's default init: z and dt rows, conv1d, dt_bias
(dt log-uniform in [1e-3, 1e-1]), A_log = log U(1, 16), D = 1, gated-norm weight 1.

Not transferred, by design: RoPE (mixers are position-free), q/k norms (Qwen3), and q/k/v biases (Qwen2; the
mixer projections have no bias). The mixer is a warm start that alignment and distillation then train.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from hybrid.config import HybridConfig, layer_types_from_attention
from hybrid.mixers.mamba import MambaMixer
from hybrid.mixers.mamba2 import Mamba2Mixer
from hybrid.modeling import HybridForCausalLM

from .phase import PhaseContext


def _copy_rows(dst: torch.Tensor, start: int, src: torch.Tensor, what: str) -> int:
    end = start + src.shape[0]
    if dst.shape[1] != src.shape[1] or end > dst.shape[0]:
        raise ValueError(f"{what}: cannot place {tuple(src.shape)} at rows {start}:{end} of {tuple(dst.shape)}")
    dst[start:end].copy_(src)
    return end


def _check_same(dst: nn.Linear, src: nn.Linear, what: str) -> None:
    if dst.weight.shape != src.weight.shape:
        raise ValueError(f"{what}: mixer shape {tuple(dst.weight.shape)} != attention shape {tuple(src.weight.shape)}")


@torch.no_grad()
def attention_to_mamba2(attn: nn.Module, mixer: Mamba2Mixer) -> None:
    """in_proj rows x <- v_proj, B <- k_proj, C <- q_proj; out_proj <- o_proj (in place)."""
    w = mixer.in_proj.weight
    row = mixer.d_inner  # rows [0, d_inner) are z: default init
    row = _copy_rows(w, row, attn.v_proj.weight, "x <- v_proj")
    row = _copy_rows(w, row, attn.k_proj.weight, "B <- k_proj")
    _copy_rows(w, row, attn.q_proj.weight, "C <- q_proj")
    _check_same(mixer.out_proj, attn.o_proj, "out_proj <- o_proj")
    mixer.out_proj.weight.copy_(attn.o_proj.weight)


@torch.no_grad()
def attention_to_mamba(attn: nn.Module, mixer: MambaMixer) -> None:
    """in_proj_x <- v_proj, B_proj <- k_proj, C_proj <- q_proj, out_proj <- o_proj (in place)."""
    for dst, src, what in ((mixer.in_proj_x, attn.v_proj, "in_proj_x <- v_proj"),
                           (mixer.B_proj, attn.k_proj, "B_proj <- k_proj"),
                           (mixer.C_proj, attn.q_proj, "C_proj <- q_proj"),
                           (mixer.out_proj, attn.o_proj, "out_proj <- o_proj")):
        _check_same(dst, src, what)
        dst.weight.copy_(src.weight)


TRANSFERS = {"mamba2": attention_to_mamba2, "mamba": attention_to_mamba}


@torch.no_grad()
def hybridize(teacher: nn.Module, attn_layers, mixer: str = "mamba2", **mixer_settings) -> HybridForCausalLM:
    """A hybrid of `teacher` keeping attention at `attn_layers`; every other layer's attention becomes `mixer`,
    initialised from that attention by the transfer above. `mixer_settings` are HybridConfig fields (d_conv, ...).

    Works from a plain causal LM (Llama / Qwen2 / Qwen3 / Mistral) and from a hybrid (replacing more layers: its
    remaining attention layers are the ones that can be transferred).
    """
    if isinstance(teacher, HybridForCausalLM):
        teacher_config, current = teacher.config.teacher_config, teacher.config.layer_types
        mixer_settings = {**{k: getattr(teacher.config, k) for k in ("d_conv", "conv_bias", "chunk_size",
                             "mamba_d_state", "mamba_d_inner", "mamba_dt_rank", "mamba_norm_eps")},
                          **mixer_settings}
    else:
        teacher_config, current = teacher.config, None
    n = teacher_config.num_hidden_layers
    layer_types = layer_types_from_attention(n, attn_layers, mixer)
    if current is not None:
        for i, (old, new) in enumerate(zip(current, layer_types)):
            if old != "attention" and new != old:
                raise ValueError(f"layer {i} is already {old!r} and cannot become {new!r}")
    config = HybridConfig(teacher_config=copy.deepcopy(teacher_config).to_dict(), layer_types=layer_types,
                          **mixer_settings)
    ref = next(teacher.parameters())
    student = HybridForCausalLM(config).to(device=ref.device, dtype=ref.dtype)
    student.config._attn_implementation_internal = teacher.config._attn_implementation
    student.sync_teacher_attention()

    # Everything the two share by name (embeddings, norms, MLPs, kept attention, existing mixers) is copied.
    src = teacher.state_dict()
    dst = student.state_dict()
    shared = {k: v for k, v in src.items() if k in dst}
    student.load_state_dict(shared, strict=False)
    unfilled = [k for k in dst if k not in shared and ".mamba." not in k and k != "lm_head.weight"]
    if unfilled:
        raise ValueError(f"teacher has no weights for {unfilled[:8]}{' ...' if len(unfilled) > 8 else ''}")
    if "lm_head.weight" not in shared and not config.tie_word_embeddings:
        raise ValueError("teacher has no lm_head.weight and does not tie embeddings")

    for i, kind in enumerate(layer_types):
        if kind != "attention" and (current is None or current[i] == "attention"):
            TRANSFERS[kind](teacher.model.layers[i].self_attn, student.model.layers[i].mamba)
    return student.eval() if not teacher.training else student


def run_transfer(student, teacher, data, settings, folder: str, ctx: PhaseContext):
    """The transfer phase (see phase.py): the layers this stage replaces become mixers initialised from their
    attention. `settings` is the whole DistillRecipe (mixer, chunk_size, seed); the seed is offset by the stage so
    that each stage's mixer init (the parts the transfer leaves at default) draws its own numbers. Returns the new
    hybrid and its held-out KL and perplexity ratio; it trains nothing, so writes nothing under `folder`."""
    torch.manual_seed(settings.seed + ctx.stage)
    student = hybridize(student, ctx.kept, mixer=settings.mixer, chunk_size=settings.chunk_size)
    return student, ctx.heldout(student)
