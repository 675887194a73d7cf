"""Shared test harness: tiny random teachers of each supported family, tiny hybrids built from them through the
hybrid package alone, and one assert_close."""
from __future__ import annotations

import contextlib
import copy

import torch
from transformers import (LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, Qwen2Config,
                          Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM)

# Tolerances per dtype: (atol, rtol).
TOL = {torch.float32: (1e-5, 1e-5), torch.bfloat16: (2e-2, 2e-2), torch.float16: (2e-3, 2e-3)}


def assert_close(actual, expected, atol=None, rtol=None, what=""):
    """torch.testing-style check whose message always reports max abs and max relative error."""
    a, e = actual.detach().float(), expected.detach().float()
    assert a.shape == e.shape, f"{what}: shape {tuple(a.shape)} != {tuple(e.shape)}"
    d_atol, d_rtol = TOL.get(actual.dtype, TOL[torch.float32])
    atol = d_atol if atol is None else atol
    rtol = d_rtol if rtol is None else rtol
    err = (a - e).abs()
    rel = err / e.abs().clamp(min=1e-6)
    ok = bool((err <= atol + rtol * e.abs()).all()) and bool(torch.isfinite(a).all() == torch.isfinite(e).all())
    assert ok, f"{what}: max abs err {err.max().item():.3e}, max rel err {rel.max().item():.3e} (atol {atol}, rtol {rtol})"


FAMILIES = ("llama", "qwen2", "qwen3", "mistral")


def tiny_teacher(family: str = "llama", num_layers: int = 4, seed: int = 0, tie: bool = False, **overrides):
    """A random teacher with GQA (4 query heads, 2 kv heads) and the family's quirks switched on:
    qwen2 qkv bias, qwen3 q/k norms with an explicit head_dim != hidden/heads, mistral a short sliding window,
    llama a rope_scaling entry."""
    torch.manual_seed(seed)
    common = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=num_layers,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                  tie_word_embeddings=tie, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    common.update(overrides)
    if family == "llama":
        cfg = LlamaConfig(**common, rope_scaling={"rope_type": "linear", "factor": 2.0})
        cls = LlamaForCausalLM
    elif family == "qwen2":
        cfg, cls = Qwen2Config(**common), Qwen2ForCausalLM
    elif family == "qwen3":
        cfg, cls = Qwen3Config(**{**common, "head_dim": 24}), Qwen3ForCausalLM
    elif family == "mistral":
        cfg, cls = MistralConfig(**{"sliding_window": 16, **common}), MistralForCausalLM
    else:
        raise ValueError(family)
    cfg._attn_implementation = "eager"
    model = cls(cfg).eval()
    with torch.no_grad():  # non-trivial biases and norms, so that a dropped weight shows up
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


HYBRID_FIELDS = ("d_conv", "conv_bias", "chunk_size", "mamba_d_state", "mamba_d_inner", "mamba_dt_rank",
                 "mamba_norm_eps")


@torch.no_grad()
def tiny_hybrid(family: str = "llama", attn_layers=None, mixer: str = "mamba2", num_layers: int = 4, seed: int = 0,
                teacher=None, **overrides):
    """A hybrid of `teacher` (default: `tiny_teacher(family, num_layers, seed)`) keeping attention at `attn_layers`
    (default: the odd layers) and `mixer` elsewhere, built with the hybrid package only (no distill).

    Everything the hybrid shares with the teacher is the teacher's, copied by key (the hybrid keeps the teacher's
    names: embeddings, final norm, lm_head, every layer's norms and MLP, the kept layers' self_attn); the mixers keep
    their default init (no attention -> Mamba transfer: that is distill's, tested in tests/distill/conversion/).
    `overrides` are HybridConfig fields (chunk_size, mamba_norm_eps, ...) and, without `teacher`, tiny_teacher
    arguments (tie, ...)."""
    from hybrid.config import HybridConfig, layer_types_from_attention
    from hybrid.modeling import HybridForCausalLM

    settings = {k: overrides.pop(k) for k in list(overrides) if k in HYBRID_FIELDS}
    if teacher is None:
        teacher = tiny_teacher(family, num_layers=num_layers, seed=seed, **overrides)
    elif overrides:
        raise TypeError(f"unknown settings {sorted(overrides)} for a given teacher")
    n = teacher.config.num_hidden_layers
    attn = range(1, n, 2) if attn_layers is None else attn_layers
    config = HybridConfig(teacher_config=copy.deepcopy(teacher.config).to_dict(),
                          layer_types=layer_types_from_attention(n, attn, mixer), **settings)
    ref = next(teacher.parameters())
    model = HybridForCausalLM(config).to(device=ref.device, dtype=ref.dtype)
    model.config._attn_implementation_internal = teacher.config._attn_implementation  # the tiny teachers: eager
    model.sync_teacher_attention()
    keys = model.state_dict().keys()
    missing, unexpected = model.load_state_dict({k: v for k, v in teacher.state_dict().items() if k in keys},
                                                strict=False)
    missing = [k for k in missing if ".mamba." not in k and not (k == "lm_head.weight" and config.tie_word_embeddings)]
    assert not missing and not unexpected, (missing, unexpected)
    return model.train(teacher.training)


# Released MambaInLlama / M1 checkpoints, written by the tests in the published layout.
def published_layout(model, variant: str) -> dict[str, torch.Tensor]:
    """Our hybrid's weights renamed into the published layout of `variant`."""
    out = {k: v.clone() for k, v in model.state_dict().items()}
    if variant == "mamba1-fused":
        for i in model.config.mixer_layers:
            p = f"model.layers.{i}.mamba."
            parts = [out.pop(p + n + ".weight") for n in ("in_proj_z", "in_proj_x", "B_proj", "C_proj", "dt_proj_down")]
            out[p + "in_proj.weight"] = torch.cat(parts, 0)
        for i in model.config.attention_layers:
            p = f"model.layers.{i}.self_attn."
            out[f"model.layers.{i}.mha.in_proj.weight"] = torch.cat([out.pop(p + f"{n}_proj.weight") for n in "qkv"], 0)
            out[f"model.layers.{i}.mha.out_proj.weight"] = out.pop(p + "o_proj.weight")
    if model.config.tie_word_embeddings:
        out.pop("lm_head.weight", None)
    return out


def write_released(folder, model, variant: str, storage: str = "single"):
    """`model` written into `folder` (a pathlib.Path) as a released MambaInLlama / M1 checkpoint of `variant`
    ("mamba2", "mamba1", "mamba1-fused") stored as `storage` ("single", "sharded" or "bin"); returns the tensors."""
    import json
    import os

    from safetensors.torch import save_file

    os.makedirs(folder, exist_ok=True)
    cfg = model.config
    t = cfg.teacher_config.to_dict()
    t["_name_or_path"] = "meta-llama/base-model-we-must-not-download"
    (folder / "config.json").write_text(json.dumps(t))
    if variant == "mamba2":
        mcfg = {"d_model": cfg.hidden_size, "ssm_cfg": {"expand": 1, "ngroups": cfg.num_attention_heads,
                "d_state": cfg.head_dim}, "rms_norm_eps": 1e-5, "vocab_size": None, "d_inner": cfg.d_inner,
                "d_xb": cfg.d_xb, "intermediate_size": cfg.teacher_config.intermediate_size, "hidden_act": "silu",
                "n_layer": cfg.num_hidden_layers, "attn_layers": cfg.attention_layers}
    else:
        mcfg = {"d_model": cfg.hidden_size, "ssm_cfg": {"expand": 1}, "rms_norm_eps": 1e-5, "vocab_size": None,
                "d_inner": None, "d_xb": cfg.d_xb, "intermediate_size": cfg.teacher_config.intermediate_size,
                "hidden_act": "silu", "n_layer": cfg.num_hidden_layers, "attn_layers": cfg.attention_layers}
    (folder / "mamba_config.json").write_text(json.dumps(mcfg))
    tensors = published_layout(model, variant)
    if storage == "single":
        save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    elif storage == "sharded":
        keys = sorted(tensors)
        halves = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2],
                  "model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
        for name, ks in halves.items():
            save_file({k: tensors[k] for k in ks}, folder / name, metadata={"format": "pt"})
        (folder / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {}, "weight_map": {k: n for n, ks in halves.items() for k in ks}}))
    else:
        torch.save(tensors, folder / "pytorch_model.bin")
    return tensors


CHAT_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'][0] }}>{{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<a>{% endif %}"
)


def tiny_tokenizer():
    """A character-level tokenizer with 97 ids (the tiny teachers' vocab) and a small chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<u>", "<a>", "<s_>", "<unk>"]
    chars = [chr(c) for c in range(32, 32 + 97 - len(specials))]
    vocab = {t: i for i, t in enumerate(specials + chars)}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                  unk_token="<unk>", additional_special_tokens=["<u>", "<a>"])
    tok.chat_template = CHAT_TEMPLATE
    return tok


@contextlib.contextmanager
def no_host_reads():
    """Fail on any read of a tensor's value into Python (bool(), .item(), .tolist(), int(), indexing with a tensor):
    on CUDA each is a device synchronisation, which a CUDA graph capture cannot contain."""
    names = ["__bool__", "item", "tolist", "__int__", "__float__", "__index__", "numpy"]
    saved = {n: getattr(torch.Tensor, n) for n in names}

    def refuse(name):
        def f(self, *args, **kwargs):
            raise RuntimeError(f"host read of a tensor value: Tensor.{name}")
        return f

    for n in names:
        setattr(torch.Tensor, n, refuse(n))
    try:
        yield
    finally:
        for n, f in saved.items():
            setattr(torch.Tensor, n, f)


def tiny_rows(n_docs=48, seed=0, seq_len=32):
    """Packed training rows of random documents of 5-19 tokens over the tiny vocabulary (distill.data.pack)."""
    from distill.data import pack  # here: hybrid-level tests import this module without distill
    g = torch.Generator().manual_seed(seed)
    docs = []
    for _ in range(n_docs):
        d = torch.randint(3, 97, (int(torch.randint(5, 20, (1,), generator=g)),), generator=g).tolist()
        docs.append((d, d))
    return pack(docs, seq_len, pad_id=0)


def ssd_inputs(b, T, H, P, G, N, seed=0):
    """Random inputs of the SSD scan (backends.ssd_scan): x [b, T, H, P], dt [b, T, H] (after softplus, as the mixer
    passes it), A [H] (negative), B and C [b, T, G, N], D [H], an initial state [b, H, P, N]."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, T, H, P, generator=g)
    dt = torch.rand(b, T, H, generator=g) * 0.5 + 0.01
    A = -torch.rand(H, generator=g) * 2 - 0.1
    B = torch.randn(b, T, G, N, generator=g)
    C = torch.randn(b, T, G, N, generator=g)
    D = torch.randn(H, generator=g)
    s0 = torch.randn(b, H, P, N, generator=g)
    return x, dt, A, B, C, D, s0


def count_csrc_calls(monkeypatch) -> dict[str, int]:
    """Calls of each csrc kernel from now to the end of the test, by kernel name: the loaded extension is swapped
    for a proxy that counts and forwards (the custom ops look it up at every call, inside compiled graphs too)."""
    from hybrid.ops import csrc
    ext, calls = csrc.extension(), {}

    class Counting:
        def __getattr__(self, name):
            fn = getattr(ext, name)

            def counted(*args):
                calls[name] = calls.get(name, 0) + 1
                return fn(*args)
            return counted

    monkeypatch.setitem(csrc._state, "module", Counting())
    return calls
