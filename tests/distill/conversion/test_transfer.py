"""The attention -> mixer transfer, pinned: which weights land where, and what the mixer then computes."""
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_close, tiny_teacher

from distill import hybridize
from hybrid.mixers.common import inverse_softplus


def test_mamba2_weights_come_from_attention():
    teacher = tiny_teacher("llama", num_layers=4)
    hybrid = hybridize(teacher, [1, 3], mixer="mamba2")
    for i in (0, 2):
        attn, mix = teacher.model.layers[i].self_attn, hybrid.model.layers[i].mamba
        w = mix.in_proj.weight
        di, dxb = mix.d_inner, mix.d_xb
        assert torch.equal(w[di:di + dxb], attn.v_proj.weight)
        assert torch.equal(w[di + dxb:di + 2 * dxb], attn.k_proj.weight)
        assert torch.equal(w[di + 2 * dxb:2 * di + 2 * dxb], attn.q_proj.weight)
        assert torch.equal(mix.out_proj.weight, attn.o_proj.weight)
        for part in ("input_layernorm", "post_attention_layernorm", "mlp"):
            for (n, a), (_, b) in zip(getattr(teacher.model.layers[i], part).named_parameters(),
                                      getattr(hybrid.model.layers[i], part).named_parameters()):
                assert torch.equal(a, b), f"layer {i} {part}.{n}"
        # defaults of the parts attention has no counterpart for (spec)
        assert torch.all(mix.D == 1) and torch.all(mix.norm.weight == 1)
        A = torch.exp(mix.A_log)
        assert torch.all((A >= 1) & (A <= 16))
        dt = F.softplus(mix.dt_bias)
        assert torch.all((dt >= 1e-4 * 0.999) & (dt <= 0.1 * 1.001))
    for i in (1, 3):  # kept attention is the teacher's
        assert torch.equal(hybrid.model.layers[i].self_attn.q_proj.weight, teacher.model.layers[i].self_attn.q_proj.weight)


def test_mamba1_weights_come_from_attention():
    teacher = tiny_teacher("llama", num_layers=2)
    hybrid = hybridize(teacher, [1], mixer="mamba")
    attn, mix = teacher.model.layers[0].self_attn, hybrid.model.layers[0].mamba
    assert torch.equal(mix.in_proj_x.weight, attn.v_proj.weight)
    assert torch.equal(mix.B_proj.weight, attn.k_proj.weight)
    assert torch.equal(mix.C_proj.weight, attn.q_proj.weight)
    assert torch.equal(mix.out_proj.weight, attn.o_proj.weight)
    assert torch.equal(mix.A_log[3], torch.log(torch.arange(1.0, 17.0)))


def _as_linear_attention(mixer):
    """Conv -> identity, A -> 0 (no decay), dt -> 1, D -> 0."""
    with torch.no_grad():
        K = mixer.conv1d.weight.shape[-1]
        mixer.conv1d.weight.zero_()
        mixer.conv1d.weight[:, 0, K - 1] = 1.0
        if mixer.conv1d.bias is not None:
            mixer.conv1d.bias.zero_()
        mixer.A_log.fill_(-math.inf)
        mixer.D.zero_()


def test_mamba2_equals_causal_linear_attention_from_teacher_projections():
    teacher = tiny_teacher("llama", num_layers=2)
    hybrid = hybridize(teacher, [1], mixer="mamba2")
    attn, mix = teacher.model.layers[0].self_attn, hybrid.model.layers[0].mamba
    _as_linear_attention(mix)
    with torch.no_grad():
        mix.in_proj.weight[-mix.nheads:].zero_()  # dt rows: dt = softplus(0 + dt_bias) = 1
        mix.dt_bias.fill_(float(inverse_softplus(torch.tensor(1.0))))
    h = torch.randn(2, 11, teacher.config.hidden_size)
    with torch.no_grad():
        _, y = mix(h, return_ssm_output=True)  # [b, T, H, P]
        # independent computation: phi = silu on the teacher's own projections, GQA-grouped as repeat_kv
        n_h, n_kv, hd = 4, 2, teacher.config.head_dim
        q = F.silu(attn.q_proj(h)).view(2, 11, n_h, hd)
        k = F.silu(attn.k_proj(h)).view(2, 11, n_kv, hd).repeat_interleave(n_h // n_kv, dim=2)
        v = F.silu(attn.v_proj(h)).view(2, 11, n_kv, hd).repeat_interleave(n_h // n_kv, dim=2)
        scores = torch.einsum("bthd,bshd->bhts", q, k) * torch.tril(torch.ones(11, 11))
        expected = torch.einsum("bhts,bshd->bthd", scores, v)
    assert_close(y, expected, atol=1e-4, rtol=1e-4)


def test_mamba1_equals_chunked_linear_attention_from_teacher_projections():
    """Mamba1's reading of attention is linear attention over N-wide chunks (a warm start, not the heads)."""
    teacher = tiny_teacher("llama", num_layers=2)
    hybrid = hybridize(teacher, [1], mixer="mamba")
    attn, mix = teacher.model.layers[0].self_attn, hybrid.model.layers[0].mamba
    _as_linear_attention(mix)
    with torch.no_grad():
        mix.dt_proj.weight.zero_()
        mix.dt_proj.bias.fill_(float(inverse_softplus(torch.tensor(1.0))))
    h = torch.randn(2, 9, teacher.config.hidden_size)
    N, r = mix.d_state, mix.repeat
    with torch.no_grad():
        _, y = mix(h, return_ssm_output=True)  # [b, T, d_inner]
        q = attn.q_proj(h).view(2, 9, -1, N)  # C chunks
        k = attn.k_proj(h).view(2, 9, -1, N).repeat_interleave(r, dim=2)
        v = F.silu(attn.v_proj(h).view(2, 9, -1, N).repeat_interleave(r, dim=2))
        scores = torch.einsum("btgn,bsgn->bgts", q, k) * torch.tril(torch.ones(9, 9))
        expected = torch.einsum("bgts,bsgn->btgn", scores, v).reshape(2, 9, -1)
    assert_close(y, expected, atol=1e-4, rtol=1e-4)


def test_transfer_refuses_mismatched_widths():
    teacher = tiny_teacher("qwen3", num_layers=2)  # head_dim 24: d_xb = 48 does not divide hidden (64)
    with pytest.raises(ValueError, match="mamba_d_inner=64"):
        hybridize(teacher, [1], mixer="mamba")
