"""Exactness of HybridForCausalLM: against the teacher, cached vs full, padded vs alone, packed vs separate."""
import pytest
import torch
from helpers import FAMILIES, assert_close, tiny_hybrid, tiny_teacher

from hybrid.cache import HybridCache

# Attention layers kept on 4 layers per replaced fraction: the uniform strategy's choice (distill's select.py).
KEPT = {0.25: [1, 2, 3], 0.5: [1, 3], 1.0: []}


def make_hybrid(family="llama", mixer="mamba2", replaced=0.5, num_layers=4, seed=0, **kw):
    assert num_layers == 4, "KEPT lists the kept layers of 4-layer teachers"
    teacher = tiny_teacher(family, num_layers=num_layers, seed=seed)
    hybrid = tiny_hybrid(attn_layers=KEPT[replaced], mixer=mixer, teacher=teacher, chunk_size=16, **kw)
    # Non-default mixer parameters, so that every term of the recurrence matters.
    torch.manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in hybrid.named_parameters():
            if ".mamba." in name and ("D" in name.split(".")[-1] or "norm" in name or "conv1d.bias" in name):
                p.add_(0.1 * torch.randn_like(p))
    return teacher, hybrid.eval()


@pytest.mark.parametrize("family", FAMILIES)
def test_all_attention_hybrid_equals_teacher(family):
    teacher = tiny_teacher(family)
    hybrid = tiny_hybrid(attn_layers=range(teacher.config.num_hidden_layers), teacher=teacher)
    ids = torch.randint(3, 97, (2, 40))  # longer than mistral's sliding window (16)
    mask = torch.ones_like(ids)
    mask[1, :5] = 0
    with torch.no_grad():
        assert_close(hybrid(ids).logits, teacher(ids).logits, atol=1e-5, rtol=0, what="logits")
        assert_close(hybrid(ids, attention_mask=mask).logits, teacher(ids, attention_mask=mask).logits,
                     atol=1e-5, rtol=0, what="padded logits")


DECODE_CASES = [(m, r, L) for m in ("mamba2", "mamba") for r in (0.25, 0.5, 1.0) for L in (1, 7, 64, 300)]


@pytest.mark.parametrize("mixer,replaced,prompt_len", DECODE_CASES)
def test_cached_decoding_equals_full_forward(mixer, replaced, prompt_len):
    _, model = make_hybrid("llama", mixer, replaced)
    torch.manual_seed(prompt_len)
    ids = torch.randint(3, 97, (2, prompt_len + 4))
    with torch.no_grad():
        full = model(ids).logits
        # explicit cache: prefill, a 2-token continuation chunk, then two single steps
        cache = HybridCache(model.config)
        pieces, pos = [], 0
        for step in (prompt_len, 2, 1, 1):
            pieces.append(model(ids[:, pos:pos + step], cache=cache, use_cache=True).logits)
            pos += step
        assert_close(torch.cat(pieces, 1), full, atol=1e-4, rtol=0, what="explicit cache")
        # generate(): greedy tokens and per-step logits equal the full forward over the produced sequence
        prompt = ids[:, :prompt_len]
        out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=4, do_sample=False,
                             output_logits=True, return_dict_in_generate=True, pad_token_id=0)
        full = model(out.sequences).logits
        assert_close(torch.stack(out.logits, 1), full[:, prompt_len - 1:-1], atol=1e-4, rtol=0, what="generate")


@pytest.mark.parametrize("family", ["qwen2", "qwen3", "mistral"])
def test_cached_decoding_other_families(family):
    _, model = make_hybrid(family, "mamba2", 0.5)
    ids = torch.randint(3, 97, (2, 40))
    with torch.no_grad():
        full = model(ids).logits
        cache = HybridCache(model.config)
        pieces = [model(ids[:, :30], cache=cache, use_cache=True).logits]
        pieces += [model(ids[:, t:t + 1], cache=cache, use_cache=True).logits for t in range(30, 40)]
    assert_close(torch.cat(pieces, 1), full, atol=1e-4, rtol=0)


def _left_pad(rows, pad_id=0):
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), pad_id)
    mask = torch.zeros(len(rows), T, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, T - len(r):] = r
        mask[i, T - len(r):] = 1
    return ids, mask


@pytest.mark.parametrize("mixer", ["mamba2", "mamba"])
def test_left_padded_batch_equals_rows_alone(mixer):
    _, model = make_hybrid("llama", mixer, 0.5)
    torch.manual_seed(1)
    rows = [torch.randint(3, 97, (n,)) for n in (5, 23, 14)]
    ids, mask = _left_pad(rows)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        batch = model(ids, attention_mask=mask, position_ids=positions).logits
        for i, r in enumerate(rows):
            alone = model(r[None]).logits[0]
            assert_close(batch[i, -len(r):], alone, atol=1e-4, rtol=0, what=f"row {i}")
        out = model.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
        for i, r in enumerate(rows):
            alone = model.generate(r[None], attention_mask=torch.ones(1, len(r), dtype=torch.long),
                                   max_new_tokens=6, do_sample=False, pad_token_id=0)
            assert torch.equal(out[i, ids.shape[1]:], alone[0, len(r):]), f"row {i} generation differs"


@pytest.mark.parametrize("mixer", ["mamba2", "mamba"])
def test_packed_documents_equal_separate(mixer):
    _, model = make_hybrid("llama", mixer, 0.5)
    torch.manual_seed(2)
    docs = [torch.randint(3, 97, (n,)) for n in (10, 21, 7)]
    ids = torch.cat(docs)[None]
    positions = torch.cat([torch.arange(len(d)) for d in docs])[None]
    with torch.no_grad():
        packed = model(ids, position_ids=positions).logits[0]
        separate = torch.cat([model(d[None]).logits[0] for d in docs])
    assert_close(packed, separate, atol=1e-4, rtol=0)
    # without the document boundaries the result must differ (the check can fail)
    with torch.no_grad():
        unpacked = model(ids).logits[0]
    assert (unpacked[10:] - separate[10:]).abs().max() > 1e-2


def test_training_backward_reaches_every_parameter():
    _, model = make_hybrid("llama", "mamba2", 0.5)
    model.train()
    ids = torch.randint(3, 97, (2, 20))
    model(ids, labels=ids).loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not no_grad, no_grad


def test_sampling_is_seeded_and_reproducible():
    _, model = make_hybrid("llama", "mamba2", 0.5)
    ids = torch.randint(3, 97, (3, 6))
    runs = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        runs.append(model.generate(ids, max_new_tokens=12, do_sample=True, temperature=1.0, top_k=50, top_p=0.95,
                                   pad_token_id=0))
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])


def test_bfloat16_tracks_float32():
    _, model = make_hybrid("llama", "mamba2", 0.5)
    ids = torch.randint(3, 97, (2, 50))
    with torch.no_grad():
        ref = model(ids).logits
        low = model.to(torch.bfloat16)(ids).logits
    assert low.dtype == torch.bfloat16
    assert_close(low.float(), ref, atol=0.1, rtol=0.05, what="bf16 vs fp32 logits")
