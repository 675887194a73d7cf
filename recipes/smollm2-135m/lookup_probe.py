"""Where a long-reasoning model's tokens go wrong when it is fed the gold trace, and whether its decode engine agrees
with its own full forward.

1. Teacher-forced: each held-out `long` problem's prompt (as evaluation words and encodes it) followed by its gold trace, one
   full forward; the argmax at each trace token is scored by the token's role in its line "i. a op b = raw -> r":
   `operation` (op and operand, looked up in the prompt), `number` (the line number i and the carried a),
   `result` (raw and r, the arithmetic) and `other` (format). A model that has the lookup scores `operation` near 1.
2. Engine vs forward: greedy decoding with hybrid.generation.generate (the engine that every evaluation and the
   time budget use), then one full forward over prompt + generated tokens; the share of generated tokens that equal
   the forward's argmax at the same position. 1.0 up to near-ties; lower means the recurrent decode path and the
   parallel forward disagree (a bug, never a modelling matter).

    python recipes/smollm2-135m/lookup_probe.py runs/long-demo/sft-teacher/final runs/long-demo/distill/final \\
        --tokens 200 800 --n 8 --out runs/long-demo/lookup_probe.json
"""
import argparse
import json
import re

import torch

from distill.data import prompt_ids
from distill.evaluation.tasks import load_tasks, prompt_of
from distill.loading import load_model, pad_and_eos
from hybrid.generation import SamplingParams, generate

LINE = re.compile(r"^(\d+)\. (\d+) ([+*-] \d+) = (-?\d+ -> \d+)$", re.M)
ROLES = ("operation", "number", "result", "other")


def char_roles(trace: str) -> list[str]:
    """The role of every character of a gold trace."""
    roles = ["other"] * len(trace)
    for m in LINE.finditer(trace):
        for group, role in ((1, "number"), (2, "number"), (3, "operation"), (4, "result")):
            for c in range(m.start(group), m.end(group)):
                roles[c] = role
    return roles


def token_roles(tok, trace: str) -> tuple[list[int], list[str]]:
    """The trace's token ids and each token's role (that of its first non-space character)."""
    enc = tok(trace, add_special_tokens=False, return_offsets_mapping=True)
    chars = char_roles(trace)
    roles = []
    for a, b in enc.offset_mapping:
        inner = [c for c in range(a, b) if not trace[c].isspace()]
        roles.append(chars[inner[0]] if inner else "other")
    return enc.input_ids, roles


@torch.no_grad()
def teacher_forced(model, tok, problems) -> dict:
    hits = {r: 0 for r in ROLES}
    counts = {r: 0 for r in ROLES}
    for p in problems:
        p_ids = prompt_ids(tok, prompt_of(p))
        t_ids, roles = token_roles(tok, p.solution)
        ids = torch.tensor([p_ids + t_ids])
        pred = model(input_ids=ids).logits[0, len(p_ids) - 1:-1].argmax(-1).tolist()
        for want, got, role in zip(t_ids, pred, roles):
            counts[role] += 1
            hits[role] += want == got
    return {r: {"accuracy": hits[r] / max(1, counts[r]), "tokens": counts[r]} for r in ROLES}


@torch.no_grad()
def engine_vs_forward(model, tok, problems, max_new_tokens: int, eos_token_id=None) -> dict:
    prompts = [prompt_ids(tok, prompt_of(p)) for p in problems]
    pad, eos = pad_and_eos(model, tok)
    out = generate(model, prompts, SamplingParams(max_new_tokens=max_new_tokens),
                   eos_token_id=eos if eos_token_id is None else eos_token_id, pad_token_id=pad)
    same = total = 0
    for prompt, seq in zip(prompts, out.sequences):
        ids = torch.tensor([prompt + seq])
        pred = model(input_ids=ids).logits[0, len(prompt) - 1:-1].argmax(-1).tolist()
        same += sum(a == b for a, b in zip(seq, pred))
        total += len(seq)
    return {"agree": same / max(1, total), "tokens": total, "decode": out.decode_mode, "linear": out.linear}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+")
    ap.add_argument("--tokens", type=int, nargs="+", default=[200, 800], help="gold trace lengths of the problems")
    ap.add_argument("--n", type=int, default=8, help="held-out problems per length")
    ap.add_argument("--mod", type=int, default=10)
    ap.add_argument("--engine-tokens", type=int, default=256,
                    help="greedy tokens per problem for the engine check (0: skip it)")
    ap.add_argument("--out", help="json file for the results")
    args = ap.parse_args(argv)
    results = {}
    for spec in args.models:
        model, tok, _ = load_model(spec, need_tokenizer=True)
        for t in args.tokens:
            problems = load_tasks(f"long:test:tokens={t}:mod={args.mod}", args.n)
            row = {"teacher_forced": teacher_forced(model, tok, problems)}
            if args.engine_tokens:
                row["engine_vs_forward"] = engine_vs_forward(model, tok, problems, args.engine_tokens)
            results.setdefault(spec, {})[t] = row
            tf = row["teacher_forced"]
            print(spec, t, " ".join(f"{r} {tf[r]['accuracy']:.3f} ({tf[r]['tokens']})" for r in ROLES),
                  json.dumps(row.get("engine_vs_forward", {})), flush=True)
        del model
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
