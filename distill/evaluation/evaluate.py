"""Accuracy of sampled answers: pass@1, unbiased pass@k, majority vote, and accuracy under a time budget.

pass@k is the unbiased estimator of Chen et al. 2021 (eq. 1): with n samples of which c are correct,
pass@k = 1 - C(n - c, k) / C(n, k), computed as a stable product.

Majority vote over k samples: answers are grouped by mathematical equivalence (math-verify), malformed or
missing answers do not vote, the largest group wins, and a tie goes to the group whose first sample came first
(deterministic). No valid answer at all counts as wrong.

Answer checks are bounded in time (distill.evaluation.tasks.is_correct): one that runs past the limit counts as wrong, and
`score` reports how many did (`check_timeouts`, written to eval.json), so a low score from a stalled checker shows.

Time budget ("Thinking Slow, Fast"): a model that needs s seconds per sample draws k(T) = floor(T / s) samples per
problem in T seconds; coverage(T) = pass@k(T), majority(T) = maj@k(T). run_time_budget samples and times (each
model at its best batch size, all models interleaved batch by batch in one run); the curves, their intervals, the
comparison to the reference and the verdict are computed from plain tables in distill.evaluation.budget.
"""
from __future__ import annotations

import math

from .tasks import answer_text, check_stats, extract_answer, is_correct, prompt_of


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


def majority_by_prefix(answers: list[str | None], same=None) -> list[int | None]:
    """For k = 1..n, the index of the sample that carries the majority answer of answers[:k]: the first sample of
    the winning group (None while no sample has an answer). Each answer joins the first group whose representative
    it equals, so a prefix is grouped exactly as on its own and answers[w[k - 1]] == majority_answer(answers[:k]);
    one pass gives every k. same(a, b): the equivalence (default: mathematical, via math-verify)."""
    same = same or _same
    groups: list[list[int]] = []  # [index of the first sample, count]
    best, out = None, []
    for i, a in enumerate(answers):
        if a is not None:
            for g in groups:
                if same(a, answers[g[0]]):
                    g[1] += 1
                    break
            else:
                g = [i, 1]
                groups.append(g)
            if best is None or (g[1], -g[0]) > (best[1], -best[0]):  # only g changed: it wins or best stays
                best = g
        out.append(None if best is None else best[0])
    return out


def majority_answer(answers: list[str | None]) -> str | None:
    """The most frequent answer (equivalence classes), ties to the earliest; None if no sample has an answer."""
    winners = majority_by_prefix(answers)
    return answers[winners[-1]] if winners and winners[-1] is not None else None


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
    completions = [[answer_text(p.problem, c) for c in comps] for p, comps in zip(problems, completions)]
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
            out[str(p["id"])] = sum(is_correct(answer_text(p["problem"], c), str(p["answer"])) for c in comps) \
                / len(comps)
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
    retention, retention_ci = _retention([a[i] for i in shared], [b[i] for i in shared])
    return {"base": a_run["path"], "other": b_run["path"], "problems": n, "retention": retention,
            "retention_ci95": retention_ci,
            "only_base": len(a) - n, "only_other": len(b) - n,
            "base_pass@1": sum(a[i] for i in shared) / n, "other_pass@1": sum(b[i] for i in shared) / n,
            "diff": mean, "diff_se": se, "ci95": [mean - 1.96 * se, mean + 1.96 * se], "z": z,
            "p_normal": math.erfc(abs(z) / math.sqrt(2)), "better": wins, "worse": losses,
            "p_sign": _binom_two_sided(wins, losses)}


def _retention(base: list[float], other: list[float], resamples: int = 2000, seed: int = 0):
    """other's pass@1 over base's on the same problems (how much of base's accuracy other keeps), and its 95 %
    percentile bootstrap interval, problems resampled in pairs. None where base solves nothing (in a resample:
    that resample is dropped; no interval if more than 5 % are)."""
    import random
    if sum(base) == 0:
        return None, None
    ratio = sum(other) / sum(base)
    rng, n, draws = random.Random(seed), len(base), []
    for _ in range(resamples):
        idx = [rng.randrange(n) for _ in range(n)]
        den = sum(base[i] for i in idx)
        if den > 0:
            draws.append(sum(other[i] for i in idx) / den)
    if len(draws) < 0.95 * resamples:
        return ratio, None
    draws.sort()
    return ratio, [draws[int(0.025 * (len(draws) - 1))], draws[int(0.975 * (len(draws) - 1))]]


def compare_table(rows: list[dict]) -> str:
    lines = ["| base | other | problems | base pass@1 | other pass@1 | diff ± s.e. | 95 % CI | z | p | better/worse "
             "| sign p | retention [95 % CI] |", "|" + "---|" * 12]
    for r in rows:
        ret, ci = r.get("retention"), r.get("retention_ci95")
        kept = "n/a" if ret is None else f"{ret:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")
        lines.append(f"| {r['base']} | {r['other']} | {r['problems']} | {r['base_pass@1']:.3f} | "
                     f"{r['other_pass@1']:.3f} | {r['diff']:+.3f} ± {r['diff_se']:.3f} | "
                     f"[{r['ci95'][0]:+.3f}, {r['ci95'][1]:+.3f}] | {r['z']:.2f} | {r['p_normal']:.3g} | "
                     f"{r['better']}/{r['worse']} | {r['p_sign']:.3g} | {kept} |")
    return "\n".join(lines)


def time_budget_curves(seconds_per_sample: dict[str, float], correct: dict[str, list[list[bool]]],
                       majority: dict[str, list[list[str | None]]] | None, golds: list[str],
                       budgets: list[float], bootstrap: int = 1000, seed: int = 0) -> dict:
    """Per model and budget T: k(T) samples per problem, coverage pass@k(T) and majority accuracy maj@k(T), each
    with its 95 % bootstrap interval over problems (distill.evaluation.budget.analyse has the rest: paired
    differences, crossings, verdict).

    correct[model][p] is the per-sample correctness of problem p (samples in the order drawn); majority[model][p]
    the extracted answers in the same order, judged against golds[p] (None: no majority columns). k(T) is capped at
    the samples drawn (`capped`), and a budget too small for one sample scores 0.
    """
    from .budget import AnswerJudge, analyse, coverage_by_k, majority_by_k
    judge = AnswerJudge()
    tables = {}
    for m in seconds_per_sample:
        tables[m] = {"coverage": [coverage_by_k(r) for r in correct[m]]}
        if majority is not None:
            tables[m]["majority"] = [majority_by_k(a, lambda x, g=g: judge.answer_correct(x, g), judge.same)
                                     for a, g in zip(majority[m], golds)]
    return analyse(seconds_per_sample, tables, budgets, grid_points=2, bootstrap=bootstrap, seed=seed)["curves"]


class EngineSampler:
    """One model's sampler over a fixed list of problems: sampler(indices, seed) -> one completion per problem index,
    drawn as one batch through the decode engine (hybrid.generation.generate) with that seed. `tokens` counts the
    tokens generated so far. It returns decoded text, so only once the device has finished: a timer around the
    call measures the work; `last_compile_seconds` is the part of the last call that compiled a decode step (once
    per model and shape: hybrid.generation "compiled"), which the timers here leave out of a model's seconds."""

    def __init__(self, model, tok, problems, max_new_tokens: int = 256, temperature: float = 0.7,
                 top_p: float = 0.95):
        from ..data import prompt_ids
        from ..loading import pad_and_eos

        self.model, self.tok = model, tok
        self.prompts = [prompt_ids(tok, prompt_of(p)) for p in problems]
        self.pad, self.eos = pad_and_eos(model, tok)
        self.params = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)
        self.tokens = 0
        self.last_compile_seconds = 0.0

    def __call__(self, indices: list[int], seed: int) -> list[str]:
        from hybrid.generation import SamplingParams, generate  # start-up time: the model side loads on use

        res = generate(self.model, [self.prompts[i] for i in indices], SamplingParams(**self.params, seed=seed),
                       eos_token_id=self.eos, pad_token_id=self.pad)
        self.tokens += res.generated_tokens
        self.last_compile_seconds = res.compile_seconds
        return [self.tok.decode(seq, skip_special_tokens=True) for seq in res.sequences]


def _compile_seconds(sampler) -> float:
    """Seconds of the sampler's last call spent compiling (its `last_compile_seconds`; 0 for a plain function):
    a one-time cost per model and shape, not a cost per sample."""
    return float(getattr(sampler, "last_compile_seconds", 0.0) or 0.0)


def interleaved_draws(samplers: dict, samples: dict[str, int], batch_sizes: dict[str, int], problems: int,
                      seed: int = 0, clock=None, done=None, on_batch=None):
    """Draw samples[m] completions per problem from every model, batch by batch in turn: A's batch 1, B's batch 1,
    A's batch 2, ...; a model whose draws are done drops out. Interleaving spreads whatever drifts during the run
    (clocks, heat, other load on the machine) over all models alike, so their seconds per sample compare.

    samplers[m](indices, seed) -> one completion per problem index. Model m's jobs are every problem samples[m]
    times, in problem order, cut into batches of batch_sizes[m]; its batch j is drawn with seed + j (reproducible).
    Each call is timed with `clock` (default time.perf_counter), less the seconds it spent compiling
    (`_compile_seconds`). Returns (completions[m][problem] -> list,
    batch_seconds[m] -> list, order: the model of each batch in the order drawn).

    Resuming: done[m][j] = (completions, seconds) of batches drawn before (DrawJournal) are taken as they are, not
    drawn again; on_batch(m, j, indices, completions, seconds) is called after every batch drawn now."""
    import time

    from tqdm.auto import tqdm
    clock = clock or time.perf_counter
    jobs = {m: [i for i in range(problems) for _ in range(samples[m])] for m in samplers}
    out = {m: [[] for _ in range(problems)] for m in samplers}
    seconds: dict[str, list[float]] = {m: [] for m in samplers}
    order = []
    total = sum(map(len, jobs.values()))
    bar = tqdm(total=total, desc="sampling", unit="sample", disable=total <= max(batch_sizes.values()))
    done = done or {}
    j = 0
    while active := [m for m in samplers if j * batch_sizes[m] < len(jobs[m])]:
        for m in active:
            chunk = jobs[m][j * batch_sizes[m]:(j + 1) * batch_sizes[m]]
            if j in done.get(m, {}):
                comps, secs = done[m][j]
            else:
                t0 = clock()
                comps = samplers[m](chunk, seed + j)
                secs = clock() - t0 - _compile_seconds(samplers[m])
                if on_batch:
                    on_batch(m, j, chunk, comps, secs)
            seconds[m].append(secs)
            assert len(comps) == len(chunk), f"{m}: {len(comps)} completions for {len(chunk)} prompts"
            for i, c in zip(chunk, comps):
                out[m][i].append(c)
            order.append(m)
            bar.update(len(chunk))
        j += 1
    bar.close()
    return out, seconds, order


def sample_completions(model, tok, problems, k: int, max_new_tokens: int = 256, temperature: float = 0.7,
                       top_p: float = 0.95, batch_size: int = 16, seed: int = 0):
    """k samples per problem through the decode engine. Returns (completions [problem][sample], seconds (the sum of
    the batch times), generated tokens). Batch j is sampled with seed + j, so results are reproducible."""
    sampler = EngineSampler(model, tok, problems, max_new_tokens, temperature, top_p)
    out, seconds, _ = interleaved_draws({"model": sampler}, {"model": k}, {"model": batch_size}, len(problems), seed)
    return out["model"], sum(seconds["model"]), sampler.tokens


def best_batch_size(sampler, problems: int, candidates=(1, 4, 16, 32), seed: int = 0, clock=None) -> dict:
    """Seconds per sample at each candidate batch size, from one timed batch of real problems each (problems 0, 1,
    ... in turn, so the prompts and answers have the task's lengths), and the fastest. sampler(indices, seed) as in
    interleaved_draws."""
    import time
    clock = clock or time.perf_counter
    per = {}
    for b in candidates:
        t0 = clock()
        sampler([i % problems for i in range(b)], seed)
        per[b] = (clock() - t0 - _compile_seconds(sampler)) / b
    return {"seconds_per_sample_by_batch": per, "best_batch": min(per, key=per.get)}


class DrawJournal:
    """The draws of one time-budget run, kept as they happen in out/time_budget.draws.jsonl, one JSON line each: the
    run's settings first, then each model's best-batch measurement, then every timed batch (model, batch index,
    problem indices, completions, seconds, and the sitting it was drawn in). An interrupted run resumes from its last
    whole line: measurements and batches already on file are not redone. A resumed run's timings span sittings,
    which the result records (`sittings`); batches stay interleaved within each sitting."""

    NAME = "time_budget.draws.jsonl"

    def __init__(self, out: str, settings: dict, resume: bool):
        import json
        import os
        self.path = os.path.join(out, self.NAME)
        self.meta: dict[str, dict] = {}
        self.batches: dict[str, dict[int, tuple[list[str], float]]] = {}
        self.sitting_of: dict[tuple[str, int], int] = {}
        self.sitting = 0
        records = self.read(self.path) if resume and os.path.isfile(self.path) else []
        if records:
            stored = records[0].get("settings") or {}
            same = {**stored, "specs": [_spec_key(m) for m in stored.get("specs", [])]}
            now = {**settings, "specs": [_spec_key(m) for m in settings["specs"]]}
            if same != now:
                diff = sorted(k for k in set(now) | set(same) if same.get(k) != now.get(k))
                raise ValueError(f"{self.path} holds draws made with other settings ({', '.join(diff)} differ); "
                                 f"move it away to start over")
            # the same models named another way (a relative path then, an absolute one now): the records take
            # today's names, which are the labels the run keys them by
            rename = dict(zip(stored["specs"], settings["specs"]))
            records = [{"settings": settings}] + [{**r, "model": rename.get(r["model"], r["model"])}
                                                  for r in records[1:]]
            for r in records[1:]:
                if "meta" in r:
                    self.meta[r["model"]] = r["meta"]
                else:
                    self.batches.setdefault(r["model"], {})[r["batch"]] = (r["completions"], r["seconds"])
                    self.sitting_of[r["model"], r["batch"]] = r["sitting"]
            self.sitting = 1 + max(self.sitting_of.values(), default=-1)
        self._f = open(self.path + ".tmp", "w")
        for r in records or [{"settings": settings}]:  # rewritten whole: a torn last line is dropped
            self._f.write(json.dumps(r) + "\n")
        self._f.flush()
        os.replace(self.path + ".tmp", self.path)

    @staticmethod
    def read(path: str) -> list[dict]:
        """The journal's records up to its last whole line (a torn last line is the one being written at a stop)."""
        import json
        records = []
        with open(path) as f:
            for line in f:
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    break
        return records

    def _write(self, record: dict) -> None:
        import json
        import os
        self._f.write(json.dumps(record) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def record_meta(self, model: str, meta: dict) -> None:
        self.meta[model] = meta
        self._write({"model": model, "meta": meta})

    def record_batch(self, model: str, j: int, indices: list[int], completions: list[str], seconds: float) -> None:
        self.batches.setdefault(model, {})[j] = (completions, seconds)
        self.sitting_of[model, j] = self.sitting
        self._write({"model": model, "batch": j, "indices": list(indices), "completions": completions,
                     "seconds": seconds, "sitting": self.sitting})

    def close(self) -> None:
        self._f.close()


def _spec_key(spec: str) -> str:
    """A model spec (`path[@attn=R]`, a hub id, an alias) as a resumed run compares it: a local path made absolute,
    so `runs/x` and `/home/me/runs/x` name the same model; anything else as given."""
    import os
    head, at, tail = spec.partition("@")
    return (os.path.realpath(head) if os.path.exists(head) else head) + at + tail


def _engine_loader(problems, **sampling):
    """spec -> (label, EngineSampler over `problems`): the default model loader of run_time_budget."""
    def load(spec):
        from ..loading import load_model  # start-up time: the model side loads on use
        model, tok, label = load_model(spec, need_tokenizer=True)
        return label, EngineSampler(model, tok, problems, **sampling)
    return load


def run_time_budget(specs, problems, samples: int, budgets, batch_candidates, out: str, title: str = "",
                    tasks: str = "", *, max_samples: int = 64, bootstrap: int = 1000, grid_points: int = 64,
                    loader=None, clock=None, resume: bool = False, **sampling) -> dict:
    """Accuracy of each model within wall-clock budgets per problem, against the first spec (the reference, e.g.
    the teacher).

    1. Per model, after one untimed warm-up batch: its best batch size on the task's real prompts (best_batch_size)
       and its seconds per sample s there; it will draw k = ceil(max(budgets) / s) samples per problem, enough to
       fill the largest budget, at least `samples` and at most `max_samples` (`capped` where the cap bites).
    2. All models sample in one interleaved run (interleaved_draws), every batch timed: s = the sum of its batch
       times / its samples, the seconds per sample the curves use.
    3. distill.evaluation.budget: coverage and majority vs seconds at the budgets and on a fine grid, bootstrap
       intervals over problems (`bootstrap` resamples), paired differences to the reference, crossings, verdict.
    Every measurement and batch goes to out/time_budget.draws.jsonl as it is made (DrawJournal); with `resume` a
    rerun with the same settings continues from it instead of starting over (on a finished journal it draws nothing
    and only re-analyses).
    Writes out/time_budget.{json,png,md} and out/samples/<i>.json (model i's draws in eval.json's form, the reference
    first, for `eval compare`), prints the verdict, returns the JSON's content (`check_timeouts`: the
    answer checks that ran past the time limit). sampling: max_new_tokens, temperature, top_p, seed.
    loader(spec) -> (label, sampler(indices, seed) -> completions) replaces loading models, clock the timer
    (tests)."""
    import json
    import os

    from .budget import AnswerJudge, analyse, budget_markdown, parse_budget, plot_time_budget, resolve_budgets
    if not specs:
        raise ValueError("run_time_budget needs at least one model spec")
    if not problems:
        raise ValueError("run_time_budget needs at least one problem")
    if not 1 <= samples <= max_samples:
        raise ValueError(f"need 1 <= samples <= max_samples, got samples={samples} max_samples={max_samples}")
    if not budgets:
        raise ValueError(f"budgets must be positive seconds or 'Nx', got {budgets}")
    given = [parse_budget(T) for T in budgets]  # "Nx": N x the reference's seconds per sample, fixed after the draws
    if not batch_candidates or min(batch_candidates) < 1:
        raise ValueError(f"batch_candidates must be batch sizes >= 1, got {batch_candidates}")
    seed = sampling.pop("seed", 0)
    loader = loader or _engine_loader(problems, **sampling)
    os.makedirs(out, exist_ok=True)
    before = check_stats()["timeouts"]
    settings = {"specs": list(specs), "problems": [[p.id, p.answer] for p in problems], "samples": samples,
                "max_samples": max_samples, "budgets": given,
                "batch_candidates": list(batch_candidates), "seed": seed, "sampling": sampling}
    journal = DrawJournal(out, settings, resume)
    samplers, best, k, meta = {}, {}, {}, {}
    for spec in specs:
        label, sampler = loader(spec)
        if label in samplers:
            raise ValueError(f"model {label!r} given twice in {specs}")
        samplers[label] = sampler
        if label in journal.meta:
            meta[label] = journal.meta[label]
            k[label], best[label] = meta[label]["samples"], meta[label]
            on_file = len(journal.batches.get(label, {}))
            left = math.ceil(len(problems) * k[label] / meta[label]["best_batch"]) - on_file
            print(f"{label}: resumed, {on_file} batches on file, {left} to draw")
            if left > 0:  # a model whose draws are all on file is not run at all (a finished run re-analysed)
                sampler([0], seed)  # warm-up, untimed
            continue
        sampler([0], seed)  # warm-up, untimed: lazy initialisation is no batch size's cost
        best[label] = best_batch_size(sampler, len(problems), batch_candidates, seed=seed, clock=clock)
        ref = best[next(iter(samplers))]  # the first model: measured before any other
        # relative budgets planned on the reference's best-batch measurement; the curves use its interleaved one
        top = max(resolve_budgets(given, ref["seconds_per_sample_by_batch"][ref["best_batch"]]))
        wanted = math.ceil(top / best[label]["seconds_per_sample_by_batch"][best[label]["best_batch"]] - 1e-9)
        k[label] = min(max(samples, wanted), max_samples)
        meta[label] = {**best[label], "samples_wanted": wanted, "samples": k[label], "capped": wanted > max_samples}
        journal.record_meta(label, meta[label])
        print(f"{label}: best batch {best[label]['best_batch']}, drawing {k[label]} samples per problem"
              + (f" (capped: {wanted} would fill {top:g} s)" if wanted > max_samples else ""))
    tokens0 = {m: getattr(s, "tokens", None) for m, s in samplers.items()}
    try:
        comps, seconds, order = interleaved_draws(samplers, k, {m: b["best_batch"] for m, b in best.items()},
                                                  len(problems), seed=seed, clock=clock, done=journal.batches,
                                                  on_batch=journal.record_batch)
    finally:
        journal.close()
    judge, golds = AnswerJudge(), [p.answer for p in problems]
    spp, tables = {}, {}
    for m in samplers:
        tables[m], correct = _budget_tables(judge, comps[m], golds)
        drawn = len(problems) * k[m]
        spp[m] = sum(seconds[m]) / drawn
        meta[m].update({"batch_times": seconds[m], "seconds": sum(seconds[m]), "seconds_per_sample": spp[m],
                        "pass@1": sum(map(sum, correct)) / drawn,
                        "batch_sittings": [journal.sitting_of[m, j] for j in range(len(seconds[m]))]})
        if tokens0[m] is not None and not journal.sitting:  # a resumed run counts only this sitting's tokens
            meta[m]["tokens"] = samplers[m].tokens - tokens0[m]
        print(f"{m}: {spp[m]:.4g} s/sample over {len(seconds[m])} interleaved batches, pass@1 "
              f"{meta[m]['pass@1']:.3f}")
    # every model's draws as an eval.json (problems + completions), so `eval compare` pairs them like evaluations
    os.makedirs(os.path.join(out, "samples"), exist_ok=True)
    for i, m in enumerate(samplers):
        path = os.path.join(out, "samples", f"{i}.json")
        with open(path + ".tmp", "w") as f:
            json.dump({"model": m, "tasks": tasks, "samples": k[m], "source": "time-budget draws",
                       "completions": comps[m], "problems": [p.to_dict() for p in problems]}, f)
        os.replace(path + ".tmp", path)
    seconds_budgets, relative = _seconds_budgets(given, next(iter(samplers)), spp)
    result = {"tasks": tasks, "problems": len(problems), "samples": samples, "max_samples": max_samples,
              "models": meta, "batch_order": order,
              "sittings": 1 + max(journal.sitting_of.values(), default=journal.sitting), **relative,
              **analyse(spp, tables, seconds_budgets, grid_points=grid_points, bootstrap=bootstrap, seed=seed),
              "check_timeouts": check_stats()["timeouts"] - before}
    with open(os.path.join(out, "time_budget.json"), "w") as f:
        json.dump(result, f, indent=1)
    plot_time_budget(result, os.path.join(out, "time_budget.png"), title=title)
    with open(os.path.join(out, "time_budget.md"), "w") as f:
        f.write(budget_markdown(result, title))
    print(result["verdict"])
    return result


def _budget_tables(judge, comps: list[list[str]], golds: list[str]) -> tuple[dict, list[list[bool]]]:
    """One model's coverage and majority tables (distill.evaluation.budget) over its completions per problem, and
    the correctness of each completion."""
    from .budget import coverage_by_k, majority_by_k
    correct = [[judge.correct(c, g) for c in cs] for cs, g in zip(comps, golds)]
    answers = [[extract_answer(c) for c in cs] for cs in comps]
    return {"coverage": [coverage_by_k(r) for r in correct],
            "majority": [majority_by_k(a, lambda x, g=g: judge.answer_correct(x, g), judge.same)
                         for a, g in zip(answers, golds)]}, correct


def _seconds_budgets(given: list, ref: str, spp: dict[str, float]) -> tuple[list[float], dict]:
    """The budgets in seconds ("Nx": the time in which the reference drew N samples, by its interleaved seconds per
    sample) and, where any was relative, the result fields that say how they were read."""
    from .budget import resolve_budgets
    relative = {"budgets_given": given, "budget_unit": {"model": ref, "seconds_per_sample": spp[ref]}} \
        if any(isinstance(T, str) for T in given) else {}
    return resolve_budgets(given, spp[ref]), relative


def partial_time_budget(out: str, title: str = "", *, bootstrap: int = 1000, grid_points: int = 64) -> dict:
    """The time-budget analysis of an interrupted run, from its journal alone (no model is loaded, nothing drawn):
    the curves over the problems every model has finished (all its samples drawn), seconds per sample over every
    batch drawn so far. Problems are drawn in order, so the finished ones are the first ones. Writes
    out/time_budget.partial.{json,md,png}; the result's `partial` says how many of the run's problems it covers."""
    import json
    import os

    from .budget import AnswerJudge, analyse, budget_markdown, plot_time_budget
    path = os.path.join(out, DrawJournal.NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no time-budget journal at {path!r} (written by `hybrid-distill eval time-budget`)")
    records = DrawJournal.read(path)
    settings = records[0]["settings"]
    meta = {r["model"]: dict(r["meta"]) for r in records[1:] if "meta" in r}
    models = [m for m in settings["specs"] if m in meta]
    if not models or models[0] != settings["specs"][0]:
        raise ValueError(f"{path}: the reference {settings['specs'][0]!r} has no measurement yet; nothing to analyse")
    n_problems = len(settings["problems"])
    comps = {m: [[] for _ in range(n_problems)] for m in models}
    seconds = {m: [] for m in models}
    for r in records[1:]:
        if "meta" in r or r["model"] not in comps:
            continue
        for i, c in zip(r["indices"], r["completions"]):
            comps[r["model"]][i].append(c)
        seconds[r["model"]].append(r["seconds"])
    done = [i for i in range(n_problems) if all(len(comps[m][i]) >= meta[m]["samples"] for m in models)]
    if not done or not all(seconds[m] for m in models):
        raise ValueError(f"{path}: no problem has all its samples from every model yet; nothing to analyse")
    judge, golds = AnswerJudge(), [str(settings["problems"][i][1]) for i in done]
    spp, tables = {}, {}
    for m in models:
        tables[m], correct = _budget_tables(judge, [comps[m][i] for i in done], golds)
        drawn = sum(len(cs) for cs in comps[m])
        spp[m] = sum(seconds[m]) / drawn
        meta[m].update({"batch_times": seconds[m], "seconds": sum(seconds[m]), "seconds_per_sample": spp[m],
                        "pass@1": sum(map(sum, correct)) / sum(map(len, correct))})
    seconds_budgets, relative = _seconds_budgets(settings["budgets"], models[0], spp)
    result = {"tasks": title, "problems": len(done), "samples": settings["samples"], "models": meta,
              "partial": {"problems_done": len(done), "problems": n_problems,
                          "ids": [settings["problems"][i][0] for i in done]}, **relative,
              **analyse(spp, tables, seconds_budgets, grid_points=grid_points, bootstrap=bootstrap,
                        seed=settings["seed"])}
    with open(os.path.join(out, "time_budget.partial.json"), "w") as f:
        json.dump(result, f, indent=1)
    head = f"{title}, " if title else ""
    title = f"{head}partial: the first {len(done)} of {n_problems} problems (the run was interrupted)"
    plot_time_budget(result, os.path.join(out, "time_budget.partial.png"), title=title)
    with open(os.path.join(out, "time_budget.partial.md"), "w") as f:
        f.write(budget_markdown(result, title))
    print(result["verdict"])
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
