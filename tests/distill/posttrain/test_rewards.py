"""Reward functions on tricky completions, the registry, and bad rows."""
import pytest

from distill.posttrain.rewards import REWARDS, check_rows, format_reward, get_rewards, length_penalty

CORRECTNESS = [  # (completion, gold, reward)
    (r"<think>6*7</think> \boxed{42}", "42", 1.0),
    (r"\boxed{\frac{1}{2}}", "0.5", 1.0),  # equivalent forms
    (r"\boxed{0.50}", r"\frac{1}{2}", 1.0),
    (r"\boxed{42 \text{ apples}}", "42", 1.0),  # units inside the box
    (r"The answer is 42 apples.", "42", 1.0),  # no box: last number
    (r"\boxed{41} no, \boxed{42}", "42", 1.0),  # several boxes: the last one counts
    (r"\boxed{42} no, \boxed{41}", "42", 0.0),
    (r"\boxed{}", "42", 0.0),
    ("", "42", 0.0),
    ("}}{{\\boxed{\\frac{", "42", 0.0),  # garbage
    ("\x00\x01 ### \\\\", "42", 0.0),
    ([{"role": "assistant", "content": r"\boxed{7}"}], "7", 1.0),  # conversational completion
]


@pytest.mark.parametrize("completion,gold,reward", CORRECTNESS)
def test_correctness_on_tricky_answers(completion, gold, reward):
    assert REWARDS["correctness"](["p"], [completion], answer=[gold]) == [reward]


FORMAT = [
    (r"<think>a</think> so \boxed{3}", 1.0),
    (r"<think>a</think> \boxed{3} \boxed{4}", 0.0),  # two answers
    (r"<think>a so \boxed{3}", 0.0),  # reasoning never closed
    (r"\boxed{3}", 0.0),
    (r"<think>a</think><think>b</think> \boxed{3}", 0.0),  # closed twice
    (r"<think>a</think> 3", 0.0),  # no box
]


@pytest.mark.parametrize("completion,reward", FORMAT)
def test_format_reward(completion, reward):
    assert format_reward(["p"], [completion]) == [reward]


def test_length_penalty_is_zero_within_budget_then_linear_to_minus_one():
    f = length_penalty(4)
    assert f(None, ["a b c d", "a b c d e f", " ".join("x" * 1 for _ in range(20))]) == [0.0, -0.5, -1.0]
    with pytest.raises(ValueError, match="budget=0"):
        length_penalty(0)


def test_registry_names_and_errors():
    fns = get_rewards(["correctness", "format", "length_penalty:8"])
    assert fns[0] is REWARDS["correctness"] and fns[2].__name__ == "length_penalty_8"
    with pytest.raises(ValueError, match=r"unknown reward 'corectness'.*correctness.*format.*length_penalty"):
        get_rewards(["corectness"])
    with pytest.raises(KeyError, match="'answer'"):
        REWARDS["correctness"](["p"], ["\\boxed{1}"])
    with pytest.raises(ValueError, match="row 1: field 'answer' is empty"):
        REWARDS["correctness"](["p", "q"], ["1", "2"], answer=["1", ""])


def test_rows_without_the_answer_field_are_named():
    check_rows([{"prompt": "a", "answer": "1"}])
    with pytest.raises(ValueError, match="row 2 has no 'answer' field"):
        check_rows([{"prompt": "a", "answer": "1"}, {"prompt": "b", "answer": "2"}, {"prompt": "c"}])
