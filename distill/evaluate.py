"""Accuracy of sampled answers: pass@1, unbiased pass@k, majority vote, and accuracy under a time budget.

pass@k is the unbiased estimator of Chen et al. 2021 (eq. 1): with n samples of which c are correct,
pass@k = 1 - C(n - c, k) / C(n, k), computed as a stable product.

Majority vote over k samples: answers are grouped by mathematical equivalence (math-verify), malformed or
missing answers do not vote, the largest group wins, and a tie goes to the group whose first sample came first
(deterministic). No valid answer at all counts as wrong.

Time budget ("Thinking Slow, Fast"): a model that needs s seconds per sample (measured at its best batch size)
draws k(T) = floor(T / s) samples per problem in T seconds; coverage(T) = pass@k(T), majority(T) = maj@k(T).
"""
from __future__ import annotations

import math

from .tasks import extract_answer, is_correct


def pass_at_k(n: int, c: int, k: int) -> float:
    if not 0 <= c <= n or k < 1:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and k >= 1, got n={n} c={c} k={k}")
    if k > n:
        raise ValueError(f"k={k} exceeds the number of samples n={n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def _same(a: str, b: str) -> bool:
    return a == b or is_correct(f"\\boxed{{{a}}}", b)


def majority_answer(answers: list[str | None]) -> str | None:
    """The most frequent answer (equivalence classes), ties to the earliest; None if no sample has an answer."""
    groups: list[list] = []  # [representative, count, first index]
    for i, a in enumerate(answers):
        if a is None:
            continue
        for g in groups:
            if _same(a, g[0]):
                g[1] += 1
                break
        else:
            groups.append([a, 1, i])
    if not groups:
        return None
    return max(groups, key=lambda g: (g[1], -g[2]))[0]


def majority_correct(completions: list[str], gold: str) -> bool:
    winner = majority_answer([extract_answer(c) for c in completions])
    return winner is not None and is_correct(f"\\boxed{{{winner}}}", gold)


def score(problems, completions: list[list[str]], ks=(1,)) -> dict:
    """Accuracy over problems: pass@1 (mean correct fraction), pass@k and maj@k for each k in ks."""
    if len(problems) != len(completions):
        raise ValueError(f"{len(problems)} problems but {len(completions)} completion lists")
    correct = [[is_correct(c, p.answer) for c in comps] for p, comps in zip(problems, completions)]
    out = {"problems": len(problems), "pass@1": sum(sum(r) / len(r) for r in correct) / max(1, len(correct))}
    for k in ks:
        out[f"pass@{k}"] = sum(pass_at_k(len(r), sum(r), k) for r in correct) / max(1, len(correct))
        out[f"maj@{k}"] = sum(majority_correct(c[:k], p.answer) for p, c in zip(problems, completions)) / max(
            1, len(problems))
    return out


def time_budget_curves(seconds_per_sample: dict[str, float], correct: dict[str, list[list[bool]]],
                       majority: dict[str, list[list[str | None]]] | None, golds: list[str],
                       budgets: list[float]) -> dict:
    """Per model and budget T: k(T) samples per problem, coverage pass@k(T) and majority accuracy maj@k(T).

    correct[model][p] is the per-sample correctness of problem p (samples in the order drawn); majority[model][p]
    the extracted answers in the same order (None to skip majority). k(T) is capped at the samples drawn, and
    a budget too small for one sample scores 0.
    """
    curves = {}
    for model, s in seconds_per_sample.items():
        if not s > 0:
            raise ValueError(f"seconds_per_sample[{model!r}]={s} must be positive")
        rows = []
        for T in budgets:
            k_budget = math.floor(T / s + 1e-9)
            n = min(len(r) for r in correct[model])
            k = min(k_budget, n)
            if k < 1:
                rows.append({"budget_s": T, "k": 0, "k_budget": k_budget, "coverage": 0.0, "majority": 0.0})
                continue
            cov = sum(pass_at_k(len(r), sum(r), k) for r in correct[model]) / len(correct[model])
            maj = None
            if majority is not None:
                wins = 0
                for answers, gold in zip(majority[model], golds):
                    w = majority_answer(answers[:k])
                    wins += w is not None and is_correct(f"\\boxed{{{w}}}", gold)
                maj = wins / len(golds)
            rows.append({"budget_s": T, "k": k, "k_budget": k_budget, "capped": k < k_budget, "coverage": cov,
                         "majority": maj})
        curves[model] = rows
    return curves
