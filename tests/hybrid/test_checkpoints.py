"""Save / load round trips and the errors a user sees on bad input."""
import json
import os

import pytest
import torch
from helpers import assert_close, tiny_hybrid, tiny_teacher
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from hybrid import HybridConfig, load_pretrained


@pytest.mark.parametrize("mixer,tie", [("mamba2", False), ("mamba2", True), ("mamba", False)])
def test_save_load_round_trip(tmp_path, mixer, tie):
    teacher = tiny_teacher("llama", tie=tie)
    model = tiny_hybrid(attn_layers=[1], mixer=mixer, teacher=teacher)
    model.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["model_type"] == "hybrid" and cfg["layer_types"][1] == "attention" and "teacher_config" in cfg
    loaded, tok = load_pretrained(str(tmp_path))
    assert tok is None
    assert loaded.config.layer_types == model.config.layer_types
    loaded.set_attn_implementation(model.config._attn_implementation)  # the tiny teacher runs eager
    ids = torch.randint(3, 97, (2, 17))
    with torch.no_grad():
        assert_close(loaded(ids).logits, model(ids).logits, atol=0, rtol=0)
        g1 = model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=0)
        g2 = loaded.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert torch.equal(g1, g2)
    if tie:
        assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()
    # the Auto classes know the type once `hybrid` is imported
    auto = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert type(auto).__name__ == "HybridForCausalLM"


def test_unknown_layer_type_names_it():
    teacher = tiny_teacher("llama")
    with pytest.raises(ValueError, match=r"layer_types\[2\]='mamba3'"):
        HybridConfig(teacher_config=teacher.config, layer_types=["attention", "mamba2", "mamba3", "attention"])
    with pytest.raises(ValueError, match="4 entries|num_hidden_layers=4"):
        HybridConfig(teacher_config=teacher.config, layer_types=["attention"] * 3)


def test_attention_index_out_of_range_names_it():
    teacher = tiny_teacher("llama")
    with pytest.raises(ValueError, match=r"\[7\] out of range for a 4-layer teacher"):
        tiny_hybrid(attn_layers=[1, 7], teacher=teacher)
    with pytest.raises(ValueError, match="mixer='mamba3'"):
        tiny_hybrid(attn_layers=[1], mixer="mamba3", teacher=teacher)


def _saved(tmp_path):
    model = tiny_hybrid("llama", [1, 3])
    model.save_pretrained(tmp_path)
    return tmp_path / "model.safetensors"


def test_missing_key_is_an_error_naming_it(tmp_path):
    path = _saved(tmp_path)
    tensors = load_file(path)
    del tensors["model.layers.0.mamba.A_log"]
    save_file(tensors, path, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"missing_keys.*model\.layers\.0\.mamba\.A_log"):
        load_pretrained(str(tmp_path))


def test_unexpected_key_is_an_error_naming_it(tmp_path):
    path = _saved(tmp_path)
    tensors = load_file(path)
    tensors["model.layers.0.mamba.extra_thing"] = torch.zeros(3)
    save_file(tensors, path, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"unexpected_keys.*model\.layers\.0\.mamba\.extra_thing"):
        load_pretrained(str(tmp_path))


def test_mismatched_shape_is_an_error_naming_it(tmp_path):
    path = _saved(tmp_path)
    tensors = load_file(path)
    tensors["model.layers.0.mamba.D"] = torch.zeros(5)
    save_file(tensors, path, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"model\.layers\.0\.mamba\.D: checkpoint \(5,\) vs model \(4,\)"):
        load_pretrained(str(tmp_path))


def test_bad_layer_type_in_saved_config_names_it(tmp_path):
    _saved(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["layer_types"][0] = "rwkv"
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="rwkv"):
        load_pretrained(str(tmp_path))


def test_bad_specs(tmp_path):
    with pytest.raises(ValueError, match="nothing.gguf: no such file"):
        load_pretrained(str(tmp_path / "nothing.gguf"))
    os.makedirs(tmp_path / "empty")
    with pytest.raises(ValueError, match="no config.json"):
        load_pretrained(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="dtype='float8'"):
        load_pretrained(str(tmp_path / "empty"), dtype="float8")


def test_plain_transformers_dir_loads_as_teacher(tmp_path):
    teacher = tiny_teacher("qwen2")
    teacher.save_pretrained(tmp_path)
    model, tok = load_pretrained(str(tmp_path), tokenizer=False)
    assert type(model).__name__ == "Qwen2ForCausalLM" and tok is None
    ids = torch.randint(3, 97, (1, 9))
    model.set_attn_implementation("eager")
    with torch.no_grad():
        assert_close(model(ids).logits, teacher(ids).logits, atol=0, rtol=0)
