"""`hybrid-distill corpus`: a distillation corpus sampled from the teacher (sequence-level KD, as the published
systems do with teacher pseudo-labels).

    hybrid-distill corpus --teacher smollm2-135m --prompts 256 --out runs/corpus.jsonl

Batched (left-padded prompts, the teacher's cached generation) and resumable: each batch is appended and flushed
as it finishes, and a rerun continues after the last complete batch. Batch k is sampled with seed + k, so an
interrupted and resumed run writes exactly what an uninterrupted one would.

Prompts are batched in order of their token length (stable), so a batch holds prompts of similar length: a batch
decodes until its longest answer ends, and where answer length follows prompt length (the `long` family: traces of
100-1600 tokens) a batch of mixed lengths spends most of its steps on rows that have finished. The file lists
records in that order; training draws its held-out rows at random (distill.data.split_rows), so nothing depends on
it. A corpus begun in the prompts' own order (before this ordering) is continued in that order.
"""
from __future__ import annotations

import json
import os

import torch
from tqdm.auto import tqdm

from ..data import is_empty, prompt_ids, read_jsonl, record_value, report_skipped, require_file, synthetic_prompts
from ..loading import pad_and_eos


TASK_FAMILIES = ("synthetic", "long", "recall")  # tasks specs (distill.evaluation.tasks.load_tasks) taken as prompts


def read_prompts(spec, n: int | None = None, seed: int = 0) -> list[str]:
    """An int: that many synthetic prompts. A tasks spec of a generated family (`long:train:tokens=100..800`,
    `synthetic:train`, `recall:train`): the prompts of its first `n` problems (default 256), exactly as evaluation
    and SFT pose them, so that a reasoner's corpus is its own answers to the task. A .jsonl file: its "prompt"
    fields (checked as distill.data checks records; empty prompts are skipped and counted). A .txt file: one per
    line. `n` also caps a file's prompts."""
    if isinstance(spec, int) or (isinstance(spec, str) and spec.isdigit()):
        return synthetic_prompts(int(spec))
    if isinstance(spec, str) and spec.split(":")[0] in TASK_FAMILIES:
        from ..evaluation.tasks import load_tasks, prompt_of
        return [prompt_of(p) for p in load_tasks(spec, n=256 if n is None else n, seed=seed)]
    return _file_prompts(spec)[:n]


def _file_prompts(spec) -> list[str]:
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


def _resume_order(path: str, written: list[str], prompts: list[str], by_length: list[int]) -> list[int]:
    """The order to continue a corpus in: by length, or the prompts' own order for a corpus begun in it; a file
    whose rows are neither (other prompts, another batch size) is an error, never silently extended."""
    if len(written) > len(prompts):
        raise ValueError(f"{path} holds {len(written)} complete batches' rows, more than the {len(prompts)} prompts "
                         "asked for: move it away or ask for at least as many prompts")
    for order in (by_length, list(range(len(prompts)))):
        if [prompts[i] for i in order[:len(written)]] == written:
            return order
    first = next((k for k, p in enumerate(written) if p not in (prompts[by_length[k]], prompts[k])), 0)
    raise ValueError(f"{path}: row {first} holds a prompt this corpus would not have written there "
                     f"({written[first][:60]!r}); it was begun with other prompts or another order: move it away "
                     "or pass the prompts it was begun with")


@torch.no_grad()
def build_corpus(teacher, tok, prompts: list[str], out_path: str, max_new_tokens: int = 96, batch_size: int = 16,
                 temperature: float = 0.7, top_p: float = 0.95, seed: int = 0) -> int:
    """Append teacher completions of `prompts` to out_path (jsonl of prompt/completion); returns records written.
    Sampled with the decode engine (hybrid.generation.generate: the teacher's own static cache, the same sampler
    evaluation uses); batch k with seed + k."""
    from hybrid.generation import SamplingParams, generate
    ids = [prompt_ids(tok, p) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(ids[i]))
    done = _existing(out_path)
    done -= done % batch_size  # restart the partial batch, so that batch k is always sampled with seed + k
    keep = []
    if done:
        with open(out_path, encoding="utf-8") as f:
            keep = f.readlines()[:done]
        with open(out_path, "w", encoding="utf-8") as f:
            f.writelines(keep)
    order = _resume_order(out_path, [json.loads(line)["prompt"] for line in keep], prompts, order)
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    pad, eos = pad_and_eos(teacher, tok)
    bar = tqdm(total=len(prompts), initial=done, desc="corpus")
    with open(out_path, "a", encoding="utf-8") as f:
        for start in range(done, len(prompts), batch_size):
            rows = order[start:start + batch_size]
            batch = [prompts[i] for i in rows]
            params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature,
                                    top_p=top_p if temperature > 0 else 1.0, seed=seed + start // batch_size)
            out = generate(teacher, [ids[i] for i in rows], params, eos_token_id=eos or None, pad_token_id=pad)
            for p, row in zip(batch, out.sequences):
                text = tok.decode(row, skip_special_tokens=True)
                f.write(json.dumps({"prompt": p, "completion": text.strip()}) + "\n")
            f.flush()
            bar.update(len(batch))
    bar.close()
    return len(prompts)
