"""Tasks: answer checking on tricky completions, seeded synthetic problems, the GSM8K / MATH loaders."""
import pytest

from distill.evaluation.tasks import is_correct, load_gsm8k, load_math, synthetic_math


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
