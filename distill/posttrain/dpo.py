"""DPO through TRL's DPOTrainer on our model (MambaInLlama's last stage), an optional stage with its own config.

Preference rows: `prompt`, `chosen`, `rejected` (strings or chat messages), from a .jsonl, or built from a tasks
spec: the gold solution is chosen and the same solution with a wrong final answer is rejected (a synthetic
preference that teaches answer fidelity; real runs pass their own preference data). The reference model is a
frozen copy of the starting model.
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass

import torch
from trl import DPOConfig, DPOTrainer

from ..data import MESSAGES, is_empty, read_records, record_value, report_skipped, require_file
from ..loading import load_model
from .trl_stage import TRLArgs, train_and_save


@dataclass
class DPOArgs(TRLArgs):
    """TRLArgs (data: a tasks spec or a .jsonl of prompt/chosen/rejected rows; extra: more DPOConfig fields) plus
    DPO's own."""
    out: str = "runs/dpo"
    lr: float = 5e-7
    beta: float = 0.1
    max_length: int = 512

    def __post_init__(self):
        if self.beta <= 0:
            raise ValueError(f"beta={self.beta} must be > 0")
        self.check_positive(("max_steps", "batch_size", "grad_accum", "max_length"))


def _wrong(answer: str) -> str:
    try:
        return str(int(answer) + 1)
    except ValueError:
        return answer + "1"


def _preference(r: dict, i: int, data: str) -> dict:
    """prompt, chosen and rejected of one jsonl row, each a string or chat messages (chosen/rejected may be null:
    empty)."""
    missing = [k for k in ("prompt", "chosen", "rejected") if k not in r]
    if missing:
        raise ValueError(f"{data} row {i} has no {missing[0]!r} field (keys: {sorted(r)})")
    return {"prompt": record_value(r, "prompt", i, data, (str, MESSAGES)),
            **{k: record_value(r, k, i, data, (str, MESSAGES, type(None))) for k in ("chosen", "rejected")}}


def preference_rows(data: str, n: int | None = None, seed: int = 0) -> list[dict]:
    """Rows of a .jsonl (checked as distill.data checks records; a row whose chosen or rejected answer is empty is
    skipped and counted), or synthetic preferences from a tasks spec."""
    from ..evaluation.tasks import load_tasks, prompt_of
    require_file(data, "an existing .jsonl of prompt/chosen/rejected rows, or a tasks spec such as synthetic:train")
    if os.path.isfile(data) and data.endswith(".jsonl"):
        rows = [_preference(r, i, data) for i, r in enumerate(read_records(data))]
        kept = [r for r in rows if not (is_empty(r["chosen"]) or is_empty(r["rejected"]))]
        report_skipped(len(rows) - len(kept), "completion", data)
        return kept[:n] if n is not None else kept
    rows = []
    for p in load_tasks(data, n=n, seed=seed):
        gold = p.solution or f"\\boxed{{{p.answer}}}"
        bad = gold.replace(f"\\boxed{{{p.answer}}}", f"\\boxed{{{_wrong(p.answer)}}}")
        rows.append({"prompt": [{"role": "user", "content": prompt_of(p)}],
                     "chosen": [{"role": "assistant", "content": gold}],
                     "rejected": [{"role": "assistant", "content": bad}]})
    return rows


def dpo_config(args: DPOArgs) -> DPOConfig:
    return args.trl_config(DPOConfig, beta=args.beta, max_length=args.max_length, bf16=torch.cuda.is_available())


def make_trainer(model, tokenizer, rows: list[dict], args: DPOArgs) -> DPOTrainer:
    from datasets import Dataset
    if not rows:
        raise ValueError("DPO needs at least one preference row")
    ref = copy.deepcopy(model).eval().requires_grad_(False)  # TRL would reload it from a hub id / path
    return DPOTrainer(model=model, ref_model=ref, args=dpo_config(args), train_dataset=Dataset.from_list(rows),
                      processing_class=tokenizer)


def run_dpo(args: DPOArgs, resume: bool = False) -> str:
    model, tok, _ = load_model(args.model, for_training=True)
    trainer = make_trainer(model, tok, preference_rows(args.data, args.n, args.seed), args)
    return train_and_save(trainer, tok, args, resume, "dpo", seq_len=args.max_length)
