"""HybridConfig: a teacher's own config plus, per layer, which sequence mixer it runs.

The teacher config is kept whole as the sub-config `teacher_config`, so every attention layer is built by the
teacher's own code (its RoPE and rope_scaling, qkv bias, q/k norms, sliding windows). What the hybrid adds:

- `layer_types[i]` in {"attention", "mamba2", "mamba"};
- the mixer settings (conv width, scan chunk, Mamba1 state size and dt rank);
- `format_version`, so that later releases can read older checkpoints.

The Mamba2 mixer is head-aligned with the teacher (MambaInLlama layout): one SSM head per query head,
head dim = d_state = teacher head_dim, x/B at the key/value width. Its dimensions follow from the teacher and
are exposed as properties, never stored twice.
"""
from __future__ import annotations

import math

from transformers import AutoConfig, PretrainedConfig
from transformers.configuration_utils import SubConfigSpec

LAYER_TYPES = ("attention", "mamba2", "mamba")
MIXER_TYPES = ("mamba2", "mamba")
FORMAT_VERSION = 1


class HybridConfig(PretrainedConfig):
    """Configuration of a `HybridForCausalLM`.

    Args:
        teacher_config: the teacher's `PretrainedConfig` (or its dict, with `model_type`).
        layer_types: one of "attention", "mamba2", "mamba" per teacher layer; default all "attention".
        d_conv: width of the depthwise causal conv before the SSM.
        conv_bias: whether that conv has a bias.
        chunk_size: chunk length of the Mamba2 chunked scan (an implementation detail; results do not depend on it).
        mamba_d_state: Mamba1 state size per channel (16 in MambaInLlama).
        mamba_d_inner: Mamba1 inner width; None means the teacher's hidden size (expand = 1).
        mamba_dt_rank: Mamba1 low-rank dt width; None means ceil(hidden_size / 16).
        mamba_norm_eps: epsilon of the Mamba2 gated RMSNorm; None means the teacher's rms_norm_eps (released
            MambaInLlama checkpoints use 1e-5).
        format_version: on-disk format version of this project.
    """

    model_type = "hybrid"
    sub_configs_defaults = {"teacher_config": SubConfigSpec(config_class=AutoConfig, model_type="llama")}

    teacher_config: dict | PretrainedConfig | None = None
    layer_types: list[str] | None = None
    d_conv: int = 4
    conv_bias: bool = True
    chunk_size: int = 128
    mamba_d_state: int = 16
    mamba_d_inner: int | None = None
    mamba_dt_rank: int | None = None
    mamba_norm_eps: float | None = None
    format_version: int = FORMAT_VERSION

    def __post_init__(self, **kwargs):
        # transformers rewrites some legacy layer-type names ("attention", "mamba") in place; ours are not legacy.
        layer_types = list(self.layer_types) if self.layer_types is not None else None
        super().__post_init__(**kwargs)
        n = self.teacher_config.num_hidden_layers
        self.layer_types = layer_types if layer_types is not None else ["attention"] * n
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the field and value that make this config unusable."""
        t = self.teacher_config
        if len(self.layer_types) != t.num_hidden_layers:
            raise ValueError(
                f"layer_types has {len(self.layer_types)} entries but the teacher has "
                f"num_hidden_layers={t.num_hidden_layers}"
            )
        for i, kind in enumerate(self.layer_types):
            if kind not in LAYER_TYPES:
                raise ValueError(f"layer_types[{i}]={kind!r} is not one of {LAYER_TYPES}")
        for name in ("d_conv", "chunk_size", "mamba_d_state"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive integer")
        for name in ("mamba_d_inner", "mamba_dt_rank"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name}={value!r} must be None or a positive integer")
        if self.format_version > FORMAT_VERSION:
            raise ValueError(
                f"format_version={self.format_version} is newer than this release reads ({FORMAT_VERSION})"
            )
        if t.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads={t.num_attention_heads} is not a multiple of "
                f"num_key_value_heads={self.num_key_value_heads}"
            )
        if "mamba" in self.layer_types:
            if self.d_inner_mamba % self.d_xb or self.d_xb % self.mamba_d_state:
                raise ValueError(
                    f"mamba_d_inner={self.d_inner_mamba} must be a multiple of d_xb={self.d_xb}, itself a multiple "
                    f"of mamba_d_state={self.mamba_d_state}"
                )

    # ---- derived dimensions (spec: d_inner = n_heads * head_dim, d_xb = n_kv_heads * head_dim) ----
    @property
    def hidden_size(self) -> int:
        return self.teacher_config.hidden_size

    @property
    def vocab_size(self) -> int:
        return self.teacher_config.vocab_size

    @property
    def num_hidden_layers(self) -> int:
        return len(self.layer_types)

    @property
    def tie_word_embeddings(self) -> bool:
        return bool(getattr(self.teacher_config, "tie_word_embeddings", False))

    @tie_word_embeddings.setter
    def tie_word_embeddings(self, value: bool) -> None:  # loaders (vLLM) untie when the file has an lm_head
        self.teacher_config.tie_word_embeddings = bool(value)

    @property
    def num_attention_heads(self) -> int:
        return self.teacher_config.num_attention_heads

    @property
    def num_key_value_heads(self) -> int:
        t = self.teacher_config
        return getattr(t, "num_key_value_heads", None) or t.num_attention_heads

    @property
    def head_dim(self) -> int:
        t = self.teacher_config
        return getattr(t, "head_dim", None) or t.hidden_size // t.num_attention_heads

    @property
    def d_inner(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def d_xb(self) -> int:
        return self.num_key_value_heads * self.head_dim

    @property
    def d_inner_mamba(self) -> int:
        return self.mamba_d_inner or self.hidden_size

    @property
    def dt_rank_mamba(self) -> int:
        return self.mamba_dt_rank or math.ceil(self.hidden_size / 16)

    @property
    def gated_norm_eps(self) -> float:
        return self.mamba_norm_eps if self.mamba_norm_eps is not None else self.teacher_config.rms_norm_eps

    @property
    def max_position_embeddings(self) -> int | None:
        return getattr(self.teacher_config, "max_position_embeddings", None)

    @property
    def layers_block_type(self) -> list[str]:
        """"attention" or "mamba" per layer: the spelling serving engines (vLLM) count hybrid layers by."""
        return ["attention" if kind == "attention" else "mamba" for kind in self.layer_types]

    @property
    def attention_layers(self) -> list[int]:
        return [i for i, kind in enumerate(self.layer_types) if kind == "attention"]

    @property
    def mixer_layers(self) -> list[int]:
        return [i for i, kind in enumerate(self.layer_types) if kind != "attention"]

    # Token ids live with the teacher; generation reads them from the top-level config, trainers (TRL) set them.
    def _token(name):  # noqa: N805 - a property factory evaluated in the class body
        return property(lambda self: getattr(self.teacher_config, name, None),
                        lambda self, value: setattr(self.teacher_config, name, value))

    eos_token_id = _token("eos_token_id")
    bos_token_id = _token("bos_token_id")
    pad_token_id = _token("pad_token_id")
    del _token


def layer_types_from_attention(num_layers: int, attn_layers, mixer: str = "mamba2") -> list[str]:
    """`layer_types` for a hybrid keeping attention at `attn_layers` and `mixer` elsewhere (ValueError on bad input)."""
    if mixer not in MIXER_TYPES:
        raise ValueError(f"mixer={mixer!r} is not one of {MIXER_TYPES}")
    attn = sorted(set(int(i) for i in attn_layers))
    bad = [i for i in attn if not 0 <= i < num_layers]
    if bad:
        raise ValueError(f"attention layer index {bad} out of range for a {num_layers}-layer teacher")
    return ["attention" if i in attn else mixer for i in range(num_layers)]
