"""Shared test harness: tiny random teachers of each supported family, and one assert_close."""
from __future__ import annotations

import contextlib

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
