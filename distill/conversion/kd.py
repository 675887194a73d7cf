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

import contextlib

import torch

from hybrid.prepack import prepacked_linears

from ..data import model_inputs
from ..flops import forward_flops, train_flops
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


class FrozenTeacher:
    """The teacher's forward for a stage: its weights never change within it, so they can run in another dtype
    (a bf16 copy where bf16 GEMMs are faster) on oneDNN-packed weights (hybrid.prepack), packed once for the
    stage instead of reordered at every call. Use as a context manager; calling it returns logits.

    A copy or packing would go stale if the student trained a parameter the teacher shares (a module passed to
    both): then it refuses (ValueError naming the parameter)."""

    def __init__(self, teacher, student=None, dtype: torch.dtype | None = None, packed: bool = False):
        self.dtype, self.packed = dtype, packed
        if (dtype is not None or packed) and student is not None:
            check_not_shared(teacher, student)
        self.model = teacher if dtype is None or dtype == next(teacher.parameters()).dtype else \
            _copy_in(teacher, dtype)
        self._stack = contextlib.ExitStack()

    def __enter__(self):
        if self.packed:
            # oneDNN: the teacher's forward runs whole rows (thousands of tokens), not the few rows of a decode step
            self._stack.enter_context(prepacked_linears(self.model, enabled="onednn"))
        return self

    def __exit__(self, *exc):
        self._stack.close()
        return False

    @torch.no_grad()
    def __call__(self, **kw):
        if self.dtype is None and not self.packed:  # as the student's step runs it (autocast included)
            return self.model(**kw).logits
        with torch.autocast(next(self.model.parameters()).device.type, enabled=False):
            return self.model(**kw).logits  # in the copy's own dtype, whatever the student autocasts to


def _copy_in(teacher, dtype: torch.dtype):
    import copy
    return copy.deepcopy(teacher).to(dtype).eval().requires_grad_(False)


def check_not_shared(teacher, student) -> None:
    """ValueError if a trainable student parameter shares storage with a teacher parameter."""
    mine = {p.data_ptr(): n for n, p in teacher.named_parameters()}
    for name, p in student.named_parameters():
        if p.requires_grad and p.data_ptr() in mine:
            raise ValueError(f"student parameter {name} is the teacher's {mine[p.data_ptr()]}: a frozen copy of the "
                             "teacher would not follow its training")


def kd_loss_step(teacher, weights: dict, temperature: float = 1.0, alpha: float = 0.5, chunk: int | None = None):
    """loss_step for the Trainer: teacher logits (no grad) vs student logits on the same rows. `teacher` is a
    model or a FrozenTeacher; chunk: the loss's row chunk (losses.combined_loss)."""
    loss = combined_loss(weights, temperature=temperature, alpha=alpha, chunk=chunk)
    forward = teacher if isinstance(teacher, FrozenTeacher) else (lambda **kw: teacher(**kw).logits)

    def step(student, batch):
        kw = model_inputs(batch)
        with torch.no_grad():
            t_logits = forward(**kw)
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
    dtype = getattr(torch, settings.teacher_dtype) if settings.teacher_dtype else None
    seq_len = data[0]["input_ids"].shape[1]
    per_token = train_flops(student, seq_len) + forward_flops(teacher, seq_len)
    with FrozenTeacher(teacher, student, dtype=dtype, packed=settings.teacher_packed) as frozen:
        loss_step = kd_loss_step(frozen, settings.loss, settings.temperature, settings.alpha, chunk=settings.loss_chunk)
        trainer = Trainer(student, loss_step, data[0], train_args(settings), folder, eval_fn=ctx.heldout,
                          name=ctx.name("kd"), flops_per_token=per_token)
        record = dict(trainer.run(resume=ctx.resume, stop_after=ctx.stop_after))
    return trainer.acc.unwrap_model(trainer.module), record
