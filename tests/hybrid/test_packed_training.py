"""The packed autograd linear (hybrid.prepack.PackedLinearFunction) against F.linear: values and the gradients of
input, weight and bias, and repacking after an in-place weight update."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import assert_close
from hybrid.prepack import op_works, packed_training_linears

pytestmark = pytest.mark.skipif(not op_works(), reason="oneDNN packed linear unavailable in this torch build")


@pytest.mark.parametrize("bias", [True, False])
def test_packed_linear_equals_f_linear_in_values_and_gradients(bias):
    torch.manual_seed(0)
    lin = nn.Linear(24, 40, bias=bias)
    x = torch.randn(3, 7, 24)
    x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    g = torch.randn(3, 7, 40)
    ref = F.linear(x1, lin.weight, lin.bias)
    (ref * g).sum().backward()
    grads = [lin.weight.grad.clone()] + ([lin.bias.grad.clone()] if bias else [])
    lin.zero_grad()
    with packed_training_linears(lin) as n:
        assert n == 1
        out = lin(x2)
    (out * g).sum().backward()
    assert_close(out, ref, atol=1e-5, rtol=1e-5, what="values")
    assert_close(x2.grad, x1.grad, atol=1e-5, rtol=1e-5, what="input gradient")
    assert_close(lin.weight.grad, grads[0], atol=1e-4, rtol=1e-5, what="weight gradient")
    if bias:
        assert_close(lin.bias.grad, grads[1], atol=1e-4, rtol=1e-5, what="bias gradient")
    assert "forward" not in vars(lin)  # restored on exit


def test_an_optimizer_step_repacks_the_weight():
    torch.manual_seed(1)
    lin = nn.Linear(16, 8)
    opt = torch.optim.SGD(lin.parameters(), lr=0.5)
    x = torch.randn(5, 16)
    with packed_training_linears(lin):
        for _ in range(3):
            out = lin(x)
            assert_close(out, F.linear(x, lin.weight, lin.bias), atol=1e-5, rtol=1e-5, what="after a step")
            out.square().sum().backward()
            opt.step()
            opt.zero_grad()


def test_autocast_and_frozen_weights_fall_back_or_skip_the_weight_gradient():
    torch.manual_seed(2)
    lin = nn.Linear(16, 8)
    lin.weight.requires_grad_(False)
    x = torch.randn(4, 16, requires_grad=True)
    with packed_training_linears(lin):
        out = lin(x)
        out.sum().backward()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert lin(x).dtype == torch.bfloat16  # autocast: F.linear's path
    assert lin.weight.grad is None
    assert_close(x.grad, lin.weight.sum(0).expand(4, -1), atol=1e-5, rtol=1e-5, what="input gradient")
