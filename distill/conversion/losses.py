"""Distillation losses, registered by name so that recipes pick and weight them.

Every token loss is a mean over target tokens only: a token counts where `labels != -100` (so padding, prompts
when masked, and the first token of each packed document never count). Losses return (sum over counted tokens,
count) so that gradient accumulation and data parallelism can divide by the token count of the *whole* global
batch, not average per-batch means.

Logits of position t predict token t+1, as in any causal LM: labels are shifted inside.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

IGNORE = -100


def target_mask(labels: torch.Tensor) -> torch.Tensor:
    """[b, T] labels -> [b, T-1] bool: which positions t have a counted target labels[t+1]."""
    return labels[:, 1:] != IGNORE


def _kl_terms(student_logits, teacher_logits, temperature: float, reverse: bool):
    """Per-position KL(p || q) in nats, p = teacher (forward) or student (reverse), at temperature T, times T^2
    (Hinton et al. 2015: keeps gradient scale independent of T)."""
    s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    p_log, q_log = (s, t) if reverse else (t, s)
    return (p_log.exp() * (p_log - q_log)).sum(-1) * temperature ** 2


def _masked_sum(per_pos: torch.Tensor, labels: torch.Tensor):
    m = target_mask(labels)
    return (per_pos[:, :-1] * m).sum(), m.sum()


def forward_kl(student_logits, teacher_logits, labels, temperature: float = 1.0, **_):
    """KL(teacher || student): mode-covering, the classic KD objective."""
    return _masked_sum(_kl_terms(student_logits, teacher_logits, temperature, reverse=False), labels)


def reverse_kl(student_logits, teacher_logits, labels, temperature: float = 1.0, **_):
    """KL(student || teacher): mode-seeking (M1's distillation objective)."""
    return _masked_sum(_kl_terms(student_logits, teacher_logits, temperature, reverse=True), labels)


def mixed_kl(student_logits, teacher_logits, labels, temperature: float = 1.0, alpha: float = 0.5, **_):
    """alpha * forward KL + (1 - alpha) * reverse KL."""
    f = _kl_terms(student_logits, teacher_logits, temperature, reverse=False)
    r = _kl_terms(student_logits, teacher_logits, temperature, reverse=True)
    return _masked_sum(alpha * f + (1 - alpha) * r, labels)


def cross_entropy(student_logits, teacher_logits, labels, **_):
    """Next-token cross-entropy on the labels (the teacher's logits are not used)."""
    logits = student_logits[:, :-1].float()
    tgt = labels[:, 1:]
    per = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1).clamp(min=0), reduction="none")
    per = per.view_as(tgt)
    m = tgt != IGNORE
    return (per * m).sum(), m.sum()


def alignment_l2(mixer_out: torch.Tensor, attn_out: torch.Tensor, mask: torch.Tensor | None = None):
    """Sum over counted tokens of ||mixer_out - attn_out||^2 / d, and the count (a mean squared error per token).

    mask [b, T] marks tokens that count (1) and padding (0); None counts every token.
    """
    per = (mixer_out.float() - attn_out.float()).pow(2).mean(-1)  # [b, T]
    if mask is None:
        return per.sum(), torch.tensor(per.numel(), device=per.device)
    m = mask.to(per.dtype)
    return (per * m).sum(), m.sum().long()


LOSSES: dict[str, Callable] = {
    "kl": forward_kl,
    "forward_kl": forward_kl,
    "reverse_kl": reverse_kl,
    "mixed_kl": mixed_kl,
    "ce": cross_entropy,
}


def get_loss(name: str) -> Callable:
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; registered: {sorted(LOSSES)}") from None


def combined_loss(weights: dict, temperature: float = 1.0, alpha: float = 0.5):
    """A function (student_logits, teacher_logits, labels) -> (weighted sum over tokens, token count, parts).

    `weights` maps registered loss names to weights, e.g. {"kl": 1.0} or {"reverse_kl": 1.0, "ce": 0.1}.
    """
    if not weights:
        raise ValueError("loss weights are empty; name at least one of " + ", ".join(sorted(LOSSES)))
    fns = {name: get_loss(name) for name in weights}
    for name, w in weights.items():
        if not isinstance(w, (int, float)) or w < 0:
            raise ValueError(f"loss weight {name}={w!r} must be a non-negative number")

    def loss(student_logits, teacher_logits, labels):
        total, count, parts = 0.0, None, {}
        for name, fn in fns.items():
            s, n = fn(student_logits, teacher_logits, labels, temperature=temperature, alpha=alpha)
            total = total + weights[name] * s
            count = n
            parts[name] = s.detach()
        return total, count, parts

    return loss
