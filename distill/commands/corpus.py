"""`hybrid-distill corpus`: sample a distillation corpus from the teacher (distill.conversion.corpus)."""
from __future__ import annotations

from .args import add_command, claim, out_flags, positive, unit


def add_parser(subparsers) -> None:
    co = add_command(subparsers, "corpus", help="sample a distillation corpus from the teacher (resumable: --resume)")
    co.add_argument("--teacher", required=True)
    co.add_argument("--prompts", required=True, help="a number (synthetic prompts), a tasks spec (e.g. "
                    "long:train:tokens=100..800: the task's prompts), a .jsonl or a .txt file")
    co.add_argument("--n", type=positive, default=None, help="prompts drawn from a tasks spec (default 256); "
                    "a cap on a file's")
    co.add_argument("--out", required=True)
    co.add_argument("--max-new-tokens", type=positive, default=96)
    co.add_argument("--batch-size", type=positive, default=16)
    co.add_argument("--temperature", type=float, default=0.7)
    co.add_argument("--top-p", type=unit, default=0.95)
    co.add_argument("--seed", type=int, default=0)
    out_flags(co, resume=True)
    co.set_defaults(func=main)


def main(args) -> int:
    from hybrid import load_pretrained

    from ..conversion.corpus import build_corpus, read_prompts

    with claim(args, args.out, [args.teacher, args.prompts], resume=args.resume, file=True):
        teacher, tok = load_pretrained(args.teacher)
        n = build_corpus(teacher, tok, read_prompts(args.prompts, args.n, args.seed), args.out, args.max_new_tokens, args.batch_size,
                         args.temperature, args.top_p, args.seed)
    print(f"{n} records -> {args.out}")
    return 0
