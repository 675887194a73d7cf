"""Packed CPU linears (hybrid.prepack), oneDNN's and the csrc few-rows kernel's: same results as F.linear, current
weights, nothing left behind."""
import pytest
import torch
from helpers import assert_close, tiny_hybrid, tiny_teacher
from torch import nn
from transformers import GenerationMixin

import hybrid.prepack as prepack
from hybrid.generation import SamplingParams, generate

pytestmark = pytest.mark.skipif(not prepack.op_works(), reason="oneDNN packed linear does not run in this build")


def _dtypes():
    return [torch.float32] + ([torch.bfloat16] if prepack.dtype_supported(torch.bfloat16) else [])


KINDS = ["onednn"] + (["csrc"] if prepack.skinny_supported(torch.float32) else [])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", _dtypes())
@pytest.mark.parametrize("shape", [(1, 64), (3, 1, 64), (2, 63, 64), (16, 64), (3, 50, 64)])  # 150 rows: prefill
@pytest.mark.parametrize("bias", [False, True])
def test_packed_linear_equals_f_linear(shape, bias, dtype, kind):
    if kind == "csrc" and not prepack.skinny_supported(dtype):
        pytest.skip(f"no few-rows kernel for {dtype} in this build")
    torch.manual_seed(0)
    lin = nn.Linear(64, 40, bias=bias).to(dtype)
    x = torch.randn(*shape, dtype=dtype)
    ref = nn.functional.linear(x, lin.weight, lin.bias)
    with torch.no_grad(), prepack.prepacked_linears(lin, kind) as n:
        out = lin(x)
    assert n == 1 and n.kind == kind
    assert out.shape == ref.shape and out.dtype == dtype
    assert_close(out, ref, what=f"packed linear {shape} bias={bias}")


def test_default_kind_is_the_csrc_kernel_where_it_builds(monkeypatch):
    monkeypatch.delenv("HYBRID_PREPACK", raising=False)
    lin = nn.Linear(8, 4)
    with torch.no_grad(), prepack.prepacked_linears(lin) as n:
        assert n.kind == ("csrc" if "csrc" in KINDS else "onednn") and n.label == prepack.LABELS[n.kind]
    monkeypatch.setenv("HYBRID_PREPACK", "onednn")
    with torch.no_grad(), prepack.prepacked_linears(lin) as n:
        assert n.kind == "onednn" and n.label == "onednn-packed"
    with torch.no_grad(), prepack.prepacked_linears(lin, False) as n:
        assert n == 0 and n.label == "aten"
    with pytest.raises(ValueError, match="packing kind 'mkl'"):
        prepack.packing_kind(torch.float32, "mkl")


def test_bfloat16_on_an_amx_cpu_defaults_to_onednn(monkeypatch):
    """AMX tiles (oneDNN) beat the kernel's AVX512-BF16 dot products in bfloat16; float32 keeps the kernel."""
    monkeypatch.delenv("HYBRID_PREPACK", raising=False)
    monkeypatch.setattr(prepack, "skinny_supported", lambda dtype: True)  # as where the kernel builds for both
    monkeypatch.setattr(prepack, "op_works", lambda: True)
    monkeypatch.setattr(prepack, "dtype_supported", lambda dtype: True)
    monkeypatch.setattr(prepack, "cpu_flags", lambda: {"avx512f", "avx512_bf16", "amx_bf16", "amx_tile"})
    assert prepack.packing_kind(torch.bfloat16) == "onednn"
    assert prepack.packing_kind(torch.float32) == "csrc"
    assert prepack.packing_kind(torch.bfloat16, "csrc") == "csrc"  # asked for by name: kept
    monkeypatch.setattr(prepack, "cpu_flags", lambda: {"avx512f", "avx512_bf16"})
    assert prepack.packing_kind(torch.bfloat16) == "csrc"


@pytest.mark.skipif("csrc" not in KINDS, reason="no few-rows kernel in this build")
def test_few_rows_kernel_leaves_prefill_and_gradients_to_f_linear(monkeypatch):
    lin = nn.Linear(16, 8)
    ext = prepack._skinny()
    calls = []
    monkeypatch.setattr(prepack, "_skinny", lambda: type("E", (), {
        "skinny_linear_supported": staticmethod(ext.skinny_linear_supported),
        "skinny_pack_cpu": staticmethod(ext.skinny_pack_cpu),
        "skinny_linear_cpu": staticmethod(lambda *a: calls.append(a[0].shape) or ext.skinny_linear_cpu(*a))})())
    with prepack.prepacked_linears(lin, "csrc"):
        with torch.no_grad():
            lin(torch.randn(4, prepack.SKINNY_ROWS // 4, 16))
            lin(torch.randn(prepack.SKINNY_ROWS + 1, 16))
        lin(torch.randn(2, 16))  # gradients enabled
    assert calls == [torch.Size([4, prepack.SKINNY_ROWS // 4, 16])]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])  # qwen2: q/k/v biases; qwen3: q/k norms
def test_model_logits_equal_and_the_model_is_restored(family, kind):
    model = tiny_teacher(family)
    ids = torch.randint(3, 97, (2, 9))
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        ref = model(ids).logits
        with prepack.prepacked_linears(model, kind) as n:
            out = model(ids).logits
            assert all("forward" in vars(m) for m in linears)
    assert n == len(linears) > 0
    assert_close(out, ref, what="packed model logits")
    assert not any("forward" in vars(m) for m in linears)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_gradients_inside_the_block_take_f_linear():
    model = tiny_teacher("llama")
    ids = torch.randint(3, 97, (2, 7))
    model(ids).logits.square().mean().backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    with prepack.prepacked_linears(model):
        model(ids).logits.square().mean().backward()
    for n, p in model.named_parameters():
        assert_close(p.grad, ref[n], what=n)


@pytest.mark.parametrize("kind", KINDS)
def test_generation_packs_the_current_weights_each_call(monkeypatch, kind):
    model = tiny_hybrid("llama", [1, 3]).eval()
    calls = []
    forward = prepack._SkinnyForward if kind == "csrc" else prepack._PackedForward
    real = forward.__call__
    monkeypatch.setattr(forward, "__call__", lambda self, x: calls.append(1) or real(self, x))
    prompts = [[5, 6, 7, 8], [9, 10]]
    p = SamplingParams(max_new_tokens=6)
    first = generate(model, prompts, p, eos_token_id=[], prepack=kind)
    assert first.linear == prepack.LABELS[kind] and calls
    # an in-place update that bypasses the version counter (.data), as some trainers write weights
    with torch.no_grad():
        model.lm_head.weight.data.copy_(torch.randn_like(model.lm_head.weight))
    packed = generate(model, prompts, p, eos_token_id=[], prepack=kind)
    plain = generate(model, prompts, p, eos_token_id=[], prepack=False)
    assert plain.linear == "aten"
    assert packed.sequences == plain.sequences != first.sequences


@pytest.mark.parametrize("packing", KINDS)
@pytest.mark.parametrize("kind", ["teacher", "mamba2", "mamba"])
def test_packed_engine_greedy_equals_hf_greedy(kind, packing):
    model = tiny_teacher("llama")
    if kind != "teacher":
        model = tiny_hybrid(attn_layers=[0, 2], mixer=kind, teacher=model).eval()
    prompt = [3, 17, 42, 8, 61]
    ref = GenerationMixin.generate(model, torch.tensor([prompt]), max_new_tokens=12, min_new_tokens=12,
                                   do_sample=False, pad_token_id=0)[0, len(prompt):].tolist()
    out = generate(model, [prompt], SamplingParams(max_new_tokens=12), eos_token_id=[], prepack=packing)
    assert out.linear == prepack.LABELS[packing]
    assert out.sequences[0] == ref


def test_default_and_override(monkeypatch):
    monkeypatch.delenv("HYBRID_PREPACK", raising=False)
    assert prepack.prepack_default(torch.device("cpu"))
    assert not prepack.prepack_default(torch.device("meta"))
    monkeypatch.setenv("HYBRID_PREPACK", "0")
    assert not prepack.prepack_default(torch.device("cpu"))
    monkeypatch.setenv("HYBRID_PREPACK", "onednn")
    assert prepack.prepack_default(torch.device("cpu"))
    monkeypatch.setenv("HYBRID_PREPACK", "yes")
    with pytest.raises(ValueError, match="HYBRID_PREPACK='yes'"):
        prepack.prepack_default(torch.device("cpu"))


def test_modules_owned_by_a_hook_or_not_plain_are_left_alone():
    class Scaled(nn.Linear):
        pass
    hooked, sub = nn.Linear(8, 4), Scaled(8, 4)
    hooked.forward = lambda x: x  # e.g. accelerate's hook wrapper
    seq = nn.Sequential(hooked, nn.Linear(8, 8).half(), sub)
    with torch.no_grad(), prepack.prepacked_linears(seq) as n:
        assert n == 0
    assert "forward" in vars(hooked)  # untouched, not removed



def test_nothing_is_packed_where_the_copies_would_not_fit(monkeypatch):
    lin = nn.Linear(64, 64)  # 16 KiB of weight
    monkeypatch.setattr(prepack, "available_memory", lambda: 20 << 10)
    monkeypatch.delitem(prepack._state, "memory", raising=False)
    with pytest.warns(UserWarning, match="not packing linear weights"):
        with torch.no_grad(), prepack.prepacked_linears(lin) as n:
            assert n == 0 and "forward" not in vars(lin)
    monkeypatch.setattr(prepack, "available_memory", lambda: 40 << 10)
    with torch.no_grad(), prepack.prepacked_linears(lin) as n:
        assert n == 1
