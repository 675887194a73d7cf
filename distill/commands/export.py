"""`hybrid-distill export`: a transformers-native checkpoint that vLLM / SGLang serve (hybrid.export)."""
from __future__ import annotations

from .args import add_command, claim, out_flags


def add_parser(subparsers) -> None:
    ex = add_command(subparsers, "export", help="write a transformers-native checkpoint that vLLM / SGLang serve")
    ex.add_argument("--model", required=True)
    ex.add_argument("--to", choices=["granitemoehybrid"], default="granitemoehybrid")
    ex.add_argument("--out", required=True)
    ex.add_argument("--atol", type=float, default=1e-4, help="logit tolerance of the self-check")
    out_flags(ex)
    ex.set_defaults(func=main)


def main(args) -> int:
    from hybrid import load_pretrained
    from hybrid.export import export_granitemoehybrid

    with claim(args, args.out, [args.model]):
        model, tok = load_pretrained(args.model)
        diff = export_granitemoehybrid(model, args.out, tokenizer=tok, atol=args.atol)
    print(f"exported {args.model} -> {args.out} (GraniteMoeHybrid); transformers' logits match ours to {diff:.2e}")
    return 0
