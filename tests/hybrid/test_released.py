"""Released MambaInLlama / M1 checkpoints, written by the tests in the published layout, load exactly."""
import json
import os

import pytest
import torch
from helpers import assert_close, tiny_teacher
from safetensors.torch import save_file

from distill import hybridize
from distill.cli import main
from hybrid import load_pretrained
from hybrid.released import load_released


def _published(model, variant: str) -> dict[str, torch.Tensor]:
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
    tensors = _published(model, variant)
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


CASES = [("mamba2", False, "single"), ("mamba2", True, "sharded"), ("mamba1", False, "bin"),
         ("mamba1", True, "single"), ("mamba1-fused", False, "sharded"), ("mamba1-fused", True, "single")]


@pytest.mark.parametrize("variant,tie,storage", CASES)
def test_released_layouts_load_every_tensor_exactly(tmp_path, variant, tie, storage):
    mixer = "mamba2" if variant == "mamba2" else "mamba"
    # released Mamba2 layers use mamba_ssm's gated-norm eps (1e-5) whatever the teacher's eps
    source = hybridize(tiny_teacher("llama", tie=tie), [1, 3], mixer=mixer, mamba_norm_eps=1e-5)
    folder = tmp_path / "ckpt"
    tensors = write_released(folder, source, variant, storage)
    model, found = load_released(str(folder))
    assert found == variant
    ours = model.state_dict()
    for k, v in _published(model, variant).items():  # (a) each file tensor landed, unchanged
        assert torch.equal(v, tensors[k]), k
    assert set(_published(model, variant)) == set(tensors)
    if tie:
        assert ours["lm_head.weight"].data_ptr() == ours["model.embed_tokens.weight"].data_ptr()
    ids = torch.randint(3, 97, (2, 12))
    model.set_attn_implementation("eager")
    with torch.no_grad():
        assert_close(model(ids).logits, source(ids).logits, atol=0, rtol=0)
        out = model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0)  # (c) generation works
    assert out.shape == (2, 16)


def test_all_attention_released_checkpoint_equals_the_base_model(tmp_path):
    teacher = tiny_teacher("llama")
    write_released(tmp_path, hybridize(teacher, [0, 1, 2, 3]), "mamba2")
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


def test_import_then_load_ours_gives_identical_logits(tmp_path):
    source = hybridize(tiny_teacher("llama"), [1, 3], mixer="mamba")
    write_released(tmp_path / "rel", source, "mamba1-fused")
    assert main(["import", "--from", str(tmp_path / "rel"), "--out", str(tmp_path / "ours")]) == 0
    assert not os.path.exists(tmp_path / "ours" / "mamba_config.json")
    ours, _ = load_pretrained(str(tmp_path / "ours"))
    rel, _ = load_pretrained(str(tmp_path / "rel"))
    ids = torch.randint(3, 97, (2, 10))
    with torch.no_grad():
        assert_close(ours(ids).logits, rel(ids).logits, atol=0, rtol=0)


def test_released_bad_inputs(tmp_path):
    source = hybridize(tiny_teacher("llama"), [1, 3])
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
