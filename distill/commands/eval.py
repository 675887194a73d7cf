"""`hybrid-distill eval`: task accuracy (pass@1, pass@k, maj@k), accuracy under time budgets, or a paired
comparison of finished evaluations (distill.evaluation.evaluate)."""
from __future__ import annotations

import json
import os

from ..runfolder import check_out
from .args import add_command, budget, claim, out_flags, positive, unit


def add_parser(subparsers) -> None:
    e = add_command(subparsers, "eval", help="task accuracy (pass@1, pass@k, maj@k), or accuracy under time budgets")
    e.add_argument("mode", nargs="?", choices=["accuracy", "time-budget", "compare"], default="accuracy",
                   help="compare: paired difference in pass@1 of each --runs entry over the first")
    e.add_argument("--runs", nargs="+", help="eval.json files or folders (compare): the base first")
    e.add_argument("--out-json", default=None, help="also write the comparison rows here (compare)")
    e.add_argument("--model", help="model spec (accuracy)")
    e.add_argument("--models", nargs="+", help="model specs (time-budget)")
    e.add_argument("--tasks", default="synthetic:test",
                   help="synthetic:test, long:test[:tokens=N] (long reasoning), recall:test[:distance=N] (recall "
                        "probe), a GSM8K/MATH .jsonl, or a HF id")
    e.add_argument("--n", type=positive, default=None, help="number of problems")
    e.add_argument("--samples", type=positive, default=4,
                   help="samples per problem (accuracy); the least per problem (time-budget, which draws enough to "
                        "fill the largest budget)")
    e.add_argument("--max-samples", type=positive, default=64,
                   help="time-budget: the most samples per problem; a curve beyond it is reported as capped")
    e.add_argument("--bootstrap", type=positive, default=1000,
                   help="time-budget: bootstrap resamples of the problems for the 95 %% intervals")
    e.add_argument("--max-new-tokens", type=positive, default=256)
    e.add_argument("--temperature", type=float, default=0.7)
    e.add_argument("--top-p", type=unit, default=0.95)
    e.add_argument("--batch-size", type=positive, default=16)
    e.add_argument("--batch-candidates", nargs="+", type=positive, default=[4, 16, 32])
    e.add_argument("--budgets", nargs="+", type=budget, default=[1, 3, 10, 30, 100],
                   help="wall-clock seconds per problem, or Nx: N times the first model's seconds per sample "
                        "measured in this run (1x 2x 4x 8x: the times in which it draws 1, 2, 4, 8 samples)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--out", default="runs/eval")
    e.add_argument("--partial", action="store_true",
                   help="time-budget: analyse the interrupted run in --out from its journal (the problems every "
                        "model finished), drawing nothing")
    out_flags(e, resume=True)
    e.set_defaults(func=main)


def main(args) -> int:
    from ..evaluation.evaluate import run_accuracy
    from ..evaluation.tasks import load_tasks

    if args.mode == "compare":
        return _compare(args)
    if args.partial:
        if args.mode != "time-budget":
            raise ValueError("--partial analyses an interrupted time-budget run: use it with eval time-budget")
        from ..evaluation.evaluate import partial_time_budget
        partial_time_budget(args.out, args.tasks if args.tasks != "synthetic:test" else "", bootstrap=args.bootstrap)
        print(f"-> {args.out}/time_budget.partial.json, .png, .md")
        return 0
    if args.mode == "accuracy" and not args.model:
        raise ValueError("eval accuracy needs --model")
    if args.mode == "time-budget" and not args.models:
        raise ValueError("eval time-budget needs --models")
    problems = load_tasks(args.tasks, n=args.n, seed=args.seed)
    kw = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p, seed=args.seed)
    models = [args.model] if args.mode == "accuracy" else args.models
    if args.resume and args.mode != "time-budget":
        raise ValueError(f"--resume continues an interrupted time-budget run; eval {args.mode} has nothing to resume")
    with claim(args, args.out, [m.split("@")[0] for m in models] + [args.tasks.split(":")[0]], resume=args.resume):
        if args.mode == "accuracy":
            result = run_accuracy(args.model, problems, args.samples, args.out, tasks=args.tasks,
                                  batch_size=args.batch_size, **kw)
            print(json.dumps(result, indent=1))
            return 0
        from ..evaluation.evaluate import run_time_budget
        run_time_budget(args.models, problems, args.samples, args.budgets, args.batch_candidates, args.out,
                        title=f"{args.tasks}, {len(problems)} problems", tasks=args.tasks,
                        max_samples=args.max_samples, bootstrap=args.bootstrap, resume=args.resume, **kw)
    print(f"-> {args.out}/time_budget.json, time_budget.png, time_budget.md")
    return 0


def _compare(args) -> int:
    """eval compare: the paired difference of each --runs entry over the first."""
    from ..evaluation.evaluate import compare_table, paired_compare

    if not args.runs or len(args.runs) < 2:
        raise ValueError(f"eval compare needs --runs BASE OTHER [OTHER ...] (eval.json files or folders), got "
                         f"{args.runs}")
    rows = [paired_compare(args.runs[0], other) for other in args.runs[1:]]
    print(compare_table(rows))
    if args.out_json:
        check_out(args.out_json, args.runs, overwrite=True, what="--out-json")
        os.makedirs(os.path.dirname(os.path.abspath(args.out_json)), exist_ok=True)
        with open(args.out_json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0
