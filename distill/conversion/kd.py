"""Stage "kd": end-to-end logit distillation of the whole hybrid against the frozen teacher.

The student sees the same packed rows as the teacher; the loss is a registry mix (losses.py) of forward / reverse
KL at a temperature and optional CE on the labels, averaged over target tokens of the global batch. Which
parameters train is a recipe choice:
    mixers      the Mamba mixers only (MambaInLlama's first KD phase)
    mixers+mlp  mixers and the MLPs of replaced layers
    all         everything, attention and embeddings included

    hybrid-distill distill --config recipes/smollm2-135m/distill.yaml      (runs kd inside the schedule)
"""
from __future__ import annotations

import torch

from ..data import model_inputs
from ..train import Trainer
from .losses import combined_loss
from .phase import PhaseContext, train_args

TRAINABLE = ("mixers", "mixers+mlp", "all")


def set_trainable(student, which: str) -> list[str]:
    """Freeze all but `which`; returns the trainable parameter names."""
    if which not in TRAINABLE:
        raise ValueError(f"train={which!r} is not one of {TRAINABLE}")
    mixer_layers = set(student.config.mixer_layers)
    names = []
    for name, p in student.named_parameters():
        parts = name.split(".")
        layer = int(parts[2]) if len(parts) > 2 and parts[1] == "layers" else None
        if which == "all":
            on = True
        elif which == "mixers":
            on = ".mamba." in name
        else:
            on = ".mamba." in name or (layer in mixer_layers and ".mlp." in name)
        p.requires_grad_(on)
        if on:
            names.append(name)
    return names


def kd_loss_step(teacher, weights: dict, temperature: float = 1.0, alpha: float = 0.5):
    """loss_step for the Trainer: teacher logits (no grad) vs student logits on the same rows."""
    loss = combined_loss(weights, temperature=temperature, alpha=alpha)

    def step(student, batch):
        kw = model_inputs(batch)
        with torch.no_grad():
            t_logits = teacher(**kw).logits
        s_logits = student(**kw).logits
        total, _, parts = loss(s_logits, t_logits, batch["labels"])
        return total, parts

    return step


def run_kd(student, teacher, data, settings, folder: str, ctx: PhaseContext):
    """The kd phase (see phase.py): the parameters `settings.train` names learn the teacher's logits on the
    training rows; skipped without steps. Returns the trained student as the Trainer leaves it (unwrapped from
    accelerate's wrappers) and its held-out KL and perplexity ratio."""
    if settings.steps == 0:
        return student, {"skipped": True}
    set_trainable(student, settings.train)
    loss_step = kd_loss_step(teacher, settings.loss, settings.temperature, settings.alpha)
    trainer = Trainer(student, loss_step, data[0], train_args(settings), folder, eval_fn=ctx.heldout,
                      name=ctx.name("kd"))
    record = dict(trainer.run(resume=ctx.resume, stop_after=ctx.stop_after))
    return trainer.acc.unwrap_model(trainer.module), record
