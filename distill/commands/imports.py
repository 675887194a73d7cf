"""`hybrid-distill import`: a MambaInLlama / M1 checkpoint -> this project's self-describing format
(hybrid.released). The module is not called import.py: `import` is a Python keyword."""
from __future__ import annotations

from .args import add_command, claim, need_file, out_flags


def add_parser(subparsers) -> None:
    im = add_command(subparsers, "import", help="MambaInLlama / M1 checkpoint -> this project's self-describing format")
    im.add_argument("--from", dest="src", required=True)
    im.add_argument("--out", required=True)
    out_flags(im)
    im.set_defaults(func=main)


def main(args) -> int:
    from hybrid.checkpoints import tokenizer_or_none
    from hybrid.released import load_released

    with claim(args, args.out, [args.src]):
        model, variant = load_released(need_file(args.src, "--from"))
        model.save_pretrained(args.out)
        tok = tokenizer_or_none(args.src)
        if tok is not None:
            tok.save_pretrained(args.out)
    print(f"imported {variant} checkpoint {args.src} -> {args.out} (loads with no mamba_config.json)")
    return 0
