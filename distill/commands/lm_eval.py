"""`hybrid-distill lm-eval`: lm-evaluation-harness tasks on our model object (distill.evaluation.lm_eval_bridge)."""
from __future__ import annotations

from .args import add_command, claim, out_flags, positive


def add_parser(subparsers) -> None:
    le = add_command(subparsers, "lm-eval", help="run lm-evaluation-harness tasks on a model (optional extra: eval)")
    le.add_argument("--model", required=True, help="model spec (hybrid dir, HF dir / id, .gguf, smollm2-135m)")
    le.add_argument("--tasks", required=True, help="comma-separated lm-eval task names")
    le.add_argument("--include-path", default=None, help="folder with extra task YAMLs (local data)")
    le.add_argument("--limit", type=float, default=None, help="examples per task (or fraction if < 1)")
    le.add_argument("--num-fewshot", type=int, default=None)
    le.add_argument("--batch-size", type=positive, default=8)
    le.add_argument("--chat", action="store_true", help="apply the tokenizer's chat template")
    le.add_argument("--seed", type=int, default=0)
    le.add_argument("--out", default="runs/lm-eval")
    out_flags(le)
    le.set_defaults(func=main)


def main(args) -> int:
    from ..evaluation.lm_eval_bridge import run_lm_eval, save_results
    from ..loading import load_model

    with claim(args, args.out, [args.model, args.include_path]):
        model, tok, label = load_model(args.model, need_tokenizer=True)
        results = run_lm_eval(model, tok, [t for t in args.tasks.split(",") if t], include_path=args.include_path,
                              limit=args.limit, num_fewshot=args.num_fewshot, batch_size=args.batch_size,
                              apply_chat_template=args.chat, seed=args.seed)
    for task, metrics in results.items():
        shown = ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if isinstance(v, float))
        print(f"{task}: {shown}")
    print(f"-> {save_results(results, args.out, label)}")
    return 0
