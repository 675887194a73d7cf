"""One KD optimizer step on a fixed global batch of 2 x ACCUM x processes rows: 1 process with accum 2 is the step
of 2 processes with accum 1.
Writes OUT.json (loss, checksum of the trained parameters, the shape of each parameter and of the part every rank
holds), OUT.safetensors and OUT_start.safetensors (the full parameters after and before the step, gathered from
the shards under FSDP2 / ZeRO-3).

    python tests/distill/dist_kd_step.py OUT.json ACCUM
    accelerate launch --multi_gpu --num_processes 2 tests/distill/dist_kd_step.py OUT.json 1
    accelerate launch --config_file recipes/accelerate/{fsdp2,zero3}.yaml --num_processes 2 --mixed_precision no \
        tests/distill/dist_kd_step.py OUT.json 1

With --run (the same launches): Trainer.run of RUN_STEPS steps saving a checkpoint every 2 (OUT_run/checkpoints);
with --resume CHECKPOINT it continues from that checkpoint folder instead of starting. Rank 0 writes
OUT.safetensors, the full parameters at the end.
"""
import argparse
import json
import os
import shutil
import sys

import torch
from safetensors.torch import save_file
from torch.distributed.tensor import DTensor

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# helpers in tests/, and the repository first: a regular package there wins over the namespace folders
# tests/distill and tests/hybrid
sys.path[:0] = [os.path.dirname(TESTS), TESTS]
from helpers import tiny_rows, tiny_teacher  # noqa: E402

from distill import hybridize  # noqa: E402
from distill.conversion.kd import kd_loss_step, set_trainable  # noqa: E402
from distill.train import Trainer, TrainArgs  # noqa: E402


def kd_trainer(args: TrainArgs, run_dir: str) -> Trainer:
    """The Trainer of a KD stage: the tiny Llama teacher, its hybrid with layer 1 a mixer, mixers and MLPs trained."""
    teacher = tiny_teacher("llama").requires_grad_(False)
    student = hybridize(teacher, [1])
    set_trainable(student, "mixers+mlp")
    return Trainer(student, kd_loss_step(teacher, {"kl": 1.0}), tiny_rows(40), args, run_dir)


def kd_step(out: str, accum: int) -> dict:
    """One KD optimizer step of the Trainer under this process's accelerate setting; rank 0 writes the files the
    module docstring names, every rank returns the record."""
    args = TrainArgs(steps=1, batch_size=2, grad_accum=accum, lr=1e-2, warmup_steps=0, log_every=1)
    trainer = kd_trainer(args, os.path.dirname(out) + "/run")
    model = trainer.acc.unwrap_model(trainer.module)
    start = full_parameters(model)
    rec = trainer.train_step()
    after = full_parameters(model)
    local = {n: list(held_part(p).shape) for n, p in model.named_parameters()}
    held = [local]
    if torch.distributed.is_initialized():
        held = [None] * trainer.acc.num_processes
        torch.distributed.all_gather_object(held, local)
    record = {"loss": rec["loss"], "grad_norm": rec.get("grad_norm"), "world": trainer.acc.num_processes,
              "checksum": sum(float(after[n].double().sum()) for n in sorted(trainable(model))),
              "max_update": max(float((after[n] - start[n]).abs().max()) for n in trainable(model)),
              "distributed_type": str(trainer.acc.distributed_type),
              "sharded": any(held_part(p) is not p for p in model.parameters()),
              "shape": {n: list(t.shape) for n, t in after.items()}, "local_shape": held}
    if trainer.acc.is_main_process:
        save_file(after, os.path.splitext(out)[0] + ".safetensors")
        save_file(start, os.path.splitext(out)[0] + "_start.safetensors")
        with open(out, "w") as f:
            json.dump(record, f)
    trainer.acc.wait_for_everyone()
    return record


def trainable(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def held_part(p: torch.nn.Parameter) -> torch.Tensor:
    """The part of a parameter this rank holds: its local shard of a DTensor (FSDP2), its flat partition (ZeRO-3)."""
    if isinstance(p, DTensor):
        return p.to_local()
    return getattr(p, "ds_tensor", p)


def full_parameters(model) -> dict[str, torch.Tensor]:
    """Every parameter whole, on the CPU, gathered from the ranks' shards (a collective: every rank calls it)."""
    if any(hasattr(p, "ds_tensor") for p in model.parameters()):
        import deepspeed
        with deepspeed.zero.GatheredParameters(list(model.parameters())):
            return {n: p.detach().cpu().clone() for n, p in model.named_parameters()}
    return {n: (p.full_tensor() if isinstance(p, DTensor) else p).detach().cpu().clone()
            for n, p in model.named_parameters()}


RUN_STEPS = 4


def kd_run(out: str, accum: int, resume: str | None = None) -> dict[str, torch.Tensor]:
    """RUN_STEPS KD optimizer steps of Trainer.run on the rows of kd_step, a checkpoint every 2 steps (both kept);
    `resume`: a checkpoint folder to continue from, copied into this run's checkpoints and named `latest`, as a
    resumed run finds its own. Rank 0 writes OUT.safetensors; every rank returns the full parameters at the end."""
    args = TrainArgs(steps=RUN_STEPS, batch_size=2, grad_accum=accum, lr=1e-2, warmup_steps=0, log_every=1,
                     save_every=2, keep_checkpoints=2, mixed_precision="no")
    trainer = kd_trainer(args, os.path.splitext(out)[0] + "_run")
    if resume is not None and trainer.acc.is_main_process:
        shutil.copytree(resume, os.path.join(trainer.ckpt_root, os.path.basename(resume)))
        with open(os.path.join(trainer.ckpt_root, "latest"), "w") as f:
            f.write(os.path.basename(resume))
    trainer.acc.wait_for_everyone()
    trainer.run(resume=resume is not None)
    after = full_parameters(trainer.acc.unwrap_model(trainer.module))
    if trainer.acc.is_main_process:
        save_file(after, os.path.splitext(out)[0] + ".safetensors")
    trainer.acc.wait_for_everyone()
    return after


if __name__ == "__main__":
    cli = argparse.ArgumentParser()
    cli.add_argument("out")
    cli.add_argument("accum", type=int)
    cli.add_argument("--run", action="store_true")
    cli.add_argument("--resume")
    a = cli.parse_args()
    if a.run:
        kd_run(a.out, a.accum, a.resume)
    else:
        kd_step(a.out, a.accum)
    if torch.distributed.is_initialized():  # a clean shutdown: gloo's threads otherwise abort the process at exit
        torch.distributed.destroy_process_group()
