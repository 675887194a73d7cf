"""The few-rows linear kernel (csrc/cpu/skinny_linear.cpp) against F.linear in float64: awkward shapes (rows 1..40
across tile sizes, output columns not a multiple of 16, odd input features for bfloat16 pairs, leading batch dims),
with and without bias; and the packing's argument checks."""
import pytest
import torch
import torch.nn.functional as F

from hybrid.ops.csrc import extension

ext = extension()
pytestmark = pytest.mark.skipif(ext is None or not ext.skinny_linear_supported(False),
                                reason="kernel needs the csrc build with AVX-512")


def _ref(x, w, b):
    return F.linear(x.double(), w.double(), None if b is None else b.double())


@pytest.mark.parametrize("rows", [1, 2, 3, 5, 8, 15, 16, 17, 33, 40])
@pytest.mark.parametrize("n,k", [(16, 8), (37, 64), (576, 576), (200, 1536)])
@pytest.mark.parametrize("bias", [False, True])
def test_float32_equals_linear(rows, n, k, bias):
    g = torch.Generator().manual_seed(rows * 1000 + n + k)
    x, w = torch.randn(rows, k, generator=g), torch.randn(n, k, generator=g)
    b = torch.randn(n, generator=g) if bias else None
    y = ext.skinny_linear_cpu(x, ext.skinny_pack_cpu(w), b, n)
    assert y.dtype == torch.float32 and y.shape == (rows, n)
    torch.testing.assert_close(y.double(), _ref(x, w, b), rtol=1e-5, atol=1e-4 * k ** 0.5)


@pytest.mark.parametrize("rows", [1, 3, 4, 16, 19])
@pytest.mark.parametrize("n,k", [(16, 8), (37, 63), (576, 576), (100, 1537)])
@pytest.mark.parametrize("bias", [False, True])
def test_bfloat16_equals_linear(rows, n, k, bias):
    if not ext.skinny_linear_supported(True):
        pytest.skip("this build has no AVX512-BF16 kernel")
    g = torch.Generator().manual_seed(rows * 1000 + n + k)
    x, w = torch.randn(rows, k, generator=g).bfloat16(), torch.randn(n, k, generator=g).bfloat16()
    b = torch.randn(n, generator=g).bfloat16() if bias else None
    y = ext.skinny_linear_cpu(x, ext.skinny_pack_cpu(w), b, n)
    assert y.dtype == torch.bfloat16 and y.shape == (rows, n)
    ref = _ref(x, w, b)  # exact products of the bf16 inputs; the kernel sums them in float32 and rounds once
    torch.testing.assert_close(y.double(), ref, rtol=1e-2, atol=1e-2 * ref.abs().max().item())


def test_leading_dims_and_empty():
    x, w = torch.randn(2, 3, 64), torch.randn(40, 64)
    p = ext.skinny_pack_cpu(w)
    torch.testing.assert_close(ext.skinny_linear_cpu(x, p, None, 40), F.linear(x, w), rtol=1e-5, atol=1e-4)
    assert ext.skinny_linear_cpu(torch.randn(0, 64), p, None, 40).shape == (0, 40)


def test_checks_name_the_bad_value():
    p = ext.skinny_pack_cpu(torch.randn(40, 64))
    with pytest.raises(RuntimeError, match="features"):
        ext.skinny_linear_cpu(torch.randn(2, 63), p, None, 40)
    with pytest.raises(RuntimeError, match="N=60"):
        ext.skinny_linear_cpu(torch.randn(2, 64), p, None, 60)
    with pytest.raises(RuntimeError, match="bias"):
        ext.skinny_linear_cpu(torch.randn(2, 64), p, torch.randn(41), 40)
    with pytest.raises(RuntimeError, match="float32 or bfloat16"):
        ext.skinny_pack_cpu(torch.randn(4, 4, dtype=torch.float64))
