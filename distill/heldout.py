"""Held-out measures of how close a student is to its teacher: KL per target token and perplexity ratio."""
from __future__ import annotations

import math

import torch

from .losses import cross_entropy, forward_kl


@torch.no_grad()
def heldout_metrics(student, teacher, rows: dict[str, torch.Tensor], batch_size: int = 4) -> dict[str, float]:
    """Forward KL(teacher || student) per target token, student and teacher perplexity, and their ratio."""
    dev = next(student.parameters()).device
    kl = ce_s = ce_t = 0.0
    count = 0
    n = rows["input_ids"].shape[0]
    for i in range(0, n, batch_size):
        b = {k: v[i:i + batch_size].to(dev) for k, v in rows.items()}
        kw = dict(input_ids=b["input_ids"], position_ids=b["position_ids"])
        s_logits, t_logits = student(**kw).logits, teacher(**kw).logits
        s, c = forward_kl(s_logits, t_logits, b["labels"])
        kl += s.item()
        count += int(c)
        ce_s += cross_entropy(s_logits, None, b["labels"])[0].item()
        ce_t += cross_entropy(t_logits, None, b["labels"])[0].item()
    count = max(count, 1)
    ppl_s, ppl_t = math.exp(ce_s / count), math.exp(ce_t / count)
    return {"kl": kl / count, "ppl": ppl_s, "teacher_ppl": ppl_t, "ppl_ratio": ppl_s / ppl_t}
