"""The project's prefill kernels (csrc/cpu/ssd_scan.cpp, conv1d.cpp) and the Mamba1 decode step (mamba1_step.cpp)
against the sequential definitions in hybrid/ops, over awkward shapes, with every output buffer poisoned."""
import pytest
import torch
from helpers import assert_close, count_csrc_calls, tiny_hybrid

from hybrid.ops import backends, csrc
from hybrid.ops.conv1d import causal_conv1d_ref, causal_conv1d_update
from hybrid.ops.selective_scan import selective_state_step
from hybrid.ops.ssd import ssd_ref

ext = csrc.extension()
pytestmark = pytest.mark.skipif(ext is None, reason="hybrid._C could not be built here (no C++ compiler?)")


@pytest.fixture(autouse=True)
def poison():
    """torch.empty (also inside the kernels' bindings) returns NaN-filled memory: a missed write fails."""
    det, fill = torch.are_deterministic_algorithms_enabled(), torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    assert torch.isnan(torch.empty(4)).all()
    yield
    torch.use_deterministic_algorithms(det)
    torch.utils.deterministic.fill_uninitialized_memory = fill


def _check(actual, expected, dtype, what):
    if dtype == torch.float32:
        assert_close(actual, expected, atol=2e-4, rtol=1e-4, what=what)
    else:  # one bf16 rounding of the output: relative to its scale
        scale = expected.abs().max().item()
        assert_close(actual.float(), expected.float(), atol=1e-2 * scale, rtol=1e-2, what=what)


def _docs(batch, T, g):
    """seq_idx with a few document starts per row (row 0 one document)."""
    seq = torch.zeros(batch, T, dtype=torch.long)
    for b in range(1, batch):
        for s in sorted(torch.randint(1, max(T, 2), (3,), generator=g).tolist()):
            seq[b, s:] += 1
    return seq


SCAN_SHAPES = [  # (batch, T, heads, head_dim, groups, d_state)
    (1, 1, 4, 24, 1, 16), (3, 63, 6, 24, 3, 16), (3, 257, 4, 64, 4, 64), (1, 1000, 2, 128, 1, 32),
    (3, 257, 8, 128, 2, 64), (1, 63, 9, 64, 9, 64),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("batch,T,H,P,G,N", SCAN_SHAPES)
@pytest.mark.parametrize("extras", ["plain", "state+docs"])
def test_ssd_scan_matches_the_sequential_recurrence(batch, T, H, P, G, N, dtype, extras):
    g = torch.Generator().manual_seed(T * 7 + H)
    x = torch.randn(batch, T, H, P, generator=g).to(dtype)
    dt = (torch.rand(batch, T, H, generator=g) * 0.5).to(dtype)
    A = -torch.rand(H, generator=g) * 2 - 0.05
    B = torch.randn(batch, T, G, N, generator=g).to(dtype)
    C = torch.randn(batch, T, G, N, generator=g).to(dtype)
    D = torch.randn(H, generator=g)
    s0 = torch.randn(batch, H, P, N, generator=g) if extras != "plain" else None
    seq = _docs(batch, T, g) if extras != "plain" else None
    y, final = ext.ssd_scan_cpu(x, dt, A, B, C, D, s0, seq)
    y_ref, final_ref = ssd_ref(x.float(), dt.float(), A, B.float(), C.float(), D, s0, seq)
    assert y.dtype == dtype and final.dtype == torch.float32
    _check(y, y_ref, dtype, "y")
    assert_close(final, final_ref, atol=2e-4, rtol=1e-4, what="final state")


CONV_SHAPES = [(1, 1, 24, 4), (3, 63, 40, 4), (3, 257, 128, 4), (1, 1000, 24, 3), (2, 5, 64, 2)]  # (b, T, C, K)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("batch,T,C,K", CONV_SHAPES)
@pytest.mark.parametrize("extras", ["plain", "state+docs+bias"])
@pytest.mark.parametrize("silu", [True, False])
def test_conv1d_matches_the_definition(batch, T, C, K, dtype, extras, silu):
    g = torch.Generator().manual_seed(T + C)
    x = torch.randn(batch, T, C, generator=g).to(dtype)
    w = torch.randn(C, K, generator=g).to(dtype)
    full = extras != "plain"
    bias = torch.randn(C, generator=g).to(dtype) if full else None
    init = torch.randn(batch, C, K - 1, generator=g).to(dtype) if full else None
    seq = _docs(batch, T, g) if full else None
    y = ext.causal_conv1d_cpu(x, w, bias, init, seq, silu)
    ref = causal_conv1d_ref(x.float(), w.float(), None if bias is None else bias.float(),
                            None if init is None else init.float(), seq, "silu" if silu else None)
    _check(y, ref, dtype, "conv y")


STEP_SHAPES = [(1, 24, 4, 8, 1, 3), (3, 64, 4, 16, 2, 4), (3, 128, 3, 16, 8, 8), (2, 48, 4, 24, 2, 2)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("batch,Di,K,N,GB,GC", STEP_SHAPES)  # channels, conv width, d_state, B groups, C groups
def test_mamba1_step_matches_the_torch_composition(batch, Di, K, N, GB, GC, dtype):
    g = torch.Generator().manual_seed(Di + N)
    x = torch.randn(batch, Di, generator=g).to(dtype)
    conv_state = torch.randn(batch, Di, K, generator=g).to(dtype)
    w = torch.randn(Di, K, generator=g).to(dtype)
    bias = torch.randn(Di, generator=g).to(dtype)
    delta = torch.rand(batch, Di, generator=g)
    A = -torch.rand(Di, N, generator=g) * 2
    B = torch.randn(batch, GB, N, generator=g).to(dtype)
    C = torch.randn(batch, GC, N, generator=g).to(dtype)
    D = torch.randn(Di, generator=g)
    h = torch.randn(batch, Di, N, generator=g)
    ref_conv = conv_state.float().clone()
    u = causal_conv1d_update(x.float(), ref_conv, w.float(), bias.float(), "silu")
    y_ref, h_ref = selective_state_step(h.clone(), u, delta, A, B.float(), C.float(), D)
    y, h_out = ext.mamba1_step_cpu(x, conv_state, w, bias, delta, A, B, C, D, h)
    assert h_out.data_ptr() == h.data_ptr()  # advanced in place
    _check(y, y_ref, dtype, "y")
    assert_close(h, h_ref, atol=1e-4, rtol=1e-4, what="ssm state")
    assert torch.equal(conv_state.float(), ref_conv)


def test_bad_input_names_the_argument():
    x, dt, A = torch.randn(1, 8, 4, 16), torch.rand(1, 8, 4), -torch.ones(4)
    B = C = torch.randn(1, 8, 2, 16)
    with pytest.raises(RuntimeError, match="dt must be"):
        ext.ssd_scan_cpu(x, dt[:, :7], A, B, C, None, None, None)
    with pytest.raises(RuntimeError, match="multiple of groups"):
        ext.ssd_scan_cpu(x, dt, A, torch.randn(1, 8, 3, 16), torch.randn(1, 8, 3, 16), None, None, None)
    with pytest.raises(RuntimeError, match="share a dtype"):
        ext.ssd_scan_cpu(x, dt, A, B.double(), C.double(), None, None, None)
    with pytest.raises(RuntimeError, match="contiguous"):
        ext.ssd_scan_cpu(x.transpose(1, 2).contiguous().transpose(1, 2), dt, A, B, C, None, None, None)
    with pytest.raises(RuntimeError, match="initial_state must be"):
        ext.ssd_scan_cpu(x, dt, A, B, C, None, torch.zeros(1, 4, 16, 8), None)
    with pytest.raises(RuntimeError, match="seq_idx must be an integer"):
        ext.ssd_scan_cpu(x, dt, A, B, C, None, None, torch.zeros(1, 8))
    xc = torch.randn(2, 9, 12)
    with pytest.raises(RuntimeError, match="weight must be"):
        ext.causal_conv1d_cpu(xc, torch.randn(11, 4), None, None, None, True)
    with pytest.raises(RuntimeError, match="initial_state must be"):
        ext.causal_conv1d_cpu(xc, torch.randn(12, 4), None, torch.zeros(2, 12, 4), None, True)
    with pytest.raises(RuntimeError, match="x must be contiguous"):
        ext.causal_conv1d_cpu(xc.transpose(0, 1).contiguous().transpose(0, 1), torch.randn(12, 4), None, None, None,
                              True)
    xs, h = torch.randn(2, 16), torch.zeros(2, 16, 8)
    args = [xs, torch.zeros(2, 16, 4), torch.randn(16, 4), None, torch.rand(2, 16), -torch.ones(16, 8),
            torch.randn(2, 2, 8), torch.randn(2, 2, 8), None, h]
    ext.mamba1_step_cpu(*args)
    with pytest.raises(RuntimeError, match="ssm_state must be float32"):
        ext.mamba1_step_cpu(*args[:9], h.bfloat16())
    with pytest.raises(RuntimeError, match="B must be"):
        ext.mamba1_step_cpu(*args[:6], torch.randn(2, 3, 8), *args[7:])


@pytest.mark.parametrize("mixer", ["mamba2", "mamba"])
def test_hybrid_prefill_and_decode_agree_across_backends(monkeypatch, mixer):
    """Whole-model logits (packed prefill with documents, then decode) and greedy text: torch vs csrc."""
    model = tiny_hybrid("llama", [1], mixer=mixer, chunk_size=16).eval()
    ids = torch.randint(3, 97, (2, 40))
    pos = torch.cat([torch.arange(15), torch.arange(25)])[None].expand(2, -1)  # two packed documents per row
    calls = count_csrc_calls(monkeypatch)  # which kernels of the extension the model calls
    runs = {}
    for kernels in ("torch", "csrc"):
        with backends.use(kernels), torch.no_grad():
            packed = model(ids, position_ids=pos).logits
            gen = model.generate(ids[:, :30], max_new_tokens=8, do_sample=False, pad_token_id=0)
        runs[kernels] = (packed, gen)
        if kernels == "torch":
            assert not calls
    step = "mamba2_step_cpu" if mixer == "mamba2" else "mamba1_step_cpu"
    assert calls.get("causal_conv1d_cpu", 0) >= 2 and calls.get(step, 0) >= 7 * 3
    assert mixer == "mamba" or calls.get("ssd_scan_cpu", 0) >= 2  # Mamba1's prefill scan stays on torch
    assert_close(runs["csrc"][0], runs["torch"][0], atol=1e-4, rtol=0, what="packed logits")
    assert torch.equal(runs["csrc"][1], runs["torch"][1])
