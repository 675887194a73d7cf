"""`sdpa_docs` (hybrid.attention): packed rows attend within their documents without a dense mask, exactly as the
eager implementation with transformers' block-diagonal mask and as each document run alone; everything it does not
handle itself (padding, a cache, a sliding window) is `sdpa`'s."""
import copy

import pytest
import torch

from helpers import assert_close, tiny_hybrid, tiny_teacher
import hybrid.attention
from hybrid.attention import NAME, document_spans, use_document_attention


@pytest.fixture(autouse=True)
def per_document_rows(monkeypatch):
    """Every row goes per document in these tests (their rows are short); test_short_rows_keep_the_dense_mask
    restores the threshold."""
    monkeypatch.setattr(hybrid.attention, "MIN_LENGTH", 1)


def _packed(lengths, vocab=97, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (1, sum(lengths)), generator=g)
    pos = torch.cat([torch.arange(n) for n in lengths])[None]
    return ids, pos


def test_document_spans_follow_position_restarts():
    pos = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3], [5, 6, 7, 8, 9, 10, 11, 12, 13]])
    assert document_spans(pos, 2, 9) == [[(0, 3), (3, 5), (5, 9)], [(0, 9)]]
    assert document_spans(None, 2, 4) == [[(0, 4)], [(0, 4)]]


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])
@pytest.mark.parametrize("kind", ["teacher", "hybrid"])
def test_packed_row_equals_eager_and_each_document_alone(family, kind):
    model = tiny_teacher(family) if kind == "teacher" else tiny_hybrid(family)
    model.float()
    docs = copy.deepcopy(model)
    assert use_document_attention(model) is False  # eager stays eager
    model.set_attn_implementation("sdpa")
    assert use_document_attention(model) is True and model.config._attn_implementation == NAME
    lengths = [5, 1, 17, 9]
    ids, pos = _packed(lengths)
    ref = docs(input_ids=ids, position_ids=pos, use_cache=False).logits  # eager, block-diagonal mask
    eager_grads = None
    out = model(input_ids=ids, position_ids=pos, use_cache=False).logits
    assert_close(out, ref, atol=1e-5, rtol=1e-5, what="packed logits vs eager")
    start = 0
    for n in lengths:  # each document alone, through the plain causal path
        alone = model(input_ids=ids[:, start:start + n], use_cache=False).logits
        assert_close(out[:, start:start + n], alone, atol=1e-5, rtol=1e-5, what=f"document of {n}")
        start += n
    g = torch.randn_like(ref)
    (ref * g).sum().backward()
    eager_grads = {k: p.grad for k, p in docs.named_parameters() if p.grad is not None}
    (out * g).sum().backward()
    for k, p in model.named_parameters():
        if k in eager_grads:
            assert_close(p.grad, eager_grads[k], atol=1e-4, rtol=1e-4, what=k)
    assert len(eager_grads) > 10


def test_padding_cache_and_sliding_windows_keep_sdpa():
    for family in ("llama", "mistral"):  # mistral: a 16-token sliding window in every layer
        model = tiny_teacher(family).float()
        ref = copy.deepcopy(model)
        ref.set_attn_implementation("sdpa")
        assert use_document_attention(model) is False
        model.set_attn_implementation("sdpa")
        use_document_attention(model)
        ids, pos = _packed([30, 11])  # the sliding window is shorter than the first document
        assert_close(model(input_ids=ids, position_ids=pos, use_cache=False).logits,
                     docs_reference(ref, ids, [30, 11]), atol=1e-5, rtol=1e-5, what=f"{family} packed")
        # left padding and a cache: prefill 7 tokens of a padded batch, then decode 3
        ids2 = torch.randint(3, 97, (2, 10))
        mask = torch.ones(2, 10, dtype=torch.long)
        mask[1, :3] = 0
        full = ref(input_ids=ids2, attention_mask=mask).logits
        out = model(input_ids=ids2[:, :7], attention_mask=mask[:, :7], use_cache=True)
        steps = [out.logits]
        cache = out.past_key_values
        for t in range(7, 10):
            o = model(input_ids=ids2[:, t:t + 1], attention_mask=mask[:, :t + 1], cache=cache,
                      use_cache=True)
            cache = o.past_key_values
            steps.append(o.logits)
        got = torch.cat(steps, dim=1)
        assert_close(got[0], full[0], atol=1e-4, rtol=1e-4, what=f"{family} cached decode")
        assert_close(got[1, 3:], full[1, 3:], atol=1e-4, rtol=1e-4, what=f"{family} padded row")


def docs_reference(model, ids, lengths):
    """Logits of each document run alone, laid end to end."""
    out, start = [], 0
    for n in lengths:
        out.append(model(input_ids=ids[:, start:start + n], use_cache=False).logits)
        start += n
    return torch.cat(out, dim=1)


@pytest.mark.parametrize("kind", ["teacher", "hybrid"])
def test_engine_decodes_the_same_under_sdpa_docs(kind):
    """Training loads switch to sdpa_docs; the engine's static step (and so GRPO's rollouts) must run on it, and
    produce what it produces under sdpa."""
    from hybrid.generation import SamplingParams, generate
    model = (tiny_teacher("llama") if kind == "teacher" else tiny_hybrid("llama")).float()
    model.set_attn_implementation("sdpa")
    prompts = [[5, 6, 7, 8, 9], [10, 11]]
    params = SamplingParams(max_new_tokens=6)
    ref = generate(model, prompts, params, eos_token_id=[], decode="static")
    use_document_attention(model)
    for decode in ("static", "eager"):
        out = generate(model, prompts, params, eos_token_id=[], decode=decode)
        assert out.sequences == ref.sequences, decode


def test_short_rows_keep_the_dense_mask(monkeypatch):
    """Below MIN_LENGTH a packed row keeps sdpa's block-diagonal mask (one kernel call); at it, no mask is built and
    each document is attended alone. Both give the eager model's logits."""
    model = tiny_teacher("llama").float()
    ref = copy.deepcopy(model)
    model.set_attn_implementation("sdpa")
    use_document_attention(model)
    ids, pos = _packed([7, 9])
    seen = []
    real = hybrid.attention.sdpa_attention_forward
    monkeypatch.setattr(hybrid.attention, "sdpa_attention_forward",
                        lambda *a, **k: seen.append(a[4] is not None) or real(*a, **k))
    for threshold, dense in ((17, True), (16, False)):
        monkeypatch.setattr(hybrid.attention, "MIN_LENGTH", threshold)
        seen.clear()
        out = model(input_ids=ids, position_ids=pos, use_cache=False).logits
        assert_close(out, ref(input_ids=ids, position_ids=pos, use_cache=False).logits, atol=1e-5, rtol=1e-5,
                     what=f"MIN_LENGTH={threshold}")
        assert seen == ([True] * 4 if dense else []), (threshold, seen)  # 4 layers, each with the dense mask
