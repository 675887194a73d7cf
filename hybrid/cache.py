"""The hybrid's decode cache: transformers' own layered cache, one layer object per model layer.

Attention layers get the layer class the teacher would use (full or sliding-window KV); mixer layers get
transformers' LinearAttentionLayer, which holds the conv state [b, C, K] and the SSM state (kept in fp32).
Only the mapping from our `layer_types` to those classes lives here: no parallel cache system.
"""
from __future__ import annotations

from transformers.cache_utils import (Cache, DynamicCache, DynamicLayer, DynamicSlidingWindowLayer,
                                     LinearAttentionLayer, StaticLayer, StaticSlidingWindowLayer)


class PreallocatedLayer(DynamicLayer):
    """Full-attention KV preallocated for max_cache_len tokens, written in place, read as the filled prefix.

    transformers' StaticLayer returns (and masks) all max_cache_len positions at every step, so a short
    generation in a long buffer pays for the whole buffer; DynamicLayer attends only to what is filled but
    concatenates (copies) its whole KV every step. This layer does neither: new tokens are copied into the
    buffer, and attention sees the view of the first `length` positions.
    """

    def __init__(self, max_cache_len: int):
        super().__init__()
        self.max_cache_len = max_cache_len

    def lazy_initialization(self, key_states, value_states) -> None:
        self.device = key_states.device
        b, h = key_states.shape[:2]
        self._k = key_states.new_zeros((b, h, self.max_cache_len, key_states.shape[-1]))
        self._v = value_states.new_zeros((b, h, self.max_cache_len, value_states.shape[-1]))
        self.keys, self.values = self._k[:, :, :0], self._v[:, :, :0]
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        start, n = self.keys.shape[-2], key_states.shape[-2]
        if start + n > self.max_cache_len:
            raise ValueError(f"cache of {self.max_cache_len} tokens cannot take {n} more after {start}")
        self._k[:, :, start:start + n] = key_states
        self._v[:, :, start:start + n] = value_states
        self.keys, self.values = self._k[:, :, :start + n], self._v[:, :, :start + n]
        return self.keys, self.values

    def get_max_length(self) -> int:
        return self.max_cache_len


def teacher_attention_kinds(teacher_config) -> list[str]:
    """Per layer, "full_attention" or "sliding_attention" as the teacher's own model would mask it."""
    n = teacher_config.num_hidden_layers
    kinds = getattr(teacher_config, "layer_types", None)
    if kinds is not None:
        return list(kinds)
    if getattr(teacher_config, "sliding_window", None) is not None:  # Mistral: every layer slides
        return ["sliding_attention"] * n
    return ["full_attention"] * n


def cache_layers(config, max_len: int | None = None, full_buffer: bool = False) -> list:
    """One transformers cache layer per model layer, for a hybrid or a plain causal LM config.

    max_len None: growing KV layers (dynamic); an int: preallocated KV layers of max_len tokens (static), which
    attend to the filled prefix (PreallocatedLayer) or, with full_buffer, to the whole buffer under a mask
    (transformers' StaticLayer: fixed shapes and a tensor write position, as a CUDA graph needs).
    Mixer layers always hold fixed-size conv and SSM states.
    """
    if getattr(config, "model_type", None) == "hybrid":
        types, teacher = config.layer_types, config.teacher_config
    else:
        types, teacher = ["attention"] * config.num_hidden_layers, config
    kinds = teacher_attention_kinds(teacher)
    layers = []
    for i, kind in enumerate(types):
        if kind != "attention":
            layers.append(LinearAttentionLayer())
        elif kinds[i] == "sliding_attention":
            layers.append(DynamicSlidingWindowLayer(sliding_window=teacher.sliding_window) if max_len is None else
                          StaticSlidingWindowLayer(max_cache_len=max_len, sliding_window=teacher.sliding_window))
        else:
            layers.append(DynamicLayer() if max_len is None else
                          StaticLayer(max_len) if full_buffer else PreallocatedLayer(max_len))
    return layers


class _SeqLengthFromKV:
    """Tokens seen, counted by a KV layer. transformers (5.25 on) counts a LinearAttentionLayer's tokens by the
    conv-state updates that pass through the cache, and the mixers here write their states in place: a mixer layer's
    own count is stale after the first decode step (positions, hence RoPE, went wrong from the second step on a
    model whose layer 0 is a mixer). The first attention layer answers for every mixer layer; none: 0."""

    def get_seq_length(self, layer_idx: int = 0) -> int:
        if layer_idx < len(self.layers) and isinstance(self.layers[layer_idx], LinearAttentionLayer):
            layer_idx = next((i for i, layer in enumerate(self.layers)
                              if not isinstance(layer, LinearAttentionLayer)), None)
            if layer_idx is None:
                return 0
        return super().get_seq_length(layer_idx)


class HybridCache(_SeqLengthFromKV, DynamicCache):
    """A DynamicCache whose layers follow the hybrid's layer_types."""

    def __init__(self, config):
        Cache.__init__(self, layers=cache_layers(config))


class LayeredCache(_SeqLengthFromKV, Cache):
    """A Cache of given layers (cache_layers) whose token count comes from its KV layers, as HybridCache's."""
