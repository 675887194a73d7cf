"""The `hybrid-distill` command.

    hybrid-distill convert --teacher smollm2-135m --attn-ratio 0.5 --out runs/smollm2-h50
    hybrid-distill generate --model runs/smollm2-h50 --prompt "What is 12 * 7?"
"""
from __future__ import annotations

import argparse
import sys
import time


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--attn-layers={text!r} is not a comma-separated list of integers") from None


def cmd_convert(args) -> int:
    from hybrid import load_pretrained

    from .init import hybridize
    from .select import uniform_attention_layers

    t0 = time.perf_counter()
    teacher, tok = load_pretrained(args.teacher, dtype=args.dtype)
    n = teacher.config.num_hidden_layers
    attn = args.attn_layers if args.attn_layers is not None else uniform_attention_layers(n, args.attn_ratio)
    t1 = time.perf_counter()
    student = hybridize(teacher, attn, mixer=args.mixer)
    student.save_pretrained(args.out)
    if tok is not None:
        tok.save_pretrained(args.out)
    t2 = time.perf_counter()
    print(f"converted {args.teacher}: {n} layers, attention kept at {attn}, {args.mixer} elsewhere -> {args.out}")
    print(f"load {t1 - t0:.1f}s, convert+save {t2 - t1:.1f}s")
    return 0


def cmd_generate(args) -> int:
    import torch
    from transformers import TextStreamer

    from hybrid import load_pretrained

    model, tok = load_pretrained(args.model, dtype=args.dtype)
    if tok is None:
        raise SystemExit(f"{args.model} has no tokenizer to encode the prompt with")
    if tok.chat_template and not args.raw:
        enc = tok.apply_chat_template([{"role": "user", "content": args.prompt}], add_generation_prompt=True,
                                      return_tensors="pt", return_dict=True)
    else:
        enc = tok(args.prompt, return_tensors="pt")
    torch.manual_seed(args.seed)
    sampling = dict(do_sample=True, temperature=args.temperature, top_p=args.top_p) if args.temperature > 0 else \
        dict(do_sample=False)
    model.generate(**enc, max_new_tokens=args.max_new_tokens, streamer=TextStreamer(tok, skip_prompt=True),
                   pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id, **sampling)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hybrid-distill", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("convert", help="teacher -> hybrid by attention-to-Mamba weight transfer")
    c.add_argument("--teacher", required=True, help="hub id, model dir, .gguf file or alias (smollm2-135m)")
    which = c.add_mutually_exclusive_group(required=True)
    which.add_argument("--attn-layers", type=_int_list, help="attention layers to keep, e.g. 1,3,5")
    which.add_argument("--attn-ratio", type=float, help="fraction of layers kept as attention, evenly spaced")
    c.add_argument("--mixer", choices=["mamba2", "mamba"], default="mamba2")
    c.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 (default: float32)")
    c.add_argument("--out", required=True)
    c.set_defaults(func=cmd_convert)

    g = sub.add_parser("generate", help="stream a completion for one prompt")
    g.add_argument("--model", required=True)
    g.add_argument("--prompt", required=True)
    g.add_argument("--max-new-tokens", type=int, default=128)
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--raw", action="store_true", help="do not apply the chat template")
    g.add_argument("--dtype", default=None)
    g.set_defaults(func=cmd_generate)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as err:
        print(f"hybrid-distill {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
