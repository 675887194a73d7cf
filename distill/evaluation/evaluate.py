"""Accuracy of sampled answers: pass@1, unbiased pass@k, majority vote, and accuracy under a time budget.

pass@k is the unbiased estimator of Chen et al. 2021 (eq. 1): with n samples of which c are correct,
pass@k = 1 - C(n - c, k) / C(n, k), computed as a stable product.

Majority vote over k samples: answers are grouped by mathematical equivalence (math-verify), malformed or
missing answers do not vote, the largest group wins, and a tie goes to the group whose first sample came first
(deterministic). No valid answer at all counts as wrong.

Answer checks are bounded in time (distill.evaluation.tasks.is_correct): one that runs past the limit counts as wrong, and
`score` reports how many did (`check_timeouts`, written to eval.json), so a low score from a stalled checker shows.

Time budget ("Thinking Slow, Fast"): a model that needs s seconds per sample (measured at its best batch size)
draws k(T) = floor(T / s) samples per problem in T seconds; coverage(T) = pass@k(T), majority(T) = maj@k(T).
"""
from __future__ import annotations

import math

from .tasks import check_stats, extract_answer, is_correct, prompt_of


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


def _mean_se(xs: list[float]) -> tuple[float, float]:
    """Mean and its standard error (sample s.d. / sqrt(n)); s.e. 0 for fewer than two values."""
    n = len(xs)
    mean = sum(xs) / max(1, n)
    return mean, (sum((x - mean) ** 2 for x in xs) / (n - 1) / n) ** 0.5 if n > 1 else 0.0


def score(problems, completions: list[list[str]], ks=(1,)) -> dict:
    """Accuracy over problems: pass@1 (mean correct fraction) with its standard error over problems
    (`pass@1_se`: the noise of this estimate from the problems and samples drawn), pass@k and maj@k for each k,
    and `check_timeouts`: answer checks (majority-vote comparisons included) that ran past the time limit."""
    if len(problems) != len(completions):
        raise ValueError(f"{len(problems)} problems but {len(completions)} completion lists")
    before = check_stats()["timeouts"]
    correct = [[is_correct(c, p.answer) for c in comps] for p, comps in zip(problems, completions)]
    mean, se = _mean_se([sum(r) / len(r) for r in correct if r])
    out = {"problems": len(problems), "pass@1": mean, "pass@1_se": se}
    for k in ks:
        out[f"pass@{k}"] = sum(pass_at_k(len(r), sum(r), k) for r in correct) / max(1, len(correct))
        out[f"maj@{k}"] = sum(majority_correct(c[:k], p.answer) for p, c in zip(problems, completions)) / max(
            1, len(problems))
    out["check_timeouts"] = check_stats()["timeouts"] - before
    return out


def _load_eval(path: str) -> dict:
    import json
    import os

    if os.path.isdir(path):
        path = os.path.join(path, "eval.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"no evaluation at {path!r} (expected an eval.json written by `hybrid-distill eval`)")
    with open(path) as f:
        run = json.load(f)
    for field in ("problems", "completions"):
        if not isinstance(run.get(field), list):
            raise ValueError(f"{path}: field {field!r} missing; it is not an eval.json from `hybrid-distill eval`")
    run["path"] = path
    return run


def _per_problem(run: dict) -> dict[str, float]:
    """problem id -> fraction of its samples that are correct (re-scored from the stored completions)."""
    out = {}
    for p, comps in zip(run["problems"], run["completions"]):
        if comps:
            out[str(p["id"])] = sum(is_correct(c, str(p["answer"])) for c in comps) / len(comps)
    return out


def _binom_two_sided(wins: int, losses: int) -> float:
    """Exact two-sided sign test p-value: P(a count at least as extreme | p = 1/2), ties dropped."""
    n = wins + losses
    if n == 0:
        return 1.0
    k = min(wins, losses)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def paired_compare(base: str, other: str) -> dict:
    """Paired difference in pass@1 of `other` over `base` (eval.json files or their folders) on the problems both
    evaluated: mean of the per-problem differences, its standard error over problems, a 95 % interval, z and its
    two-sided normal p-value, and the exact sign test over problems that differ. Pairing removes the spread of
    problem difficulty, which dominates the unpaired standard errors eval reports."""
    a_run, b_run = _load_eval(base), _load_eval(other)
    a, b = _per_problem(a_run), _per_problem(b_run)
    shared = [i for i in a if i in b]
    if not shared:
        raise ValueError(f"{a_run['path']} and {b_run['path']} share no problem ids: evaluate both on the same tasks")
    d = [b[i] - a[i] for i in shared]
    n = len(d)
    mean, se = _mean_se(d)
    if n < 2:  # one problem says nothing about its noise
        se, z = float("nan"), float("nan")
    elif se > 0:
        z = mean / se
    else:
        z = 0.0 if mean == 0 else math.copysign(math.inf, mean)
    wins, losses = sum(x > 0 for x in d), sum(x < 0 for x in d)
    return {"base": a_run["path"], "other": b_run["path"], "problems": n,
            "only_base": len(a) - n, "only_other": len(b) - n,
            "base_pass@1": sum(a[i] for i in shared) / n, "other_pass@1": sum(b[i] for i in shared) / n,
            "diff": mean, "diff_se": se, "ci95": [mean - 1.96 * se, mean + 1.96 * se], "z": z,
            "p_normal": math.erfc(abs(z) / math.sqrt(2)), "better": wins, "worse": losses,
            "p_sign": _binom_two_sided(wins, losses)}


def compare_table(rows: list[dict]) -> str:
    lines = ["| base | other | problems | base pass@1 | other pass@1 | diff ± s.e. | 95 % CI | z | p | better/worse "
             "| sign p |", "|" + "---|" * 11]
    for r in rows:
        lines.append(f"| {r['base']} | {r['other']} | {r['problems']} | {r['base_pass@1']:.3f} | "
                     f"{r['other_pass@1']:.3f} | {r['diff']:+.3f} ± {r['diff_se']:.3f} | "
                     f"[{r['ci95'][0]:+.3f}, {r['ci95'][1]:+.3f}] | {r['z']:.2f} | {r['p_normal']:.3g} | "
                     f"{r['better']}/{r['worse']} | {r['p_sign']:.3g} |")
    return "\n".join(lines)


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


def sample_completions(model, tok, problems, k: int, max_new_tokens: int = 256, temperature: float = 0.7,
                       top_p: float = 0.95, batch_size: int = 16, seed: int = 0):
    """k samples per problem through the decode engine. Returns (completions [problem][sample], wall seconds,
    generated tokens). Batch j is sampled with seed + j, so results are reproducible."""
    import time

    from hybrid.generation import SamplingParams, generate  # start-up time: the model side loads on use

    from ..data import prompt_ids
    from ..loading import pad_and_eos

    jobs = [(i, prompt_ids(tok, prompt_of(p))) for i, p in enumerate(problems) for _ in range(k)]
    out: list[list[str]] = [[] for _ in problems]
    pad, eos = pad_and_eos(model, tok)
    from tqdm.auto import tqdm
    bar = tqdm(total=len(jobs), desc="sampling", unit="sample", disable=len(jobs) <= batch_size)
    t0, tokens = time.perf_counter(), 0
    for j in range(0, len(jobs), batch_size):
        chunk = jobs[j:j + batch_size]
        params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                seed=seed + j // batch_size)
        res = generate(model, [ids for _, ids in chunk], params, eos_token_id=eos, pad_token_id=pad)
        tokens += res.generated_tokens
        for (i, _), seq in zip(chunk, res.sequences):
            out[i].append(tok.decode(seq, skip_special_tokens=True))
        bar.update(len(chunk))
    bar.close()
    return out, time.perf_counter() - t0, tokens


def best_batch_size(model, tok, problems, candidates=(1, 4, 16, 32), max_new_tokens: int = 256, **kw) -> dict:
    """Seconds per sample at each candidate batch size (one batch of real problems each); the best one."""
    per = {}
    for b in candidates:
        probs = (problems * b)[:b]
        _, secs, _ = sample_completions(model, tok, probs, 1, max_new_tokens=max_new_tokens, batch_size=b, **kw)
        per[b] = secs / b
    best = min(per, key=per.get)
    return {"seconds_per_sample_by_batch": per, "best_batch": best}


def plot_time_budget(curves: dict, path: str, title: str = "") -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for model, rows in curves.items():
        T = [r["budget_s"] for r in rows]
        axes[0].plot(T, [r["coverage"] for r in rows], "o-", label=model)
        if rows and rows[0].get("majority") is not None:
            axes[1].plot(T, [r["majority"] for r in rows], "o-", label=model)
    axes[0].set(xlabel="seconds per problem", ylabel="coverage (pass@k(T))", xscale="log", title=title or "coverage")
    axes[1].set(xlabel="seconds per problem", ylabel="majority-vote accuracy", xscale="log", title="majority vote")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_time_budget(specs, problems, samples: int, budgets, batch_candidates, out: str, title: str = "",
                    tasks: str = "", **sampling) -> dict:
    """Per model spec: best batch size, `samples` draws per problem (timed), then coverage and majority accuracy as
    functions of wall-clock seconds. Writes out/time_budget.{json,png}; returns the JSON's content (with
    `check_timeouts`, the answer checks that ran past the time limit)."""
    import json
    import os

    from ..loading import load_model  # start-up time: the model side loads on use
    from .tasks import extract_answer, is_correct
    os.makedirs(out, exist_ok=True)
    spp, correct, answers, meta = {}, {}, {}, {}
    before = check_stats()["timeouts"]
    for spec in specs:
        model, tok, label = load_model(spec, need_tokenizer=True)
        best = best_batch_size(model, tok, problems, candidates=batch_candidates, **sampling)
        comps, secs, tokens = sample_completions(model, tok, problems, samples, batch_size=best["best_batch"],
                                                 **sampling)
        spp[label] = secs / (len(problems) * samples)  # measured over the whole draw
        correct[label] = [[is_correct(c, p.answer) for c in cs] for p, cs in zip(problems, comps)]
        answers[label] = [[extract_answer(c) for c in cs] for cs in comps]
        meta[label] = {**best, "seconds": secs, "tokens": tokens, "seconds_per_sample": spp[label]}
        print(f"{label}: best batch {best['best_batch']}, {spp[label]:.3f} s/sample, "
              f"pass@1 {sum(map(sum, correct[label])) / (len(problems) * samples):.3f}")
    curves = time_budget_curves(spp, correct, answers, [p.answer for p in problems], budgets)
    result = {"tasks": tasks, "problems": len(problems), "samples": samples, "models": meta, "curves": curves,
              "check_timeouts": check_stats()["timeouts"] - before}
    with open(os.path.join(out, "time_budget.json"), "w") as f:
        json.dump(result, f, indent=1)
    plot_time_budget(curves, os.path.join(out, "time_budget.png"), title=title)
    for label, rows in curves.items():
        print(label, [(r["budget_s"], r["k"], round(r["coverage"], 3), r["majority"]) for r in rows])
    return result


def run_accuracy(spec: str, problems, samples: int, out: str, tasks: str = "", batch_size: int = 16,
                 **sampling) -> dict:
    """Sample `samples` completions per problem from model `spec`, score them (pass@1 with its standard error,
    pass@k and maj@k for k = 1, 2, 4, ... up to samples) and write out/eval.json (+ completions and problems)."""
    import json
    import os

    from ..loading import load_model  # start-up time: the model side loads on use
    model, tok, label = load_model(spec, need_tokenizer=True)
    comps, secs, tokens = sample_completions(model, tok, problems, samples, batch_size=batch_size, **sampling)
    ks = sorted({k for k in (1, 2, 4, 8, 16, 32, 64) if k <= samples} | {samples})
    result = {"model": label, "tasks": tasks, "samples": samples, "seconds": secs, "tokens": tokens,
              **score(problems, comps, ks)}
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "eval.json")
    with open(path + ".tmp", "w") as f:  # whole or absent: an interrupted run never leaves half a file behind
        json.dump({**result, "completions": comps, "problems": [p.to_dict() for p in problems]}, f)
    os.replace(path + ".tmp", path)
    return result
