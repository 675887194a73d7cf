"""decode="compiled": the fixed-shape decode step through torch.compile equals the eager step (logits up to float
rounding, the same greedy tokens) for a plain teacher and Mamba2 / Mamba1 hybrids, compiles once per model and
shape without recompiling per step or per call, and refuses where the static step does not apply; the throughput
roofline's compute bound.

Compilation dominates this file's time (inductor's C++ kernels; tens of seconds per model on a cold cache), so each
model is compiled once, by its module-scoped fixture, at the one shape every test uses."""
import pytest
import torch
from helpers import assert_close, count_csrc_calls, tiny_hybrid, tiny_teacher
from torch._dynamo.utils import counters

from hybrid.generation import (COMPILE_LEN_BUCKET, SamplingParams, StaticDecodeStep, cache_tensors, generate,
                               static_cache)
from hybrid.ops import backends

PROMPTS = [[5, 6, 7, 8, 9, 10], [11, 12, 13]]  # left-padded to 6; with 6 new tokens the cache rounds up to 64
OTHER = [[20, 21], [30, 31, 32, 33, 34]]  # other lengths, same bucket: must hit the same compilation
GREEDY = SamplingParams(max_new_tokens=6)


def _graphs():
    return counters["stats"]["unique_graphs"], sum(counters["graph_break"].values())


@pytest.fixture(scope="module", params=["llama", "mamba2", "mamba"])
def compiled(request):
    """(model, the first compiled generate() output, graphs compiled by it, graph breaks in it)."""
    if request.param == "llama":
        model = tiny_teacher("llama", num_layers=2)
    else:
        model = tiny_hybrid("llama", mixer=request.param, num_layers=2)  # a mixer layer, then an attention layer
    model.eval()
    graphs, breaks = _graphs()
    out = generate(model, PROMPTS, GREEDY, eos_token_id=[], decode="compiled")
    after = _graphs()
    return model, out, after[0] - graphs, after[1] - breaks


def test_compiled_generate_gives_the_eager_tokens_and_compiles_one_graph_once(compiled):
    model, out, graphs, breaks = compiled
    assert out.decode_mode == "compiled" and out.linear == "aten" and out.compile_seconds > 0
    assert graphs == 1 and breaks == 0  # one graph for the whole step, compiled once for all its steps
    assert out.sequences == generate(model, PROMPTS, GREEDY, eos_token_id=[], decode="eager").sequences
    # a later call of another prompt shape in the same bucket reuses the compilation: no recompile at any step
    with torch.compiler.set_stance("fail_on_recompile"):
        again = generate(model, OTHER, GREEDY, eos_token_id=[], decode="compiled")
    assert again.sequences == generate(model, OTHER, GREEDY, eos_token_id=[], decode="eager").sequences


def test_compiled_sampling_draws_what_the_static_step_draws(compiled):
    model = compiled[0]
    p = SamplingParams(max_new_tokens=6, temperature=0.8, top_p=0.9, seed=3)
    with torch.compiler.set_stance("fail_on_recompile"):
        ours = generate(model, PROMPTS, p, eos_token_id=[], decode="compiled")
    assert ours.sequences == generate(model, PROMPTS, p, eos_token_id=[], decode="static").sequences


@pytest.mark.parametrize("mixer", [None, "mamba2", "mamba"])
def test_compiled_step_runs_the_csrc_custom_ops_inside_its_graph(mixer, monkeypatch):
    """With sdpa attention (the tiny models above run eager attention), the decode attention and the fused Mamba2
    step are torch.library custom ops: the compiled step, still one graph without a break, calls csrc's kernels at
    every step and gives the eager tokens; the pybind-only Mamba1 step stays on the traced torch path."""
    from hybrid.ops import csrc
    if csrc.extension() is None:
        pytest.skip("csrc did not build here: there is no kernel to count")
    model = tiny_teacher("llama", num_layers=2) if mixer is None else tiny_hybrid("llama", mixer=mixer, num_layers=2)
    model.set_attn_implementation("sdpa")
    model.eval()
    eager = generate(model, PROMPTS, GREEDY, eos_token_id=[], decode="eager").sequences
    calls = count_csrc_calls(monkeypatch)
    graphs, breaks = _graphs()
    out = generate(model, PROMPTS, GREEDY, eos_token_id=[], decode="compiled")
    assert _graphs()[1] == breaks and _graphs()[0] == graphs + 1
    assert out.sequences == eager
    calls.clear()  # the compiling step above may have run an op more than once
    with torch.compiler.set_stance("fail_on_recompile"):
        assert generate(model, PROMPTS, GREEDY, eos_token_id=[], decode="compiled").sequences == eager
    steps = GREEDY.max_new_tokens  # the first token comes from the prefill; plus StaticDecodeStep's warm-up step
    types = model.config.layer_types if mixer else ["attention"] * 2
    assert calls.get("decode_attention_cpu", 0) == steps * types.count("attention")
    assert calls.get("mamba2_step_cpu", 0) == steps * types.count("mamba2")


@torch.no_grad()
def test_compiled_step_logits_equal_the_eager_steps(compiled):
    """Step by step from the same cache: the compiled step's logits against the uncompiled static step's, fed the
    same tokens, and its argmax against theirs."""
    model = compiled[0]
    b, L, max_len = 2, 6, COMPILE_LEN_BUCKET  # the fixture's shape
    ids = torch.tensor([PROMPTS[0], [0, 0, 0] + PROMPTS[1]])
    mask = torch.zeros(b, max_len, dtype=torch.long)
    mask[0, :L], mask[1, 3:L] = 1, 1
    pos = (mask[:, :L].cumsum(-1) - 1).clamp(min=0)
    cache = static_cache(model, max_len, full_buffer=True)
    logits = model(input_ids=ids, attention_mask=mask[:, :L], position_ids=pos, cache=cache, use_cache=True,
                   logits_to_keep=1).logits[:, -1]
    start = [(t, t.clone()) for t in cache_tensors(cache)]
    tokens = [logits.argmax(-1)]
    eager = []
    step = StaticDecodeStep(model, cache, mask[:, :L], max_len)
    for t in range(4):
        eager.append(step(tokens[t], pos[:, -1:] + t + 1, L + t).clone())
        tokens.append(eager[-1].argmax(-1))
    for t, saved in start:
        t.copy_(saved)
    with torch.compiler.set_stance("fail_on_recompile"):
        step = StaticDecodeStep(model, cache, mask[:, :L], max_len, compiled=True)
        for t in range(4):
            ours = step(tokens[t], pos[:, -1:] + t + 1, L + t)
            assert_close(ours, eager[t], atol=1e-4, rtol=1e-4, what=f"logits at step {t}")
            assert torch.equal(step.tokens, tokens[t + 1])


def test_compiled_refuses_where_the_static_step_does_not_apply():
    sliding = tiny_teacher("mistral", num_layers=2).eval()
    with pytest.raises(ValueError, match="decode='compiled' does not apply to this model: .*sliding-window"):
        generate(sliding, PROMPTS, GREEDY, decode="compiled")


def test_frozen_step_is_compiled_again_after_the_weights_change():
    """On the CPU the compiled step freezes the weights into its graph: a training step between two generate()
    calls (parameters written in place) must give the new weights' tokens, never the stale graph's."""
    model = tiny_teacher("llama", num_layers=1).eval()
    before = generate(model, PROMPTS, GREEDY, eos_token_id=[], decode="compiled")
    assert before.sequences == generate(model, PROMPTS, GREEDY, eos_token_id=[], decode="eager").sequences
    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.5)  # in place, as an optimizer writes
    eager = generate(model, PROMPTS, GREEDY, eos_token_id=[], decode="eager").sequences
    assert eager != before.sequences  # the change is large enough to show in the tokens
    after = generate(model, PROMPTS, GREEDY, eos_token_id=[], decode="compiled")
    assert after.compile_seconds > 0 and after.sequences == eager


def test_compiled_one_token_attention_folds_groups_instead_of_repeating_the_cache(monkeypatch):
    """Under torch.compile transformers' sdpa repeats K and V per query head (a copy of the cache per layer and
    step); the decode step's attention folds the query heads onto the KV heads instead, as transformers itself
    does outside dynamo, with the same result."""
    import transformers.integrations.sdpa_attention as sdpa
    from hybrid.generation import _decode_sdpa

    class Layer(torch.nn.Module):
        num_key_value_groups, is_causal = 3, True

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(s, generator=g) for s in ((2, 6, 1, 8), (2, 2, 20, 8), (2, 2, 20, 8)))
    mask = torch.zeros(2, 1, 1, 20)
    mask[1, ..., :5] = torch.finfo(torch.float32).min  # a left-padded row
    want, _ = sdpa.sdpa_attention_forward(Layer(), q, k, v, mask, scaling=0.3)  # eager: transformers' own fold

    def repeat_kv(*args):
        raise AssertionError("K/V repeated per query head")
    monkeypatch.setattr(sdpa, "repeat_kv", repeat_kv)
    torch._dynamo.reset()
    with backends.use("torch"):  # not csrc's decode attention (tested in tests/csrc/test_decode_attention.py)
        got, _ = torch.compile(lambda *a: _decode_sdpa(Layer(), *a, scaling=0.3), fullgraph=True)(q, k, v, mask)
    assert got.shape == (2, 1, 6, 8)
    assert_close(got, want, atol=1e-5, rtol=1e-5, what="folded one-token attention")


def test_auto_compiles_long_generations_of_untrained_models_on_the_cpu():
    from hybrid.generation import AUTO_COMPILE_MIN_NEW_TOKENS, resolve_decode
    cpu = torch.device("cpu")
    model = tiny_teacher("llama", num_layers=1).eval()
    assert resolve_decode(model, "auto", cpu, AUTO_COMPILE_MIN_NEW_TOKENS) == "eager"  # trainable parameters
    model.requires_grad_(False)
    assert resolve_decode(model, "auto", cpu, AUTO_COMPILE_MIN_NEW_TOKENS) == "compiled"
    assert resolve_decode(model, "auto", cpu, AUTO_COMPILE_MIN_NEW_TOKENS - 1) == "eager"
    assert resolve_decode(model, "auto", cpu) == "eager"
    sliding = tiny_teacher("mistral", num_layers=1).eval().requires_grad_(False)
    assert resolve_decode(sliding, "auto", cpu, AUTO_COMPILE_MIN_NEW_TOKENS) == "eager"  # no static step


def test_auto_falls_back_to_the_static_step_when_compilation_fails(monkeypatch):
    import hybrid.generation as gen

    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler")
    monkeypatch.setattr(gen, "AUTO_COMPILE_MIN_NEW_TOKENS", 4)
    monkeypatch.setattr(gen, "compiled_decode_step", broken)
    monkeypatch.setattr(gen, "_warned", set())  # the warning is once a process
    model = tiny_teacher("llama", num_layers=1).eval().requires_grad_(False)
    with pytest.warns(UserWarning, match="compilation of the decode step failed .*no C\\+\\+ compiler"):
        out = generate(model, PROMPTS, GREEDY, eos_token_id=[])
    assert out.decode_mode == "static"
    assert out.sequences == generate(model, PROMPTS, GREEDY, eos_token_id=[], decode="eager").sequences
    with pytest.raises(RuntimeError, match="no C\\+\\+ compiler"):  # asked for by name: the error is the user's
        generate(model, PROMPTS, GREEDY, eos_token_id=[], decode="compiled")


def test_frozen_steps_per_model_are_capped_oldest_dropped_first(monkeypatch):
    """Each frozen step holds its own copy of the weights: a model generating at many shapes keeps the latest
    MAX_FROZEN_STEPS of them (no compilation here: torch.compile is replaced by the identity)."""
    import hybrid.generation as gen
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: fn)
    model = tiny_teacher("llama", num_layers=1).eval()
    made = [gen.compiled_decode_step(model, 2, 64 * (i + 1), frozen=True) for i in range(gen.MAX_FROZEN_STEPS + 1)]
    kept = gen._compiled_steps[model]
    assert [k[1] for k in kept] == [64 * (i + 1) for i in range(1, gen.MAX_FROZEN_STEPS + 1)]
    assert gen.compiled_decode_step(model, 2, 128, frozen=True) is made[1]  # a kept shape: found, not made again


def test_compiled_generate_packs_the_prefill_only(monkeypatch):
    """The compiled step traces plain F.linear; the eager prefill before it runs on oneDNN-packed linears (as any
    prefill does), unpacked before the step is compiled; prepack=False packs nothing at all."""
    import hybrid.generation as gen
    seen = []
    real = gen.prepacked_linears

    def spy(model, enabled=None):
        seen.append(enabled)
        return real(model, enabled)
    monkeypatch.setattr(gen, "prepacked_linears", spy)
    monkeypatch.setattr(gen, "prepack_default", lambda device: True)
    model = tiny_teacher("llama", num_layers=1).eval().requires_grad_(False)
    out = generate(model, PROMPTS, GREEDY, eos_token_id=[], decode="compiled")
    assert seen == [False, "onednn"]  # the whole call unpacked, the prefill packed
    assert out.sequences == generate(model, PROMPTS, GREEDY, eos_token_id=[], decode="eager", prepack=False).sequences
    seen.clear()
    generate(model, PROMPTS, GREEDY, eos_token_id=[], decode="compiled", prepack=False)
    assert seen == [False, False]
    seen.clear()  # prepack asked for by name: the prefill's, never the compiled step's
    assert generate(model, PROMPTS, GREEDY, eos_token_id=[], decode="compiled", prepack="onednn").sequences \
        == out.sequences and seen == [False, "onednn"]
