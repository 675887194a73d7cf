"""Reward functions for RL with verifiable rewards, in TRL's reward-function signature.

Each reward is `fn(prompts, completions, **columns) -> list[float]`, one value per completion; `columns` are the
dataset's other columns, batched like the completions (TRL passes them this way), so `answer=[...]` carries the
gold answers. Completions may be strings or conversational ([{"role": "assistant", "content": ...}]).

Registered names (`REWARDS`, `get_rewards`):
- correctness: 1.0 if the final answer (last \\boxed{}, else last number) equals the gold answer under
  math-verify (distill.evaluation.tasks.is_correct), else 0.0; never raises. Each answer is judged within
  distill.evaluation.tasks.answer_timeout() seconds (HYBRID_ANSWER_TIMEOUT, 1 s): one that runs past it scores 0.0, and a
  call with such timeouts logs a warning with their count.
- format: 1.0 if the completion closes its reasoning (`</think>`) and then gives exactly one \\boxed{} answer
  after it, else 0.0.
- length_penalty: 0 up to `budget` tokens-as-words, then linearly down to -1 at twice the budget (DAPO's soft
  overlong punishment, in whitespace-separated words so it needs no tokenizer); build it with
  `length_penalty(budget)` for another budget.
"""
from __future__ import annotations

import logging
from collections.abc import Callable

from ..evaluation.tasks import BOXED, answer_timeout, check_stats, is_correct

log = logging.getLogger(__name__)

RewardFn = Callable[..., list[float]]


def _text(completion) -> str:
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list):  # conversational: the assistant turns' content
        return "".join(m.get("content", "") for m in completion if isinstance(m, dict))
    if isinstance(completion, dict):
        return str(completion.get("content", ""))
    return ""


def _gold(columns: dict, n: int, field: str = "answer") -> list:
    if field not in columns:
        raise KeyError(f"reward needs the dataset column {field!r}; got columns {sorted(columns)}")
    gold = columns[field]
    if len(gold) != n:
        raise ValueError(f"column {field!r} has {len(gold)} values for {n} completions")
    for i, g in enumerate(gold):
        if g is None or (isinstance(g, str) and not g.strip()):
            raise ValueError(f"row {i}: field {field!r} is empty")
    return gold


def correctness(prompts, completions, **columns) -> list[float]:
    gold = _gold(columns, len(completions))
    before = check_stats()["timeouts"]
    out = [1.0 if is_correct(_text(c), str(g)) else 0.0 for c, g in zip(completions, gold)]
    timeouts = check_stats()["timeouts"] - before
    if timeouts:  # a stalled checker must show in the logs, not only as a lower reward
        log.warning("correctness: %d of %d answer checks ran past %.3g s and scored 0", timeouts, len(out),
                    answer_timeout())
    return out


def format_reward(prompts, completions, **columns) -> list[float]:
    out = []
    for c in completions:
        text = _text(c)
        head, sep, tail = text.rpartition("</think>")
        ok = bool(sep) and tail.count(BOXED) == 1 and "<think>" not in tail and head.count("</think>") == 0
        out.append(1.0 if ok else 0.0)
    return out


def length_penalty(budget: int = 256) -> RewardFn:
    if budget < 1:
        raise ValueError(f"length_penalty budget={budget} must be >= 1")

    def reward(prompts, completions, **columns) -> list[float]:
        out = []
        for c in completions:
            n = len(_text(c).split())
            out.append(0.0 if n <= budget else max(-1.0, -(n - budget) / budget))
        return out
    reward.__name__ = f"length_penalty_{budget}"
    return reward


REWARDS: dict[str, RewardFn] = {
    "correctness": correctness,
    "format": format_reward,
    "length_penalty": length_penalty(),
}


def get_rewards(names: list[str]) -> list[RewardFn]:
    """Reward functions by registry name (`length_penalty:N` sets the budget); unknown names list the known ones."""
    fns = []
    for name in names:
        base, _, arg = name.partition(":")
        if base not in REWARDS:
            raise ValueError(f"unknown reward {name!r}; registered: {sorted(REWARDS)}")
        fns.append(length_penalty(int(arg)) if base == "length_penalty" and arg else REWARDS[base])
    return fns


def check_rows(rows: list[dict], fields=("prompt", "answer")) -> None:
    """Every training row has every field the rewards need: else an error naming the row and the field."""
    for i, row in enumerate(rows):
        for f in fields:
            if f not in row or row[f] is None or (isinstance(row[f], str) and not row[f].strip()):
                raise ValueError(f"row {i} has no {f!r} field (keys: {sorted(row)})")
