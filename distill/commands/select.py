"""`hybrid-distill select`: rank layers for replacement with one selection strategy (distill.conversion.select)."""
from __future__ import annotations

from .args import add_command, claim, out_flags, param, positive


def add_parser(subparsers) -> None:
    s = add_command(subparsers, "select", help="rank layers for replacement with a selection strategy")
    s.add_argument("--teacher", required=True)
    s.add_argument("--strategy", default="uniform")
    s.add_argument("--mixer", choices=["mamba2", "mamba"], default="mamba2")
    s.add_argument("--data", default=None, help="jsonl/parquet/arrow data (needed by leave-one-out, kl-guided)")
    s.add_argument("--format", default="prompt_completion")
    s.add_argument("--seq-len", type=positive, default=256)
    s.add_argument("--eval-rows", type=positive, default=4)
    s.add_argument("--keep-ratio", type=float, default=0.5)
    s.add_argument("--param", action="append", type=param, help="strategy parameter name=value")
    s.add_argument("--out", required=True)
    out_flags(s)
    s.set_defaults(func=main)


def main(args) -> int:
    from hybrid import load_pretrained

    from ..conversion.select import SelectContext, save_selection, select
    from ..data import DataSpec, build_rows, split_rows

    with claim(args, args.out, [args.teacher, args.data]):
        teacher, tok = load_pretrained(args.teacher)
        teacher.requires_grad_(False)
        rows = train = held = None
        if args.data:
            rows = build_rows(DataSpec(source=args.data, format=args.format), tok, args.seq_len)
            train, held = split_rows(rows, args.eval_rows)
        sel = select(args.strategy, SelectContext(teacher, args.mixer, train, held), **dict(args.param or []))
        save_selection(sel, args.out, keep_ratio=args.keep_ratio)
    print(f"{args.strategy}: replacement order {sel.order}")
    print(f"kept at {args.keep_ratio}: {sel.kept(args.keep_ratio)} -> {args.out}/select.json, select.png")
    return 0
