"""HybridForCausalLM: the teacher's decoder with `self_attn` swapped for a Mamba mixer in chosen layers.

Layout is the standard causal LM one (`model.embed_tokens`, `model.layers`, `model.norm`, `lm_head`), so TRL,
accelerate, PEFT and lm-eval treat it like any causal LM. An attention layer *is* the teacher's decoder layer
class, built from the teacher's config. A mixer layer keeps that layer's norms, MLP and residual structure and
holds the mixer under the name `mamba` (the key layout of released MambaInLlama / M1 checkpoints).

Exactness contracts (tests/hybrid/test_model.py): all-attention hybrid == teacher; cached decoding == full forward;
a left-padded row == that row alone; packed documents (position_ids restarting at 0, no mask, no cache, as in
training) == the documents run separately, in mixer layers too.
"""
from __future__ import annotations

import sys

import torch
from torch import nn
from transformers import MODEL_MAPPING, AutoConfig, AutoModelForCausalLM, GenerationMixin, PreTrainedModel
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
try:
    from transformers.modeling_utils import slice_logits_to_keep
except ImportError:  # transformers < 5.21 (the range vLLM 0.33 pins)
    def slice_logits_to_keep(hidden_states, logits_to_keep):
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        return hidden_states[:, keep]

from .cache import HybridCache, teacher_attention_kinds
from .config import HybridConfig
from .mixers.mamba import MambaMixer
from .mixers.mamba2 import Mamba2Mixer

MIXER_CLASSES = {"mamba2": Mamba2Mixer, "mamba": MambaMixer}
TEACHER_LAYER_PARTS = ("self_attn", "mlp", "input_layernorm", "post_attention_layernorm")


def teacher_classes(teacher_config):
    """(DecoderLayer, RMSNorm, RotaryEmbedding) classes of the teacher's own transformers implementation."""
    try:
        base = MODEL_MAPPING[type(teacher_config)]
    except KeyError:
        raise ValueError(f"teacher model_type={teacher_config.model_type!r} has no transformers model class") from None
    module, prefix = sys.modules[base.__module__], base.__name__.removesuffix("Model")
    names = [f"{prefix}DecoderLayer", f"{prefix}RMSNorm", f"{prefix}RotaryEmbedding"]
    missing = [n for n in names if not hasattr(module, n)]
    if missing:
        raise ValueError(
            f"teacher model_type={teacher_config.model_type!r} is not a Llama-style decoder "
            f"(transformers has no {missing}); supported: llama, qwen2, qwen3, mistral and their look-alikes"
        )
    return tuple(getattr(module, n) for n in names)


def packed_seq_idx(position_ids: torch.Tensor) -> torch.Tensor | None:
    """Document index per token [b, T] from position ids that restart within a row; None for one document a row.

    Same rule as transformers' packed-sequence attention mask: a new document starts wherever position_ids does not
    increase by exactly 1, so attention and mixer layers agree on document boundaries.
    """
    diff = torch.diff(position_ids, prepend=position_ids[:, :1] - 1, dim=-1)
    seq_idx = (diff != 1).cumsum(-1)
    return None if bool((seq_idx[:, -1] == 0).all()) else seq_idx.to(torch.int32)


class MixerDecoderLayer(GradientCheckpointingLayer):
    """A teacher decoder layer whose attention is replaced by `mamba`; norms, MLP and residuals are the teacher's."""

    def __init__(self, teacher_layer: nn.Module, mixer: nn.Module):
        super().__init__()
        missing = [p for p in TEACHER_LAYER_PARTS if not hasattr(teacher_layer, p)]
        extra = sorted(set(n for n, _ in teacher_layer.named_children()) - set(TEACHER_LAYER_PARTS))
        if missing or extra:
            raise ValueError(
                f"{type(teacher_layer).__name__} is not a pre-norm attention+MLP layer: missing {missing}, extra {extra}"
            )
        self.input_layernorm = teacher_layer.input_layernorm
        self.mamba = mixer
        self.post_attention_layernorm = teacher_layer.post_attention_layernorm
        self.mlp = teacher_layer.mlp

    def forward(self, hidden_states, cache=None, pad_mask=None, seq_idx=None, **kwargs):
        residual = hidden_states
        hidden_states = residual + self.mamba(self.input_layernorm(hidden_states), cache, pad_mask, seq_idx)
        residual = hidden_states
        return residual + self.mlp(self.post_attention_layernorm(hidden_states))


class HybridPreTrainedModel(PreTrainedModel):
    config_class = HybridConfig
    config: HybridConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["MixerDecoderLayer"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    def __init__(self, config: HybridConfig, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        self.sync_teacher_attention()

    def sync_teacher_attention(self):
        """Give the teacher's layers the model's attention implementation (transformers sets it on the top config
        only, and the teacher's layers read their own); call it after changing layers by hand."""
        self.config.teacher_config._attn_implementation_internal = self.config._attn_implementation

    def set_attn_implementation(self, *args, **kwargs):
        super().set_attn_implementation(*args, **kwargs)
        self.sync_teacher_attention()

    def _init_weights(self, module):
        if isinstance(module, (Mamba2Mixer, MambaMixer)):
            module.reset_parameters(std=getattr(self.config.teacher_config, "initializer_range", 0.02))
        else:
            super()._init_weights(module)


class HybridModel(HybridPreTrainedModel):
    def __init__(self, config: HybridConfig):
        super().__init__(config)
        t = config.teacher_config
        layer_cls, norm_cls, rotary_cls = teacher_classes(t)
        self._no_split_modules = ["MixerDecoderLayer", layer_cls.__name__]
        self.embed_tokens = nn.Embedding(t.vocab_size, t.hidden_size, getattr(t, "pad_token_id", None))
        layers = []
        for i, kind in enumerate(config.layer_types):
            layer = layer_cls(t, i)
            if kind != "attention":
                layer = MixerDecoderLayer(layer, MIXER_CLASSES[kind](config, i))
            layers.append(layer)
        self.layers = nn.ModuleList(layers)
        self.norm = norm_cls(t.hidden_size, eps=t.rms_norm_eps)
        self.rotary_emb = rotary_cls(config=t)
        self.gradient_checkpointing = False
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None, inputs_embeds=None,
                use_cache=None, **kwargs):
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        if use_cache and cache is None:
            cache = HybridCache(self.config)
        b, T = inputs_embeds.shape[:2]
        attn_layers = self.config.attention_layers
        explicit_positions = position_ids is not None
        if position_ids is None:
            # Mixer layers are position-free; positions only feed attention's RoPE.
            past = cache.get_seq_length() if cache is not None and attn_layers else 0
            position_ids = (torch.arange(T, device=inputs_embeds.device) + past)[None]

        # Mixer inputs: which positions are padding, and which document each token belongs to.
        pad_mask = None
        if attention_mask is not None and attention_mask.dim() == 2 and not bool(attention_mask[:, -T:].all()):
            pad_mask = attention_mask[:, -T:]
        seq_idx = None
        if explicit_positions and attention_mask is None and cache is None:
            seq_idx = packed_seq_idx(position_ids.expand(b, -1))

        masks, position_embeddings = {}, None
        if attn_layers:
            kinds = teacher_attention_kinds(self.config.teacher_config)
            mask_kwargs = dict(config=self.config.teacher_config, inputs_embeds=inputs_embeds,
                               attention_mask=attention_mask, cache=cache, position_ids=position_ids)
            for kind in {kinds[i] for i in attn_layers}:
                make = create_sliding_window_causal_mask if kind == "sliding_attention" else create_causal_mask
                masks[kind] = make(**mask_kwargs)
            position_embeddings = self.rotary_emb(inputs_embeds, position_ids=position_ids)

        hidden_states = inputs_embeds
        for i, layer in enumerate(self.layers):
            if isinstance(layer, MixerDecoderLayer):
                hidden_states = layer(hidden_states, cache=cache, pad_mask=pad_mask, seq_idx=seq_idx)
            else:
                hidden_states = layer(
                    hidden_states, attention_mask=masks[kinds[i]], position_embeddings=position_embeddings,
                    position_ids=position_ids, cache=cache, use_cache=use_cache, **kwargs,
                )
        return BaseModelOutputWithPast(last_hidden_state=self.norm(hidden_states), cache=cache)


class HybridForCausalLM(HybridPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: HybridConfig):
        super().__init__(config)
        self.model = HybridModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None, inputs_embeds=None,
                labels=None, use_cache=None, logits_to_keep=0, **kwargs):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache,
                         inputs_embeds=inputs_embeds, use_cache=use_cache, **kwargs)
        logits = self.lm_head(slice_logits_to_keep(out.last_hidden_state, logits_to_keep))
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(loss=loss, logits=logits, cache=out.cache)

    def generate(self, input_ids=None, **kwargs):
        """transformers' generate(); plain calls (inputs, lengths, sampling, token ids) run on the decode engine
        (hybrid/generation.py), which returns the same tokens for greedy decoding, faster."""
        from .generation import ENGINE_KWARGS, engine_kwargs_from_config, generate_like_hf
        gc = kwargs.get("generation_config")
        plain = engine_kwargs_from_config(gc) if gc is not None else None
        if plain is not None:  # a config with nothing but sampling settings: same as passing them
            kwargs = {**plain, **{k: v for k, v in kwargs.items() if k != "generation_config"}}
        if input_ids is not None and input_ids.dim() == 2 and not set(kwargs) - ENGINE_KWARGS:
            return generate_like_hf(self, input_ids, **kwargs)
        return super().generate(input_ids, **kwargs) if input_ids is not None else super().generate(**kwargs)

    def _prepare_cache_for_generation(self, generation_config, model_kwargs, *args, **kwargs):
        # transformers would build a DynamicCache from config.layer_types, which names our mixers, not its own
        # layer classes; the hybrid's cache maps them (cache.py).
        if model_kwargs.get("cache") is None and generation_config.use_cache is not False:
            if generation_config.cache_implementation not in (None, "dynamic"):
                raise ValueError(
                    f"cache_implementation={generation_config.cache_implementation!r} is not supported by the hybrid; "
                    "use the default dynamic cache or hybrid.generation"
                )
            model_kwargs["cache"] = HybridCache(self.config)
            return
        return super()._prepare_cache_for_generation(generation_config, model_kwargs, *args, **kwargs)


AutoConfig.register(HybridConfig.model_type, HybridConfig, exist_ok=True)
AutoModelForCausalLM.register(HybridConfig, HybridForCausalLM, exist_ok=True)
