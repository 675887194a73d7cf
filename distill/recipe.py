"""Recipes: YAML files parsed into dataclasses, strictly.

An unknown key, a wrong type or an invalid value is a ValueError naming the file, the key and the value.
Floats may be written 3e-4: YAML 1.1 (PyYAML) reads an exponent without a dot as a string, so the loader resolves
such scalars as floats, and a float field also takes a numeric string ("1E-5", "1e4"; never "abc", "nan" or "inf").
A recipe may carry `profiles: {name: {dotted.key: value, ...}}`; choosing a profile applies its overrides,
and `--set dotted.key=value` on the command line applies last. `validate_recipe` checks a recipe folder's distill
recipe against the loss registry and the teacher's committed config (the pipeline calls it on every load).
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import typing
from dataclasses import dataclass, field

import yaml

from .data import DataSpec
from .train import TrainArgs


@dataclass
class CorpusRecipe:
    """Sequence-level KD data: the teacher's own answers to prompts (a .jsonl/.txt file, or N synthetic ones)."""
    prompts: str | int = 256  # a count of synthetic prompts, a tasks spec (long:train:...) or a .jsonl/.txt file
    n: int | None = None  # prompts drawn from a tasks spec (default 256); a cap on a file's
    max_new_tokens: int = 96
    batch_size: int = 16
    temperature: float = 0.7
    top_p: float = 0.95
    seed: int = 0


@dataclass
class DataRecipe(DataSpec):
    """A DataSpec (format, fields, masking) plus packing and held-out sizes; no source: sample a corpus."""
    source: str | None = None
    seq_len: int = 256
    eval_rows: int = 8
    max_records: int | None = None
    corpus: CorpusRecipe = field(default_factory=CorpusRecipe)


@dataclass
class SelectRecipe:
    strategy: str = "uniform"
    params: dict = field(default_factory=dict)


@dataclass
class AlignRecipe(TrainArgs):
    steps: int = 0  # 0 skips the stage


@dataclass
class KDRecipe(TrainArgs):
    steps: int = 0
    loss: dict = field(default_factory=lambda: {"kl": 1.0})
    temperature: float = 1.0
    alpha: float = 0.5
    train: str = "mixers+mlp"
    loss_chunk: int | None = 1024  # token rows per chunk of the vocabulary loss (losses.VocabLoss); null: all at once
    teacher_dtype: str | None = None  # the frozen teacher's forward in this dtype (a copy), e.g. bfloat16; null: as is
    teacher_packed: bool = False  # the frozen teacher's CPU linears on oneDNN-packed weights, packed once a stage

    def __post_init__(self):
        super().__post_init__()
        if self.loss_chunk is not None and (not isinstance(self.loss_chunk, int) or self.loss_chunk < 1):
            raise ValueError(f"kd.loss_chunk={self.loss_chunk!r} must be a positive integer or null")
        if self.teacher_dtype not in (None, "float32", "bfloat16", "float16"):
            raise ValueError(f"kd.teacher_dtype={self.teacher_dtype!r} is not one of float32, bfloat16, float16, null")


@dataclass
class OnPolicyRecipe(TrainArgs):
    """On-policy distillation (distill.conversion.onpolicy): the student samples `prompts`, learns the teacher's
    distribution on its samples (reverse KL). batch_size: prompts (one sample each) per micro-batch."""
    steps: int = 0  # 0 skips the phase
    prompts: str | int = "synthetic:train"  # a tasks spec, a count of synthetic prompts, or a .jsonl/.txt file
    n: int | None = 256  # prompts drawn from a tasks spec
    max_new_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    train: str = "mixers+mlp"
    loss_chunk: int | None = 1024
    teacher_dtype: str | None = None
    teacher_packed: bool = False

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"onpolicy.max_new_tokens={self.max_new_tokens!r} must be a positive integer")
        if not self.temperature > 0:
            raise ValueError(f"onpolicy.temperature={self.temperature!r} must be positive (the student samples)")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"onpolicy.top_p={self.top_p!r} must lie in (0, 1]")
        if self.loss_chunk is not None and (not isinstance(self.loss_chunk, int) or self.loss_chunk < 1):
            raise ValueError(f"onpolicy.loss_chunk={self.loss_chunk!r} must be a positive integer or null")
        if self.teacher_dtype not in (None, "float32", "bfloat16", "float16"):
            raise ValueError(f"onpolicy.teacher_dtype={self.teacher_dtype!r} is not one of float32, bfloat16, "
                             "float16, null")


@dataclass
class DistillRecipe:
    teacher: str = "smollm2-135m"
    mixer: str = "mamba2"
    schedule: list = field(default_factory=lambda: [0.5])  # keep ratios of attention, stage after stage
    select: SelectRecipe = field(default_factory=SelectRecipe)
    data: DataRecipe = field(default_factory=DataRecipe)
    align: AlignRecipe = field(default_factory=AlignRecipe)
    kd: KDRecipe = field(default_factory=KDRecipe)
    onpolicy: OnPolicyRecipe = field(default_factory=OnPolicyRecipe)
    chunk_size: int = 128
    seed: int = 0
    dtype: str = "float32"
    eval_batch_size: int = 4
    profiles: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.mixer not in ("mamba2", "mamba"):
            raise ValueError(f"mixer={self.mixer!r} is not one of mamba2, mamba")
        if not self.schedule:
            raise ValueError("schedule is empty: give at least one keep ratio")
        prev = 1.0
        for r in self.schedule:
            if not isinstance(r, (int, float)) or not 0 < r <= 1:
                raise ValueError(f"schedule keep-ratio {r!r} must lie in (0, 1]")
            if r > prev:
                raise ValueError(f"schedule {self.schedule} must not increase (a stage only replaces more layers)")
            prev = r


_NUMBER = re.compile(r"[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads 3e-4 as a float (YAML 1.2 does; 1.1 wants 3.0e-4)."""


_EXPONENT = re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT, list("-+0123456789"))


def _coerce(value, tp, where: str):
    """`value` checked against type hint `tp`: itself, or a float where `tp` wants one and it is a numeric string."""
    origin = typing.get_origin(tp)
    if tp is typing.Any:
        return value
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        for arg in typing.get_args(tp):
            try:
                return _coerce(value, arg, where)
            except ValueError:
                continue
        raise ValueError(f"{where}={value!r} has the wrong type (expected {tp})")
    if tp is type(None):
        if value is not None:
            raise ValueError(f"{where}={value!r} must be null")
        return value
    base = origin or tp
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        return value
    if base is float and isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        return float(value)
    if base is int and isinstance(value, bool):
        raise ValueError(f"{where}={value!r} must be an integer")
    if isinstance(base, type) and not isinstance(value, base):
        raise ValueError(f"{where}={value!r} must be {base.__name__}")
    if base is list and typing.get_args(tp) and isinstance(value, list):
        return [_coerce(v, typing.get_args(tp)[0], f"{where}[{i}]") for i, v in enumerate(value)]
    return value


def from_dict(cls, data: dict, file: str = "<recipe>", prefix: str = ""):
    """Build dataclass `cls` from `data`, naming file and key in every error."""
    if not isinstance(data, dict):
        raise ValueError(f"{file}: {prefix.rstrip('.') or 'recipe'} must be a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        where = f"{prefix}{key}"
        if key not in fields:
            raise ValueError(f"{file}: unknown key {where!r} (valid keys: {', '.join(sorted(fields))})")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = from_dict(tp, value, file, f"{where}.")
            continue
        try:
            kwargs[key] = _coerce(value, tp, where)
        except ValueError as err:
            raise ValueError(f"{file}: {err}") from None
    try:
        return cls(**kwargs)
    except ValueError as err:
        raise ValueError(f"{file}: {prefix.rstrip('.') or 'recipe'}: {err}") from None


def _set_dotted(data: dict, dotted: str, value, file: str):
    keys = dotted.split(".")
    node = data
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ValueError(f"{file}: override {dotted!r}: {k!r} is not a mapping")
    node[keys[-1]] = value


def load_recipe(path: str, cls=DistillRecipe, profile: str | None = None, overrides: list[str] = ()):
    """Parse a YAML recipe, apply a profile and `key=value` overrides, and validate."""
    with open(path, encoding="utf-8") as f:
        data = yaml.load(f, Loader=_Loader) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a recipe must be a mapping of keys, got {type(data).__name__}")
    if profile is not None:
        profiles = data.get("profiles") or {}
        if profile not in profiles:
            raise ValueError(f"{path}: no profile {profile!r} (profiles: {sorted(profiles)})")
        for dotted, value in (profiles[profile] or {}).items():
            _set_dotted(data, dotted, value, path)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--set {item!r} must look like key=value")
        dotted, raw = item.split("=", 1)
        _set_dotted(data, dotted.strip(), yaml_value(raw), "--set")
    return from_dict(cls, data, path)


def yaml_value(raw: str):
    """One value as a recipe file or `--set` reads it (3e-4 is a float)."""
    return yaml.load(raw, Loader=_Loader)


def recipe_to_dict(recipe) -> dict:
    return dataclasses.asdict(recipe)


# ---------------- checks against the teacher ----------------
FAMILIES = ("llama", "qwen2", "qwen3", "mistral")


def validate_recipe(recipe: DistillRecipe, folder: str) -> None:
    """Check a recipe folder's distill recipe beyond its types: registered KD losses, a chunk size the scan
    takes, and, with a committed teacher_config.json beside it, the teacher's family and dims and the selected
    layers. A recipe that would fail hours into a run fails here, naming the file, the key and the value."""
    where = os.path.join(folder, "distill.yaml")
    from .conversion.losses import LOSSES
    for loss in recipe.kd.loss:
        if loss not in LOSSES:
            raise ValueError(f"{where}: kd.loss has {loss!r}; registered losses: {sorted(LOSSES)}")
    if recipe.chunk_size < 1 or recipe.chunk_size > 4096:
        raise ValueError(f"{where}: chunk_size={recipe.chunk_size} must lie in [1, 4096]")
    cfg_path = os.path.join(folder, "teacher_config.json")
    if os.path.isfile(cfg_path):
        _check_layers(recipe, where, _teacher_layers(cfg_path))


def _teacher_layers(cfg_path: str) -> int:
    """The number of layers of a supported teacher whose head dims divide as the transfer needs."""
    with open(cfg_path) as f:
        cfg = json.load(f)
    if cfg.get("model_type") not in FAMILIES:
        raise ValueError(f"{cfg_path}: model_type {cfg.get('model_type')!r} is not one of {FAMILIES}")
    heads = cfg["num_attention_heads"]
    kv = cfg.get("num_key_value_heads") or heads
    if heads % kv:
        raise ValueError(f"{cfg_path}: num_attention_heads {heads} is not a multiple of num_key_value_heads {kv}")
    if not cfg.get("head_dim") and cfg["hidden_size"] % heads:
        raise ValueError(f"{cfg_path}: hidden_size {cfg['hidden_size']} is not a multiple of {heads} heads")
    return cfg["num_hidden_layers"]


def _check_layers(recipe: DistillRecipe, where: str, n: int) -> None:
    """Listed layers exist in an n-layer teacher, and as many as the schedule's last keep ratio keeps."""
    layers = recipe.select.params.get("layers")
    if layers is None:
        return
    bad = [i for i in layers if not (isinstance(i, int) and 0 <= i < n)]
    if bad:
        raise ValueError(f"{where}: select.params.layers={layers}: {bad} out of range for the teacher's {n} layers")
    kept = round(min(recipe.schedule) * n)  # as distill.conversion.select.kept_layers counts
    if len(layers) != kept:
        raise ValueError(f"{where}: select.params.layers has {len(layers)} layers but schedule {recipe.schedule} "
                         f"keeps {kept} of {n}")
