"""`hybrid-distill generate`: stream a completion for one prompt (hybrid.generation.stream_text)."""
from __future__ import annotations

import sys

from .args import add_command, positive, unit


def add_parser(subparsers) -> None:
    g = add_command(subparsers, "generate", help="stream a completion for one prompt")
    g.add_argument("--model", required=True)
    g.add_argument("--prompt", required=True)
    g.add_argument("--max-new-tokens", type=positive, default=128)
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    g.add_argument("--top-p", type=unit, default=1.0)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--raw", action="store_true", help="do not apply the chat template")
    g.add_argument("--dtype", default=None)
    g.set_defaults(func=main)


def main(args) -> int:
    import torch

    from hybrid.generation import SamplingParams, stream_text

    from ..data import prompt_ids
    from ..loading import load_model, pad_and_eos

    model, tok, _ = load_model(args.model, need_tokenizer=True, dtype=args.dtype)
    ids = prompt_ids(tok, args.prompt, chat=False if args.raw else None)
    torch.manual_seed(args.seed)
    params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                            top_p=args.top_p if args.temperature > 0 else 1.0, seed=args.seed)
    pad, eos = pad_and_eos(model, tok)

    def write(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    stream_text(model, tok, ids, params, write, eos_token_id=eos, pad_token_id=pad)
    sys.stdout.write("\n")
    return 0
