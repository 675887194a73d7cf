"""CUDA paths: the fused decode kernel and a whole hybrid on the GPU against the PyTorch path.

Skipped without a CUDA device; tests/gpu/run.sh runs them on a lent GPU machine.
"""
import pytest
import torch
from helpers import assert_close, tiny_teacher

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (see tests/gpu/run.sh)")


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
    from distill import hybridize
    model = hybridize(tiny_teacher("llama"), [1, 3], chunk_size=16)
    ids = torch.randint(3, 97, (2, 40))
    with torch.no_grad():
        ref = model(ids).logits
        gen_ref = model.generate(ids[:, :8], max_new_tokens=8, do_sample=False, pad_token_id=0)
        model.cuda()
        out = model(ids.cuda()).logits.cpu()
        gen = model.generate(ids[:, :8].cuda(), max_new_tokens=8, do_sample=False, pad_token_id=0).cpu()
    assert_close(out, ref, atol=1e-3, rtol=1e-3)
    assert torch.equal(gen, gen_ref)
