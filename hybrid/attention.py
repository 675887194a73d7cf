"""Attention over packed documents without a [T x T] mask: `sdpa_docs`, a transformers attention implementation.

Padding-free packing (TRL's SFT collator, distill.data's KD rows) lays several documents in one row, with
position_ids restarting at each. transformers' `sdpa` builds a dense block-diagonal mask for such a row and runs
the masked kernel over all T^2 query/key pairs: on a 4 x 1024-token packed row that is 16x the work of the causal
blocks, most of it masked; on SmolLM2-135M's 4035-token SFT row it doubles the forward and backward (numbers below).
`sdpa_docs` runs causal SDPA on each document's block instead (sum of L_i^2 / 2 pairs, the unmasked flash kernel),
and tells transformers' mask factory not to build the mask when it is not needed.

Only rows of at least MIN_LENGTH tokens go per document: below that the dense mask is cheap and one kernel call per
document costs more than it saves. SmolLM2-135M forward+backward, bf16, 2 cores, two interleaved calls each
(`python recipes/smollm2-135m/packed_attention_bench.py`): one 4035-token SFT row of 6 documents, sdpa 58.0 / 49.3 s,
per document 24.1 / 24.3 s; 8 x 512-token rows of ~7 short documents, 24.8 / 23.9 s vs 32.0 / 27.6 s; 4 x 1024
rows of ~13, 29.8 / 25.7 s vs 29.5 / 26.2 s (even).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

NAME = "sdpa_docs"
MIN_LENGTH = 1024  # rows shorter than this keep sdpa's dense mask (see the module docstring)


def document_spans(position_ids: torch.Tensor | None, batch: int, length: int) -> list[list[tuple[int, int]]]:
    """[(start, end)] per row: a document starts where position_ids do not go up by one. Without position_ids
    (or without a restart) a row is one document."""
    if position_ids is None:
        return [[(0, length)]] * batch
    pos = position_ids.expand(batch, -1)  # [B, T]
    starts = torch.ones_like(pos, dtype=torch.bool)
    starts[:, 1:] = pos[:, 1:] != pos[:, :-1] + 1
    spans = []
    for row in starts.cpu():
        s = row.nonzero().flatten().tolist() + [length]
        spans.append(list(zip(s[:-1], s[1:])))
    return spans


def _sliding(config) -> bool:
    """The model has sliding-window layers (their mask is not the plain causal one)."""
    if config is None:
        return True  # unknown: keep transformers' mask
    types = getattr(config, "layer_types", None) or []
    if "sliding_attention" in types:
        return True
    return getattr(config, "sliding_window", None) is not None and getattr(config, "use_sliding_window", True) \
        and not types


def docs_mask(batch_size, q_length, kv_length, q_offset=0, kv_offset=0, mask_function=None, attention_mask=None,
              allow_is_causal_skip=True, config=None, **kwargs):
    """No mask when attention is causal within documents that position_ids delimit (no padding, no cache prefix,
    no sliding window, a row of at least MIN_LENGTH): the attention below recovers the documents. Otherwise
    `sdpa`'s mask."""
    plain = attention_mask is None and isinstance(q_offset, int) and isinstance(kv_offset, int) \
        and q_offset == 0 and kv_offset == 0 and q_length == kv_length and q_length >= MIN_LENGTH \
        and not _sliding(config)
    if plain:
        return None
    return sdpa_mask(batch_size=batch_size, q_length=q_length, kv_length=kv_length, q_offset=q_offset,
                     kv_offset=kv_offset, mask_function=mask_function, attention_mask=attention_mask,
                     allow_is_causal_skip=allow_is_causal_skip, config=config, **kwargs)


def docs_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                           is_causal=None, **kwargs):
    """query [B, H, T, D], key/value [B, Hkv, S, D] -> ([B, T, H, D], None), as transformers' sdpa forward."""
    B, H, T, D = query.shape
    if attention_mask is not None or T == 1 or key.shape[2] != T or kwargs.get("position_bias") is not None \
            or (is_causal is False) or not getattr(module, "is_causal", True):
        if T == 1:  # "sdpa" as registered now: a decode step may run on csrc's kernel (hybrid.generation)
            return ALL_ATTENTION_FUNCTIONS["sdpa"](module, query, key, value, attention_mask, dropout=dropout,
                                                  scaling=scaling, is_causal=is_causal, **kwargs)
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    spans = document_spans(kwargs.get("position_ids"), B, T)
    if all(len(s) == 1 for s in spans):  # nothing packed: plain causal sdpa
        return sdpa_attention_forward(module, query, key, value, None, dropout=dropout, scaling=scaling,
                                      is_causal=True, **kwargs)
    gqa = query.shape[1] != key.shape[1]
    rows = []
    for b, row in enumerate(spans):
        blocks = [F.scaled_dot_product_attention(query[b:b + 1, :, s:e], key[b:b + 1, :, s:e],
                                                 value[b:b + 1, :, s:e], dropout_p=dropout, scale=scaling,
                                                 is_causal=True, enable_gqa=gqa)
                  for s, e in row]  # each [1, H, L_i, D]
        rows.append(torch.cat(blocks, dim=2))
    out = torch.cat(rows, dim=0)  # [B, H, T, D]
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(NAME, docs_attention_forward)
AttentionMaskInterface.register(NAME, docs_mask)


def use_document_attention(model) -> bool:
    """Switch a model that runs `sdpa` to `sdpa_docs` (same results, no dense mask for packed rows); True when it
    switched. Other implementations (eager, flash, flex) are left alone."""
    if getattr(model.config, "_attn_implementation", None) != "sdpa":
        return False
    model.set_attn_implementation(NAME)
    return True
