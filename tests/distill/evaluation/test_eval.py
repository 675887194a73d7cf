"""Tasks, answer checking, pass@k, majority vote, time-budget curves, and the decode engine."""
import math

import pytest
import torch
from helpers import assert_close, no_host_reads, tiny_teacher, tiny_tokenizer
from transformers import GenerationMixin

from distill import hybridize
from distill.evaluation.evaluate import (majority_answer, majority_correct, paired_compare, pass_at_k, score,
                              time_budget_curves)
from distill.evaluation.tasks import Problem, is_correct, load_gsm8k, load_math, synthetic_math
from hybrid.generation import SamplingParams, generate

TRICKY = [  # (completion, gold, correct?)
    (r"so \boxed{\frac{1}{2}}", "0.5", True),
    (r"\boxed{0.5}", r"\frac{1}{2}", True),
    (r"first \boxed{13}, no wait: \boxed{12}", "12", True),  # several boxes: the last one counts
    (r"\boxed{12} then \boxed{13}", "12", False),
    (r"The total is 1,000 apples.", "1000", True),  # no box: last number
    ("<think>3 + 4 = 7</think> so it is 8", "8", True),
    (r"\boxed{$12$}", "12", True),
    (r"\boxed{x^2}", "12", False),
    (r"broken \boxed{12", "12", True),  # unclosed box: falls back to the last number
    (r"\boxed{}", "3", False),
    ("", "3", False),
    (None, "3", False),
    ("}}}{{{\\boxed{\\frac{", "3", False),
    ("no numbers at all", "3", False),
]


@pytest.mark.parametrize("completion,gold,ok", TRICKY)
def test_answer_checking_on_tricky_cases(completion, gold, ok):
    assert is_correct(completion, gold) is ok


def test_synthetic_tasks_are_seeded_disjoint_and_verifiable():
    a = synthetic_math(40, "train", seed=3)
    assert [p.to_dict() for p in a] == [p.to_dict() for p in synthetic_math(40, "train", seed=3)]
    assert [p.problem for p in a] != [p.problem for p in synthetic_math(40, "train", seed=4)]
    test = synthetic_math(200, "test", seed=3)
    train = synthetic_math(800, "train", seed=3)
    assert not {p.problem for p in test} & {p.problem for p in train}
    assert len({p.problem for p in train}) == 800
    assert all(is_correct(p.solution, p.answer) for p in train + test)
    assert all(p.solution.startswith("<think>") and "</think>" in p.solution for p in test)
    assert {p.level for p in test} == {1, 2, 3}
    with pytest.raises(ValueError, match="levels"):
        synthetic_math(3, levels=(9,))


def test_loaders(tmp_path):
    g = tmp_path / "gsm.jsonl"
    g.write_text('{"question": "2+2?", "answer": "2+2=4\\n#### 4"}\n{"question": "q", "answer": "#### 1,200"}\n')
    probs = load_gsm8k(str(g))
    assert [p.answer for p in probs] == ["4", "1200"]
    m = tmp_path / "math.jsonl"
    m.write_text('{"problem": "p", "solution": "so \\\\boxed{\\\\frac{1}{2}}"}\n{"problem": "q", "answer": "7"}\n')
    assert [p.answer for p in load_math(str(m))] == ["\\frac{1}{2}", "7"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q"}\n')
    with pytest.raises(ValueError, match="row 0 has no field 'answer'"):
        load_gsm8k(str(bad))


def test_pass_at_k_matches_hand_computation():
    assert pass_at_k(5, 0, 1) == 0.0
    assert pass_at_k(5, 5, 3) == 1.0
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(1 - math.comb(3, 2) / math.comb(4, 2))  # 0.5
    assert pass_at_k(10, 3, 5) == pytest.approx(1 - math.comb(7, 5) / math.comb(10, 5))
    assert pass_at_k(3, 2, 2) == 1.0  # n - c < k
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)


def test_majority_vote_groups_equivalents_ignores_garbage_and_breaks_ties_deterministically():
    assert majority_answer(["0.5", r"\frac{1}{2}", "3", "3", None]) == "0.5"  # 2 vs 2: earliest group wins
    assert majority_answer(["3", "0.5", "1/2"]) == "0.5"  # 0.5 and 1/2 are one group of 2
    assert majority_answer([None, None]) is None
    assert majority_correct([r"\boxed{7}", "junk", r"\boxed{7}", r"\boxed{8}"], "7")
    assert not majority_correct(["junk", "", "}{"], "7")
    probs = [Problem("a", "p", "7"), Problem("b", "q", "2")]
    s = score(probs, [[r"\boxed{7}", r"\boxed{1}"], [r"\boxed{3}", r"\boxed{3}"]], ks=(1, 2))
    assert s["pass@1"] == pytest.approx(0.25) and s["pass@2"] == pytest.approx(0.5) and s["maj@2"] == 0.5
    assert s["pass@1_se"] == pytest.approx(0.25)  # per-problem accuracies 0.5 and 0: std 0.354 / sqrt(2)


def _eval_json(path, rows):
    """An eval.json as `hybrid-distill eval` writes it: rows of (problem id, gold, completions)."""
    import json
    path.mkdir(parents=True, exist_ok=True)
    problems = [Problem(id=i, problem=f"q{i}", answer=g).to_dict() for i, g, _ in rows]
    (path / "eval.json").write_text(json.dumps({"problems": problems, "completions": [c for _, _, c in rows]}))
    return str(path)


def test_paired_compare_matches_hand_computation(tmp_path, capsys):
    R, W = r"\boxed{%s}", "garbage }{"
    base = _eval_json(tmp_path / "a", [("p1", "1", [R % 1, W]), ("p2", "2", [W, R % 5]), ("p3", "3", [R % 3, R % 3]),
                                       ("p4", "4", [W, W]), ("only-a", "9", [R % 9, W])])
    other = _eval_json(tmp_path / "b", [("p4", "4", [W, None]), ("p3", "3", [R % 3, "it is 3"]),
                                        ("p2", "2", [R % 2, W]), ("p1", "1", [R % 1, R % 1])])
    r = paired_compare(base, str(tmp_path / "b" / "eval.json"))
    # per problem: base (.5, 0, 1, 0), other (1, .5, 1, 0): d = (.5, .5, 0, 0), mean .25,
    # s.e. = sqrt(4 * .25**2 / 3 / 4) = .1443, z = 1.732, sign test: 2 better, 0 worse -> p = 2 * 1/4
    assert (r["problems"], r["only_base"], r["only_other"]) == (4, 1, 0)
    assert r["base_pass@1"] == pytest.approx(0.375) and r["other_pass@1"] == pytest.approx(0.625)
    assert r["diff"] == pytest.approx(0.25) and r["diff_se"] == pytest.approx(math.sqrt(0.25 / 12))
    assert r["z"] == pytest.approx(0.25 / math.sqrt(0.25 / 12))
    assert r["p_normal"] == pytest.approx(math.erfc(r["z"] / math.sqrt(2)))
    assert (r["better"], r["worse"], r["p_sign"]) == (2, 0, 0.5)
    same = paired_compare(base, base)
    assert (same["diff"], same["diff_se"], same["z"], same["p_normal"], same["p_sign"]) == (0, 0, 0, 1, 1)

    from distill.cli import main
    assert main(["eval", "compare", "--runs", base, other, other, "--out-json", str(tmp_path / "c.json")]) == 0
    table = capsys.readouterr().out
    assert table.count("+0.250 ± 0.144") == 2 and "2/0" in table
    with pytest.raises(ValueError, match="share no problem ids"):
        paired_compare(base, _eval_json(tmp_path / "c", [("zz", "1", [W])]))
    with pytest.raises(FileNotFoundError, match="no evaluation at"):
        paired_compare(base, str(tmp_path / "missing"))
    assert main(["eval", "compare", "--runs", base]) != 0
    assert "eval compare needs --runs BASE OTHER" in capsys.readouterr().err


def test_time_budget_curves_on_a_synthetic_timing_table():
    correct = {"fast": [[False, True, False, False], [False, False, False, True]],
               "slow": [[True, False, False, False], [False, False, False, False]]}
    answers = {"fast": [["1", "5", "1", "2"], ["9", "9", "4", "4"]], "slow": [["5", "1", "1", "1"], ["0", "0", "0", "0"]]}
    curves = time_budget_curves({"fast": 1.0, "slow": 2.5}, correct, answers, ["5", "4"], [0.5, 2, 5, 100])
    fast = {r["budget_s"]: r for r in curves["fast"]}
    slow = {r["budget_s"]: r for r in curves["slow"]}
    assert [fast[T]["k"] for T in (0.5, 2, 5, 100)] == [0, 2, 4, 4]
    assert [slow[T]["k"] for T in (0.5, 2, 5, 100)] == [0, 0, 2, 4]
    assert fast[100]["capped"] and fast[100]["k_budget"] == 100
    assert fast[2]["coverage"] == pytest.approx((pass_at_k(4, 1, 2) + pass_at_k(4, 1, 2)) / 2)
    assert fast[5]["coverage"] == 1.0 and slow[5]["coverage"] == pytest.approx(pass_at_k(4, 1, 2) / 2)
    assert fast[2]["majority"] == 0.0  # ["1", "5"] -> "1"; ["9", "9"] -> "9"
    assert fast[5]["majority"] == 0.0  # ["1","5","1","2"] -> "1" wrong; ["9","9","4","4"]: tie -> first, "9", wrong
    assert slow[5]["majority"] == 0.5  # ["5", "1"] tie -> "5" right; ["0", "0"] wrong


@pytest.mark.parametrize("mixer", ["mamba2", "mamba"])
def test_engine_greedy_equals_hf_greedy(mixer):
    teacher = tiny_teacher("llama")
    for model in (teacher, hybridize(teacher, [1, 3], mixer=mixer, chunk_size=16)):
        prompts = [[5, 6, 7, 8, 9], [10, 11], list(range(20, 60))]
        out = generate(model, prompts, SamplingParams(max_new_tokens=12), eos_token_id=[], pad_token_id=0)
        for p, o in zip(prompts, out.sequences):
            ref = GenerationMixin.generate(model, torch.tensor([p]), max_new_tokens=12, do_sample=False,
                                           pad_token_id=0, eos_token_id=None)
            assert o == ref[0, len(p):].tolist()


def test_engine_sampling_is_seeded_and_eos_stops_only_its_row():
    model = hybridize(tiny_teacher("llama"), [1])
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
    model = hybridize(tiny_teacher("llama"), [1])
    with pytest.raises(ValueError, match="tokenizer"):
        generate(model, [[5]], SamplingParams(max_new_tokens=3, stop_strings=["x"]))
    out = generate(model, [[5, 6]], SamplingParams(max_new_tokens=6, stop_strings=["\x7f"]), eos_token_id=[],
                   tokenizer=tiny_tokenizer())
    assert len(out.sequences[0]) == 6


def test_hybrid_generate_routes_plain_calls_to_the_engine_with_hf_results():
    model = hybridize(tiny_teacher("llama"), [1, 3], chunk_size=16)
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


def test_cli_generate_streams_the_engines_greedy_text(tmp_path, capsys):
    from distill.cli import main
    tok = tiny_tokenizer()
    model = hybridize(tiny_teacher("llama"), [1, 3], chunk_size=16)
    model.generation_config.eos_token_id = None  # the CLI falls back to the tokenizer's EOS
    model.save_pretrained(tmp_path / "h")
    tok.save_pretrained(tmp_path / "h")
    assert main(["generate", "--model", str(tmp_path / "h"), "--prompt", "hi", "--max-new-tokens", "15"]) == 0
    printed = capsys.readouterr().out
    ids = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                  return_dict=True)["input_ids"]
    ref = GenerationMixin.generate(model, torch.tensor([ids]), max_new_tokens=15, do_sample=False, pad_token_id=0,
                                   eos_token_id=tok.eos_token_id)
    expected = tok.decode(ref[0, len(ids):], skip_special_tokens=True)
    assert printed == expected + "\n"
    seen = []
    generate(model, [ids], SamplingParams(max_new_tokens=15), eos_token_id=tok.eos_token_id,
             on_step=lambda t, a: seen.append(t))
    assert seen == [[x] for x in ref[0, len(ids):].tolist()][:len(seen)] and seen[-1] == [tok.eos_token_id]


def test_preallocated_kv_layer_writes_in_place_and_refuses_overflow():
    from hybrid.cache import PreallocatedLayer
    layer = PreallocatedLayer(max_cache_len=5)
    k, v = torch.randn(2, 3, 4, 8), torch.randn(2, 3, 4, 8)
    keys, values = layer.update(k, v)
    assert keys.shape[-2] == 4 and layer.get_seq_length() == 4 and torch.equal(keys, k)
    buf = layer._k.data_ptr()
    keys, _ = layer.update(k[:, :, :1] + 1, v[:, :, :1])
    assert layer._k.data_ptr() == buf and torch.equal(keys[:, :, :4], k) and torch.equal(keys[:, :, 4:], k[:, :, :1] + 1)
    with pytest.raises(ValueError, match="5 tokens"):
        layer.update(k[:, :, :1], v[:, :, :1])


def test_generation_config_with_sampling_settings_only_runs_on_the_engine(monkeypatch):
    from transformers import GenerationConfig

    import hybrid.generation as engine
    model = hybridize(tiny_teacher("llama"), [1, 3], chunk_size=16)
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


def test_bench_throughput_runs_each_kernel_setting_in_the_requested_dtype(tmp_path):
    import json

    from distill.evaluation.throughput import ThroughputSettings, run_throughput
    from hybrid.ops import backends
    folder = tmp_path / "h"
    hybridize(tiny_teacher("llama"), [1, 3], chunk_size=16).save_pretrained(folder)
    before = backends.kernel_choice()
    run_throughput(ThroughputSettings(models=[str(folder)], out=str(tmp_path / "bench"), batch=[2], prompt_len=8,
                                      gen_len=4, context=[32], hf_baseline=False, context_steps=2,
                                      kernels=["torch", "csrc"], dtype="bfloat16",
                                      decode=["eager", "static", "graph"]))
    assert backends.kernel_choice() == before  # each setting held for its runs only
    result = json.loads((tmp_path / "bench" / "bench.json").read_text())
    assert result["environment"]["dtype"] == "bfloat16"
    skipped = [r for r in result["results"] if "skipped" in r]  # no CUDA graphs on a CPU: said, not fatal
    assert torch.cuda.is_available() or (len(skipped) == 2 and all("needs a CUDA model" in r["skipped"] for r in skipped))
    rows = [r for r in result["results"] if "skipped" not in r]
    assert {r["model"].split(" [", 1)[1] for r in rows} == {"torch, eager]", "csrc, eager]", "torch, static]",
                                                             "csrc, static]"}
    assert all(r["model"].endswith(f"{r['decode']}]") for r in rows)
    assert all(r.get("gate") != "fail" and r["tpot_ms"] > 0 for r in rows)
    assert {r["mode"] for r in rows} == {"generate", "context"}
    assert all(r["dtype"] == "bfloat16" for r in rows if r["mode"] == "generate")


def test_bench_throughput_runs_the_teacher_with_packed_and_plain_linears(tmp_path):
    import json

    from distill.evaluation.throughput import ThroughputSettings, ratio_table, run_throughput
    from hybrid.prepack import op_works
    folder = tmp_path / "t"
    tiny_teacher("llama").save_pretrained(folder)
    with pytest.raises(ValueError, match="prepack='maybe'"):
        ThroughputSettings(models=[str(folder)], out=str(tmp_path / "bench"), prepack=["maybe"])
    result = run_throughput(ThroughputSettings(models=[str(folder)], out=str(tmp_path / "bench"), batch=[2],
                                               prompt_len=8, gen_len=4, context=[32], context_steps=2,
                                               prepack=["on", "off"]))
    assert json.loads((tmp_path / "bench" / "bench.json").read_text()) == json.loads(json.dumps(result))
    rows = result["results"]
    linear = {r["model"].split(" [", 1)[1]: r["linear"] for r in rows}
    assert linear == {"prepack on]": "onednn-packed" if op_works() else "aten", "prepack off]": "aten"}
    gen = [r for r in rows if r["mode"] == "generate"]
    assert len(gen) == 2 and all(r["hf_tokens_per_s"] > 0 for r in gen)
    table = ratio_table(result)
    assert all(f"{r['tokens_per_s'] / r['hf_tokens_per_s']:.2f}x" in table for r in gen)


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
    model = teacher if kind == "teacher" else hybridize(teacher, [1], mixer=kind, chunk_size=16)
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
    model = hybridize(tiny_teacher("llama"), [1])
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


def test_bench_correctness_gate_passes_equal_and_near_tied_tokens_only(monkeypatch):
    import distill.evaluation.throughput as bench
    model = tiny_teacher("llama").eval()
    assert bench.correctness_gate(model, None) == (True, "identical")
    prompt = bench._prompts(1, 16, model.config.vocab_size, 123)[0]
    with torch.no_grad():
        logits = model(torch.tensor([prompt])).logits[0, -1]
    first, worst, twin = int(logits.argmax()), int(logits.argmin()), (int(logits.argmax()) + 1) % 97
    with torch.no_grad():
        model.lm_head.weight[twin] = model.lm_head.weight[first]  # an exact tie with the reference's first token
    real = bench.generate

    def engine_picking(token):
        def fake(*args, **kwargs):
            out = real(*args, **kwargs)
            out.sequences[0][0] = token
            return out
        return fake

    monkeypatch.setattr(bench, "generate", engine_picking(twin))
    ok, how = bench.correctness_gate(model, None)
    assert ok and how.startswith("near-tie at token 0")
    monkeypatch.setattr(bench, "generate", engine_picking(worst))
    ok, how = bench.correctness_gate(model, None)
    assert not ok and how.startswith("differs at token 0")


def test_bench_interleaved_context_rows_time_every_model_in_turn(tmp_path, monkeypatch):
    import distill.evaluation.throughput as bench
    t, h = tmp_path / "t", tmp_path / "h"
    teacher = tiny_teacher("llama")
    teacher.save_pretrained(t)
    hybridize(teacher, [1, 3], chunk_size=16).save_pretrained(h)
    order = []
    real = bench._context_stepper

    def spy(model, *a):  # record which model each timed step belongs to
        mode, step = real(model, *a)
        name = type(model).__name__
        return mode, lambda s: order.append(name) or step(s)
    monkeypatch.setattr(bench, "_context_stepper", spy)
    result = bench.run_throughput(bench.ThroughputSettings(
        models=[str(t), str(h)], out=str(tmp_path / "bench"), batch=[2], prompt_len=8, gen_len=4, context=[32, 48],
        hf_baseline=False, context_steps=3, interleave=True))
    ctx = [r for r in result["results"] if r["mode"] == "context"]
    assert [(r["model"], r["context"]) for r in ctx] == [(str(t), 32), (str(h), 32), (str(t), 48), (str(h), 48)]
    assert all(r["interleaved"] and r["tpot_ms"] > 0 for r in ctx)
    assert order == ["LlamaForCausalLM", "HybridForCausalLM"] * 6  # a step of each in turn, 3 steps x 2 contexts
