"""Phase "onpolicy": on-policy distillation (GKD, Agarwal et al. 2024, with the student's samples only; the
"on-policy distillation" of Qwen3 and of Lu & Thinking Machines 2025).

Offline KD (kd.py) teaches the student the teacher's distribution on the teacher's text; at generation time the
student then conditions on its own text, where its errors compound. Here every optimizer step:

  1. the student samples completions of a micro-batch of prompts with the decode engine
     (hybrid.generation.generate: its static cache, the sampler evaluation uses), seeded from the step's RNG, so
     a resumed run samples what an uninterrupted one would;
  2. teacher and student read prompt + sample; the loss is the per-token reverse KL(student || teacher) over the
     vocabulary at every sampled position (the positions whose distribution produced a completion token, EOS
     included), averaged over those tokens of the global batch; the gradient flows through the student's
     distribution (the exact reverse KL, not a sampled-token estimate).

The teacher's forward is kd.FrozenTeacher's (optionally a bf16 copy on packed weights) and the vocabulary loss is
chunked (losses.VocabLoss), as in offline KD. What sampling costs is measured apart (record: sample_seconds,
sampled_tokens), so that offline and on-policy distillation can be compared at equal wall-clock.
"""
from __future__ import annotations

import time

import torch

from ..flops import forward_flops, train_flops
from ..train import Trainer
from .kd import FrozenTeacher, kd_loss_step, set_trainable
from .phase import PhaseContext, train_args

IGNORE = -100


def prompt_rows(tok, prompts: list[str], pad: int) -> dict[str, torch.Tensor]:
    """The phase's training rows: each prompt's chat-template ids, left-aligned and padded with `pad` to the
    longest, and its length (the Trainer's RowLoader draws micro-batches of these)."""
    from ..data import prompt_ids
    ids = [prompt_ids(tok, p) for p in prompts]
    if not ids:
        raise ValueError("onpolicy: no prompts")
    width = max(len(x) for x in ids)
    table = torch.full((len(ids), width), pad, dtype=torch.long)
    for i, x in enumerate(ids):
        table[i, :len(x)] = torch.tensor(x, dtype=torch.long)
    return {"input_ids": table, "prompt_len": torch.tensor([len(x) for x in ids], dtype=torch.long)}


def sampled_batch(prompts: list[list[int]], completions: list[list[int]], pad: int) -> dict[str, torch.Tensor]:
    """Rows prompt + completion, right-padded with `pad`: input_ids, position_ids (0.. per row) and labels (the
    completion's tokens; prompt and padding IGNORE), so that losses.target_mask selects exactly the positions
    whose next-token distribution produced a sampled token."""
    width = max(len(p) + len(c) for p, c in zip(prompts, completions))
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    labels = torch.full_like(ids, IGNORE)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        row = torch.tensor(p + c, dtype=torch.long)
        ids[i, :len(row)] = row
        labels[i, len(p):len(row)] = row[len(p):]
    pos = torch.arange(width).expand(len(prompts), width).contiguous()
    return {"input_ids": ids, "position_ids": pos, "labels": labels}


class Sampler:
    """Trainer.prepare_fn: a micro-batch of prompt rows -> the student's samples as training rows. Keeps the
    sampling seconds and tokens for the phase's record."""

    def __init__(self, max_new_tokens: int, temperature: float, top_p: float, pad: int, eos):
        self.max_new_tokens, self.temperature, self.top_p = max_new_tokens, temperature, top_p
        self.pad, self.eos = pad, eos
        self.seconds, self.tokens, self.samples = 0.0, 0, 0

    def __call__(self, student, batch: dict) -> dict:
        from hybrid.generation import SamplingParams, generate
        prompts = [row[:n].tolist() for row, n in zip(batch["input_ids"], batch["prompt_len"].tolist())]
        seed = int(torch.randint(0, 2 ** 31 - 1, ()))  # from the step's RNG: restored on resume
        params = SamplingParams(max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_p=self.top_p,
                                seed=seed)
        was_training = student.training
        student.eval()
        t0 = time.perf_counter()
        out = generate(student, prompts, params, eos_token_id=self.eos, pad_token_id=self.pad)
        self.seconds += time.perf_counter() - t0
        student.train(was_training)
        completions = [list(s) for s in out.sequences]  # each holds at least one token (the stop token included)
        self.tokens += sum(len(s) for s in out.sequences)
        self.samples += len(prompts)
        dev = batch["input_ids"].device
        return {k: v.to(dev) for k, v in sampled_batch(prompts, completions, self.pad).items()}


def onpolicy_loss_step(teacher, chunk: int | None = None):
    """loss_step for the Trainer: (sum over sampled positions of KL(student || teacher), {"reverse_kl": sum}): kd's
    step with the reverse KL alone, on the rows Sampler builds (they carry input_ids, position_ids and labels as
    packed KD rows do)."""
    return kd_loss_step(teacher, {"reverse_kl": 1.0}, chunk=chunk)


def run_onpolicy(student, teacher, data, settings, folder: str, ctx: PhaseContext):
    """The onpolicy phase (see phase.py): the parameters `settings.train` names learn the teacher's distribution on
    the student's own samples of `settings.prompts`; skipped without steps."""
    if settings.steps == 0:
        return student, {"skipped": True}
    from ..loading import pad_and_eos
    from .corpus import read_prompts
    tok = ctx.tokenizer
    if tok is None:
        raise ValueError("onpolicy needs the teacher's tokenizer to pose its prompts")
    pad, eos = pad_and_eos(teacher, tok)
    rows = prompt_rows(tok, read_prompts(settings.prompts, settings.n, settings.seed), pad)
    set_trainable(student, settings.train)
    dtype = getattr(torch, settings.teacher_dtype) if settings.teacher_dtype else None
    seq_len = int(rows["prompt_len"].float().mean()) + settings.max_new_tokens  # an upper estimate per row
    per_token = train_flops(student, seq_len) + forward_flops(teacher, seq_len)
    sampler = Sampler(settings.max_new_tokens, settings.temperature, settings.top_p, pad, eos)
    with FrozenTeacher(teacher, student, dtype=dtype, packed=settings.teacher_packed) as frozen:
        trainer = Trainer(student, onpolicy_loss_step(frozen, settings.loss_chunk), rows, train_args(settings),
                          folder, eval_fn=ctx.heldout, name=ctx.name("onpolicy"), flops_per_token=per_token,
                          prepare_fn=sampler)
        record = dict(trainer.run(resume=ctx.resume, stop_after=ctx.stop_after))
    record.update(sample_seconds=sampler.seconds, sampled_tokens=sampler.tokens, samples=sampler.samples)
    return trainer.acc.unwrap_model(trainer.module), record
