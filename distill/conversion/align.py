"""Stage "align": each replaced layer's mixer learns to reproduce its attention layer's output.

Every mixer is fed the teacher's own hidden state at its layer (the attention input, after the layer's input
norm) and trained to match the teacher attention's output there (L2), as in MOHAWK's hidden-state alignment and
MambaInLlama's stepwise stage. One teacher forward per batch serves all layers, and the layers train in parallel
(their losses add; no layer sees another's output). Only the mixers of replaced layers train.

    hybrid-distill distill --config recipes/smollm2-135m/distill.yaml      (runs align inside the schedule)
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from hybrid.modeling import packed_seq_idx

from ..data import model_inputs
from ..train import Trainer
from .losses import alignment_l2
from .phase import PhaseContext, train_args


@contextlib.contextmanager
def capture_attention_io(teacher, layers):
    """Record (attention input, attention output) of the teacher's `layers` during forwards inside the block."""
    store: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    handles = []
    for i in layers:
        def hook(module, args, kwargs, output, i=i):
            x = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            store[i] = (x.detach(), output[0].detach())
        handles.append(teacher.model.layers[i].self_attn.register_forward_hook(hook, with_kwargs=True))
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


class MixerStack(nn.Module):
    """The mixers of the replaced layers, as one module to train (they share parameters with the student)."""

    def __init__(self, student, layers):
        super().__init__()
        self.layers = list(layers)
        self.mixers = nn.ModuleDict({str(i): student.model.layers[i].mamba for i in self.layers})

    def forward(self, inputs: dict[int, torch.Tensor], seq_idx=None) -> dict[int, torch.Tensor]:
        return {i: self.mixers[str(i)](inputs[i], seq_idx=seq_idx) for i in self.layers}


@torch.no_grad()
def teacher_io(teacher, layers, batch):
    with capture_attention_io(teacher, layers) as store:
        teacher.model(**model_inputs(batch))
    return store


def align_loss_step(teacher, layers):
    """loss_step for the Trainer: summed over layers of per-token mean squared error, summed over tokens."""
    def step(stack, batch):
        io = teacher_io(teacher, layers, batch)
        seq_idx = packed_seq_idx(batch["position_ids"])
        outs = stack({i: io[i][0] for i in layers}, seq_idx=seq_idx)
        total, parts = 0.0, {}
        for i in layers:
            s, _ = alignment_l2(outs[i], io[i][1])
            total = total + s
            parts[f"layer{i}"] = s.detach()
        return total, parts
    return step


def count_all_tokens(batch) -> int:
    return int(batch["input_ids"].numel())


@torch.no_grad()
def alignment_errors(student, teacher, layers, rows, batch_size: int = 4) -> dict[int, float]:
    """Per layer, relative error ||mixer(x) - attn(x)||^2 / ||attn(x)||^2 on held-out rows (x = teacher input)."""
    num = {i: 0.0 for i in layers}
    den = {i: 0.0 for i in layers}
    dev = next(student.parameters()).device
    for k in range(0, rows["input_ids"].shape[0], batch_size):
        b = {key: v[k:k + batch_size].to(dev) for key, v in rows.items()}
        io = teacher_io(teacher, layers, b)
        seq_idx = packed_seq_idx(b["position_ids"])
        for i in layers:
            out = student.model.layers[i].mamba(io[i][0], seq_idx=seq_idx)
            num[i] += (out.float() - io[i][1].float()).pow(2).sum().item()
            den[i] += io[i][1].float().pow(2).sum().item()
    return {i: num[i] / max(den[i], 1e-12) for i in layers}


def run_align(student, teacher, data, settings, folder: str, ctx: PhaseContext):
    """The align phase (see phase.py): only the mixers of the layers this stage replaces train, each against its
    own attention layer's output; the held-out KL is measured on the whole student. Skipped without steps or
    without new layers (a stage that keeps as many layers as the last). The record adds the per-layer alignment
    error before and after."""
    if settings.steps == 0 or not ctx.new:
        return student, {"skipped": True}
    train_rows, eval_rows = data
    before = alignment_errors(student, teacher, ctx.new, eval_rows, ctx.eval_batch_size)
    stack = MixerStack(student, ctx.new)
    for p in student.parameters():
        p.requires_grad_(False)
    for p in stack.parameters():
        p.requires_grad_(True)
    trainer = Trainer(stack, align_loss_step(teacher, ctx.new), train_rows, train_args(settings), folder,
                      eval_fn=lambda _stack: ctx.heldout(student), name=ctx.name("align"),
                      count_fn=count_all_tokens)
    record = dict(trainer.run(resume=ctx.resume, stop_after=ctx.stop_after))
    after = alignment_errors(student, teacher, ctx.new, eval_rows, ctx.eval_batch_size)
    record["alignment_error"] = {str(i): {"before": before[i], "after": after[i]} for i in ctx.new}
    return student, record
