"""Accuracy under a wall-clock budget ("Thinking Slow, Fast"), from per-sample correctness and measured seconds per
sample. No model here: distill.evaluation.evaluate samples and times (run_time_budget), this module counts.

A model that needs s seconds per sample draws k(T) = floor(T / s) samples per problem in T seconds:
  coverage(T) = pass@k(T), the unbiased estimator over all n samples drawn (Chen et al. 2021, eq. 1);
  majority(T) = maj@k(T), whether the majority answer of k(T) samples is correct, averaged over orders of the n
  samples drawn (majority_by_k): an estimate of the expected majority accuracy, as pass@k is of coverage.
A budget that buys no sample scores 0. One that buys more than the n samples drawn uses all n and is marked
`capped`: the curve is flat there because it was not measured, not because the model stopped improving.

Uncertainty is over problems (within a problem the estimator already averages the samples): a 95 % percentile
bootstrap over problems resampled with replacement (the same resamples for every model and budget, so a difference
of two models is paired), and for the difference of a model to the reference (the first model) the paired standard
error of the mean per-problem difference. A difference within TIE_SE paired standard errors is called a tie.

Inputs are plain tables: per model, per problem, the metric's value at k = 0, 1, ..., n samples (coverage_by_k,
majority_by_k). Every model is evaluated at the recipe's budgets and on a fine log-spaced grid between the smallest
and the largest of them (with the budgets themselves); crossings and the verdict read the fine grid.
"""
from __future__ import annotations

import itertools
import math
from typing import Callable

import numpy as np

from .evaluate import _same, majority_by_prefix, pass_at_k
from .tasks import extract_answer, is_correct

TIE_SE = 2.0  # |difference| <= TIE_SE paired standard errors: a tie
METRICS = ("coverage", "majority")


class AnswerJudge:
    """Answer checks with memory. is_correct reads only the extracted answer and the gold, and sampled answers repeat
    (many samples say "12"), so each (answer, gold) and each pair of answers compared for the majority vote is
    judged once; a math-verify check can take up to its time limit."""

    def __init__(self):
        self._correct: dict = {}
        self._same: dict = {}

    def correct(self, completion: str, gold: str) -> bool:
        """is_correct(completion, gold), judged once per (extracted answer, gold)."""
        key = (extract_answer(completion), str(gold))
        if key not in self._correct:
            self._correct[key] = key[0] is not None and is_correct(completion, gold)
        return self._correct[key]

    def answer_correct(self, answer: str | None, gold: str) -> bool:
        """Whether an extracted answer equals gold; no new check for an answer some judged sample gave."""
        key = (answer, str(gold))
        if key not in self._correct:
            self._correct[key] = answer is not None and is_correct(f"\\boxed{{{answer}}}", gold)
        return self._correct[key]

    def same(self, a: str, b: str) -> bool:
        """The majority vote's answer equivalence (evaluate._same), judged once per ordered pair."""
        if (a, b) not in self._same:
            self._same[(a, b)] = _same(a, b)
        return self._same[(a, b)]


def samples_in(budget: float, seconds_per_sample: float) -> int:
    """k(T) = floor(T / s): the whole samples that fit in the budget (a hair of slack for float round-off)."""
    return math.floor(budget / seconds_per_sample + 1e-9)


def coverage_by_k(correct: list[bool]) -> list[float]:
    """One problem's [0, pass@1, ..., pass@n] from the correctness of its n samples (unbiased, over all n)."""
    n, c = len(correct), sum(correct)
    return [0.0] + [pass_at_k(n, c, k) for k in range(1, n + 1)]


MAJORITY_ORDERS = 1000  # orders of a problem's samples that maj@k averages over (all of them where fewer)


def majority_by_k(answers: list[str | None], judge: Callable[[str], bool], same=None,
                  orders: int = MAJORITY_ORDERS, seed: int = 0) -> list[float]:
    """One problem's [0, maj@1, ..., maj@n]: maj@k is whether the majority answer of k of its samples is correct,
    averaged over `orders` orders of the n samples drawn (each order's prefixes in one pass:
    evaluate.majority_by_prefix), so it estimates the expected majority accuracy of k samples as coverage_by_k's
    pass@k does, rather than the one draw of the first k samples. Where n! <= orders every order is taken (exact;
    maj@1 is then the share of correct samples); else orders - 1 seeded random permutations beside the order drawn.
    orders=1: the first k samples as drawn. judge(answer) says whether an answer is correct; same(a, b) groups
    answers (default: evaluate's equivalence). Only group representatives are judged."""
    if not isinstance(orders, int) or orders < 1:
        raise ValueError(f"orders={orders!r} must be a positive integer")
    n = len(answers)
    if math.factorial(n) <= orders:
        perms = list(itertools.permutations(range(n)))
    else:
        rng = np.random.default_rng(seed)
        perms = [tuple(range(n))] + [tuple(rng.permutation(n)) for _ in range(orders - 1)]
    total = np.zeros(n)
    for perm in perms:
        seq = [answers[i] for i in perm]
        winners = majority_by_prefix(seq, same)
        total += [float(w is not None and judge(seq[w])) for w in winners]
    return [0.0] + (total / len(perms)).tolist()


def parse_budget(v) -> float | str:
    """One budget as a recipe or the command line gives it: seconds (a positive number) or "Nx", N times the
    reference model's seconds per sample measured in the same run (machine-independent: "4x" is the time in which
    the reference draws 4 samples per problem). Returns the seconds as a float, or the normalised "Nx" string."""
    text = str(v).strip().lower()
    relative = text.endswith("x")
    try:
        value = float(text[:-1] if relative else text)
    except ValueError:
        raise ValueError(f"budget {v!r} is neither seconds (a positive number) nor 'Nx' (N times the reference's "
                         f"seconds per sample)") from None
    if not 0 < value < math.inf:
        raise ValueError(f"budget {v!r} must be positive and finite")
    return f"{value:g}x" if relative else value


def resolve_budgets(budgets, reference_seconds_per_sample: float | None) -> list[float]:
    """Budgets in seconds: "Nx" -> N x the reference's seconds per sample, seconds as they are (parse_budget)."""
    parsed = [parse_budget(T) for T in budgets]
    if any(isinstance(T, str) for T in parsed) and not (reference_seconds_per_sample or 0) > 0:
        raise ValueError(f"relative budgets {budgets} need the reference's seconds per sample, got "
                         f"{reference_seconds_per_sample}")
    return [float(T[:-1]) * reference_seconds_per_sample if isinstance(T, str) else T for T in parsed]


def fine_grid(budgets, points: int = 64) -> list[float]:
    """`points` log-spaced budgets from the smallest to the largest of `budgets`, with `budgets` themselves."""
    lo, hi = min(budgets), max(budgets)
    inner = {lo * (hi / lo) ** (i / (points - 1)) for i in range(1, points - 1)} if hi > lo and points > 2 else set()
    return sorted(inner | {float(T) for T in budgets})


def bootstrap_weights(problems: int, resamples: int, seed: int = 0) -> np.ndarray:
    """[resamples, problems]: how often each problem is drawn in each resample (with replacement), divided by the
    number of problems, so that weights @ values is the mean of `values` over each resample."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(problems, np.full(problems, 1.0 / problems), size=resamples) / problems


def percentile_interval(weights: np.ndarray, values: np.ndarray) -> np.ndarray:
    """95 % percentile bootstrap interval of the mean over problems: values [problems, points] -> [2, points]."""
    return np.percentile(weights @ values, [2.5, 97.5], axis=0)


def paired_difference(model: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean over problems of model - reference ([problems, points] each) and its paired standard error (sample s.d.
    of the per-problem differences / sqrt(problems)); NaN for a single problem, which says nothing of its noise."""
    d = model - reference
    p = d.shape[0]
    se = d.std(axis=0, ddof=1) / math.sqrt(p) if p > 1 else np.full(d.shape[1], np.nan)
    return d.mean(axis=0), se


def call(diff: float, se: float, empty: bool = False) -> str:
    """"win" (model ahead by more than TIE_SE paired s.e.), "loss", "tie", or "empty" (no model has a sample)."""
    if empty:
        return "empty"
    if math.isnan(se) or abs(diff) <= TIE_SE * se:
        return "tie"
    return "win" if diff > 0 else "loss"


def crossing(grid: list[float], diff) -> dict | None:
    """Where the model's curve goes from below the reference's to above it or back: the first grid budget at which
    the sign of the difference changes (exact ties skipped), with `to` ("above" | "below") and `all` such budgets;
    None if the curves never cross on the grid."""
    changes, last = [], 0
    for T, d in zip(grid, diff):
        sign = int(d > 1e-12) - int(d < -1e-12)
        if sign and last and sign != last:
            changes.append((T, "above" if sign > 0 else "below"))
        last = sign or last
    if not changes:
        return None
    return {"budget_s": changes[0][0], "to": changes[0][1], "all": [T for T, _ in changes]}


def _f(x) -> float | None:
    """A JSON number (None for NaN or infinity)."""
    x = float(x)
    return x if math.isfinite(x) else None


def _z(d: float, se: float) -> float | None:
    return _f(d / se) if se > 0 else (0.0 if d == 0 else None)


def _at(tables: list[list[float]], s: float, budgets) -> dict:
    """k per budget (capped at the n samples drawn), k before the cap, n, and values [problems, budgets]."""
    n = min(len(t) for t in tables) - 1
    k_budget = [samples_in(T, s) for T in budgets]
    k = [min(kb, n) for kb in k_budget]
    return {"k": k, "k_budget": k_budget, "n": n, "values": np.array([[t[j] for j in k] for t in tables], float)}


def analyse(seconds_per_sample: dict[str, float], tables: dict[str, dict[str, list[list[float]]]], budgets,
            grid_points: int = 64, bootstrap: int = 1000, seed: int = 0) -> dict:
    """Curves, intervals, paired differences to the reference (the first model), crossings and the verdict.

    seconds_per_sample[model]: measured seconds per sample. tables[model][metric][problem]: the metric's value at
    k = 0..n samples (coverage_by_k / majority_by_k); every model has the same metrics and the same problems, in
    the same order. Returns the JSON-ready fields curves, differences, fine, crossings, verdict (module docstring).
    """
    models = list(seconds_per_sample)
    if not models:
        raise ValueError("analyse needs at least one model")
    if not budgets or not all(0 < T < math.inf for T in budgets):
        raise ValueError(f"budgets must be positive seconds, got {budgets}")
    if bootstrap < 1:
        raise ValueError(f"bootstrap={bootstrap} must be >= 1 resample")
    for m, s in seconds_per_sample.items():
        if not s > 0:
            raise ValueError(f"seconds_per_sample[{m!r}]={s} must be positive")
    ref = models[0]
    metrics = list(tables[ref])
    problems = len(tables[ref][metrics[0]]) if metrics else 0
    if problems == 0:
        raise ValueError(f"analyse needs at least one metric over at least one problem, got {tables[ref]!r:.200}")
    for m in models:
        if sorted(tables[m]) != sorted(metrics) or any(len(tables[m][x]) != problems for x in metrics):
            raise ValueError(f"model {m!r} needs the metrics {metrics} over {problems} problems like {ref!r}, got "
                             f"{ {x: len(t) for x, t in tables[m].items()} }")
    budgets = [float(T) for T in budgets]
    grid = fine_grid(budgets, grid_points)
    weights = bootstrap_weights(problems, bootstrap, seed)

    def at_points(points):
        at = {m: {x: _at(tables[m][x], seconds_per_sample[m], points) for x in metrics} for m in models}
        ci = {m: {x: percentile_interval(weights, at[m][x]["values"]) for x in metrics} for m in models}
        diff = {}
        for m in models[1:]:
            diff[m] = {}
            for x in metrics:
                d, se = paired_difference(at[m][x]["values"], at[ref][x]["values"])
                dci = percentile_interval(weights, at[m][x]["values"] - at[ref][x]["values"])
                empty = [a == 0 and b == 0 for a, b in zip(at[m][x]["k"], at[ref][x]["k"])]
                diff[m][x] = {"diff": d, "se": se, "ci": dci, "call": [call(*v) for v in zip(d, se, empty)]}
        return at, ci, diff

    at, ci, diff = at_points(budgets)
    curves, differences = {}, {}
    for m in models:
        first = at[m][metrics[0]]
        rows = []
        for i, T in enumerate(budgets):
            row = {"budget_s": T, "k": first["k"][i], "k_budget": first["k_budget"][i],
                   "capped": first["k_budget"][i] > first["n"]}
            for x in metrics:
                row[x] = _f(at[m][x]["values"][:, i].mean())
                row[f"{x}_ci"] = [_f(v) for v in ci[m][x][:, i]]
            rows.append(row)
        curves[m] = rows
    for m, per in diff.items():
        differences[m] = [{"budget_s": T, **{x: {"diff": _f(v["diff"][i]), "se": _f(v["se"][i]),
                                                  "z": _z(v["diff"][i], v["se"][i]),
                                                  "ci": [_f(c) for c in v["ci"][:, i]], "call": v["call"][i]}
                                             for x, v in per.items()}} for i, T in enumerate(budgets)]

    at, ci, diff = at_points(grid)
    fine = {"budget_s": grid, "curves": {}, "differences": {}}
    for m in models:
        first = at[m][metrics[0]]
        capped = [T for T, kb in zip(grid, first["k_budget"]) if kb > first["n"]]
        fine["curves"][m] = {"k": first["k"], "samples": first["n"], "capped_from_s": capped[0] if capped else None,
                             **{x: [_f(v) for v in at[m][x]["values"].mean(axis=0)] for x in metrics},
                             **{f"{x}_ci": [[_f(lo), _f(hi)] for lo, hi in ci[m][x].T] for x in metrics}}
    for m, per in diff.items():
        fine["differences"][m] = {x: {"diff": [_f(d) for d in v["diff"]], "se": [_f(s) for s in v["se"]],
                                      "ci": [[_f(lo), _f(hi)] for lo, hi in v["ci"].T], "call": v["call"]}
                                  for x, v in per.items()}
    crossings = {m: {x: crossing(grid, v["diff"]) for x, v in per.items()} for m, per in diff.items()}
    result = {"reference": ref, "budgets": budgets, "bootstrap": bootstrap, "bootstrap_seed": seed,
              "curves": curves, "differences": differences, "fine": fine, "crossings": crossings}
    result["verdict"] = verdict(result, problems)
    return result


def _s(T: float) -> str:
    return f"{T:.0f} s" if T >= 100 else f"{T:.3g} s"


def _span(grid, i: int, j: int) -> str:
    return f"at {_s(grid[i])}" if i == j else f"from {_s(grid[i])} to {_s(grid[j])}"


def _by(grid, d, se, i: int, j: int) -> str:
    """'by 0.08 at 60 s, 2.3 paired s.e.': the largest difference in the segment i..j and its size in s.e."""
    b = max(range(i, j + 1), key=lambda t: abs(d[t]))
    size = f"{abs(d[b]) / se[b]:.1f} paired s.e." if se[b] else "the same on every problem"
    return f"by {abs(d[b]):.2f} at {_s(grid[b])}, {size}"


def _metric_clause(model: str, ref: str, metric: str, grid, v: dict) -> str:
    """Who wins in `metric`, over which budgets of the fine grid, and by how much."""
    d, se, calls = v["diff"], [s if s is not None else math.nan for s in v["se"]], v["call"]
    segments = []  # [call, first index, last index]: runs of one call, budgets where nobody samples left out
    for i, c in enumerate(calls):
        if c == "empty":
            continue
        if segments and segments[-1][0] == c and segments[-1][2] == i - 1:
            segments[-1][2] = i
        else:
            segments.append([c, i, i])
    if not segments:
        return f"in {metric}, no budget buys either model a sample"
    if len(segments) == 1:
        c, i, j = segments[0]
        every = "at every budget " + _span(grid, i, j) if i != j else _span(grid, i, j)
        if c == "tie":
            b = max(range(i, j + 1), key=lambda t: abs(d[t]))
            return (f"{model} and {ref} tie in {metric} {every} (within {TIE_SE:g} paired s.e.; largest difference "
                    f"{d[b]:+.2f} at {_s(grid[b])})")
        winner, loser = (model, ref) if c == "win" else (ref, model)
        return f"{winner} beats {loser} in {metric} {every} ({_by(grid, d, se, i, j)})"
    parts = []
    for c, i, j in segments:
        if c == "tie":
            parts.append(f"tie {_span(grid, i, j)}")
        else:
            parts.append(f"{model if c == 'win' else ref} wins {_span(grid, i, j)} ({_by(grid, d, se, i, j)})")
    return f"in {metric}, " + ", then ".join(parts)


def verdict(result: dict, problems: int) -> str:
    """One sentence per model against the reference: who wins in each metric at which budgets and by how much
    (a difference within TIE_SE paired s.e. is a tie), where the curves cross, where a curve is capped."""
    ref, grid = result["reference"], result["fine"]["budget_s"]
    fine = result["fine"]["curves"]
    lines = []
    if not result["fine"]["differences"]:
        last = result["curves"][ref][-1]
        return (f"only {ref} was measured, nothing to compare: " + ", ".join(
            f"{x} {last[x]:.2f}" for x in METRICS if x in last) + f" at {_s(last['budget_s'])}")
    for m, per in result["fine"]["differences"].items():
        clauses = [_metric_clause(m, ref, x, grid, v) for x, v in per.items()]
        for x in per:
            c = result["crossings"][m][x]
            if c is None:
                clauses.append(f"the {x} curves do not cross between {_s(grid[0])} and {_s(grid[-1])}")
            else:
                more = f" ({len(c['all'])} crossings in all)" if len(c["all"]) > 1 else ""
                clauses.append(f"the {x} curves cross at {_s(c['budget_s'])} ({m} goes {c['to']}){more}")
        for who in (m, ref):
            if fine[who]["capped_from_s"] is not None:
                clauses.append(f"{who} is capped at {fine[who]['samples']} samples per problem from "
                               f"{_s(fine[who]['capped_from_s'])} (flat beyond: not measured)")
        lines.append("; ".join(clauses) + f" [{problems} problems].")
    return "\n".join(lines)


def budget_table(result: dict, model: str) -> str:
    """Markdown: one row per budget of `model`: k, coverage and majority with their 95 % bootstrap intervals, and
    the difference to the reference ± its paired s.e. (and the call: win, loss, tie)."""
    ref = result.get("reference")
    rows = result["curves"][model]
    metrics = [x for x in METRICS if x in rows[0]]
    diffs = result.get("differences", {}).get(model)
    head = ["budget", "k"] + [f"{x} [95 % CI]" for x in metrics] + [f"{x} − ref ± s.e." for x in metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, r in enumerate(rows):
        k = f"{r['k']} (capped; {r['k_budget']} fit)" if r.get("capped") else f"{r['k']}"
        cells = [_s(r["budget_s"]), k]
        for x in metrics:
            lo, hi = r.get(f"{x}_ci") or (None, None)
            cells.append(f"{r[x]:.3f}" + (f" [{lo:.3f}, {hi:.3f}]" if lo is not None else ""))
        for x in metrics:
            if diffs is None:
                cells.append("reference" if model == ref else "")
                continue
            v = diffs[i][x]
            se = "n/a" if v["se"] is None else f"{v['se']:.3f}"
            cells.append(f"{v['diff']:+.3f} ± {se} ({v['call']})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def budget_markdown(result: dict, title: str = "") -> str:
    """time_budget.md: the verdict first, then a table per model (budget_table)."""
    lines = ["# Accuracy under a wall-clock budget" + (f": {title}" if title else ""), ""]
    lines += [line for v in result["verdict"].split("\n") for line in (v, "")]
    if result.get("budget_unit"):
        u = result["budget_unit"]
        lines += [f"Budgets {', '.join(map(str, result['budgets_given']))}: multiples of {u['model']}'s "
                  f"{u['seconds_per_sample']:.4g} s per sample in this run (= "
                  f"{', '.join(_s(T) for T in result['budgets'])}).", ""]
    for m, meta in result.get("models", {}).items():
        note = f"{meta['seconds_per_sample']:.4g} s/sample at batch {meta['best_batch']} (over " \
               f"{len(meta['batch_times'])} interleaved batches), {meta['samples']} samples per problem"
        if meta.get("capped"):
            note += f" (capped at max_samples: {meta['samples_wanted']} would fill {_s(max(result['budgets']))})"
        if result.get("sittings", 1) > 1:
            per = [meta["batch_sittings"].count(i) for i in range(result["sittings"])]
            note += f"; resumed: batches drawn in {result['sittings']} sittings ({' + '.join(map(str, per))})"
        lines += [f"## {m}" + (" (reference)" if m == result["reference"] else ""), "", note, "",
                  budget_table(result, m), ""]
    lines += ["k: samples per problem within the budget; intervals: 95 % bootstrap over problems; differences: "
              f"paired over problems, this model against the reference (win / loss; a tie within {TIE_SE:g} s.e.)",
              ""]
    return "\n".join(lines)


def plot_time_budget(result: dict, path: str, title: str = "") -> None:
    """Coverage and majority vs seconds per problem (log x) on the fine grid, 95 % bootstrap bands, a dot at each
    recipe budget, dotted where a curve is capped, and a dashed vertical line at each crossing."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    grid = result["fine"]["budget_s"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for n, (m, fc) in enumerate(result["fine"]["curves"].items()):
        color = f"C{n}"
        cut = len(grid) if fc["capped_from_s"] is None else grid.index(fc["capped_from_s"])
        for ax, x in zip(axes, METRICS):
            if x not in fc:
                continue
            lo, hi = zip(*fc[f"{x}_ci"])
            ax.fill_between(grid, lo, hi, step="post", color=color, alpha=0.2, linewidth=0)
            ax.plot(grid[:cut + 1], fc[x][:cut + 1], drawstyle="steps-post", color=color, label=m)
            if cut < len(grid):
                ax.plot(grid[cut:], fc[x][cut:], ":", drawstyle="steps-post", color=color,
                        label=f"{m}: capped at {fc['samples']} samples")
            rows = result["curves"][m]
            ax.plot([r["budget_s"] for r in rows], [r[x] for r in rows], "o", color=color, ms=4)
            c = result["crossings"].get(m, {}).get(x)
            for T in (c or {}).get("all", []):
                ax.axvline(T, color=color, ls="--", lw=0.8)
    axes[0].set(xlabel="seconds per problem", ylabel="coverage (pass@k(T))", xscale="log", title=title or "coverage")
    axes[1].set(xlabel="seconds per problem", ylabel="majority-vote accuracy (maj@k(T))", xscale="log",
                title="majority vote")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
