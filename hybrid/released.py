"""Released MambaInLlama / M1 checkpoints -> HybridForCausalLM, without downloading the base model.

A released folder holds the teacher's `config.json`, a `mamba_config.json` (d_model, ssm_cfg, d_inner, d_xb,
n_layer, attn_layers, ...), weights (`model.safetensors`, sharded safetensors with an index, or
`pytorch_model.bin`), and tokenizer files. The variant is read off the weight names:

    mamba2          model.layers.{i}.mamba.{in_proj, conv1d, dt_bias, A_log, D, norm, out_proj}
    mamba1          model.layers.{i}.mamba.{in_proj_x, in_proj_z, B_proj, C_proj, dt_proj_down, dt_proj, ...}
    mamba1-fused    (M1) model.layers.{i}.mamba.in_proj = rows [z; x; B; C; dt_low_rank], plus dt_proj, ...
Attention layers are HF `self_attn.{q,k,v,o}_proj`, or M1's `mha.in_proj` (rows [q; k; v]) and `mha.out_proj`.

Loading is all-or-nothing: every tensor is read and checked (shape, used exactly once) before any is assigned;
a missing or left-over tensor is a ValueError listing them. `pytorch_model.bin` is read with weights_only=True and
nothing executes checkpoint code. RoPE follows config.json, `rope_scaling` included (the family's own inference
code ignores rope_scaling although their training used it; we apply it, as the teacher's code does).
"""
from __future__ import annotations

import json
import logging
import math
import os

import torch

from .config import HybridConfig
from .mixers.mamba2 import RELEASED_GATED_NORM_EPS

logger = logging.getLogger(__name__)


def is_released_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "config.json")) and os.path.isfile(os.path.join(path, "mamba_config.json"))


def read_tensors(path: str) -> dict[str, torch.Tensor]:
    """All weights of a folder: single or sharded safetensors, or pytorch_model.bin (weights only)."""
    from safetensors.torch import load_file

    index = os.path.join(path, "model.safetensors.index.json")
    files = []
    if os.path.isfile(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    elif os.path.isfile(os.path.join(path, "model.safetensors")):
        files = ["model.safetensors"]
    tensors: dict[str, torch.Tensor] = {}
    if files:
        for name in files:
            full = os.path.join(path, name)
            if not os.path.isfile(full):
                raise ValueError(f"{path}: the index names {name}, which is missing")
            try:
                tensors.update(load_file(full))
            except Exception as err:  # noqa: BLE001 - safetensors raises its own error types
                raise ValueError(f"{full}: cannot read safetensors ({err}); is the file truncated?") from None
        return tensors
    binary = os.path.join(path, "pytorch_model.bin")
    if os.path.isfile(binary):
        try:
            return torch.load(binary, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001
            raise ValueError(f"{binary}: cannot read ({err})") from None
    raise ValueError(f"{path}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin")


def detect_variant(tensors, all_attention: bool = False) -> str:
    keys = list(tensors)
    if all_attention and not any(".mamba." in k for k in keys):
        return "attention-only"
    if any(k.endswith("mamba.dt_bias") for k in keys):
        return "mamba2"
    if any(k.endswith("mamba.in_proj_x.weight") for k in keys):
        return "mamba1"
    if any(k.endswith("mamba.dt_proj.weight") for k in keys):
        return "mamba1-fused"
    raise ValueError("no Mamba layer weights found (expected model.layers.{i}.mamba.* keys)")


def released_config(path: str, tensors) -> tuple[HybridConfig, str]:
    for name in ("config.json", "mamba_config.json"):
        if not os.path.isfile(os.path.join(path, name)):
            raise ValueError(f"{path} is not a MambaInLlama / M1 checkpoint: {name} is missing")
    with open(os.path.join(path, "config.json")) as f:
        teacher = json.load(f)
    with open(os.path.join(path, "mamba_config.json")) as f:
        mcfg = json.load(f)
    if "model_type" not in teacher:
        raise ValueError(f"{path}/config.json has no model_type")
    for key in ("attn_layers",):
        if key not in mcfg:
            raise ValueError(f"{path}/mamba_config.json has no {key!r}")
    n = teacher["num_hidden_layers"]
    variant = detect_variant(tensors, all_attention=set(mcfg["attn_layers"]) >= set(range(n)))
    if mcfg.get("n_layer", n) != n:
        raise ValueError(f"mamba_config n_layer={mcfg['n_layer']} != config.json num_hidden_layers={n}")
    mixer = "mamba2" if variant == "mamba2" else "mamba"
    attn = set(mcfg["attn_layers"])
    bad = sorted(i for i in attn if not 0 <= i < n)
    if bad:
        raise ValueError(f"mamba_config attn_layers {bad} out of range for {n} layers")
    layer_types = ["attention" if i in attn else mixer for i in range(n)]
    kw = {}
    ssm = mcfg.get("ssm_cfg") or {}
    if mixer == "mamba" and "mamba" in layer_types:
        d_model = mcfg.get("d_model", teacher["hidden_size"])
        kw["mamba_d_inner"] = mcfg.get("d_inner") or ssm.get("expand", 1) * d_model
        kw["mamba_d_state"] = ssm.get("d_state", 16)
        i = layer_types.index("mamba")
        down = tensors.get(f"model.layers.{i}.mamba.dt_proj.weight")
        kw["mamba_dt_rank"] = int(down.shape[1]) if down is not None else math.ceil(d_model / 16)
    if mixer == "mamba2":
        kw["mamba_norm_eps"] = RELEASED_GATED_NORM_EPS
    config = HybridConfig(teacher_config=teacher, layer_types=layer_types, **kw)
    if mixer == "mamba2":
        for name, want in (("d_inner", config.d_inner), ("d_xb", config.d_xb)):
            if mcfg.get(name) is not None and mcfg[name] != want:
                raise ValueError(f"mamba_config {name}={mcfg[name]} but the teacher config implies {want}")
    return config, variant


def _remap(key: str, tensor, config: HybridConfig, variant: str) -> list[tuple[str, torch.Tensor]]:
    """A released tensor name -> our name(s) (fused tensors are split)."""
    parts = key.split(".")
    if len(parts) > 3 and parts[1] == "layers" and parts[3] == "mha":
        i = parts[2]
        if parts[4] == "in_proj":
            q, kv = config.d_inner, config.d_xb
            rows = torch.split(tensor, [q, kv, kv], dim=0)
            return [(f"model.layers.{i}.self_attn.{n}_proj.{parts[-1]}", r) for n, r in zip("qkv", rows)]
        if parts[4] == "out_proj":
            return [(f"model.layers.{i}.self_attn.o_proj.{parts[-1]}", tensor)]
    if variant == "mamba1-fused" and key.endswith("mamba.in_proj.weight"):
        prefix = key[: -len("in_proj.weight")]
        di, dxb, r = config.d_inner_mamba, config.d_xb, config.dt_rank_mamba
        if tensor.shape[0] != 2 * di + 2 * dxb + r:
            raise ValueError(f"{key}: shape {tuple(tensor.shape)} is not rows z, x, B, C, dt ({2 * di + 2 * dxb + r})")
        z, x, B, C, dt = torch.split(tensor, [di, dxb, dxb, di, r], dim=0)
        return [(prefix + "in_proj_z.weight", z), (prefix + "in_proj_x.weight", x), (prefix + "B_proj.weight", B),
                (prefix + "C_proj.weight", C), (prefix + "dt_proj_down.weight", dt)]
    return [(key, tensor)]


def load_released(path: str, dtype=None):
    """(HybridForCausalLM, variant) from a MambaInLlama / M1 folder; strict, all-or-nothing."""
    from .modeling import HybridForCausalLM

    for name in ("config.json", "mamba_config.json"):
        if not os.path.isfile(os.path.join(path, name)):
            raise ValueError(f"{path} is not a MambaInLlama / M1 checkpoint: {name} is missing")
    tensors = read_tensors(path)
    config, variant = released_config(path, tensors)
    mapped: dict[str, torch.Tensor] = {}
    source: dict[str, str] = {}
    for key, t in tensors.items():
        for name, part in _remap(key, t, config, variant):
            if name in mapped:
                raise ValueError(f"{path}: {key} and {source[name]} both fill {name}")
            mapped[name], source[name] = part, key
    with torch.device("meta"):
        model = HybridForCausalLM(config)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    tied = config.tie_word_embeddings
    missing = sorted(k for k in expected if k not in mapped and not (tied and k == "lm_head.weight"))
    unused = sorted(source[k] for k in mapped if k not in expected)
    if missing or unused:
        raise ValueError(f"{path} ({variant}): missing tensors {missing}; unused tensors {unused}")
    for k, t in mapped.items():
        if tuple(t.shape) != tuple(expected[k]):
            raise ValueError(f"{path}: {source[k]} has shape {tuple(t.shape)}, but {k} needs {tuple(expected[k])}")
    dtype = dtype or next(iter(mapped.values())).dtype
    model = HybridForCausalLM(config).to(dtype)
    model.load_state_dict({k: v.to(dtype) for k, v in mapped.items()}, strict=not tied or "lm_head.weight" in mapped)
    if tied:
        model.tie_weights()
    layers = ", ".join(str(i) for i in config.attention_layers)
    logger.warning("loaded %s checkpoint %s: %d layers, attention at [%s]", variant, path, config.num_hidden_layers,
                   layers)
    return model.eval(), variant
