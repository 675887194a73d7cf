"""The vLLM plugin: entry point, config fields vLLM reads, and the Mamba1 kernel layout checked on CPU against our
own mixer through reference implementations of vLLM's documented kernel semantics. Serving itself is tested only
where vLLM and a GPU are present."""
import importlib.metadata
import importlib.util

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_close, tiny_hybrid, tiny_tokenizer

from hybrid import vllm_plugin
from hybrid.cache import HybridCache


def make_hybrid(mixer: str, family: str = "llama"):
    model = tiny_hybrid(family, [1, 3], mixer=mixer, num_layers=4, chunk_size=16).eval()
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".mamba." in name and name.split(".")[-1] in ("D", "bias", "A_log"):
                p.add_(0.1 * torch.randn_like(p))
    return model


def ref_selective_scan(u, delta, A, B, C, D, z, delta_bias):
    """selective_scan_fn for one sequence, as documented: u, delta, z [dim, L], A [dim, N], B, C [G, N, L];
    channel c reads group c // (dim / G); returns y * silu(z) [dim, L] and the final state [dim, N]."""
    dim, L = u.shape
    group = torch.arange(dim) // (dim // B.shape[0])
    Bc, Cc = B[group], C[group]
    delta = F.softplus(delta + delta_bias[:, None])
    state, ys = torch.zeros(dim, A.shape[1]), []
    for t in range(L):
        state = state * torch.exp(delta[:, t, None] * A) + delta[:, t, None] * Bc[:, :, t] * u[:, t, None]
        ys.append((state * Cc[:, :, t]).sum(-1))
    y = torch.stack(ys, -1) + D[:, None] * u
    return y * F.silu(z), state


def ref_state_update(state, x, dt, A, B, C, D, dt_bias, z):
    """selective_state_update, multi-head form, as documented: state [b, h, p, n], x, dt, z [b, h, p],
    A [h, p, n], B, C [b, G, n], D, dt_bias [h, p]. Updates state in place; returns the gated output."""
    per_group = x.shape[1] // B.shape[1]
    Bh, Ch = B.repeat_interleave(per_group, 1), C.repeat_interleave(per_group, 1)
    dt = F.softplus(dt + dt_bias)
    state.copy_(state * torch.exp(dt[..., None] * A) + dt[..., None] * Bh[:, :, None, :] * x[..., None])
    return ((state * Ch[:, :, None, :]).sum(-1) + D * x) * F.silu(z)


def test_entry_point_is_declared():
    try:
        importlib.metadata.distribution("hybrid-distill")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("the package is not pip-installed here (run from a source tree): no entry points to read")
    eps = importlib.metadata.entry_points(group="vllm.general_plugins")
    assert {ep.name: ep.value for ep in eps}.get("hybrid_distill") == "hybrid.vllm_plugin:register"


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed")
def test_register_without_vllm_says_what_is_missing():
    with pytest.raises(ImportError, match="needs vLLM"):
        vllm_plugin.register()


def test_config_fields_vllm_reads():
    cfg = make_hybrid("mamba").config
    assert cfg.layers_block_type == ["mamba", "attention", "mamba", "attention"]
    assert cfg.max_position_embeddings == 1024
    assert (cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads) == (64, 4, 2)
    assert not cfg.tie_word_embeddings
    cfg.tie_word_embeddings = True  # loaders set it (vLLM unties a tied config whose file has an lm_head)
    assert cfg.tie_word_embeddings and cfg.teacher_config.tie_word_embeddings


@torch.no_grad()
def test_mamba1_layout_for_vllm_kernels_matches_our_mixer():
    """Prefill through selective_scan_fn's varlen layout, then one decode step through selective_state_update's
    multi-head view of the (d_inner, N) state, reproduce our Mamba1 mixer (full forward) token for token."""
    model = make_hybrid("mamba")
    mixer = model.model.layers[0].mamba
    assert mixer.repeat > 1 and mixer.d_inner // mixer.d_state > 1  # grouped B/C and repeated x are exercised
    T, K = 9, mixer.conv1d.weight.shape[-1]
    h = torch.randn(T, model.config.hidden_size)
    expected = mixer(h[None])[0]  # [T, d_model]

    x, z, B, C, dt = vllm_plugin.mamba1_inputs(mixer, h)
    A, D, dt_bias = -torch.exp(mixer.A_log.float()), mixer.D, mixer.dt_proj.bias
    w, b = mixer.conv1d.weight, mixer.conv1d.bias
    P = T - 1  # prefill the first P tokens
    u = F.silu(F.conv1d(x[:P].T[None], w, b, padding=K - 1, groups=w.shape[0])[0, :, :P])  # [d_inner, P]
    a = vllm_plugin.mamba1_scan_args(u, dt[:P], B[:P], C[:P], z[:P])
    y, state = ref_selective_scan(a["u"], a["delta"], A, a["B"], a["C"], D, a["z"], dt_bias)
    assert_close(mixer.out_proj(y.T), expected[:P], atol=1e-5, what="prefill")

    window = x[P - K + 1:P + 1].T  # the conv state after prefill, plus the new token
    u_last = F.silu((window * w[:, 0]).sum(-1) + b)[None]  # [1, d_inner]
    ssm_state = state[None].clone()  # [blocks=1, d_inner, N]
    s = vllm_plugin.mamba1_step_args(ssm_state, u_last, dt[P:], A, B[P:], C[P:], D, z[P:], dt_bias)
    out = ref_state_update(s["state"], s["x"], s["dt"], s["A"], s["B"], s["C"], s["D"], s["dt_bias"], s["z"])
    assert_close(mixer.out_proj(out.flatten(1)), expected[P:], atol=1e-5, what="decode step")
    # the update went through the view into the cache tensor, and equals our own cached decoding's state
    cache = HybridCache(model.config)
    mixer(h[None, :P], cache=cache)
    mixer(h[None, P:], cache=cache)
    assert_close(ssm_state, cache.get_recurrent_state(0), atol=1e-5, what="state in place")


needs_vllm = pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="serving test: needs vLLM")


@pytest.mark.gpu
@needs_vllm
@pytest.mark.parametrize("mixer,family", [("mamba2", "llama"), ("mamba", "llama"), ("mamba2", "qwen3")])
def test_vllm_greedy_equals_ours(tmp_path, mixer, family):
    from vllm import LLM, SamplingParams

    model = make_hybrid(mixer, family)
    model.save_pretrained(tmp_path)
    tiny_tokenizer().save_pretrained(tmp_path)
    prompts = [[5, 17, 33, 8, 61, 12, 40], [9, 9, 70, 3]]
    llm = LLM(model=str(tmp_path), dtype="float32", enforce_eager=True, gpu_memory_utilization=0.2,
              max_model_len=128)
    got = [o.outputs[0].token_ids for o in llm.generate([{"prompt_token_ids": p} for p in prompts],
                                                        SamplingParams(temperature=0, max_tokens=8))]
    for p, g in zip(prompts, got):
        ids = torch.tensor([p])
        ours = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False,
                              pad_token_id=0)[0, len(p):].tolist()
        assert list(g) == ours[:len(g)], (p, list(g), ours)
