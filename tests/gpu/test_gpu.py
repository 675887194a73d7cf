"""CUDA paths: every CUDA kernel against its CPU twin, and a whole hybrid on the GPU against the CPU.

Skipped without a CUDA device; tests/gpu/run.sh runs them on a lent GPU machine.
"""
import pytest
import torch
from helpers import assert_close, tiny_hybrid, tiny_teacher

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_fused_step_matches_cpu_kernel(dtype):
    from hybrid.ops import csrc
    ext = csrc.extension()
    assert ext is not None and hasattr(ext, "mamba2_step_cuda"), "the CUDA extension did not build"
    g = torch.Generator().manual_seed(0)
    b, H, kv, P, K = 5, 32, 8, 64, 4
    d_xb, C = kv * P, 2 * kv * P + H * P
    cpu = dict(xBC=torch.randn(b, C, generator=g).to(dtype), conv=torch.randn(b, C, K, generator=g).to(dtype),
               w=torch.randn(C, K, generator=g).to(dtype), bias=torch.randn(C, generator=g).to(dtype),
               dt=torch.randn(b, H, generator=g).to(dtype), dt_bias=torch.randn(H, generator=g),
               A=-torch.rand(H, generator=g), D=torch.randn(H, generator=g), ssm=torch.randn(b, H, P, P, generator=g))
    gpu = {k: v.cuda() for k, v in cpu.items()}
    y_cpu = ext.mamba2_step_cpu(cpu["xBC"], cpu["conv"], cpu["w"], cpu["bias"], cpu["dt"], cpu["dt_bias"], cpu["A"],
                                cpu["D"], cpu["ssm"], kv, d_xb)
    y_gpu = ext.mamba2_step_cuda(gpu["xBC"], gpu["conv"], gpu["w"], gpu["bias"], gpu["dt"], gpu["dt_bias"], gpu["A"],
                                 gpu["D"], gpu["ssm"], kv, d_xb)
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    assert_close(y_gpu.cpu(), y_cpu, atol=tol, rtol=tol, what="y")
    assert_close(gpu["ssm"].cpu(), cpu["ssm"], atol=tol, rtol=tol, what="ssm state")
    assert torch.equal(gpu["conv"].cpu(), cpu["conv"])


def test_hybrid_on_cuda_matches_cpu(monkeypatch):
    model = tiny_hybrid("llama", [1, 3], chunk_size=16)
    ids = torch.randint(3, 97, (2, 40))
    with torch.no_grad():
        ref = model(ids).logits
        gen_ref = model.generate(ids[:, :8], max_new_tokens=8, do_sample=False, pad_token_id=0)
        model.cuda()
        out = model(ids.cuda()).logits.cpu()
        gen = model.generate(ids[:, :8].cuda(), max_new_tokens=8, do_sample=False, pad_token_id=0).cpu()
    assert_close(out, ref, atol=1e-3, rtol=1e-3)
    assert torch.equal(gen, gen_ref)


@pytest.mark.parametrize("kind", ["teacher", "hybrid"])
def test_packed_rows_under_sdpa_docs_on_cuda_match_cpu_eager(monkeypatch, kind):
    """Training loads switch sdpa to sdpa_docs (hybrid.attention): a packed row on CUDA, per document, gives the
    CPU eager model's logits and gradients (the block-diagonal mask)."""
    import copy

    import hybrid.attention
    monkeypatch.setattr(hybrid.attention, "MIN_LENGTH", 1)  # the row below is short; every row goes per document
    model = (tiny_teacher("llama") if kind == "teacher" else tiny_hybrid("llama", [1, 3], chunk_size=16)).float()
    ref = copy.deepcopy(model)  # eager, CPU
    lengths = [37, 5, 64, 22]
    ids = torch.randint(3, 97, (1, sum(lengths)))
    pos = torch.cat([torch.arange(n) for n in lengths])[None]
    model.set_attn_implementation("sdpa")
    assert hybrid.attention.use_document_attention(model)
    model.cuda()
    out = model(input_ids=ids.cuda(), position_ids=pos.cuda(), use_cache=False).logits
    expect = ref(input_ids=ids, position_ids=pos, use_cache=False).logits
    assert_close(out.cpu(), expect, atol=1e-3, rtol=1e-3, what="logits")
    g = torch.randn_like(expect)
    (out * g.cuda()).sum().backward()
    (expect * g).sum().backward()
    ref_grads = dict(ref.named_parameters())
    for k, p in model.named_parameters():
        if p.grad is not None:
            assert_close(p.grad.cpu(), ref_grads[k].grad, atol=1e-3, rtol=1e-3, what=k)


def _cpu_and_cuda(ext, name):
    assert ext is not None and hasattr(ext, f"{name}_cuda"), "the CUDA extension did not build"
    return getattr(ext, f"{name}_cpu"), getattr(ext, f"{name}_cuda")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("batch,T,H,P,G,N", [(1, 1, 4, 24, 1, 16), (3, 257, 8, 64, 2, 64), (1, 1000, 4, 128, 4, 128)])
def test_cuda_scan_matches_cpu_kernel(batch, T, H, P, G, N, dtype):
    from hybrid.ops import csrc
    cpu_fn, cuda_fn = _cpu_and_cuda(csrc.extension(), "ssd_scan")
    g = torch.Generator().manual_seed(T)
    x = torch.randn(batch, T, H, P, generator=g).to(dtype)
    dt = torch.rand(batch, T, H, generator=g) * 0.5
    A, D = -torch.rand(H, generator=g) - 0.05, torch.randn(H, generator=g)
    B, C = torch.randn(batch, T, G, N, generator=g).to(dtype), torch.randn(batch, T, G, N, generator=g).to(dtype)
    s0 = torch.randn(batch, H, P, N, generator=g)
    seq = torch.zeros(batch, T, dtype=torch.long)
    seq[:, T // 2:] = 1
    y, f = cpu_fn(x, dt, A, B, C, D, s0, seq)
    yc, fc = cuda_fn(x.cuda(), dt.cuda(), A.cuda(), B.cuda(), C.cuda(), D.cuda(), s0.cuda(), seq.cuda())
    tol = 1e-3 if dtype == torch.float32 else 5e-2
    assert_close(yc.cpu().float(), y.float(), atol=tol * y.float().abs().max().item(), rtol=tol, what="y")
    assert_close(fc.cpu(), f, atol=1e-3, rtol=1e-3, what="final state")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_conv1d_and_mamba1_step_match_cpu_kernels(dtype):
    from hybrid.ops import csrc
    ext = csrc.extension()
    conv_cpu, conv_cuda = _cpu_and_cuda(ext, "causal_conv1d")
    step_cpu, step_cuda = _cpu_and_cuda(ext, "mamba1_step")
    g = torch.Generator().manual_seed(1)
    x, w, bias = torch.randn(3, 257, 96, generator=g).to(dtype), torch.randn(96, 4, generator=g), torch.randn(96)
    init = torch.randn(3, 96, 3, generator=g)
    seq = torch.zeros(3, 257, dtype=torch.long)
    seq[1, 100:] = 1
    y = conv_cpu(x, w.to(dtype), bias.to(dtype), init.to(dtype), seq, True)
    yc = conv_cuda(x.cuda(), w.cuda(), bias.cuda(), init.cuda(), seq.cuda(), True)
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    assert_close(yc.cpu().float(), y.float(), atol=tol, rtol=tol, what="conv")
    Di, N = 128, 16
    args = [torch.randn(4, Di, generator=g).to(dtype), torch.randn(4, Di, 4, generator=g).to(dtype),
            torch.randn(Di, 4, generator=g).to(dtype), torch.randn(Di, generator=g).to(dtype),
            torch.rand(4, Di, generator=g), -torch.rand(Di, N, generator=g),
            torch.randn(4, 2, N, generator=g).to(dtype), torch.randn(4, 8, N, generator=g).to(dtype),
            torch.randn(Di, generator=g), torch.randn(4, Di, N, generator=g)]
    gpu = [a.cuda() for a in args]
    y1 = step_cpu(*args)[0]
    y1c = step_cuda(*gpu)[0]
    assert_close(y1c.cpu().float(), y1.float(), atol=tol, rtol=tol, what="mamba1 y")
    assert_close(gpu[-1].cpu(), args[-1], atol=1e-4, rtol=1e-4, what="mamba1 state")
    assert torch.equal(gpu[1].cpu(), args[1])


@pytest.mark.parametrize("kind", ["teacher", "mamba2", "mamba"])
def test_cuda_graph_decode_equals_eager(kind):
    """The decode step captured into a CUDA graph and replayed gives the eager engine's tokens (greedy and seeded
    sampling, left-padded rows) and leaves the generation state as the eager step does."""
    from hybrid.generation import SamplingParams, generate
    model = tiny_teacher("llama")
    if kind != "teacher":
        model = tiny_hybrid(attn_layers=[1], mixer=kind, teacher=model, chunk_size=16)
    model = model.cuda().eval()
    prompts = [[5, 6, 7, 8, 9, 10], [11, 12], [3, 4, 5, 6]]
    for params in (SamplingParams(max_new_tokens=24), SamplingParams(max_new_tokens=24, temperature=1.0, seed=4)):
        eager = generate(model, prompts, params, eos_token_id=[], decode="eager")
        graph = generate(model, prompts, params, eos_token_id=[], decode="graph")
        auto = generate(model, prompts, params, eos_token_id=[])
        assert (graph.decode_mode, auto.decode_mode) == ("graph", "graph")
        assert graph.sequences == eager.sequences == auto.sequences
