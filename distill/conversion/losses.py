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


def next_token_targets(labels: torch.Tensor) -> torch.Tensor:
    """[b, T] labels -> [b * T] flat targets of the logit rows: row t of a sequence predicts labels[t + 1]; the last
    row of each sequence predicts nothing (IGNORE)."""
    y = torch.full_like(labels, IGNORE)
    y[:, :-1] = labels[:, 1:]
    return y.reshape(-1)


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


def combined_loss(weights: dict, temperature: float = 1.0, alpha: float = 0.5, chunk: int | None = None):
    """A function (student_logits, teacher_logits, labels) -> (weighted sum over tokens, token count, parts).

    `weights` maps registered loss names to weights, e.g. {"kl": 1.0} or {"reverse_kl": 1.0, "ce": 0.1}.
    chunk: compute every term `chunk` token rows at a time (VocabLoss: the same values and gradients, without
    [tokens x vocab] float32 copies of both models' logits); None: the definitions above, all rows at once.
    """
    if not weights:
        raise ValueError("loss weights are empty; name at least one of " + ", ".join(sorted(LOSSES)))
    fns = {name: get_loss(name) for name in weights}
    for name, w in weights.items():
        if not isinstance(w, (int, float)) or w < 0:
            raise ValueError(f"loss weight {name}={w!r} must be a non-negative number")
    if chunk is not None:
        return _chunked(weights, temperature, alpha, chunk)

    def loss(student_logits, teacher_logits, labels):
        total, count, parts = 0.0, None, {}
        for name, fn in fns.items():
            s, n = fn(student_logits, teacher_logits, labels, temperature=temperature, alpha=alpha)
            total = total + weights[name] * s
            count = n
            parts[name] = s.detach()
        return total, count, parts

    return loss


# ---- the same losses, a chunk of token rows at a time ----
# Every registered loss is a combination of three per-token terms: forward KL and reverse KL at the temperature,
# and cross-entropy on the labels. VocabLoss computes their masked sums over [rows, vocab] logits `chunk` rows at a
# time in float32, saves only its inputs (in their own dtype, bf16 under autocast) and recomputes each chunk's
# softmax in backward from the closed-form gradients:
#   forward KL T^2 KL(p || q):  dL/ds = T (q - p)                       p = softmax(t / T), q = softmax(s / T)
#   reverse KL T^2 KL(q || p):  dL/ds = T q (log q - log p - KL(q || p))
#   cross-entropy -log r[y]:    dL/ds = r - onehot(y)                   r = softmax(s)
_TERMS = {"kl": (1.0, 0.0, 0.0), "forward_kl": (1.0, 0.0, 0.0), "reverse_kl": (0.0, 1.0, 0.0), "ce": (0.0, 0.0, 1.0)}


def _terms(name: str, alpha: float) -> tuple[float, float, float]:
    return (alpha, 1.0 - alpha, 0.0) if name == "mixed_kl" else _TERMS[name]


def _scaled(x, temperature: float):
    x = x.float()
    return x if temperature == 1.0 else x / temperature


def _log_probs(s, t, temperature: float):
    return F.log_softmax(_scaled(s, temperature), dim=-1), F.log_softmax(_scaled(t, temperature), dim=-1)


def _chunk_values(s, t, y, temperature: float, need, grad_of: int | None = None) -> tuple[list, torch.Tensor | None]:
    """(per-row [forward KL, reverse KL, CE] of one chunk, None where not needed; the gradient of term `grad_of`
    per row, d term / ds in float32 from the same softmaxes (the closed forms above), or None)."""
    values, g = [None, None, None], None
    if need[0] or need[1]:
        log_q, log_p = _log_probs(s, t, temperature)
        p = log_p.exp() if need[0] else None
        q = log_q.exp() if need[1] or grad_of == 0 else None
        if need[0]:
            values[0] = (p * (log_p - log_q)).sum(-1) * temperature ** 2
            if grad_of == 0:
                g = (q - p).mul_(temperature)
        if need[1]:
            diff = log_q - log_p
            kl = (q * diff).sum(-1, keepdim=True)
            values[1] = kl.squeeze(-1) * temperature ** 2
            if grad_of == 1:
                g = q.mul_(diff.sub_(kl)).mul_(temperature)
    if need[2]:
        log_r = F.log_softmax(s.float(), dim=-1)
        target = y.clamp(min=0).unsqueeze(-1)
        values[2] = -log_r.gather(-1, target).squeeze(-1)
        if grad_of == 2:
            g = log_r.exp_()
            g.scatter_add_(-1, target, torch.full((g.shape[0], 1), -1.0, device=s.device))
    return values, g


def _chunk_grad(s, t, y, temperature: float, need, grad) -> torch.Tensor:
    """d(grad . [forward KL, reverse KL, CE]) / ds per row of one chunk, float32."""
    g = torch.zeros(s.shape, dtype=torch.float32, device=s.device)
    if need[0] or need[1]:
        log_q, log_p = _log_probs(s, t, temperature)
        q = log_q.exp()
        if need[0]:
            g += grad[0] * temperature * (q - log_p.exp())
        if need[1]:
            diff = log_q - log_p
            kl = (q * diff).sum(-1, keepdim=True)
            g += grad[1] * temperature * q * (diff - kl)
    if need[2]:
        r = F.softmax(s.float(), dim=-1)
        r.scatter_add_(-1, y.clamp(min=0).unsqueeze(-1), torch.full((r.shape[0], 1), -1.0, device=s.device))
        g += grad[2] * r
    return g


class VocabLoss(torch.autograd.Function):
    """(s [N, V], t [N, V] or None, y [N], w [N] float32, temperature, need, chunk) -> [3] float32: the sums over
    rows of w * (forward KL, reverse KL, CE); terms not in `need` are 0 and get no gradient.

    Where one term is needed (KD's forward KL, on-policy's reverse KL, SFT's cross-entropy) its gradient is
    computed in forward from the same chunk's softmaxes and kept in place of the logits: backward only scales it,
    and the teacher's logits are not kept for backward. With a teacher it is kept in float32 (no more memory than
    the two logits tensors it replaces, and rounded once, to the logits' dtype, after scaling, as the recomputed
    gradient is); without one (cross-entropy) in the logits' dtype, the memory of the logits it replaces. Several
    terms: the inputs are kept and each chunk's softmaxes are recomputed in backward."""

    @staticmethod
    def forward(ctx, s, t, y, w, temperature, need, chunk):
        out = torch.zeros(3, dtype=torch.float32, device=s.device)
        single = sum(need) == 1 and ctx.needs_input_grad[0]
        term = need.index(True) if single else None
        grads = torch.empty_like(s, dtype=torch.float32 if t is not None else s.dtype) if single else None
        for i in range(0, s.shape[0], chunk):
            part = slice(i, i + chunk)
            values, g = _chunk_values(s[part], None if t is None else t[part], y[part], temperature, need, term)
            for k, v in enumerate(values):
                if v is not None:
                    out[k] += (v * w[part]).sum()
            if single:
                grads[part] = g * w[part].unsqueeze(-1)
        if single:
            ctx.save_for_backward(grads)
        else:
            ctx.save_for_backward(s, t, y, w)
        ctx.temperature, ctx.need, ctx.chunk, ctx.term, ctx.dtype = temperature, need, chunk, term, s.dtype
        return out

    @staticmethod
    def backward(ctx, grad):
        if ctx.term is not None:
            (grads,) = ctx.saved_tensors
            return (grads * grad[ctx.term]).to(ctx.dtype), None, None, None, None, None, None
        s, t, y, w = ctx.saved_tensors
        out = torch.empty_like(s)
        for i in range(0, s.shape[0], ctx.chunk):
            part = slice(i, i + ctx.chunk)
            g = _chunk_grad(s[part], None if t is None else t[part], y[part], ctx.temperature, ctx.need, grad)
            out[part] = (g * w[part].unsqueeze(-1)).to(s.dtype)
        return out, None, None, None, None, None, None


def _chunked(weights: dict, temperature: float, alpha: float, chunk: int):
    if not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"loss chunk={chunk!r} must be a positive number of token rows")
    coef = {name: _terms(name, alpha) for name in weights}
    need = tuple(any(c[k] != 0 for c in coef.values()) for k in range(3))  # every part is reported

    def loss(student_logits, teacher_logits, labels):
        b, T, V = student_logits.shape
        y = next_token_targets(labels)
        w = (y != IGNORE).float()
        t = None if teacher_logits is None else teacher_logits.reshape(-1, V)
        sums = VocabLoss.apply(student_logits.reshape(-1, V), t, y, w, temperature, need, chunk)
        parts = {name: sum(c[k] * sums[k] for k in range(3)) for name, c in coef.items()}
        total = sum(weights[name] * parts[name] for name in weights)
        return total, w.sum().long(), {name: v.detach() for name, v in parts.items()}

    return loss
