"""`hybrid-distill corpus`: a distillation corpus sampled from the teacher (sequence-level KD, as the published
systems do with teacher pseudo-labels).

    hybrid-distill corpus --teacher smollm2-135m --prompts 256 --out runs/corpus.jsonl

Batched (left-padded prompts, the teacher's cached generation) and resumable: each batch is appended and flushed
as it finishes, and a rerun continues after the last complete batch. Batch k is sampled with seed + k, so an
interrupted and resumed run writes exactly what an uninterrupted one would.
"""
from __future__ import annotations

import json
import os

import torch
from tqdm.auto import tqdm

from ..data import is_empty, prompt_ids, read_jsonl, record_value, report_skipped, require_file, synthetic_prompts
from ..loading import pad_and_eos


def read_prompts(spec) -> list[str]:
    """An int: that many synthetic prompts. A .jsonl file: its "prompt" fields (checked as distill.data checks
    records; empty prompts are skipped and counted). A .txt file: one per line."""
    if isinstance(spec, int) or (isinstance(spec, str) and spec.isdigit()):
        return synthetic_prompts(int(spec))
    instead = "a number of synthetic prompts, a .jsonl with a 'prompt' field or a .txt with one prompt a line"
    require_file(spec, instead)
    if not os.path.isfile(spec):
        raise ValueError(f"prompts={spec!r} is neither a number nor an existing file; pass {instead}")
    if spec.endswith(".jsonl"):
        prompts = [record_value(r, "prompt", i, spec, (str, type(None))) for i, r in enumerate(read_jsonl(spec))]
        kept = [p for p in prompts if not is_empty(p)]
        report_skipped(len(prompts) - len(kept), "prompt", spec)
        return kept
    with open(spec, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f if line.strip()]


def _existing(path: str) -> int:
    if not os.path.exists(path):
        return 0
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    good = 0
    for line in lines:
        try:
            json.loads(line)
            good += 1
        except json.JSONDecodeError:
            break  # a torn last line from an interrupted write
    if good != len(lines):
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(lines[:good])
    return good


@torch.no_grad()
def build_corpus(teacher, tok, prompts: list[str], out_path: str, max_new_tokens: int = 96, batch_size: int = 16,
                 temperature: float = 0.7, top_p: float = 0.95, seed: int = 0) -> int:
    """Append teacher completions of `prompts` to out_path (jsonl of prompt/completion); returns records written."""
    done = _existing(out_path)
    done -= done % batch_size  # restart the partial batch, so that batch k is always sampled with seed + k
    if done:
        with open(out_path, encoding="utf-8") as f:
            keep = f.readlines()[:done]
        with open(out_path, "w", encoding="utf-8") as f:
            f.writelines(keep)
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    tok.padding_side = "left"  # generation continues every row from its last position
    pad, eos = pad_and_eos(teacher, tok)
    bar = tqdm(total=len(prompts), initial=done, desc="corpus")
    with open(out_path, "a", encoding="utf-8") as f:
        for start in range(done, len(prompts), batch_size):
            batch = prompts[start:start + batch_size]
            enc = tok.pad({"input_ids": [prompt_ids(tok, p) for p in batch]}, return_tensors="pt")
            enc = {k: v.to(teacher.device) for k, v in enc.items()}
            torch.manual_seed(seed + start // batch_size)
            out = teacher.generate(**enc, max_new_tokens=max_new_tokens, do_sample=temperature > 0,
                                   temperature=temperature if temperature > 0 else None,
                                   top_p=top_p if temperature > 0 else None, pad_token_id=pad,
                                   eos_token_id=eos or None)
            for p, row in zip(batch, out[:, enc["input_ids"].shape[1]:]):
                text = tok.decode(row, skip_special_tokens=True)
                f.write(json.dumps({"prompt": p, "completion": text.strip()}) + "\n")
            f.flush()
            bar.update(len(batch))
    bar.close()
    return len(prompts)
