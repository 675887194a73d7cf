"""Held-out measures of how close a student is to its teacher: KL per target token and perplexity ratio."""
from __future__ import annotations

import math

import torch

from ..data import model_inputs
from .losses import cross_entropy, forward_kl


class HeldOut:
    """Evaluates students against one teacher on fixed held-out rows; the teacher's logits are computed once."""

    def __init__(self, teacher, rows: dict[str, torch.Tensor], batch_size: int = 4):
        self.teacher, self.rows, self.batch_size = teacher, rows, batch_size
        self._teacher_logits: list[torch.Tensor] | None = None

    def _batches(self, device):
        n = self.rows["input_ids"].shape[0]
        for i in range(0, n, self.batch_size):
            yield {k: v[i:i + self.batch_size].to(device) for k, v in self.rows.items()}

    @torch.no_grad()
    def teacher_logits(self, device) -> list[torch.Tensor]:
        if self._teacher_logits is None:
            self._teacher_logits = [
                self.teacher(**model_inputs(b)).logits.cpu()
                for b in self._batches(device)
            ]
        return self._teacher_logits

    @torch.no_grad()
    def __call__(self, student) -> dict[str, float]:
        """Forward KL(teacher || student) per target token, student and teacher perplexity, and their ratio."""
        dev = next(student.parameters()).device
        kl = ce_s = ce_t = 0.0
        count = 0
        for b, t_logits in zip(self._batches(dev), self.teacher_logits(dev)):
            t_logits = t_logits.to(dev)
            s_logits = student(**model_inputs(b)).logits
            s, c = forward_kl(s_logits, t_logits, b["labels"])
            kl += s.item()
            count += int(c)
            ce_s += cross_entropy(s_logits, None, b["labels"])[0].item()
            ce_t += cross_entropy(t_logits, None, b["labels"])[0].item()
        count = max(count, 1)
        ppl_s, ppl_t = math.exp(ce_s / count), math.exp(ce_t / count)
        return {"kl": kl / count, "ppl": ppl_s, "teacher_ppl": ppl_t, "ppl_ratio": ppl_s / ppl_t}


def heldout_metrics(student, teacher, rows, batch_size: int = 4) -> dict[str, float]:
    return HeldOut(teacher, rows, batch_size)(student)
