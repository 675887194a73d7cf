"""The hybrid's decode cache: transformers' own layered cache, one layer object per model layer.

Attention layers get the layer class the teacher would use (full or sliding-window KV); mixer layers get
transformers' LinearAttentionLayer, which holds the conv state [b, C, K] and the SSM state (kept in fp32).
Only the mapping from our `layer_types` to those classes lives here: no parallel cache system.
"""
from __future__ import annotations

from transformers.cache_utils import Cache, DynamicCache, DynamicLayer, DynamicSlidingWindowLayer, LinearAttentionLayer


def teacher_attention_kinds(teacher_config) -> list[str]:
    """Per layer, "full_attention" or "sliding_attention" as the teacher's own model would mask it."""
    n = teacher_config.num_hidden_layers
    kinds = getattr(teacher_config, "layer_types", None)
    if kinds is not None:
        return list(kinds)
    if getattr(teacher_config, "sliding_window", None) is not None:  # Mistral: every layer slides
        return ["sliding_attention"] * n
    return ["full_attention"] * n


class HybridCache(DynamicCache):
    """A DynamicCache whose layers follow the hybrid's layer_types."""

    def __init__(self, config):
        kinds = teacher_attention_kinds(config.teacher_config)
        layers = []
        for i, kind in enumerate(config.layer_types):
            if kind != "attention":
                layers.append(LinearAttentionLayer())
            elif kinds[i] == "sliding_attention":
                layers.append(DynamicSlidingWindowLayer(sliding_window=config.teacher_config.sliding_window))
            else:
                layers.append(DynamicLayer())
        Cache.__init__(self, layers=layers)
