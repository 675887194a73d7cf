"""The project's CPU kernel (csrc/cpu/mamba2_step.cpp) against its PyTorch twin, and inside a whole hybrid."""
import pytest
import torch
import torch.nn.functional as F
from helpers import assert_close, tiny_hybrid

from hybrid.ops import backends, csrc
from hybrid.ops.conv1d import causal_conv1d_update
from hybrid.ops.ssd import ssd_step

ext = csrc.extension()
pytestmark = pytest.mark.skipif(ext is None, reason="hybrid._C could not be built here (no C++ compiler?)")


def reference_step(xBC, conv_state, w, bias, dt, dt_bias, A, D, ssm, n_kv, d_xb, P, N):
    """The torch composition Mamba2Mixer uses without the kernel."""
    b, C = xBC.shape
    H = ssm.shape[1]
    a = causal_conv1d_update(xBC, conv_state, w, bias, "silu")
    x, B, Cm = torch.split(a, [d_xb, d_xb, H * N], dim=-1)
    r = H // n_kv
    x = x.view(b, n_kv, P).repeat_interleave(r, 1)
    B = B.view(b, n_kv, N).repeat_interleave(r, 1)
    Cm = Cm.view(b, H, N)
    dt = F.softplus(dt.float() + dt_bias.float())
    y, new = ssd_step(ssm, x, dt, A, B, Cm, D)
    ssm.copy_(new)
    return y


SHAPES = [  # (batch, heads, kv heads, head_dim = d_state, K)
    (1, 4, 4, 24, 4), (3, 9, 3, 64, 4), (3, 8, 1, 128, 4), (2, 6, 2, 24, 3),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("batch,H,kv,P,K", SHAPES)
def test_fused_step_matches_reference(batch, H, kv, P, K, dtype):
    g = torch.Generator().manual_seed(batch * 100 + H)
    N, d_xb = P, kv * P
    C = 2 * d_xb + H * N
    xBC = torch.randn(batch, C, generator=g).to(dtype)
    conv_state = torch.randn(batch, C, K, generator=g).to(dtype)
    w = torch.randn(C, K, generator=g).to(dtype)
    bias = torch.randn(C, generator=g).to(dtype)
    dt = torch.randn(batch, H, generator=g).to(dtype)
    dt_bias = torch.randn(H, generator=g)
    A = -torch.rand(H, generator=g) * 4
    D = torch.randn(H, generator=g)
    ssm = torch.randn(batch, H, P, N, generator=g)
    # The reference runs in fp32 on the same (possibly bf16) inputs: the kernel keeps activations in fp32 too.
    ref_conv, ref_ssm = conv_state.float().clone(), ssm.clone()
    y_ref = reference_step(xBC.float(), ref_conv, w.float(), bias.float(), dt.float(), dt_bias, A, D, ref_ssm, kv,
                           d_xb, P, N)
    for _ in range(2):  # poison: a missed write in a second call shows as NaN
        out_conv, out_ssm = conv_state.clone(), ssm.clone()
        y = ext.mamba2_step_cpu(xBC, out_conv, w, bias, dt, dt_bias, A, D, out_ssm, kv, d_xb)
        assert torch.isfinite(y.float()).all()
    if dtype == torch.float32:
        assert_close(y, y_ref, atol=1e-4, rtol=1e-4, what="y")
    else:  # one bf16 rounding of y: relative to the output's scale
        scale = y_ref.abs().max().item()
        assert_close(y.float(), y_ref, atol=1e-2 * scale, rtol=1e-2, what="y")
    assert_close(out_ssm, ref_ssm, atol=1e-4, rtol=1e-4, what="ssm state")
    assert torch.equal(out_conv.float(), ref_conv), "conv state"


def test_fused_step_rejects_bad_input():
    H, kv, P, K = 4, 2, 16, 4
    d_xb = kv * P
    C = 2 * d_xb + H * P
    args = dict(xBC=torch.randn(2, C), conv_state=torch.zeros(2, C, K), w=torch.randn(C, K), bias=None,
                dt=torch.randn(2, H), dt_bias=torch.zeros(H), A=-torch.ones(H), D=torch.ones(H),
                ssm=torch.zeros(2, H, P, P))

    def call(**over):
        a = {**args, **over}
        return ext.mamba2_step_cpu(a["xBC"], a["conv_state"], a["w"], a["bias"], a["dt"], a["dt_bias"], a["A"],
                                   a["D"], a["ssm"], kv, d_xb)

    call()
    with pytest.raises(RuntimeError, match="ssm_state must be float32"):
        call(ssm=torch.zeros(2, H, P, P, dtype=torch.bfloat16))
    with pytest.raises(RuntimeError, match="conv_state must be"):
        call(conv_state=torch.zeros(3, C, K))
    with pytest.raises(RuntimeError, match="contiguous"):
        call(conv_state=torch.zeros(2, K, C).transpose(1, 2))
    with pytest.raises(RuntimeError, match="share a dtype"):
        call(xBC=torch.randn(2, C, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="dt must be"):
        call(dt=torch.randn(2, H + 1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_hybrid_decodes_the_same_with_and_without_the_kernel(dtype):
    model = tiny_hybrid("llama", [1], chunk_size=16).to(dtype)
    ids = torch.randint(3, 97, (2, 20))
    runs = {}
    for kernels in ("torch", "csrc"):
        from hybrid.cache import HybridCache
        with backends.use(kernels), torch.no_grad():
            cache = HybridCache(model.config)
            pieces = [model(ids[:, :12], cache=cache, use_cache=True).logits]
            pieces += [model(ids[:, t:t + 1], cache=cache, use_cache=True).logits for t in range(12, 20)]
            runs[kernels] = (torch.cat(pieces, 1), model.generate(ids[:, :6], max_new_tokens=10, do_sample=False,
                                                                   pad_token_id=0))
    atol = 1e-4 if dtype == torch.float32 else 5e-2
    assert_close(runs["csrc"][0].float(), runs["torch"][0].float(), atol=atol, rtol=0, what="decode logits")
    if dtype == torch.float32:
        assert torch.equal(runs["csrc"][1], runs["torch"][1])


@pytest.mark.parametrize("mixer", ["mamba2", "mamba"])
def test_fused_decode_steps_leave_a_step_needing_gradients_to_torch(monkeypatch, mixer):
    """The kernels have no backward: a decode step with gradients to compute runs the torch path (same gate for
    both mixers); without, the fused step runs."""
    model = tiny_hybrid("llama", [1], mixer=mixer, chunk_size=16)
    ids = torch.randint(3, 97, (2, 9))
    calls = []

    class Spy:  # records which kernels of the extension the model calls
        def __getattr__(self, name):
            calls.append(name)
            return getattr(ext, name)

    monkeypatch.setitem(csrc._state, "module", Spy())
    step = "mamba2_step_cpu" if mixer == "mamba2" else "mamba1_step_cpu"
    from hybrid.cache import HybridCache
    for grad in (True, False):
        calls.clear()
        with backends.use("csrc"), torch.set_grad_enabled(grad):
            cache = HybridCache(model.config)
            model(ids[:, :8], cache=cache, use_cache=True)
            model(ids[:, 8:], cache=cache, use_cache=True).logits.sum()
        assert (step in calls) == (not grad), (grad, calls)
