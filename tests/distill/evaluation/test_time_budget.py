"""Accuracy under a wall-clock budget: the pure part (distill.evaluation.budget: k(T), coverage, majority, bootstrap,
paired differences, crossings, verdict) on synthetic timing tables, and the sampling side (distill.evaluation.evaluate
.run_time_budget: best batch, interleaved timed batches) with fake samplers and a fake clock, then once with tiny
random models end to end."""
import itertools
import json
import math
import random

import pytest

from distill.evaluation.budget import (AnswerJudge, analyse, coverage_by_k, crossing, fine_grid, majority_by_k,
                                       parse_budget, resolve_budgets, samples_in)
from distill.evaluation.evaluate import (majority_answer, majority_by_prefix, paired_compare, partial_time_budget,
                                        pass_at_k, run_time_budget)
from distill.evaluation.tasks import Problem, check_stats


def _tables(correct: list[list[bool]]) -> dict:
    """A model's tables from per-sample correctness; a correct sample answers "1" (the gold), a wrong one "0"."""
    answers = [["1" if c else "0" for c in row] for row in correct]
    return {"coverage": [coverage_by_k(r) for r in correct],
            "majority": [majority_by_k(a, lambda x: x == "1", lambda a, b: a == b) for a in answers]}


def _draw(probs: list[float], n: int, seed: int) -> list[list[bool]]:
    """n samples per problem, each correct with its problem's probability."""
    rng = random.Random(seed)
    return [[rng.random() < p for _ in range(n)] for p in probs]


def _always(solved: list[bool], n: int) -> list[list[bool]]:
    """Problems a model solves on every sample, or never."""
    return [[s] * n for s in solved]


def _expected_majority(n: int, c: int, k: int) -> float:
    """maj@k of k samples taken at random from n of which c are right and the rest share one wrong answer: the right
    answer has more than half of them, or half and came first (probability 1/2 by symmetry). Hypergeometric."""
    total = 0.0
    for j in range(max(0, k - (n - c)), min(c, k) + 1):
        p = math.comb(c, j) * math.comb(n - c, k - j) / math.comb(n, k)
        total += p * (1.0 if 2 * j > k else 0.5 if 2 * j == k else 0.0)
    return total


def test_k_of_budget_and_coverage_is_the_unbiased_pass_at_k():
    probs = [random.Random(p).random() for p in range(30)]
    correct = {"teacher": _draw(probs, 6, 1), "hybrid": _draw([p / 2 for p in probs], 16, 2)}
    spp = {"teacher": 0.8, "hybrid": 0.3}
    budgets = [0.1, 0.5, 1, 2.4, 5, 10]
    r = analyse(spp, {m: _tables(c) for m, c in correct.items()}, budgets, bootstrap=200)
    assert samples_in(2.4, 0.8) == 3 and samples_in(0.9, 0.3) == 3  # floor, round-off forgiven
    for m, rows in r["curves"].items():
        n = len(correct[m][0])
        for row, T in zip(rows, budgets):
            k_budget = math.floor(T / spp[m] + 1e-9)
            assert (row["k_budget"], row["k"], row["capped"]) == (k_budget, min(k_budget, n), k_budget > n)
            k = row["k"]
            want = 0.0 if k == 0 else sum(pass_at_k(n, sum(c), k) for c in correct[m]) / len(correct[m])
            assert row["coverage"] == pytest.approx(want)
            want_maj = 0.0 if k == 0 else sum(_expected_majority(n, sum(c), k) for c in correct[m]) / len(correct[m])
            # exact where every order of the n samples is taken (6! <= 1000), a sample of 1000 orders for n = 16
            assert row["majority"] == pytest.approx(want_maj, abs=1e-9 if n == 6 else 0.02)
    assert [row["k"] for row in r["curves"]["teacher"]] == [0, 0, 1, 3, 6, 6]
    assert [row["k"] for row in r["curves"]["hybrid"]] == [0, 1, 3, 8, 16, 16]
    # the fine grid holds the budgets, and agrees with them there
    grid = r["fine"]["budget_s"]
    assert grid == sorted(grid) and all(T in grid for T in budgets) and len(grid) == 64 + 4
    for m in spp:
        for row in r["curves"][m]:
            assert r["fine"]["curves"][m]["coverage"][grid.index(row["budget_s"])] == pytest.approx(row["coverage"])
    assert r["fine"]["curves"]["teacher"]["capped_from_s"] == min(T for T in grid if T >= 7 * 0.8)  # k(T) > 6


def test_bootstrap_intervals_contain_the_estimate_shrink_with_problems_and_are_seeded():
    def run(problems, seed=0):
        probs = [0.2 + 0.6 * random.Random(p).random() for p in range(problems)]
        tables = {"teacher": _tables(_draw(probs, 4, 1)), "hybrid": _tables(_draw(probs, 8, 2))}
        return analyse({"teacher": 1.0, "hybrid": 0.5}, tables, [1, 2, 4], bootstrap=400, seed=seed)

    small, large = run(20), run(320)
    for r in (small, large):
        for rows in r["curves"].values():
            for row in rows:
                for x in ("coverage", "majority"):
                    lo, hi = row[f"{x}_ci"]
                    assert lo - 1e-9 <= row[x] <= hi + 1e-9
        for row in r["differences"]["hybrid"]:
            lo, hi = row["coverage"]["ci"]
            assert lo - 1e-9 <= row["coverage"]["diff"] <= hi + 1e-9
    width = lambda r, x: r["curves"]["teacher"][1][f"{x}_ci"][1] - r["curves"]["teacher"][1][f"{x}_ci"][0]
    for x in ("coverage", "majority"):
        assert 0 < width(large, x) < 0.6 * width(small, x)  # ~ 1 / sqrt(problems): a quarter
    assert large["differences"]["hybrid"][1]["coverage"]["se"] < 0.6 * small["differences"]["hybrid"][1][
        "coverage"]["se"]
    assert run(20)["curves"] == small["curves"] and run(20, seed=1)["curves"] != small["curves"]


def test_paired_standard_error_matches_hand_computation():
    # one sample per problem at one second: per-problem coverage at T = 1 s is that sample's correctness
    ref, model = _always([True, False, False, False], 1), _always([True, True, True, True], 1)
    r = analyse({"teacher": 1.0, "hybrid": 1.0}, {"teacher": _tables(ref), "hybrid": _tables(model)}, [1.0],
                bootstrap=100)
    row = r["differences"]["hybrid"][0]["coverage"]
    # d = (0, 1, 1, 1): mean .75; s.d. sqrt((.75^2 + 3 * .25^2) / 3) = .5; s.e. .5 / sqrt(4) = .25; z = 3
    assert row["diff"] == pytest.approx(0.75) and row["se"] == pytest.approx(0.25) and row["z"] == pytest.approx(3)
    assert row["call"] == "win" and 0 <= row["ci"][0] <= 0.75 <= row["ci"][1] <= 1
    one = analyse({"a": 1.0, "b": 1.0}, {"a": _tables([[False]]), "b": _tables([[True]])}, [1.0], bootstrap=10)
    assert one["differences"]["b"][0]["coverage"]["se"] is None  # one problem says nothing of its noise
    assert one["differences"]["b"][0]["coverage"]["call"] == "tie"


def test_designed_crossing_is_found_at_the_right_grid_point_and_the_verdict_names_both_winners():
    # 50 problems: 20 both solve, 10 only the teacher, 20 neither. The hybrid samples 4x faster: alone above
    # 0.5 s, it leads until the teacher's first sample at 2 s, then trails.
    teacher = _always([True] * 20 + [True] * 10 + [False] * 20, 8)
    hybrid = _always([True] * 20 + [False] * 10 + [False] * 20, 32)
    budgets = [0.25, 1, 2, 10, 100]
    r = analyse({"teacher": 2.0, "hybrid": 0.5}, {"teacher": _tables(teacher), "hybrid": _tables(hybrid)}, budgets,
                bootstrap=200)
    grid = fine_grid(budgets)
    assert r["fine"]["budget_s"] == grid
    for x in ("coverage", "majority"):
        c = r["crossings"]["hybrid"][x]
        assert c == {"budget_s": 2.0, "to": "below", "all": [2.0]}, (x, c)
        calls = r["fine"]["differences"]["hybrid"][x]["call"]
        assert {calls[i] for i, T in enumerate(grid) if T < 0.5} == {"empty"}
        assert {calls[i] for i, T in enumerate(grid) if 0.5 <= T < 2} == {"win"}
        assert {calls[i] for i, T in enumerate(grid) if T >= 2} == {"loss"}
    v = r["verdict"]
    assert "in coverage, hybrid wins from 0.5" in v and "then teacher wins from 2 s to 100 s (by 0.20" in v, v
    assert "the coverage curves cross at 2 s (hybrid goes below)" in v, v
    capped = min(T for T in grid if T >= 33 * 0.5)  # k(T) > 32
    assert r["fine"]["curves"]["hybrid"]["capped_from_s"] == capped
    assert f"hybrid is capped at 32 samples per problem from {capped:.3g} s (flat beyond: not measured)" in v, v


def test_no_crossing_when_one_curve_dominates_and_the_verdict_names_the_winner():
    probs = [0.02 + 0.1 * random.Random(p).random() for p in range(60)]
    strong, weak = _draw([p + 0.6 for p in probs], 12, 1), _draw(probs, 12, 2)
    budgets = [1, 3, 12]
    for ref, other in (("teacher", "hybrid"), ("hybrid", "teacher")):  # the reference wins, or the other does
        for winner, loser in (("hybrid", "teacher"), ("teacher", "hybrid")):
            tables = {winner: _tables(strong), loser: _tables(weak)}
            r = analyse({ref: 1.0, other: 1.0}, {ref: tables[ref], other: tables[other]}, budgets, bootstrap=200)
            assert r["reference"] == ref and r["crossings"][other] == {"coverage": None, "majority": None}
            v = r["verdict"]
            assert v.startswith(f"{winner} beats {loser} in coverage at every budget from 1 s to 12 s (by "), v
            assert f"{winner} beats {loser} in majority at every budget" in v, v
            assert "the coverage curves do not cross between 1 s and 12 s" in v, v
    same = _tables(weak)
    r = analyse({"teacher": 1.0, "hybrid": 1.0}, {"teacher": same, "hybrid": same}, budgets, bootstrap=50)
    assert r["verdict"].startswith("hybrid and teacher tie in coverage at every budget from 1 s to 12 s"), r["verdict"]
    assert crossing([1, 2, 3, 4], [0.1, 0, -0.2, 0.3]) == {"budget_s": 3, "to": "below", "all": [3, 4]}
    assert crossing([1, 2], [0.0, 0.0]) is None


def test_majority_by_prefix_is_majority_answer_of_every_prefix_and_checks_are_cached():
    rng = random.Random(0)
    for _ in range(50):
        answers = [rng.choice(["1", "2", "3", None]) for _ in range(rng.randint(1, 9))]
        winners = majority_by_prefix(answers)
        assert [None if w is None else answers[w] for w in winners] == [majority_answer(answers[:k])
                                                                       for k in range(1, len(answers) + 1)]
    judge = AnswerJudge()
    before = check_stats()["checks"]
    assert [judge.correct(f"so \\boxed{{{a}}}", "7") for a in ["7", "7", "8", "7", "8"]] == [1, 1, 0, 1, 0]
    assert judge.answer_correct("7", "7") and not judge.answer_correct("8", "7")
    assert check_stats()["checks"] - before == 2  # one per (answer, gold)
    assert majority_by_k(["8", "7", "7", None], lambda a: judge.answer_correct(a, "7"), judge.same,
                         orders=1) == [0, 0, 0, 1, 1]  # the first k as drawn


def test_majority_by_k_is_the_expected_majority_over_orders_of_the_samples():
    """Against brute force: every order of the samples, the majority answer of each prefix (majority_answer)."""
    rng = random.Random(1)
    for _ in range(20):
        answers = [rng.choice(["1", "2", "3", None]) for _ in range(rng.randint(1, 6))]
        n = len(answers)
        want = [0.0] + [sum(majority_answer([answers[i] for i in p[:k]]) == "1"
                            for p in itertools.permutations(range(n))) / math.factorial(n) for k in range(1, n + 1)]
        got = majority_by_k(answers, lambda a: a == "1", lambda a, b: a == b)
        assert got == pytest.approx(want, abs=1e-12), (answers, got, want)
        assert got[1] == pytest.approx(answers.count("1") / n)  # maj@1 is the share of correct samples
    # more samples than orders: a seeded sample of orders, close to the expectation and reproducible
    answers = ["1", "2", "1", "3", "2", None, "1"]  # 7! orders > 200
    exact = majority_by_k(answers, lambda a: a == "1", lambda a, b: a == b, orders=math.factorial(7))
    approx = majority_by_k(answers, lambda a: a == "1", lambda a, b: a == b, orders=200)
    assert approx == majority_by_k(answers, lambda a: a == "1", lambda a, b: a == b, orders=200)
    assert approx[1] == pytest.approx(exact[1], abs=0.1) and max(abs(a - b) for a, b in zip(approx, exact)) < 0.12
    assert approx != exact  # sampled, not enumerated
    with pytest.raises(ValueError, match="orders=0"):
        majority_by_k(answers, lambda a: a == "1", orders=0)


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _fake_run(out, labels=("A", "B"), stop_after=None, budgets=(0.5, 2), max_samples=8, slow_first=False, **kw):
    """run_time_budget on 4 problems with fake models and a fake clock. The first takes 0.1 s per call + 0.05 s per
    sample (best batch 4, 0.075 s/sample, capped at 8 samples), the second 0.4 s + 0.5 s per sample (best batch 4,
    0.6 s/sample: ceil(2 / 0.6) = 4 samples). The first answers every problem right, the second only the first.
    stop_after=N: the N+1-th sampler call raises KeyboardInterrupt (an interrupted run).
    Returns (result, the sampler calls (model, indices, seed) in order)."""
    clock, calls = FakeClock(), []
    problems = [Problem(str(i), f"q{i}", str(i + 1)) for i in range(4)]
    cost = {labels[0]: (0.1, 0.05), labels[1]: (0.4, 0.5)}
    if slow_first:  # the same two models, the slow one (who answers only the first problem) given first
        cost = {labels[0]: (0.4, 0.5), labels[1]: (0.1, 0.05)}

    def loader(spec):
        def sample(indices, seed):
            if stop_after is not None and len(calls) == stop_after:
                raise KeyboardInterrupt
            calls.append((spec, list(indices), seed))
            clock.t += cost[spec][0] + cost[spec][1] * len(indices)
            good = spec == labels[1 if slow_first else 0]  # the fast model answers every problem right
            return [f"\\boxed{{{problems[i].answer if good or i == 0 else 0}}}" for i in indices]
        return spec, sample

    r = run_time_budget(list(labels), problems, 2, list(budgets), [1, 2, 4], str(out), title="fake",
                        max_samples=max_samples, bootstrap=200, loader=loader, clock=clock, **kw)
    return r, calls


def test_run_time_budget_interleaves_timed_batches_and_writes_the_verdict(tmp_path):
    r, calls = _fake_run(tmp_path, seed=10)
    a, b = r["models"]["A"], r["models"]["B"]
    assert (a["best_batch"], a["samples"], a["samples_wanted"], a["capped"]) == (4, 8, 27, True)
    assert (b["best_batch"], b["samples"], b["samples_wanted"], b["capped"]) == (4, 4, 4, False)
    # A has 4 x 8 = 32 samples in 8 batches, B 4 x 4 = 16 in 4: in turn until B is done, then A alone
    assert r["batch_order"] == ["A", "B"] * 4 + ["A"] * 4
    drawn = calls[-12:]
    assert [c[0] for c in drawn] == r["batch_order"]
    assert [c[2] for c in drawn if c[0] == "A"] == list(range(10, 18))  # batch j: seed + j
    assert [c[2] for c in drawn if c[0] == "B"] == list(range(10, 14))
    assert [c[1] for c in drawn if c[0] == "B"] == [[0] * 4, [1] * 4, [2] * 4, [3] * 4]
    assert a["batch_times"] == pytest.approx([0.3] * 8) and b["batch_times"] == pytest.approx([2.4] * 4)
    assert a["seconds_per_sample"] == pytest.approx(0.075) and b["seconds_per_sample"] == pytest.approx(0.6)
    assert [row["k"] for row in r["curves"]["A"]] == [6, 8] and [row["k"] for row in r["curves"]["B"]] == [0, 3]
    assert r["curves"]["A"][1]["capped"] and not r["curves"]["B"][1]["capped"]
    assert r["curves"]["A"][1]["coverage"] == 1.0 and r["curves"]["B"][1]["coverage"] == 0.25
    assert r["reference"] == "A" and r["differences"]["B"][1]["coverage"]["call"] == "loss"
    assert r["verdict"].startswith("A beats B in coverage at every budget from 0.5 s to 2 s (by 1.00 at 0.5 s"), \
        r["verdict"]
    on_disk = json.loads((tmp_path / "time_budget.json").read_text())
    assert on_disk["verdict"] == r["verdict"] and set(on_disk) >= {"models", "curves", "fine", "differences",
                                                                     "crossings", "batch_order", "check_timeouts"}
    md = (tmp_path / "time_budget.md").read_text().splitlines()
    assert md[2] == r["verdict"] and any(line.startswith("| 2 s | 8 (capped; 26 fit) | 1.000 [1.000, 1.000]")
                                         for line in md), md
    assert (tmp_path / "time_budget.png").stat().st_size > 0
    # each model's draws in eval.json's form, which eval compare pairs over problems
    pair = paired_compare(str(tmp_path / "samples" / "0.json"), str(tmp_path / "samples" / "1.json"))
    assert (pair["problems"], pair["base_pass@1"], pair["other_pass@1"]) == (4, 1.0, 0.25)
    assert json.loads((tmp_path / "samples" / "1.json").read_text())["samples"] == 4
    with pytest.raises(ValueError, match="samples <= max_samples"):
        run_time_budget(["A"], [Problem("0", "q", "1")], 9, [1], [1], str(tmp_path), max_samples=8)


def test_run_time_budget_resumes_an_interrupted_run_from_its_journal(tmp_path):
    """Interrupted after 5 of its 12 timed batches, a resumed run draws only the other 7 (after each model's warm-up),
    and its result equals the uninterrupted run's: completions, batch times, curves, verdict."""
    whole, _ = _fake_run(tmp_path / "whole", seed=3)
    # calls before the timed batches: per model one warm-up + 3 best-batch calls, so 8; then stop after 5 batches
    with pytest.raises(KeyboardInterrupt):
        _fake_run(tmp_path / "cut", seed=3, stop_after=8 + 5)
    journal = tmp_path / "cut" / "time_budget.draws.jsonl"
    with open(journal, "a") as f:
        f.write('{"model": "A", "batch": 7, "compl')  # a line torn by the interruption
    r, calls = _fake_run(tmp_path / "cut", seed=3, resume=True)
    assert [c[1] for c in calls[:2]] == [[0], [0]] and len(calls) == 2 + 7  # warm-ups, then the 7 batches left
    # the whole run's order: A0 B0 A1 B1 A2 | B2 A3 B3 A4 A5 A6 A7; batch j is drawn with seed 3 + j
    assert [(c[0], c[2] - 3) for c in calls[2:]] == [("B", 2), ("A", 3), ("B", 3), ("A", 4), ("A", 5), ("A", 6),
                                                      ("A", 7)]
    for m in ("A", "B"):
        assert r["models"][m]["batch_times"] == pytest.approx(whole["models"][m]["batch_times"])
        assert r["models"][m]["samples"] == whole["models"][m]["samples"]
    assert r["curves"] == whole["curves"] and r["verdict"] == whole["verdict"]
    assert r["batch_order"] == whole["batch_order"] and r["sittings"] == 2 and whole["sittings"] == 1
    sittings = r["models"]["A"]["batch_sittings"] + r["models"]["B"]["batch_sittings"]
    assert sorted(sittings) == [0] * 5 + [1] * 7
    assert "resumed: batches drawn in 2 sittings" in (tmp_path / "cut" / "time_budget.md").read_text()
    with pytest.raises(ValueError, match=r"other settings \(budgets differ\)"):
        run_time_budget(["A", "B"], [Problem(str(i), f"q{i}", str(i + 1)) for i in range(4)], 2, [0.5, 3],
                        [1, 2, 4], str(tmp_path / "cut"), max_samples=8, loader=lambda s: (s, None), seed=3,
                        resume=True)


def test_resuming_a_finished_run_draws_nothing_and_reanalyses_its_journal(tmp_path):
    """--resume on a finished journal (to re-analyse it) runs no model: no warm-up, no measurement, no batch; the
    result equals the run's own."""
    whole, _ = _fake_run(tmp_path, seed=3)
    again, calls = _fake_run(tmp_path, seed=3, resume=True)
    assert calls == []
    assert again["curves"] == whole["curves"] and again["verdict"] == whole["verdict"]
    for m in ("A", "B"):
        assert again["models"][m]["batch_times"] == pytest.approx(whole["models"][m]["batch_times"])
    assert again["sittings"] == 1  # a sitting that drew nothing is none of the draws' sittings
    assert set(again["models"]["A"]["batch_sittings"] + again["models"]["B"]["batch_sittings"]) == {0}
    assert "resumed" not in (tmp_path / "time_budget.md").read_text()


def test_a_resumed_run_knows_its_models_by_another_path_to_the_same_folder(tmp_path, monkeypatch):
    """Models given as absolute paths, the run resumed with relative ones (or the other way): the same models, so
    the journal's draws serve and take today's names; another folder is other settings."""
    for m in ("A", "B", "C"):
        (tmp_path / "models" / m).mkdir(parents=True)
    absolute = tuple(str(tmp_path / "models" / m) for m in ("A", "B"))
    whole, _ = _fake_run(tmp_path / "out", labels=absolute, seed=3)
    monkeypatch.chdir(tmp_path)
    again, calls = _fake_run(tmp_path / "out", labels=("models/A", "models/B/"), seed=3, resume=True)
    assert calls == [] and list(again["models"]) == ["models/A", "models/B/"]
    assert again["curves"]["models/B/"] == whole["curves"][absolute[1]] and again["sittings"] == 1
    journal = [json.loads(line) for line in (tmp_path / "out" / "time_budget.draws.jsonl").read_text().splitlines()]
    assert journal[0]["settings"]["specs"] == ["models/A", "models/B/"]
    assert {r["model"] for r in journal[1:]} == {"models/A", "models/B/"}
    with pytest.raises(ValueError, match=r"other settings \(specs differ\)"):
        _fake_run(tmp_path / "out", labels=("models/A", "models/C"), seed=3, resume=True)


def test_relative_budgets_are_multiples_of_the_references_seconds_per_sample(tmp_path):
    """Budgets "1x" and "4x" with the slow model (0.6 s/sample at its best batch) as the reference: it draws
    ceil(4 x 0.6 / 0.6) = 4 samples per problem, the fast one (0.075 s/sample) ceil(2.4 / 0.075) = 32; the curves
    are read at 1 and 4 times the reference's interleaved seconds per sample, where it has 1 and 4 samples."""
    r, calls = _fake_run(tmp_path, labels=("B", "A"), budgets=("1x", "4X"), max_samples=40, slow_first=True, seed=1)
    assert r["budgets_given"] == ["1x", "4x"]
    assert r["budget_unit"]["model"] == "B" and r["budget_unit"]["seconds_per_sample"] == pytest.approx(0.6)
    assert r["budgets"] == pytest.approx([0.6, 2.4])
    assert (r["models"]["B"]["samples"], r["models"]["A"]["samples"]) == (4, 32)
    assert not r["models"]["A"]["capped"]
    assert [row["k"] for row in r["curves"]["B"]] == [1, 4] and [row["k"] for row in r["curves"]["A"]] == [8, 32]
    assert r["curves"]["A"][1]["coverage"] == 1.0 and r["curves"]["B"][1]["coverage"] == 0.25
    md = (tmp_path / "time_budget.md").read_text()
    assert "Budgets 1x, 4x: multiples of B's 0.6 s per sample in this run (= 0.6 s, 2.4 s)." in md, md
    settings = json.loads((tmp_path / "time_budget.draws.jsonl").read_text().splitlines()[0])["settings"]
    assert settings["budgets"] == ["1x", "4x"]
    for bad in ("fast", "-2x", "0", "x", "infx"):
        with pytest.raises(ValueError, match=repr(bad)):
            parse_budget(bad)
    assert parse_budget(" 2.50x") == "2.5x" and parse_budget(3) == 3.0
    with pytest.raises(ValueError, match="need the reference's seconds per sample"):
        resolve_budgets(["2x", 1], None)
    assert resolve_budgets(["2x", 1], 1.5) == [3.0, 1.0]


def test_partial_analysis_of_an_interrupted_run_covers_the_problems_every_model_finished(tmp_path):
    """Interrupted after A0 B0 A1 B1 A2 (A draws problem 0 in batches 0-1, B problems 0 and 1 in batches 0-1), only
    problem 0 is finished by both; seconds per sample come from every batch drawn."""
    with pytest.raises(KeyboardInterrupt):
        _fake_run(tmp_path, seed=3, stop_after=8 + 5)
    r = partial_time_budget(str(tmp_path), "fake")
    assert r["partial"] == {"problems_done": 1, "problems": 4, "ids": ["0"]} and r["problems"] == 1
    assert r["models"]["A"]["seconds_per_sample"] == pytest.approx(0.075)
    assert r["models"]["B"]["seconds_per_sample"] == pytest.approx(0.6)
    assert [row["k"] for row in r["curves"]["A"]] == [6, 8] and [row["k"] for row in r["curves"]["B"]] == [0, 3]
    assert r["curves"]["B"][1]["coverage"] == 1.0  # B answers problem 0 right
    assert "partial: the first 1 of 4 problems" in (tmp_path / "time_budget.partial.md").read_text()
    assert (tmp_path / "time_budget.partial.png").stat().st_size > 0
    with pytest.raises(KeyboardInterrupt):
        _fake_run(tmp_path / "early", seed=3, stop_after=8 + 1)  # A0 only: B has drawn nothing
    with pytest.raises(ValueError, match="nothing to analyse"):
        partial_time_budget(str(tmp_path / "early"))


def test_report_states_the_verdict_first_and_the_intervals(tmp_path):
    from distill.pipeline import PipelineRecipe, write_report
    from distill.recipe import DistillRecipe
    (tmp_path / "distill").mkdir()
    (tmp_path / "distill" / "summary.json").write_text(json.dumps({"teacher": "t", "selection": "u", "phases": []}))
    _fake_run(tmp_path / "bench", labels=("/m/teacher", "/m/hybrid"))
    write_report(PipelineRecipe(str(tmp_path / "recipe"), DistillRecipe(teacher="/m/teacher")), str(tmp_path), {},
                 {"teacher": {"base": "/m/teacher"}, "hybrid": {"base": "/m/hybrid"}})
    lines = (tmp_path / "report.md").read_text().splitlines()
    assert lines[2].startswith("**Under a wall-clock budget:** teacher (base) beats hybrid (base) in coverage at "
                               "every budget from 0.5 s to 2 s"), lines[:4]
    row = next(line for line in lines if line.startswith("| 2 s | 3 | 0.250 [0.000, "))  # the hybrid's, with its CI
    assert row.endswith("| -0.750 ± 0.250 (loss) | -0.750 ± 0.250 (loss) |"), row


@pytest.mark.slow
def test_run_time_budget_with_tiny_models_end_to_end(tmp_path):
    from helpers import tiny_teacher, tiny_tokenizer

    from distill.evaluation.tasks import load_tasks
    folder = tmp_path / "teacher"
    tiny_teacher("llama").save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    specs = [str(folder), f"{folder}@attn=0.5"]
    problems = load_tasks("synthetic:test:levels=1", n=2, seed=0)
    r = run_time_budget(specs, problems, 1, [0.01, 0.1], [1, 2], str(tmp_path / "out"), max_samples=3,
                        bootstrap=100, max_new_tokens=4, temperature=0.7, top_p=0.95, seed=0)
    for m in specs:
        meta = r["models"][m]
        assert 1 <= meta["samples"] <= 3 and meta["seconds_per_sample"] > 0 and meta["tokens"] > 0
        assert len(meta["batch_times"]) == math.ceil(2 * meta["samples"] / meta["best_batch"])
    assert sorted(r["batch_order"]) == sorted(m for m in specs for _ in r["models"][m]["batch_times"])
    assert r["reference"] == specs[0] and specs[1] in r["crossings"] and r["verdict"]
    for name in ("time_budget.json", "time_budget.png", "time_budget.md"):
        assert (tmp_path / "out" / name).is_file()


def test_interleaved_draws_and_best_batch_leave_compilation_out_of_a_models_seconds():
    """A sampler whose first call of a shape compiles a decode step (the engine's "compiled" mode) says so in
    last_compile_seconds; those seconds are a one-time cost, not a cost per sample, and must not tilt the timing."""
    from distill.evaluation.evaluate import best_batch_size, interleaved_draws
    clock = FakeClock()

    class Compiling:
        def __init__(self, per_sample, compile_s):
            self.per_sample, self.compile_s, self.shapes = per_sample, compile_s, set()
            self.last_compile_seconds = 0.0

        def __call__(self, indices, seed):
            first = len(indices) not in self.shapes
            self.shapes.add(len(indices))
            self.last_compile_seconds = self.compile_s if first else 0.0
            clock.t += self.last_compile_seconds + self.per_sample * len(indices)
            return ["x"] * len(indices)

    samplers = {"A": Compiling(0.5, 30.0), "B": Compiling(0.25, 40.0)}
    _, seconds, _ = interleaved_draws(samplers, {"A": 4, "B": 4}, {"A": 2, "B": 2}, 2, clock=clock)
    assert seconds["A"] == pytest.approx([1.0] * 4) and seconds["B"] == pytest.approx([0.5] * 4)
    best = best_batch_size(Compiling(0.5, 30.0), 4, candidates=(1, 4), clock=clock)
    assert best["seconds_per_sample_by_batch"] == pytest.approx({1: 0.5, 4: 0.5})
