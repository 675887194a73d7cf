"""Scoring (distill.evaluation.evaluate): pass@k, majority vote, paired comparison of two runs, time-budget curves."""
import math

import pytest

from distill.evaluation.evaluate import (majority_answer, majority_correct, paired_compare, pass_at_k, score,
                                         time_budget_curves)
from distill.evaluation.tasks import Problem


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
    # retention: other's pass@1 over base's, .625 / .375; no interval: a resample of these 4 problems solves nothing
    # for base with probability (2/4)^4 = 6 %, more than the 5 % the interval may drop
    assert r["retention"] == pytest.approx(0.625 / 0.375) and r["retention_ci95"] is None
    assert paired_compare(other, base)["retention"] == pytest.approx(0.375 / 0.625)
    # the same problems three times over: the interval holds the ratio, within what resampled pairs (.5, 1), (0, .5),
    # (1, 1), (0, 0) can give (ratios from 1 to 3)
    rows = lambda path, run: _eval_json(tmp_path / path, [  # noqa: E731
        (f"{p['id']}-{k}", p["answer"], c) for k in range(3) for p, c in zip(run["problems"], run["completions"])])
    import json
    base3 = rows("a3", json.load(open(tmp_path / "a" / "eval.json")))
    other3 = rows("b3", json.load(open(tmp_path / "b" / "eval.json")))
    r3 = paired_compare(base3, other3)
    lo, hi = r3["retention_ci95"]
    assert 1.0 <= lo < r3["retention"] < hi <= 3.0 and r3["retention"] == pytest.approx(0.625 / 0.375)
    same = paired_compare(base3, base3)
    assert same["retention"] == 1 and same["retention_ci95"] == [1, 1]
    nothing = _eval_json(tmp_path / "z", [("p1", "1", [W]), ("p2", "2", [W])])  # a base that solves nothing
    assert paired_compare(nothing, other)["retention"] is None
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
    # majority: expected over every order of a problem's 4 samples (a tie goes to the answer seen first)
    # k=2, ["1","5","1","2"] gold 5: right iff "5" comes first (1/4); ["9","9","4","4"] gold 4: iff a "4" first (1/2)
    assert fast[2]["majority"] == pytest.approx((1 / 4 + 1 / 2) / 2)
    # k=4: "1" holds two of four, always wrong; 2-2 tie of "9" and "4": right iff a "4" comes first (1/2)
    assert fast[5]["majority"] == pytest.approx((0 + 1 / 2) / 2)
    # k=2, ["5","1","1","1"] gold 5: right iff "5" comes first (1/4); ["0","0","0","0"] gold 4: never
    assert slow[5]["majority"] == pytest.approx((1 / 4 + 0) / 2)
