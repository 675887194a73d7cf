"""What the TRL-driven stages (sft.py, rl.py, dpo.py) share: train resumably, save the result (they load their
model with distill.loading.load_model).

TRL writes checkpoint-N in place (weights, optimizer, scheduler, RNG, then trainer_state.json last), so a kill
mid-save leaves a folder that its own `resume_from_checkpoint=True` picks and fails on. Resume here picks the
newest complete checkpoint instead, and moves incomplete ones to incomplete-checkpoints/ (out of the way of TRL's
rotation, which would count them against save_total_limit).

`TRLArgs` holds the settings every stage has (model, data, budget, logging, seed, extra TRL fields) and maps them
to TRL's config in one place; SFTArgs, RLArgs and DPOArgs add their own fields and defaults.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
import zipfile
from dataclasses import asdict, dataclass, field

import torch
from transformers import TrainerCallback

from hybrid.checkpoints import safetensors_keys

logger = logging.getLogger(__name__)
_CHECKPOINT = re.compile(r"checkpoint-(\d+)")
INCOMPLETE = "incomplete-checkpoints"


@dataclass
class TRLArgs:
    """The fields every TRL stage's args share (a stage redeclares a field to change its default)."""
    model: str = "smollm2-135m"  # any load_pretrained spec
    data: str = "synthetic:train"  # a tasks spec (distill.evaluation.tasks.load_tasks) or a .jsonl
    n: int | None = 256  # rows drawn from a tasks spec
    out: str = "runs/trl"
    max_steps: int = 100
    lr: float = 1e-4
    batch_size: int = 8  # rows (RL: completions) per device step
    grad_accum: int = 1
    logging_steps: int = 5
    save_steps: int = 50
    seed: int = 0
    extra: dict = field(default_factory=dict)  # more fields of the stage's TRL config
    profiles: dict = field(default_factory=dict)  # named overrides (recipe YAML), applied by --profile

    def check_positive(self, names) -> None:
        """ValueError naming the first of `names` below 1 (a count that must be at least one)."""
        for k in names:
            if getattr(self, k) < 1:
                raise ValueError(f"{k}={getattr(self, k)} must be >= 1")

    def trl_config(self, cls, **stage_fields):
        """TRL config `cls` (SFTConfig, GRPOConfig, DPOConfig) from the shared fields, the stage's own
        (`stage_fields`) and `extra`, so that a shared field means the same in every stage. Two checkpoints are
        kept (one stays complete while the next is written); without a GPU it runs on the CPU; no tracker. A field
        in `extra` wins over the stage's own setting of it (a recipe's `extra: {bf16: true}`)."""
        return cls(output_dir=self.out, max_steps=self.max_steps, learning_rate=self.lr,
                   per_device_train_batch_size=self.batch_size, gradient_accumulation_steps=self.grad_accum,
                   logging_steps=self.logging_steps, save_steps=self.save_steps, save_total_limit=2, report_to=[],
                   seed=self.seed, use_cpu=not torch.cuda.is_available(), include_num_input_tokens_seen="all",
                   **{**stage_fields, **self.extra})  # extra overrides a stage's own choice (e.g. bf16)


def _safetensors_problem(path: str) -> str | None:
    try:
        safetensors_keys(path)
    except (OSError, ValueError) as e:
        return str(e)
    return None


def _weights_problem(path: str, names: set[str]) -> str | None:
    """Model weights present and readable: every safetensors header (a truncated file fails it), every shard an
    index names; torch-format files (.bin, .pt, .pth) at least a whole zip archive. FSDP's and DeepSpeed's own
    weight folders (pytorch_model_fsdp_0/, global_stepN/) count as present."""
    if not any(n.endswith(".safetensors") or n.startswith(("pytorch_model", "global_step")) for n in names):
        return "no model weights (model.safetensors)"
    for n in sorted(names):
        if n.endswith(".safetensors.index.json"):
            try:
                with open(os.path.join(path, n)) as f:
                    shards = set(json.load(f)["weight_map"].values())
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
                return f"{n}: {type(e).__name__}: {e}"
            if shards - names:
                return f"{n} names missing shards {sorted(shards - names)}"
        elif n.endswith(".safetensors") and (problem := _safetensors_problem(os.path.join(path, n))):
            return problem
        elif n.endswith((".bin", ".pt", ".pth")) and os.path.isfile(os.path.join(path, n)) \
                and not zipfile.is_zipfile(os.path.join(path, n)):
            return f"{n} is not a whole torch archive"
    return None


def checkpoint_problem(path: str, optimizer: bool = True) -> str | None:
    """Why TRL cannot resume from the checkpoint folder `path`, or None when it is complete: trainer_state.json
    (written last) parses, the weights read, and (optimizer=True) optimizer and scheduler state are there."""
    try:
        with open(os.path.join(path, "trainer_state.json")) as f:
            if not isinstance(json.load(f), dict):
                return "trainer_state.json is not a JSON object"
    except (OSError, ValueError) as e:
        return f"trainer_state.json: {type(e).__name__}: {e}"
    names = set(os.listdir(path))
    if problem := _weights_problem(path, names):
        return problem
    if optimizer and not names & {"optimizer.pt", "optimizer.bin", "optimizer_0"}:
        return "no optimizer state (optimizer.pt)"
    if optimizer and "scheduler.pt" not in names:
        return "no scheduler state (scheduler.pt)"
    return None


def _set_aside(path: str) -> str:
    """Move an incomplete checkpoint to <out>/incomplete-checkpoints/ (kept for inspection; a later one of the
    same name replaces it)."""
    dest = os.path.join(os.path.dirname(path), INCOMPLETE, os.path.basename(path))
    shutil.rmtree(dest, ignore_errors=True)
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    os.replace(path, dest)
    return dest


def resume_checkpoint(out: str, optimizer: bool = True, main: bool = True) -> str | None:
    """The newest complete checkpoint-N in `out` (None: none). Incomplete ones are named in a warning and, on the
    main process, set aside."""
    if not os.path.isdir(out):
        return None
    found = sorted((int(m.group(1)), d) for d in os.listdir(out)
                   if (m := _CHECKPOINT.fullmatch(d)) and os.path.isdir(os.path.join(out, d)))
    chosen = None
    for _, d in reversed(found):
        path = os.path.join(out, d)
        problem = checkpoint_problem(path, optimizer)
        if problem is None:
            chosen = chosen or path
        elif main:
            logger.warning("skipping incomplete checkpoint %s (%s); moved to %s", path, problem, _set_aside(path))
    return chosen


class SpeedCallback(TrainerCallback):
    """Adds to every logged record the input tokens per second since training (re)started and the MFU of the
    update's model FLOPs at that rate (distill.flops; sequence terms at `seq_len`). For GRPO the wall time holds
    the rollouts too, so its MFU is the update's share of the whole step, the figure that bounds its speed."""

    def __init__(self, seq_len: int):
        self.seq_len, self.t0, self.tokens0 = seq_len, None, 0

    def on_train_begin(self, args, state, control, **kw):
        self.t0, self.tokens0 = time.perf_counter(), state.num_input_tokens_seen

    def on_log(self, args, state, control, logs=None, model=None, **kw):
        from ..flops import gemm_peak, train_flops
        tokens = state.num_input_tokens_seen - self.tokens0
        if self.t0 is None or not tokens or model is None or not state.log_history:
            return
        tps = tokens / max(1e-9, time.perf_counter() - self.t0)
        p = next(model.parameters())
        dtype = torch.bfloat16 if args.bf16 else p.dtype
        world = max(1, args.world_size)
        mfu = train_flops(model, self.seq_len) * tps / (gemm_peak(dtype, p.device) * world)
        state.log_history[-1].update({"input_tokens_per_s": tps, "mfu": mfu})


def train_and_save(trainer, tokenizer, args, resume: bool, name: str, seq_len: int = 512) -> str:
    """Train (when resume, from the newest complete checkpoint in args.out, if any); save the model and tokenizer
    to args.out/final, the stage's arguments to args.out/{name}_args.json and its log (TRL's log_history: loss,
    rewards, speed per logged step, the resumed steps' included) to args.out/{name}_log.jsonl, which outlives the
    checkpoints; return the final folder."""
    path = None
    if resume:
        optimizer = not (trainer.args.save_only_model or trainer.is_deepspeed_enabled)
        if trainer.is_world_process_zero():
            resume_checkpoint(args.out, optimizer)  # names and sets aside the incomplete ones
        trainer.accelerator.wait_for_everyone()
        path = resume_checkpoint(args.out, optimizer, main=False)
    trainer.add_callback(SpeedCallback(seq_len))
    trainer.train(resume_from_checkpoint=path)
    final = os.path.join(args.out, "final")
    trainer.save_model(final)  # every rank calls it (it gathers sharded weights); rank 0 writes
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(final)
        with open(os.path.join(args.out, f"{name}_args.json"), "w") as f:
            json.dump(asdict(args), f, indent=1)
        with open(os.path.join(args.out, f"{name}_log.jsonl"), "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in trainer.state.log_history)
    trainer.accelerator.wait_for_everyone()
    return final
