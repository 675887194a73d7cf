"""Our Mamba2 dispatch to mamba_ssm's Triton kernels == the torch path, on CPU through Triton's interpreter.

Each test runs the same op or model twice, `backends.use("mamba_ssm")` (routed by conftest.py to the interpreted
mamba_chunk_scan_combined) and `backends.use("torch")`, and checks that the kernel really ran. Covered: prefill,
packed documents (seq_idx from restarting position_ids), initial states from a cache (chunked prefill), backward
with gradients on every output (final states included), ngroups 1 < G < H, and GQA heads in the mixer. Not here:
Mamba1's scan and causal_conv1d are CUDA extensions (no Triton), and decode steps stay on the torch/csrc path
(test_selective_state_update_in_our_layout pins the kernel such a dispatch would call).
"""
import pytest
import torch
import torch.nn.functional as F
from helpers import assert_close, ssd_inputs, tiny_hybrid

from hybrid.cache import HybridCache
from hybrid.ops import backends

pytestmark = pytest.mark.triton_lane


def _seq_idx(b, T, cuts):
    s = torch.zeros(b, T, dtype=torch.int64)  # int64: the dispatch casts to the kernel's int32
    for c in cuts:
        if 0 < c < T:
            s[:, c:] += 1
    return s


SSD_CASES = [  # (T, chunk, G, P, N, with initial state and documents): the interpreter's time goes by b*H*chunks
    (1, 16, 1, 16, 16, True), (63, 32, 2, 12, 24, True), (40, 16, 4, 16, 16, False),
]


@pytest.mark.parametrize("T,chunk,G,P,N,extras", SSD_CASES)
def test_ssd_scan_forward_backward_matches_torch(routed, T, chunk, G, P, N, extras):
    b, H = 2, 4
    inputs = ssd_inputs(b, T, H, P, G, N)
    seq_idx = _seq_idx(b, T, [T // 3, T // 3 + 1, 32, T - 2]) if extras else None  # 32: a chunk boundary
    outs, grads = {}, {}
    gy = gf = None
    for choice in ("mamba_ssm", "torch"):
        x, dt, A, B, C, D, s0 = leaves = [t.clone().requires_grad_() for t in inputs]
        with backends.use(choice):
            y, final = backends.ssd_scan(x, dt, A, B, C, D, chunk, s0 if extras else None, seq_idx)
        if gy is None:
            gy, gf = torch.randn_like(y), torch.randn_like(final)
        torch.autograd.backward([y, final], [gy, gf])
        outs[choice] = y, final
        grads[choice] = [t.grad for t in leaves]
    assert len(routed.calls) == 1 and (routed.calls[0]["seq_idx"] is None) == (not extras)
    assert final.dtype == outs["mamba_ssm"][1].dtype == torch.float32
    assert_close(outs["mamba_ssm"][0], outs["torch"][0], what="y")
    assert_close(outs["mamba_ssm"][1], outs["torch"][1], what="final state")
    names = "x dt A B C D s0".split() if extras else "x dt A B C D".split()
    for name, a, r in zip(names, grads["mamba_ssm"], grads["torch"]):
        assert_close(a, r, atol=1e-4, rtol=1e-4, what=f"grad {name}")  # sums over T in another order


@pytest.fixture(scope="module")
def hybrid(mamba_triton):
    """Mamba2 layers 0 and 2 with GQA heads (4 query, 2 kv: x and B repeated), several scan chunks per prompt."""
    return tiny_hybrid("llama", mixer="mamba2", chunk_size=16).float()


def _logits(model, choice, ids, **kw):
    with backends.use(choice):
        return model(ids, **kw).logits


def test_prefill_and_packed_documents_match_torch(routed, hybrid):
    ids = torch.randint(3, 97, (2, 40), generator=torch.Generator().manual_seed(0))
    assert_close(_logits(hybrid, "mamba_ssm", ids), _logits(hybrid, "torch", ids), what="prefill logits")
    assert len(routed.calls) == 2 and all(c["seq_idx"] is None for c in routed.calls)
    # Two documents in row 0, three in row 1: position_ids restart -> seq_idx in every mixer layer.
    pos = torch.cat([torch.arange(17), torch.arange(23)])[None].repeat(2, 1)
    pos[1, 30:] = torch.arange(10)
    routed.calls.clear()
    packed = _logits(hybrid, "mamba_ssm", ids, position_ids=pos)
    assert len(routed.calls) == 2 and all(c["seq_idx"] is not None for c in routed.calls)
    assert_close(packed, _logits(hybrid, "torch", ids, position_ids=pos), what="packed logits")


def test_chunked_prefill_from_cache_then_decode_matches_full_torch_forward(routed, hybrid):
    ids = torch.randint(3, 97, (2, 44), generator=torch.Generator().manual_seed(1))
    full = _logits(hybrid, "torch", ids)
    cache = HybridCache(hybrid.config)
    with torch.no_grad(), backends.use("mamba_ssm"):
        # 24 tokens from zero state, 17 more continuing from the cached state (initial_states), 3 decode steps.
        pieces = [hybrid(ids[:, :24], cache=cache, use_cache=True).logits,
                  hybrid(ids[:, 24:41], cache=cache, use_cache=True).logits]
        pieces += [hybrid(ids[:, t:t + 1], cache=cache, use_cache=True).logits for t in range(41, 44)]
    assert [c["initial_states"] is not None for c in routed.calls] == [False, False, True, True]
    assert_close(torch.cat(pieces, 1), full, what="chunked prefill + decode logits")


def test_backward_through_the_hybrid_matches_torch(routed, hybrid):
    ids = torch.randint(3, 97, (2, 32), generator=torch.Generator().manual_seed(2))
    pos = torch.cat([torch.arange(20), torch.arange(12)])[None].repeat(2, 1)
    upstream = torch.randn(2, 32, hybrid.config.vocab_size, generator=torch.Generator().manual_seed(3))
    grads = {}
    for choice in ("mamba_ssm", "torch"):
        hybrid.zero_grad(set_to_none=True)
        (_logits(hybrid, choice, ids, position_ids=pos) * upstream).sum().backward()
        grads[choice] = {n: p.grad.clone() for n, p in hybrid.named_parameters() if p.grad is not None}
    hybrid.zero_grad(set_to_none=True)
    assert len(routed.calls) == 2 and grads["mamba_ssm"].keys() == grads["torch"].keys()
    assert any(".mamba." in n for n in grads["torch"])
    for name, g in grads["mamba_ssm"].items():
        assert_close(g, grads["torch"][name], atol=1e-4, rtol=1e-4, what=f"grad {name}")


@pytest.mark.parametrize("G", [1, 2, 4])
def test_selective_state_update_in_our_layout(interpreted, G):
    """mamba_ssm's decode kernel fed as mamba_ssm's Mamba2.step feeds it (raw dt, dt_bias, softplus in the kernel;
    dt, dt_bias, A and D per head broadcast over P and N) == our mixer's step: softplus(dt + dt_bias), ssd_update.

    Not a dispatch of ours yet: this pins the mapping a decode dispatch would use. (mamba_ssm 2.3.2 fails on
    dt_bias=None with per-head, broadcast dt and A, so such a dispatch passes dt_bias.)"""
    b, H, P, N = 2, 4, 12, 24
    x, _, A, B, C, D, s0 = ssd_inputs(b, 1, H, P, G, N)
    x, B, C = x[:, 0], B[:, 0], C[:, 0]  # [b, H, P], [b, G, N], [b, G, N]
    g = torch.Generator().manual_seed(4)
    dt_raw, dt_bias = torch.randn(b, H, generator=g), torch.randn(H, generator=g)
    y_ref, state_ref = backends.ssd_update(s0.clone(), x, F.softplus(dt_raw + dt_bias), A, B, C, D)
    state = s0.clone()
    y = interpreted["selective_state_update"].selective_state_update(
        state, x, dt_raw[..., None].expand(b, H, P), A[:, None, None].expand(H, P, N), B, C,
        D=D[:, None].expand(H, P), dt_bias=dt_bias[:, None].expand(H, P), dt_softplus=True)  # advances `state`
    assert_close(y, y_ref, what="y")
    assert_close(state, state_ref, what="state")
