"""GRPO with verifiable rewards through TRL's GRPOTrainer, on a hybrid or a plain model.

- Rewards come from the registry in distill/rewards.py (correctness, format, length_penalty[:N]) and read the
  dataset's `answer` column; rows come from a tasks spec (distill.evaluation.tasks) as chat prompts.
- Advantages are group-normalized (TRL: reward minus the group mean, over the group std); the ratio is clipped to
  [1 - epsilon, 1 + epsilon_high] (clip-higher when epsilon_high > epsilon); loss variants grpo, dr_grpo, dapo;
  KL coefficient beta (default 0, as M1).
- Rollouts run through the model's `generate()` with the hybrid cache: one prefill, then one single-token forward
  per new token (tested with a forward spy), never a recomputation of the prefix.
- The policy's per-token log-probabilities (`loss_chunk` > 0): the model's logits of the completion positions only,
  scored a chunk of rows at a time with a closed-form backward (completion_logps). On the CPU, TRL 1.16's fused LM
  head scores every position of prompt and completion in float32 tiles of the whole vocabulary. 0: TRL's own head.
  TRL's head stays where ours does not apply (an entropy bonus, MoE aux loss, images, cast_lm_head_to_fp32).
- Added in a subclass (HybridGRPOTrainer), not a fork: `drop_zero_variance_groups` removes groups whose rewards are
  all equal (zero advantage: no signal) from the loss and from its token normalizer (DAPO's dynamic sampling
  without the resampling), so they do not dilute the groups that carry signal. Groups must not straddle
  processes: per-device batch a multiple of num_generations (checked).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
from trl import GRPOConfig, GRPOTrainer

from ..data import check_value, read_jsonl, require_file
from ..loading import load_model
from .rewards import check_rows, get_rewards
from .trl_stage import TRLArgs, train_and_save

LOSS_TYPES = ("grpo", "dr_grpo", "dapo")


@dataclass
class RLArgs(TRLArgs):
    """TRLArgs (batch_size: completions per device step, a multiple of num_generations; extra: more GRPOConfig
    fields) plus GRPO's own."""
    data: str = "synthetic:train:levels=1"
    out: str = "runs/rl"
    max_steps: int = 50
    lr: float = 1e-6
    logging_steps: int = 1
    save_steps: int = 25
    rewards: list[str] = field(default_factory=lambda: ["correctness", "format"])
    reward_weights: list[float] | None = None
    loss_type: str = "dapo"
    num_generations: int = 8
    beta: float = 0.0
    epsilon: float = 0.2
    epsilon_high: float = 0.28  # clip-higher (DAPO)
    temperature: float = 1.0
    max_completion_length: int = 128
    drop_zero_variance_groups: bool = False
    loss_chunk: int = 1024  # token rows per chunk of the policy's log-probabilities; 0: TRL's fused LM head

    def __post_init__(self):
        if self.loss_chunk < 0:
            raise ValueError(f"loss_chunk={self.loss_chunk} must be >= 0 (0: TRL's fused LM head)")
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type={self.loss_type!r} is not one of {LOSS_TYPES}")
        if self.num_generations < 2:
            raise ValueError(f"num_generations={self.num_generations} must be >= 2 (advantages are group-relative)")
        if self.batch_size % self.num_generations:
            raise ValueError(f"batch_size={self.batch_size} must be a multiple of num_generations="
                             f"{self.num_generations}")
        if self.epsilon_high < self.epsilon:
            raise ValueError(f"epsilon_high={self.epsilon_high} must be >= epsilon={self.epsilon}")
        get_rewards(self.rewards)  # unknown names fail here, listing the registered ones
        if self.reward_weights is not None and len(self.reward_weights) != len(self.rewards):
            raise ValueError(f"{len(self.reward_weights)} reward_weights for {len(self.rewards)} rewards")


def _check_task_file(data: str) -> None:
    """A GSM8K/MATH jsonl checked as distill.data checks records: file and line on bad JSON; file, row, field and
    type on a wrong-typed field (a GSM8K answer is text ending in '#### n', a MATH answer text or a number)."""
    records = read_jsonl(data)  # load_tasks reads any file as jsonl
    gsm8k = bool(records) and "question" in records[0]  # load_tasks tells the formats apart the same way
    types = {"question": (str,), "problem": (str,), "solution": (str, type(None)),
             "answer": (str,) if gsm8k else (str, int, float, type(None))}
    for i, r in enumerate(records):
        for name, allowed in types.items():
            if name in r:
                check_value(r[name], name, i, data, allowed)


def rl_rows(data: str, n: int | None = None, seed: int = 0) -> list[dict]:
    """Chat prompts with gold answers from a tasks spec or a GSM8K/MATH jsonl."""
    from ..evaluation.tasks import load_tasks, prompt_of
    require_file(data, "an existing GSM8K- or MATH-style .jsonl, or a tasks spec such as synthetic:train")
    if os.path.isfile(data):
        _check_task_file(data)
    rows = [{"prompt": [{"role": "user", "content": prompt_of(p)}], "answer": p.answer}
            for p in load_tasks(data, n=n, seed=seed)]
    check_rows(rows)
    return rows


class _TokenLogProbs(torch.autograd.Function):
    """log softmax(logits / temperature)[target] of each row of `logits` [N, V], and (`entropy`) the entropy of that
    distribution (no gradient; else an empty tensor), a chunk of rows at a time in float32: at most [chunk, V] float32 values exist at once. Backward in
    closed form, d log p_y / d logits = (onehot(y) - softmax) / temperature, recomputed per chunk."""

    @staticmethod
    def forward(ctx, logits, targets, temperature: float, chunk: int, want_entropy: bool):
        n = logits.shape[0]
        logp = logits.new_empty(n, dtype=torch.float32)
        entropy = logits.new_empty(n if want_entropy else 0, dtype=torch.float32)
        for a in range(0, n, chunk):
            z = logits[a:a + chunk].float() / temperature  # out of place: .float() of float32 logits is no copy
            lse = torch.logsumexp(z, -1)
            logp[a:a + chunk] = z.gather(1, targets[a:a + chunk, None]).squeeze(1) - lse
            if want_entropy:
                entropy[a:a + chunk] = lse - (torch.softmax(z, -1) * z).sum(-1)
        ctx.save_for_backward(logits, targets)
        ctx.temperature, ctx.chunk = temperature, chunk
        ctx.mark_non_differentiable(entropy)
        ctx.set_materialize_grads(False)
        return logp, entropy

    @staticmethod
    def backward(ctx, grad_logp, _grad_entropy):
        if grad_logp is None:
            return None, None, None, None, None
        logits, targets = ctx.saved_tensors
        grad = torch.empty_like(logits)
        for a in range(0, logits.shape[0], ctx.chunk):
            g = grad_logp[a:a + ctx.chunk, None].float()
            d = torch.softmax(logits[a:a + ctx.chunk].float() / ctx.temperature, -1).mul_(-g)
            d.scatter_add_(1, targets[a:a + ctx.chunk, None], g)
            grad[a:a + ctx.chunk] = d.div_(ctx.temperature)
        return grad, None, None, None, None


def completion_logps(model, input_ids, attention_mask, logits_to_keep: int, temperature: float, chunk: int,
                     entropy: bool = True):
    """Per-token log-probabilities and entropies [B, logits_to_keep] of the last `logits_to_keep` tokens of each row
    under `model` at `temperature` (0 at padding; entropies None without `entropy`): the LM head runs on those positions only (logits_to_keep + 1
    logits, the last of which predicts past the row and is dropped), then _TokenLogProbs."""
    out = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=logits_to_keep + 1,
                use_cache=False)
    logits = out.logits[:, :-1]
    b, t, v = logits.shape
    logp, ent = _TokenLogProbs.apply(logits.reshape(b * t, v), input_ids[:, -logits_to_keep:].reshape(-1),
                                     temperature, chunk, entropy)
    padded = attention_mask[:, -logits_to_keep:] == 0  # 0 there, as TRL's head gives
    return logp.view(b, t).masked_fill(padded, 0.0), ent.view(b, t).masked_fill(padded, 0.0) if entropy else None


class HybridGRPOTrainer(GRPOTrainer):
    """GRPOTrainer plus optional dropping of zero-variance groups, and the policy's log-probabilities through
    completion_logps (loss_chunk > 0)."""

    def __init__(self, *args, drop_zero_variance_groups: bool = False, loss_chunk: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self.drop_zero_variance_groups, self.loss_chunk = drop_zero_variance_groups, loss_chunk

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, batch_size=None,
                                           compute_entropy=False, compute_aux_loss=False, **media):
        """TRL's method (same arguments and results), through completion_logps where it applies."""
        if (self.loss_chunk == 0 or compute_aux_loss or self._entropy_bonus_enabled or self.args.cast_lm_head_to_fp32
                or any(v is not None for v in media.values())):
            return super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, batch_size, compute_entropy, compute_aux_loss,
                **media)
        batch_size = batch_size or input_ids.size(0)
        logps, entropies = [], []
        for a in range(0, input_ids.size(0), batch_size):
            with self.accelerator.autocast():
                lp, ent = completion_logps(model, input_ids[a:a + batch_size], attention_mask[a:a + batch_size],
                                           logits_to_keep, self.temperature, self.loss_chunk, compute_entropy)
            logps.append(lp)
            entropies.append(ent)
        return torch.cat(logps), torch.cat(entropies) if compute_entropy else None, None

    def _generate_and_score_completions(self, inputs):
        out = super()._generate_and_score_completions(inputs)
        if not self.drop_zero_variance_groups:
            return out
        G = self.num_generations
        adv = out["advantages"]
        if adv.numel() % G:
            raise ValueError(f"{adv.numel()} completions on this process do not split into groups of {G}")
        keep = (adv.view(-1, G) != 0).any(1).repeat_interleave(G)  # all-zero advantages: all rewards equal
        out["completion_mask"] = out["completion_mask"] * keep[:, None].to(out["completion_mask"].dtype)
        out["num_items_in_batch"] = self.accelerator.gather(out["completion_mask"].sum()).sum()
        mode = "train" if self.model.training else "eval"
        self._metrics[mode]["dropped_group_fraction"].append(1.0 - keep.float().mean().item())
        return out


def grpo_config(args: RLArgs) -> GRPOConfig:
    return args.trl_config(
        GRPOConfig, num_generations=args.num_generations, loss_type=args.loss_type, beta=args.beta,
        epsilon=args.epsilon, epsilon_high=args.epsilon_high, temperature=args.temperature,
        max_completion_length=args.max_completion_length, reward_weights=args.reward_weights,
        bf16=torch.cuda.is_available())


def make_trainer(model, tokenizer, rows: list[dict], args: RLArgs) -> HybridGRPOTrainer:
    from datasets import Dataset
    check_rows(rows)
    tokenizer.padding_side = "left"
    return HybridGRPOTrainer(model=model, reward_funcs=get_rewards(args.rewards), args=grpo_config(args),
                             train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                             drop_zero_variance_groups=args.drop_zero_variance_groups, loss_chunk=args.loss_chunk)


def run_rl(args: RLArgs, resume: bool = False) -> str:
    """Train; save the final model (+ tokenizer) to `args.out`/final and return that path. Resumable."""
    model, tok, _ = load_model(args.model, for_training=True)
    trainer = make_trainer(model, tok, rl_rows(args.data, args.n, args.seed), args)
    return train_and_save(trainer, tok, args, resume, "rl", seq_len=args.max_completion_length)
