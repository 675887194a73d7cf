"""`hybrid-distill convert`: teacher -> hybrid by attention-to-Mamba weight transfer."""
from __future__ import annotations

import time

from .args import add_command, claim, int_list, out_flags


def add_parser(subparsers) -> None:
    c = add_command(subparsers, "convert", help="teacher -> hybrid by attention-to-Mamba weight transfer")
    c.add_argument("--teacher", required=True, help="hub id, model dir, .gguf file or alias (smollm2-135m)")
    which = c.add_mutually_exclusive_group(required=True)
    which.add_argument("--attn-layers", type=int_list, help="attention layers to keep, e.g. 1,3,5")
    which.add_argument("--attn-ratio", type=float, help="fraction of layers kept as attention, evenly spaced")
    c.add_argument("--mixer", choices=["mamba2", "mamba"], default="mamba2")
    c.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 (default: float32)")
    c.add_argument("--seed", type=int, default=0, help="seed of the mixers' default-initialised parameters")
    c.add_argument("--out", required=True)
    out_flags(c)
    c.set_defaults(func=main)


def main(args) -> int:
    from hybrid import load_pretrained

    from ..conversion.select import uniform_attention_layers
    from ..conversion.transfer import hybridize

    t0 = time.perf_counter()
    with claim(args, args.out, [args.teacher]):
        teacher, tok = load_pretrained(args.teacher, dtype=args.dtype)
        n = teacher.config.num_hidden_layers
        attn = args.attn_layers if args.attn_layers is not None else uniform_attention_layers(n, args.attn_ratio)
        t1 = time.perf_counter()
        import torch
        torch.manual_seed(args.seed)  # the mixer parts without an attention counterpart are random: repeatable
        student = hybridize(teacher, attn, mixer=args.mixer)
        student.save_pretrained(args.out)
        if tok is not None:
            tok.save_pretrained(args.out)
    t2 = time.perf_counter()
    print(f"converted {args.teacher}: {n} layers, attention kept at {attn}, {args.mixer} elsewhere -> {args.out}")
    print(f"load {t1 - t0:.1f}s, convert+save {t2 - t1:.1f}s")
    return 0
