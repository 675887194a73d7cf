"""One-token attention over a KV cache (csrc/cpu/decode_attention.cpp) against its definition in float64:
grouped-query shapes (groups 1..8), head dims on and off the vectorised paths (16/24/64/128), cache lengths across
the 16-key blocks, float32 and bfloat16, additive masks with padded slots and empty tails, a row with nothing to
attend, boolean masks, strided cache views; masked slots are never read; and the op inside torch.compile."""
import pytest
import torch
from helpers import assert_close

from hybrid.ops import backends
from hybrid.ops.csrc import extension

ext = extension()
pytestmark = pytest.mark.skipif(ext is None, reason="csrc did not build here")


def _definition(q, k, v, mask, scale):
    """softmax(scale q k^T + mask) v per (batch, kv head), in float64; q [b, hkv, g, d], mask [b, T] or None."""
    s = torch.einsum("bhgd,bhtd->bhgt", q.double(), k.double()) * scale
    if mask is not None:
        s = s + mask.double()[:, None, None, :]
    return torch.einsum("bhgt,bhtd->bhgd", s.softmax(-1), v.double())


def _tol(dtype, d):
    return dict(atol=2e-2, rtol=2e-2) if dtype == torch.bfloat16 else dict(atol=1e-5 * d ** 0.5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("d", [16, 24, 64, 128])
@pytest.mark.parametrize("groups", [1, 3, 8])
@pytest.mark.parametrize("T", [1, 17, 100])
def test_equals_the_definition(dtype, d, groups, T):
    g = torch.Generator().manual_seed(d * 100 + groups * 10 + T)
    b, hkv = 3, 2
    q = torch.randn(b, hkv, groups, d, generator=g).to(dtype)
    k, v = (torch.randn(b, hkv, T, d, generator=g).to(dtype) for _ in range(2))
    mask = torch.zeros(b, T, dtype=dtype)
    mask[1, : T // 3] = torch.finfo(dtype).min  # a left-padded row
    if T > 4:
        mask[2, -2:] = float("-inf")  # the empty tail of a static cache
        mask[0, 1] = -0.5  # any other additive value counts as it is
    scale = d ** -0.5
    got = ext.decode_attention_cpu(q, k, v, mask, scale)
    assert got.dtype == dtype and got.shape == (b, hkv, groups, d)
    assert_close(got.double(), _definition(q, k, v, mask, scale), **_tol(dtype, d), what=f"{dtype} d={d}")
    no_mask = ext.decode_attention_cpu(q, k, v, None, 0.7)
    assert_close(no_mask.double(), _definition(q, k, v, None, 0.7), **_tol(dtype, d), what="no mask")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_masked_slots_are_never_read(dtype):
    """A static cache's slots past the current token (and left padding) may hold anything, NaN included: the kernel
    skips them, so the result equals the definition over the live slots alone; a row with no live slot gets zeros."""
    g = torch.Generator().manual_seed(0)
    b, hkv, groups, d, T, live = 3, 3, 3, 64, 80, 50
    q = torch.randn(b, hkv, groups, d, generator=g).to(dtype)
    k, v = (torch.randn(b, hkv, T, d, generator=g).to(dtype) for _ in range(2))
    k[:, :, live:], v[:, :, live:] = float("nan"), float("nan")
    k[1, :, :7], v[1, :, :7] = float("nan"), float("nan")
    mask = torch.zeros(b, T, dtype=dtype)
    mask[:, live:] = torch.finfo(dtype).min
    mask[1, :7] = torch.finfo(dtype).min
    mask[2] = torch.finfo(dtype).min  # nothing to attend
    got = ext.decode_attention_cpu(q, k, v, mask, 0.125)
    want = _definition(q[:2, :, :, :], k[:2, :, 7:live], v[:2, :, 7:live], None, 0.125)
    assert_close(got[0].double(), _definition(q[:1], k[:1, :, :live], v[:1, :, :live], None, 0.125)[0],
                 **_tol(dtype, d), what="row 0")
    assert_close(got[1].double(), want[1], **_tol(dtype, d), what="left-padded row")
    assert torch.equal(got[2], torch.zeros_like(got[2]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_nan_in_a_live_slot_propagates(dtype):
    """As in the definition: a NaN key in a slot that is attended makes the row's output NaN (never hidden)."""
    g = torch.Generator().manual_seed(5)
    q = torch.randn(2, 2, 3, 64, generator=g).to(dtype)
    k, v = (torch.randn(2, 2, 21, 64, generator=g).to(dtype) for _ in range(2))
    k[0, 1, 3, 5] = float("nan")
    got = ext.decode_attention_cpu(q, k, v, torch.zeros(2, 21, dtype=dtype), 0.125)
    assert got[0, 1].isnan().all() and not got[0, 0].isnan().any() and not got[1].isnan().any()


def test_strided_cache_views_and_argument_checks():
    g = torch.Generator().manual_seed(1)
    big_k, big_v = (torch.randn(2, 4, 40, 64, generator=g) for _ in range(2))
    k, v = big_k[:, 1:3, :30], big_v[:, 1:3, :30]  # kv heads 1-2, first 30 slots: strided views
    q = torch.randn(2, 8, 2, 64, generator=g)[:, ::4, :, :]  # 2 heads, head stride 4 x 128
    assert not k.is_contiguous() and not q.is_contiguous()
    got = ext.decode_attention_cpu(q, k, v, None, 0.125)
    assert_close(got.double(), _definition(q, k, v, None, 0.125), atol=1e-5, rtol=1e-5, what="strided")
    with pytest.raises(RuntimeError, match="share a dtype"):
        ext.decode_attention_cpu(q.bfloat16(), k, v, None, 0.125)
    with pytest.raises(RuntimeError, match="mask must be"):
        ext.decode_attention_cpu(q, k, v, torch.zeros(2, 31), 0.125)
    with pytest.raises(RuntimeError, match="does not match"):
        ext.decode_attention_cpu(q, k[:, :1], v[:, :1], None, 0.125)
    with pytest.raises(RuntimeError, match="float32 or bfloat16"):
        ext.decode_attention_cpu(q.half(), k.half(), v.half(), None, 0.125)


def test_the_backend_gate():
    """backends.decode_attention: transformers' layout in and out ([b, H, 1, D] -> [b, 1, H, D]), boolean and
    broadcast masks, and None (the PyTorch path) wherever the kernel does not apply."""
    g = torch.Generator().manual_seed(2)
    b, heads, hkv, d, T = 2, 6, 2, 32, 21
    q = torch.randn(b, heads, 1, d, generator=g)
    k, v = (torch.randn(b, hkv, T, d, generator=g) for _ in range(2))
    keep = torch.ones(b, 1, 1, T + 3, dtype=torch.bool)  # longer than the cache, as transformers' masks may be
    keep[0, ..., :4] = False
    additive = torch.zeros(b, 1, 1, T).masked_fill(~keep[..., :T], torch.finfo(torch.float32).min)
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=keep[..., :T], scale=0.2,
                                                            enable_gqa=True).transpose(1, 2)
    for mask in (keep, additive):
        got = backends.decode_attention(q, k, v, mask, 0.2)
        assert got.shape == (b, 1, heads, d)
        assert_close(got, want, atol=1e-5, rtol=1e-5, what=f"{mask.dtype} mask")
    shared = backends.decode_attention(q, k, v, torch.zeros(1, 1, 1, T), None)  # one mask row for all, default scale
    assert_close(shared, torch.nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=True).transpose(1, 2),
                 atol=1e-5, rtol=1e-5, what="broadcast mask")
    assert backends.decode_attention(q.requires_grad_(), k, v, None) is None  # a gradient is needed
    q = q.detach()
    assert backends.decode_attention(q.half(), k.half(), v.half(), None) is None
    assert backends.decode_attention(torch.randn(b, heads, 2, d), k, v, None) is None  # two query tokens
    assert backends.decode_attention(q, k, v, torch.zeros(b, heads, 1, T)) is None  # a per-head mask
    assert backends.decode_attention(q, k, v, torch.zeros(b, 1, 1, T, dtype=torch.long)) is None  # not additive
    strided = torch.randn(b, heads, d, 1, generator=g).transpose(2, 3)  # a query whose head dim is strided
    assert_close(backends.decode_attention(strided, k, v, None, 0.2),
                 torch.nn.functional.scaled_dot_product_attention(strided, k, v, scale=0.2, enable_gqa=True)
                 .transpose(1, 2), atol=1e-5, rtol=1e-5, what="strided query")
    with backends.use("torch"):
        assert backends.decode_attention(q, k, v, None) is None


def test_runs_inside_a_compiled_graph():
    """Under torch.compile the kernel is a custom op: no graph break (fullgraph), the eager kernel's result."""
    g = torch.Generator().manual_seed(3)
    q = torch.randn(4, 9, 1, 64, generator=g).bfloat16()
    k, v = (torch.randn(4, 3, 50, 64, generator=g).bfloat16() for _ in range(2))
    mask = torch.zeros(4, 1, 1, 50, dtype=torch.bfloat16)
    mask[:, ..., 40:] = torch.finfo(torch.bfloat16).min
    want = backends.decode_attention(q, k, v, mask, 0.125)

    def step(q, k, v, mask):
        with backends.traceable():
            return backends.decode_attention(q, k, v, mask, 0.125) * 2

    torch._dynamo.reset()
    got = torch.compile(step, fullgraph=True, dynamic=False)(q, k, v, mask)
    assert torch.equal(got, want * 2)


@pytest.mark.parametrize("family,decode", [("llama", "eager"), ("llama", "static"), ("qwen3", "eager"),
                                           ("qwen3", "static"), ("mistral", "eager")])  # static: full attention only
def test_generation_on_the_kernel_equals_generation_on_torch_sdpa(family, decode, monkeypatch):
    """Models with sdpa attention (qwen3: head dim 24, the kernel's generic path; mistral: a 16-token sliding
    window, past by the end) generate through csrc's decode attention the tokens that transformers' own sdpa gives
    (backend "torch"), with left-padded prompts; the kernel ran at every step."""
    from helpers import count_csrc_calls, tiny_teacher

    from hybrid.generation import SamplingParams, generate
    model = tiny_teacher(family, num_layers=2)
    model.set_attn_implementation("sdpa")
    prompts = [[5, 6, 7, 8, 9, 10, 11], [12, 13, 14]]
    params = SamplingParams(max_new_tokens=14)
    with backends.use("torch"):
        want = generate(model, prompts, params, eos_token_id=[], decode=decode)
    calls = count_csrc_calls(monkeypatch)
    got = generate(model, prompts, params, eos_token_id=[], decode=decode)
    assert got.sequences == want.sequences
    assert calls.get("decode_attention_cpu") == (params.max_new_tokens - 1) * 2  # every step, both layers


@pytest.mark.parametrize("family", ["llama", "qwen3", "mistral"])
@torch.no_grad()
def test_cached_steps_on_the_kernel_give_transformers_logits(family, monkeypatch):
    """Step by step on a transformers cache (past the sliding window for mistral): the logits of every one-token
    step through csrc's decode attention equal those through transformers' sdpa."""
    from helpers import tiny_teacher
    from transformers import DynamicCache

    from hybrid.generation import _register_decode_sdpa
    _register_decode_sdpa()
    model = tiny_teacher(family, num_layers=2)
    model.set_attn_implementation("sdpa")
    ids = torch.randint(3, 97, (2, 24), generator=torch.Generator().manual_seed(4))

    def steps():
        cache = DynamicCache(config=model.config)
        out = [model(ids[:, :5], cache=cache, use_cache=True).logits[:, -1]]
        out += [model(ids[:, t:t + 1], cache=cache, use_cache=True).logits[:, -1] for t in range(5, 24)]
        return torch.stack(out, 1)

    with backends.use("torch"):
        want = steps()
    ran, real = [], backends.decode_attention
    monkeypatch.setattr(backends, "decode_attention", lambda *a: ran.append(real(*a) is not None) or real(*a))
    assert_close(steps(), want, atol=1e-5, rtol=1e-5, what=f"{family} logits")
    assert ran == [True] * 19 * 2  # 19 one-token steps, 2 layers, each on the kernel
