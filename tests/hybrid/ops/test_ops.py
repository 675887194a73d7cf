"""Every op against its sequential reference over awkward shapes, forward and backward."""
import os
import re

import pytest
import torch
from helpers import assert_close, ssd_inputs

from hybrid.ops import backends
from hybrid.ops.conv1d import causal_conv1d, causal_conv1d_ref, causal_conv1d_update, conv_state_from_inputs
from hybrid.ops.selective_scan import selective_scan, selective_scan_ref, selective_state_step
from hybrid.ops.ssd import ssd_chunked, ssd_ref, ssd_step


def _seq_idx(b, T, cuts):
    s = torch.zeros(b, T, dtype=torch.int32)
    for c in cuts:
        if 0 < c < T:
            s[:, c:] += 1
    return s


SSD_CASES = [  # (T, chunk, ngroups)
    (1, 16, 1), (63, 16, 4), (63, 64, 1), (257, 64, 4), (257, 256, 1), (1000, 256, 4), (1000, 16, 1),
]


@pytest.mark.parametrize("T,chunk,G", SSD_CASES)
def test_ssd_chunked_matches_recurrence_forward_backward(T, chunk, G):
    b, H, P, N = 2, 4, 6, 5  # odd head and state dims on purpose
    inputs = ssd_inputs(b, T, H, P, G, N)
    seq_idx = _seq_idx(b, T, [T // 3, T // 3 + 1, T - 2])
    leaves_a = [t.clone().requires_grad_() for t in inputs]
    leaves_b = [t.clone().requires_grad_() for t in inputs]
    x, dt, A, B, C, D, s0 = leaves_a
    y1, f1 = ssd_chunked(x, dt, A, B, C, D, chunk, s0, seq_idx)
    x, dt, A, B, C, D, s0 = leaves_b
    y2, f2 = ssd_ref(x, dt, A, B, C, D, s0, seq_idx)
    assert_close(y1, y2, atol=1e-4, rtol=1e-4, what="y")
    assert_close(f1, f2, atol=1e-4, rtol=1e-4, what="final state")
    gy, gf = torch.randn_like(y1), torch.randn_like(f1)
    torch.autograd.backward([y1, f1], [gy, gf])
    torch.autograd.backward([y2, f2], [gy, gf])
    for name, a, r in zip("x dt A B C D s0".split(), leaves_a, leaves_b):
        assert_close(a.grad, r.grad, atol=2e-3, rtol=2e-3, what=f"grad {name}")


def test_ssd_without_initial_state_or_documents():
    x, dt, A, B, C, D, _ = ssd_inputs(1, 70, 2, 4, 2, 3)
    y1, f1 = ssd_chunked(x, dt, A, B, C, None, 32)
    y2, f2 = ssd_ref(x, dt, A, B, C, None)
    assert_close(y1, y2, atol=1e-4, rtol=1e-4)
    assert_close(f1, f2, atol=1e-4, rtol=1e-4)


def test_ssd_documents_never_share_state():
    """A packed row equals its documents run separately (each from a zero state)."""
    x, dt, A, B, C, D, _ = ssd_inputs(1, 50, 2, 4, 1, 3)
    seq_idx = _seq_idx(1, 50, [20])
    y, _ = ssd_chunked(x, dt, A, B, C, D, 16, None, seq_idx)
    y_a, _ = ssd_chunked(x[:, :20], dt[:, :20], A, B[:, :20], C[:, :20], D, 16)
    y_b, _ = ssd_chunked(x[:, 20:], dt[:, 20:], A, B[:, 20:], C[:, 20:], D, 16)
    assert_close(y, torch.cat([y_a, y_b], 1), atol=1e-5)


def test_ssd_step_continues_a_scan():
    x, dt, A, B, C, D, s0 = ssd_inputs(2, 9, 4, 6, 2, 5)
    y_full, f_full = ssd_ref(x, dt, A, B, C, D, s0)
    _, state = ssd_chunked(x[:, :8], dt[:, :8], A, B[:, :8], C[:, :8], D, 4, s0)
    y_last, state = ssd_step(state, x[:, 8], dt[:, 8], A, B[:, 8], C[:, 8], D)
    assert_close(y_last, y_full[:, 8], atol=1e-5)
    assert_close(state, f_full, atol=1e-5)


@pytest.mark.parametrize("T", [1, 7, 63, 257])
def test_selective_scan_matches_recurrence_forward_backward(T):
    b, Dm, N, G = 2, 48, 16, 3
    g = torch.Generator().manual_seed(T)
    u = torch.randn(b, T, Dm, generator=g)
    delta = torch.rand(b, T, Dm, generator=g) * 0.5
    A = -torch.exp(torch.randn(Dm, N, generator=g))
    B = torch.randn(b, T, G, N, generator=g)
    C = torch.randn(b, T, G, N, generator=g)
    D = torch.randn(Dm, generator=g)
    h0 = torch.randn(b, Dm, N, generator=g)
    seq_idx = _seq_idx(b, T, [T // 2])
    inputs = (u, delta, A, B, C, D, h0)
    la = [t.clone().requires_grad_() for t in inputs]
    lb = [t.clone().requires_grad_() for t in inputs]
    y1, f1 = selective_scan(*la, seq_idx=seq_idx)
    y2, f2 = selective_scan_ref(*lb, seq_idx=seq_idx)
    assert_close(y1, y2, atol=1e-4, rtol=1e-4, what="y")
    assert_close(f1, f2, atol=1e-4, rtol=1e-4, what="final state")
    gy, gf = torch.randn_like(y1), torch.randn_like(f1)
    torch.autograd.backward([y1, f1], [gy, gf])
    torch.autograd.backward([y2, f2], [gy, gf])
    for name, a, r in zip("u delta A B C D h0".split(), la, lb):
        assert_close(a.grad, r.grad, atol=2e-3, rtol=2e-3, what=f"grad {name}")
    # and the one-step update continues the scan
    _, h = selective_scan_ref(u[:, :-1], delta[:, :-1], A, B[:, :-1], C[:, :-1], D, h0)
    y_last, h = selective_state_step(h, u[:, -1], delta[:, -1], A, B[:, -1], C[:, -1], D)
    y_all, f_all = selective_scan_ref(u, delta, A, B, C, D, h0)
    assert_close(y_last, y_all[:, -1], atol=1e-5)
    assert_close(h, f_all, atol=1e-5)


@pytest.mark.parametrize("T,K", [(1, 4), (3, 4), (63, 4), (257, 3)])
def test_conv1d_matches_reference_and_update(T, K):
    b, C = 3, 24
    g = torch.Generator().manual_seed(T)
    x = torch.randn(b, T, C, generator=g)
    w = torch.randn(C, K, generator=g)
    bias = torch.randn(C, generator=g)
    s0 = torch.randn(b, C, K - 1, generator=g)
    seq_idx = _seq_idx(b, T, [T // 2])
    for act in (None, "silu"):
        for init, seq in ((None, None), (s0, None), (s0, seq_idx)):
            assert_close(causal_conv1d(x, w, bias, init, seq, act), causal_conv1d_ref(x, w, bias, init, seq, act),
                         atol=1e-5, what=f"act={act} init={init is not None} seq={seq is not None}")
    # one-step update from the state after a prefix equals the full conv's last output
    full = causal_conv1d_ref(x, w, bias, activation="silu")
    state = conv_state_from_inputs(x[:, :-1], K)
    assert_close(causal_conv1d_update(x[:, -1], state, w, bias, "silu"), full[:, -1], atol=1e-5)
    assert_close(state, conv_state_from_inputs(x, K), atol=0, rtol=0, what="state advanced")


@pytest.fixture
def fresh_choice():
    """The backend choice resolved anew in the test, and again after it (from the environment it restores)."""
    backends.reset()
    yield
    backends.reset()


def test_backend_override_is_read_from_the_environment_at_first_use(monkeypatch, fresh_choice):
    monkeypatch.setenv("HYBRID_KERNELS", "torch")
    assert backends.active_backend("cpu") == "torch"
    monkeypatch.setenv("HYBRID_KERNELS", "csrc")
    assert backends.kernel_choice() == "torch"  # read once: every op of a run sees one setting
    monkeypatch.setenv("HYBRID_KERNELS", "fastest")
    backends.reset()
    with pytest.raises(ValueError, match="HYBRID_KERNELS='fastest'"):
        backends.kernel_choice()


def test_use_switches_the_backend_for_a_block_nests_and_restores(monkeypatch, fresh_choice):
    monkeypatch.setenv("HYBRID_KERNELS", "auto")
    with backends.use("torch"):
        assert backends.active_backend("cpu") == "torch"
        with backends.use("mamba_ssm"):
            assert backends.kernel_choice() == "mamba_ssm"
            with pytest.raises(KeyError), backends.use("csrc"):
                assert backends.kernel_choice() == "csrc"
                raise KeyError("inside")
            assert backends.kernel_choice() == "mamba_ssm"  # restored after the exception
        assert backends.kernel_choice() == "torch"
    assert backends.kernel_choice() == "auto" and os.environ["HYBRID_KERNELS"] == "auto"  # the environment untouched
    for bad in ("fastest", None):
        with pytest.raises(ValueError, match=re.escape(repr(bad))), backends.use(bad):
            pass
    assert backends.kernel_choice() == "auto"

