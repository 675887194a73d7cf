"""Export a hybrid to GraniteMoeHybrid, a transformers-native hybrid architecture that vLLM and SGLang serve in-tree.

    hybrid-distill export --model runs/smollm2-h50/final --to granitemoehybrid --out runs/smollm2-h50-granite

GraniteMoeHybrid (with RoPE position embeddings, no experts and its dense "shared" MLP) expresses a
Llama-style hybrid with Mamba2 mixers exactly:
- Mamba2: Granite's mixer has n_heads heads of head_dim with n_groups groups of B and C, and x at full width.
  Ours shares x and B across the query heads of a KV group (GQA), so the export writes n_groups = n_heads and
  repeats each KV head's x and B rows of in_proj, and their conv1d channels, for every query head that reads it.
  A depthwise conv on a repeated channel is the repeated conv, so this is exact. The gated norm groups per head in
  both. Granite uses one eps for every RMSNorm, so the hybrid's gated-norm eps must equal the teacher's.
- attention: q/k/v/o as they are; Granite's attention_multiplier = head_dim^-0.5 is the usual scaling; a Qwen2
  q/k/v bias becomes Granite's attention bias with a zero o_proj bias.
- MLP: input_linear = [gate_proj; up_proj], output_linear = down_proj (act(gate) * up, as Llama).
- multipliers (embedding, residual, logits) are 1.

Refused, with the reason: Mamba1 layers (per-channel, per-state decays: Granite's Mamba2 has one decay per
head), teachers with q/k norms (Qwen3), sliding-window attention, and a gated-norm eps different from the
teacher's. The export verifies itself: it reloads the written folder with transformers' own class and compares
logits on a probe batch; above tolerance it raises and says by how much.
"""
from __future__ import annotations

import torch

from .cache import teacher_attention_kinds
from .modeling import HybridForCausalLM


def _refuse(why: str):
    raise ValueError(f"cannot export to granitemoehybrid exactly: {why}")


def granite_config(model):
    from transformers import GraniteMoeHybridConfig
    cfg = model.config
    t = cfg.teacher_config
    if "mamba" in cfg.layer_types:
        _refuse("Mamba1 layers decay each channel and state separately; GraniteMoeHybrid's Mamba2 mixer has one "
                "decay per head")
    if any(hasattr(layer.self_attn, "q_norm") for i, layer in enumerate(model.model.layers)
           if cfg.layer_types[i] == "attention"):
        _refuse(f"the teacher ({t.model_type}) normalises q and k per head; GraniteMoeHybrid attention has no q/k norms")
    if "sliding_attention" in {teacher_attention_kinds(t)[i] for i in cfg.attention_layers}:
        _refuse("sliding-window attention layers have no GraniteMoeHybrid counterpart")
    if "mamba2" in cfg.layer_types and abs(cfg.gated_norm_eps - t.rms_norm_eps) > 0:
        _refuse(f"the gated-norm eps ({cfg.gated_norm_eps}) differs from rms_norm_eps ({t.rms_norm_eps}); "
                "GraniteMoeHybrid uses one eps for both")
    if getattr(t, "mlp_bias", False):
        _refuse("the MLP has biases; GraniteMoeHybrid's shared MLP has none")
    if getattr(t, "hidden_act", "silu") != "silu":
        _refuse(f"hidden_act={t.hidden_act!r}: GraniteMoeHybrid's Mamba activation is its hidden_act, ours is silu")
    bias = bool(getattr(t, "attention_bias", False)) or any(
        cfg.layer_types[i] == "attention" and model.model.layers[i].self_attn.q_proj.bias is not None
        for i in range(cfg.num_hidden_layers))
    rope = dict(getattr(t, "rope_parameters", None) or {"rope_type": "default", "rope_theta": 10000.0})
    expand = cfg.d_inner / cfg.hidden_size
    return GraniteMoeHybridConfig(
        vocab_size=t.vocab_size, hidden_size=t.hidden_size, intermediate_size=t.intermediate_size,
        shared_intermediate_size=t.intermediate_size, num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=t.num_attention_heads, num_key_value_heads=cfg.num_key_value_heads,
        hidden_act="silu", max_position_embeddings=t.max_position_embeddings, rms_norm_eps=t.rms_norm_eps,
        tie_word_embeddings=cfg.tie_word_embeddings, rope_parameters=rope, attention_bias=bias,
        embedding_multiplier=1.0, logits_scaling=1.0, residual_multiplier=1.0, attention_multiplier=cfg.head_dim ** -0.5,
        num_local_experts=0, num_experts_per_tok=0, position_embedding_type="rope",
        layer_types=["attention" if k == "attention" else "mamba" for k in cfg.layer_types],
        mamba_n_heads=cfg.num_attention_heads, mamba_n_groups=cfg.num_attention_heads, mamba_d_state=cfg.head_dim,
        mamba_d_head=cfg.head_dim, mamba_d_conv=cfg.d_conv, mamba_expand=int(expand) if expand == int(expand) else expand,
        mamba_chunk_size=cfg.chunk_size, mamba_conv_bias=cfg.conv_bias, mamba_proj_bias=False,
        pad_token_id=t.pad_token_id, bos_token_id=t.bos_token_id, eos_token_id=t.eos_token_id,
    )


def _expand_kv(rows: torch.Tensor, n_kv: int, repeat: int) -> torch.Tensor:
    """[n_kv * d, ...] -> [n_kv * repeat * d, ...], each KV head's block repeated for its query heads."""
    d = rows.shape[0] // n_kv
    return rows.reshape(n_kv, d, *rows.shape[1:]).repeat_interleave(repeat, dim=0).reshape(n_kv * repeat * d,
                                                                                          *rows.shape[1:])


MAMBA2_TENSORS = ("in_proj.weight", "conv1d.weight", "dt_bias", "A_log", "D", "norm.weight", "out_proj.weight")
"""A Mamba2 mixer's tensors, relative to the mixer (plus conv1d.bias when the conv has one)."""


def expand_mamba2(cfg, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One Mamba2 mixer's tensors (names relative to the mixer) with GQA-grouped x and B expanded to every head.

    in_proj rows [z, x (d_xb), B (d_xb), C, dt] become [z, x (d_inner), B (d_inner), C, dt]; the conv's x and B
    channels (and bias) likewise. Exact: a repeated row computes the repeated output. The result is the layout of a
    Mamba2 mixer with n_groups = n_heads (GraniteMoeHybrid, vLLM's MambaMixer2).
    """
    H, kv = cfg.num_attention_heads, cfg.num_key_value_heads
    r = H // kv
    di, dxb = cfg.d_inner, cfg.d_xb
    out = dict(weights)
    z, x, B, C, dt = torch.split(weights["in_proj.weight"], [di, dxb, dxb, di, H], 0)
    out["in_proj.weight"] = torch.cat([z, _expand_kv(x, kv, r), _expand_kv(B, kv, r), C, dt], 0)
    for n in ("conv1d.weight", "conv1d.bias"):
        if n in weights:
            cx, cB, cC = torch.split(weights[n], [dxb, dxb, di], 0)
            out[n] = torch.cat([_expand_kv(cx, kv, r), _expand_kv(cB, kv, r), cC], 0)
    return out


@torch.no_grad()
def granite_state_dict(model) -> dict[str, torch.Tensor]:
    cfg = model.config
    sd = model.state_dict()
    out = {"model.embed_tokens.weight": sd["model.embed_tokens.weight"], "model.norm.weight": sd["model.norm.weight"]}
    if not cfg.tie_word_embeddings:
        out["lm_head.weight"] = sd["lm_head.weight"]
    for i, kind in enumerate(cfg.layer_types):
        p = q = f"model.layers.{i}."
        for n in ("input_layernorm", "post_attention_layernorm"):
            out[q + n + ".weight"] = sd[p + n + ".weight"]
        out[q + "shared_mlp.input_linear.weight"] = torch.cat([sd[p + "mlp.gate_proj.weight"],
                                                                sd[p + "mlp.up_proj.weight"]], 0)
        out[q + "shared_mlp.output_linear.weight"] = sd[p + "mlp.down_proj.weight"]
        if kind == "attention":
            a = p + "self_attn."
            has_bias = a + "q_proj.bias" in sd
            for n in "qkvo":
                out[a + f"{n}_proj.weight"] = sd[a + f"{n}_proj.weight"]
                if has_bias:  # Granite's attention_bias covers all four; Qwen2's o_proj has none: zero
                    w = sd[a + f"{n}_proj.weight"]
                    out[a + f"{n}_proj.bias"] = sd.get(a + f"{n}_proj.bias", torch.zeros_like(w[:, 0]))
            continue
        m = p + "mamba."
        names = list(MAMBA2_TENSORS) + (["conv1d.bias"] if m + "conv1d.bias" in sd else [])
        out.update({m + n: w for n, w in expand_mamba2(cfg, {n: sd[m + n] for n in names}).items()})
    return out


@torch.no_grad()
def export_granitemoehybrid(model, out_dir: str, tokenizer=None, atol: float = 1e-4) -> float:
    """Write the export, reload it with transformers' class, compare logits; returns the max abs difference."""
    from transformers import GraniteMoeHybridForCausalLM

    if not isinstance(model, HybridForCausalLM):
        raise ValueError(f"export needs a hybrid (a folder written by `hybrid-distill convert` / `distill`, or an "
                         f"imported release), got a plain {type(model).__name__}; convert it first")
    config = granite_config(model)
    state = granite_state_dict(model)
    granite = GraniteMoeHybridForCausalLM(config).to(next(model.parameters()).dtype)
    expected = granite.state_dict()
    missing = sorted(set(expected) - set(state) - ({"lm_head.weight"} if config.tie_word_embeddings else set()))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise ValueError(f"export mapping incomplete: missing {missing}, extra {extra}")
    granite.load_state_dict(state, strict=not config.tie_word_embeddings)
    granite.save_pretrained(out_dir)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
    reloaded = GraniteMoeHybridForCausalLM.from_pretrained(out_dir, dtype=next(model.parameters()).dtype).eval()
    reloaded.set_attn_implementation("eager")
    was = model.config._attn_implementation
    model.set_attn_implementation("eager")
    g = torch.Generator().manual_seed(0)
    probe = torch.randint(0, config.vocab_size, (2, 33), generator=g)
    diff = (reloaded(probe).logits.float() - model.eval()(probe).logits.float()).abs().max().item()
    model.set_attn_implementation(was)
    if not diff <= atol:
        raise ValueError(f"export check failed: transformers' GraniteMoeHybrid logits differ from ours by {diff:.3e} "
                         f"(tolerance {atol})")
    return diff
