"""The decode engine (hybrid.generation): greedy equals transformers' greedy, seeded sampling, EOS and stop strings,
generate() routing, the static (CUDA-graph-shaped) step, decode-mode choice."""
import pytest
import torch
from helpers import assert_close, no_host_reads, tiny_hybrid, tiny_teacher, tiny_tokenizer
from transformers import GenerationMixin

from hybrid.generation import SamplingParams, generate


@pytest.mark.parametrize("mixer", ["mamba2", "mamba"])
def test_engine_greedy_equals_hf_greedy(mixer):
    teacher = tiny_teacher("llama")
    for model in (teacher, tiny_hybrid(attn_layers=[1, 3], mixer=mixer, teacher=teacher, chunk_size=16)):
        prompts = [[5, 6, 7, 8, 9], [10, 11], list(range(20, 60))]
        out = generate(model, prompts, SamplingParams(max_new_tokens=12), eos_token_id=[], pad_token_id=0)
        for p, o in zip(prompts, out.sequences):
            ref = GenerationMixin.generate(model, torch.tensor([p]), max_new_tokens=12, do_sample=False,
                                           pad_token_id=0, eos_token_id=None)
            assert o == ref[0, len(p):].tolist()


def test_engine_sampling_is_seeded_and_eos_stops_only_its_row():
    model = tiny_hybrid("llama", [1])
    prompts = [[5, 6, 7], [8, 9], [10, 11, 12, 13]]
    p = SamplingParams(max_new_tokens=10, temperature=1.0, top_k=40, top_p=0.9, seed=11)
    a = generate(model, prompts, p, eos_token_id=[], pad_token_id=0).sequences
    b = generate(model, prompts, p, eos_token_id=[], pad_token_id=0).sequences
    c = generate(model, prompts, SamplingParams(max_new_tokens=10, temperature=1.0, seed=12), eos_token_id=[],
                 pad_token_id=0).sequences
    assert a == b and a != c
    greedy = generate(model, prompts, SamplingParams(max_new_tokens=10), eos_token_id=[], pad_token_id=0).sequences
    stop = greedy[1][3]  # make row 1's 4th token the EOS
    out = generate(model, prompts, SamplingParams(max_new_tokens=10), eos_token_id=stop, pad_token_id=0).sequences
    first = greedy[1].index(stop)
    assert out[1] == greedy[1][:first + 1]
    for i in (0, 2):
        k = greedy[i].index(stop) + 1 if stop in greedy[i] else 10
        assert out[i] == greedy[i][:k]
    assert max(len(o) for o in out) > len(out[1])  # the other rows went on


def test_engine_stop_strings_need_a_tokenizer():
    model = tiny_hybrid("llama", [1])
    with pytest.raises(ValueError, match="tokenizer"):
        generate(model, [[5]], SamplingParams(max_new_tokens=3, stop_strings=["x"]))
    out = generate(model, [[5, 6]], SamplingParams(max_new_tokens=6, stop_strings=["\x7f"]), eos_token_id=[],
                   tokenizer=tiny_tokenizer())
    assert len(out.sequences[0]) == 6


def test_hybrid_generate_routes_plain_calls_to_the_engine_with_hf_results():
    model = tiny_hybrid("llama", [1, 3], chunk_size=16)
    ids = torch.tensor([[0, 0, 0, 5, 6, 7], [8, 9, 10, 11, 12, 13]])
    mask = (ids != 0).long()
    ours = model.generate(ids, attention_mask=mask, max_new_tokens=9, do_sample=False, pad_token_id=0)
    ref = GenerationMixin.generate(model, ids, attention_mask=mask, max_new_tokens=9, do_sample=False, pad_token_id=0)
    assert torch.equal(ours, ref)
    calls = {"n": 0}
    real = model.forward

    def counting(*a, **k):
        calls["n"] += 1
        return real(*a, **k)

    model.forward = counting
    model.generate(ids, attention_mask=mask, max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert calls["n"] == 5  # one prefill, then one forward per new token: the prefix is never recomputed


def test_generation_config_with_sampling_settings_only_runs_on_the_engine(monkeypatch):
    from transformers import GenerationConfig

    import hybrid.generation as engine
    model = tiny_hybrid("llama", [1, 3], chunk_size=16)
    ids = torch.tensor([[0, 0, 5, 6, 7], [8, 9, 10, 11, 12]])
    mask = (ids != 0).long()
    used = []
    real = engine.generate_like_hf
    monkeypatch.setattr(engine, "generate_like_hf", lambda *a, **k: used.append(1) or real(*a, **k))
    plain = GenerationConfig(max_new_tokens=6, do_sample=False, pad_token_id=0, eos_token_id=[2],
                             disable_compile=True)
    ours = model.generate(ids, attention_mask=mask, generation_config=plain)
    ref = GenerationMixin.generate(model, ids, attention_mask=mask, generation_config=plain)
    assert used and torch.equal(ours, ref)
    used.clear()
    model.generate(ids, attention_mask=mask, generation_config=GenerationConfig(
        max_new_tokens=3, do_sample=False, pad_token_id=0, repetition_penalty=1.3))
    assert not used  # a setting the engine lacks: transformers' generate
    model.generate(ids, attention_mask=mask, generation_config=GenerationConfig(
        max_new_tokens=3, do_sample=True, temperature=0.7, top_k=0, top_p=1.0, repetition_penalty=1.0,
        pad_token_id=0))
    assert used  # neutral values (as TRL's GRPO sets them) still run on the engine


@pytest.mark.parametrize("kind,kernels", [("teacher", "auto"), ("mamba2", "csrc"), ("mamba2", "torch"),
                                          ("mamba", "csrc"), ("mamba", "torch")])
def test_static_decode_step_equals_the_eager_step(kind, kernels):
    """The fixed-shape step a CUDA graph captures (whole KV buffer under a mask, tensor write positions, states in
    place), run eagerly: same logits every step and same tokens as the eager engine, left-padded rows included;
    and it never reads a tensor value back to Python (a synchronisation, which a graph capture cannot hold)."""
    from hybrid.ops import backends
    with backends.use(kernels):
        _static_step_equals_eager_step(kind)


def _static_step_equals_eager_step(kind):
    from hybrid.cache import StaticLayer
    from hybrid.generation import StaticDecodeStep, cache_tensors, static_cache
    teacher = tiny_teacher("llama")
    model = teacher if kind == "teacher" else tiny_hybrid(attn_layers=[1], mixer=kind, teacher=teacher, chunk_size=16)
    prompts = [[5, 6, 7, 8, 9, 10], [11, 12], [3, 4, 5, 6]]
    for params in (SamplingParams(max_new_tokens=10), SamplingParams(max_new_tokens=10, temperature=1.0, seed=4)):
        eager = generate(model, prompts, params, eos_token_id=[], decode="eager")
        static = generate(model, prompts, params, eos_token_id=[], decode="static")
        assert (eager.decode_mode, static.decode_mode) == ("eager", "static")
        assert static.sequences == eager.sequences
    greedy = generate(model, prompts, SamplingParams(max_new_tokens=10), eos_token_id=[], decode="eager").sequences
    eos = greedy[1][3]  # row 1 stops there (or earlier, if it drew that token before); the others go on
    a = generate(model, prompts, SamplingParams(max_new_tokens=10), eos_token_id=eos, decode="static")
    b = generate(model, prompts, SamplingParams(max_new_tokens=10), eos_token_id=eos, decode="eager")
    assert a.sequences == b.sequences and a.sequences[1] == greedy[1][:greedy[1].index(eos) + 1]

    # step by step, logits: the static step on a full-buffer cache vs the eager forward on a prefix cache
    L, total = 6, 12
    ids = torch.tensor([[0, 0, 0, 0, 11, 12], [5, 6, 7, 8, 9, 10]])
    mask = torch.zeros(2, total, dtype=torch.long)
    mask[:, :L] = (ids != 0).long()
    pos = (mask[:, :L].cumsum(-1) - 1).clamp(min=0)
    caches = [static_cache(model, total), static_cache(model, total, full_buffer=True)]
    assert any(isinstance(layer, StaticLayer) for layer in caches[1].layers)
    with torch.no_grad():
        outs = [model(input_ids=ids, attention_mask=mask[:, :L], position_ids=pos, cache=c, use_cache=True,
                      logits_to_keep=1).logits[:, -1] for c in caches]
        step = StaticDecodeStep(model, caches[1], mask[:, :L], total)
        p = pos[:, -1:]
        for t in range(5):
            nxt = outs[0].argmax(-1)
            mask[:, L + t] = 1
            p = p + 1
            ref = model(input_ids=nxt[:, None], attention_mask=mask[:, :L + t + 1], position_ids=p, cache=caches[0],
                        use_cache=True).logits[:, -1]
            if t == 2:  # what a graph capture does before recording: run the step, then restore every cache tensor
                before = [x.clone() for x in cache_tensors(caches[1], kv_buffers=False)]
                step.ids.copy_(nxt[:, None])
                step.warm_up(runs=2)  # K/V slots it wrote stay masked until rewritten: the logits below check it
                assert all(torch.equal(x, y) for x, y in zip(cache_tensors(caches[1], kv_buffers=False), before))
            with no_host_reads():
                got = step(nxt, p, L + t)
            assert_close(got, ref, atol=1e-5, rtol=1e-5, what=f"logits at step {t}")
            outs[0] = ref


def test_decode_mode_choice_and_refusals():
    from hybrid.generation import static_decode_unsupported
    model = tiny_hybrid("llama", [1])
    out = generate(model, [[5, 6, 7]], SamplingParams(max_new_tokens=3), eos_token_id=[])
    assert out.decode_mode == "eager"  # auto on a CPU
    with pytest.raises(ValueError, match="decode='graph' needs a CUDA model, this one is on cpu"):
        generate(model, [[5, 6, 7]], SamplingParams(max_new_tokens=3), decode="graph")
    with pytest.raises(ValueError, match="decode='fast' is not one of"):
        generate(model, [[5, 6, 7]], SamplingParams(max_new_tokens=3), decode="fast")
    mistral = tiny_teacher("mistral")
    assert "sliding-window" in static_decode_unsupported(mistral)
    with pytest.raises(ValueError, match="sliding-window"):
        generate(mistral, [[5, 6, 7]], SamplingParams(max_new_tokens=3), decode="static")
    model.set_attn_implementation("flex_attention")
    assert "flex_attention" in static_decode_unsupported(model)
