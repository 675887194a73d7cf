"""GRPO with verifiable rewards through TRL's GRPOTrainer, on a hybrid or a plain model.

- Rewards come from the registry in distill/rewards.py (correctness, format, length_penalty[:N]) and read the
  dataset's `answer` column; rows come from a tasks spec (distill.evaluation.tasks) as chat prompts.
- Advantages are group-normalized (TRL: reward minus the group mean, over the group std); the ratio is clipped to
  [1 - epsilon, 1 + epsilon_high] (clip-higher when epsilon_high > epsilon); loss variants grpo, dr_grpo, dapo;
  KL coefficient beta (default 0, as M1).
- Rollouts run through the model's `generate()` with the hybrid cache: one prefill, then one single-token forward
  per new token (tested with a forward spy), never a recomputation of the prefix.
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

    def __post_init__(self):
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


class HybridGRPOTrainer(GRPOTrainer):
    """GRPOTrainer plus optional dropping of zero-variance groups."""

    def __init__(self, *args, drop_zero_variance_groups: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.drop_zero_variance_groups = drop_zero_variance_groups

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
                             drop_zero_variance_groups=args.drop_zero_variance_groups)


def run_rl(args: RLArgs, resume: bool = False) -> str:
    """Train; save the final model (+ tokenizer) to `args.out`/final and return that path. Resumable."""
    model, tok, _ = load_model(args.model, for_training=True)
    trainer = make_trainer(model, tok, rl_rows(args.data, args.n, args.seed), args)
    return train_and_save(trainer, tok, args, resume, "rl", seq_len=args.max_completion_length)
