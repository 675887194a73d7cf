"""One KD optimizer step on a fixed global batch of 4 rows; run with 1 process (accum 2) or 2 (accum 1).

    python tests/dist_kd_step.py OUT.json ACCUM
    accelerate launch --multi_gpu --num_processes 2 tests/dist_kd_step.py OUT.json 1
"""
import json
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.dirname(HERE)
# test_training beside it, helpers in tests/, and the repository first: a regular package there wins over the
# namespace folders tests/distill and tests/hybrid
sys.path[:0] = [os.path.dirname(TESTS), HERE, TESTS]
from helpers import tiny_teacher  # noqa: E402
from test_training import tiny_rows  # noqa: E402

from distill import hybridize  # noqa: E402
from distill.conversion.kd import kd_loss_step, set_trainable  # noqa: E402
from distill.train import Trainer, TrainArgs  # noqa: E402

out, accum = sys.argv[1], int(sys.argv[2])
teacher = tiny_teacher("llama").requires_grad_(False)
student = hybridize(teacher, [1])
set_trainable(student, "mixers+mlp")
rows = tiny_rows(40)
args = TrainArgs(steps=1, batch_size=2, grad_accum=accum, lr=1e-2, warmup_steps=0, log_every=1)
trainer = Trainer(student, kd_loss_step(teacher, {"kl": 1.0}), rows, args, os.path.dirname(out) + "/run")
rec = trainer.train_step()
if trainer.acc.is_main_process:
    model = trainer.acc.unwrap_model(trainer.module)
    checksum = sum(float(p.detach().double().sum()) for p in model.parameters() if p.requires_grad)
    with open(out, "w") as f:
        json.dump({"loss": rec["loss"], "checksum": checksum, "world": trainer.acc.num_processes,
                   "distributed_type": str(trainer.acc.distributed_type),
                   "sharded": any(type(p).__name__ == "DTensor" for p in model.parameters())}, f)
trainer.acc.wait_for_everyone()
if torch.distributed.is_initialized():  # a clean shutdown: gloo's threads otherwise abort the process at exit
    torch.distributed.destroy_process_group()
