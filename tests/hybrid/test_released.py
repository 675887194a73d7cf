"""Released MambaInLlama / M1 checkpoints, written by the tests in the published layout, load exactly."""
import json
import os

import pytest
import torch
from helpers import assert_close, published_layout, tiny_hybrid, write_released
from safetensors.torch import save_file

from hybrid.released import load_released


CASES = [("mamba2", False, "single"), ("mamba2", True, "sharded"), ("mamba1", False, "bin"),
         ("mamba1", True, "single"), ("mamba1-fused", False, "sharded"), ("mamba1-fused", True, "single")]


@pytest.mark.parametrize("variant,tie,storage", CASES)
def test_released_layouts_load_every_tensor_exactly(tmp_path, variant, tie, storage):
    mixer = "mamba2" if variant == "mamba2" else "mamba"
    # released Mamba2 layers use mamba_ssm's gated-norm eps (1e-5) whatever the teacher's eps
    source = tiny_hybrid("llama", [1, 3], mixer=mixer, tie=tie, mamba_norm_eps=1e-5)
    folder = tmp_path / "ckpt"
    tensors = write_released(folder, source, variant, storage)
    model, found = load_released(str(folder))
    assert found == variant
    ours = model.state_dict()
    for k, v in published_layout(model, variant).items():  # (a) each file tensor landed, unchanged
        assert torch.equal(v, tensors[k]), k
    assert set(published_layout(model, variant)) == set(tensors)
    if tie:
        assert ours["lm_head.weight"].data_ptr() == ours["model.embed_tokens.weight"].data_ptr()
    ids = torch.randint(3, 97, (2, 12))
    model.set_attn_implementation("eager")
    with torch.no_grad():
        assert_close(model(ids).logits, source(ids).logits, atol=0, rtol=0)
        out = model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0)  # (c) generation works
    assert out.shape == (2, 16)


def test_all_attention_released_checkpoint_equals_the_base_model(tmp_path):
    write_released(tmp_path, tiny_hybrid("llama", [0, 1, 2, 3]), "mamba2")
    model, variant = load_released(str(tmp_path))
    assert variant == "attention-only"
    # the base config's own model, built from config.json alone, with the same weights
    from transformers import AutoConfig, AutoModelForCausalLM
    base = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(tmp_path))
    from safetensors.torch import load_file
    base.load_state_dict(load_file(tmp_path / "model.safetensors"))
    base.set_attn_implementation("sdpa")
    model.set_attn_implementation("sdpa")
    ids = torch.randint(3, 97, (2, 10))
    with torch.no_grad():
        assert_close(model(ids).logits, base.eval()(ids).logits, atol=0, rtol=0)


def test_released_bad_inputs(tmp_path):
    source = tiny_hybrid("llama", [1, 3])
    # config.json without mamba_config.json
    plain = tmp_path / "plain"
    os.makedirs(plain)
    (plain / "config.json").write_text(json.dumps(source.config.teacher_config.to_dict()))
    with pytest.raises(ValueError, match="mamba_config.json is missing"):
        load_released(str(plain))
    # truncated safetensors: a clear error, nothing returned
    folder = tmp_path / "trunc"
    write_released(folder, source, "mamba2")
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated"):
        load_released(str(folder))
    # a mis-shaped tensor: key and both shapes
    folder = tmp_path / "shape"
    tensors = write_released(folder, source, "mamba2")
    tensors["model.layers.0.mamba.D"] = torch.zeros(7)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"model\.layers\.0\.mamba\.D has shape \(7,\), but .* needs \(4,\)"):
        load_released(str(folder))
    # a missing and a left-over tensor are listed
    tensors = write_released(folder, source, "mamba2")
    del tensors["model.layers.2.mamba.A_log"]
    tensors["model.layers.2.mamba.mystery"] = torch.zeros(1)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"missing tensors \['model.layers.2.mamba.A_log'\]; unused tensors "
                                         r"\['model.layers.2.mamba.mystery'\]"):
        load_released(str(folder))
