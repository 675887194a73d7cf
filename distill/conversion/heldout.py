"""Held-out measures of how close a student is to its teacher: KL per target token and perplexity ratio."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..data import model_inputs
from .losses import IGNORE, next_token_targets

CHUNK = 512  # token rows whose [rows x vocab] float32 log-probabilities exist at once


def _targets(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[b, T] labels -> (flat indices of the logit rows that have a counted target, those targets): row t of a
    sequence predicts labels[t + 1] (losses.next_token_targets)."""
    y = next_token_targets(labels)
    rows = (y != IGNORE).nonzero().squeeze(-1)
    return rows, y[rows]


class HeldOut:
    """Evaluates students against one teacher on fixed held-out rows; the teacher's logits are computed once.

    Only the logits of rows with a counted target are kept (float32, as the teacher returns them), and every
    measure is computed CHUNK rows at a time: at 8 held-out sequences of 2560 tokens and a 49152-entry vocabulary
    the full [tokens x vocab] logits of both models and their log-softmax copies took more than 24 GB."""

    def __init__(self, teacher, rows: dict[str, torch.Tensor], batch_size: int = 4):
        self.teacher, self.rows, self.batch_size = teacher, rows, batch_size
        self._teacher_logits: list[torch.Tensor] | None = None
        self._teacher_nll = 0.0

    def _batches(self, device):
        n = self.rows["input_ids"].shape[0]
        for i in range(0, n, self.batch_size):
            yield {k: v[i:i + self.batch_size].to(device) for k, v in self.rows.items()}

    @torch.no_grad()
    def teacher_logits(self, device) -> list[torch.Tensor]:
        """Per batch, the teacher's logits at the rows with a counted target ([rows, vocab], on the CPU)."""
        if self._teacher_logits is None:
            kept, nll = [], 0.0
            for b in self._batches(device):
                logits = self.teacher(**model_inputs(b)).logits
                rows, y = _targets(b["labels"])
                t = logits.reshape(-1, logits.shape[-1])[rows]
                del logits
                for i in range(0, t.shape[0], CHUNK):
                    nll += F.cross_entropy(t[i:i + CHUNK].float(), y[i:i + CHUNK], reduction="sum").item()
                kept.append(t.cpu())
            self._teacher_logits, self._teacher_nll = kept, nll
        return self._teacher_logits

    @torch.no_grad()
    def __call__(self, student) -> dict[str, float]:
        """Forward KL(teacher || student) per target token, student and teacher perplexity, and their ratio."""
        dev = next(student.parameters()).device
        kl = nll = 0.0
        count = 0
        for b, t_rows in zip(self._batches(dev), self.teacher_logits(dev)):
            logits = student(**model_inputs(b)).logits
            rows, y = _targets(b["labels"])
            s_rows = logits.reshape(-1, logits.shape[-1])[rows]
            del logits
            for i in range(0, s_rows.shape[0], CHUNK):
                log_q = F.log_softmax(s_rows[i:i + CHUNK].float(), dim=-1)
                log_p = F.log_softmax(t_rows[i:i + CHUNK].to(dev).float(), dim=-1)
                kl += (log_p.exp() * (log_p - log_q)).sum().item()
                nll -= log_q.gather(-1, y[i:i + CHUNK, None]).sum().item()
            count += int(rows.numel())
        count = max(count, 1)
        ppl_s, ppl_t = math.exp(nll / count), math.exp(self._teacher_nll / count)
        return {"kl": kl / count, "ppl": ppl_s, "teacher_ppl": ppl_t, "ppl_ratio": ppl_s / ppl_t}


def heldout_metrics(student, teacher, rows, batch_size: int = 4) -> dict[str, float]:
    return HeldOut(teacher, rows, batch_size)(student)
