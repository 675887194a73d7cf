"""Supervised fine-tuning on chat-format reasoning traces, through TRL's SFTTrainer, for hybrids and plain models.

- Rows are prompt/completion conversations; the loss is on the completion (assistant) tokens only
  (`completion_only_loss`): prompt and padding tokens get label -100.
- `packing=True` packs rows padding-free (one row, `position_ids` restarting at every example). The hybrid turns
  those restarts into document boundaries for its mixers (state reset, conv taps masked) and attention masks them
  block-diagonally, so no example sees another (tested: packed loss == separate loss).
- Optional distillation-SFT (M1): `kl_weight > 0` with a `teacher` adds the reverse KL(student || teacher) on the
  label tokens to the NLL: the loss registry's reverse_kl (distill.conversion.losses), the one logit KD uses.
- The NLL is KD's chunked vocabulary loss (`loss_chunk` rows at a time, closed-form backward; 0: TRL's own loss).
  On the CPU, TRL's fused LM head scores every position of a packed row in float32 tiles of the whole vocabulary,
  several passes each way; ours makes one pass forward and one back over the model's (bf16) logits. The logged
  token accuracy and entropy come from one more pass without gradients.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from trl import SFTConfig, SFTTrainer

from ..conversion.losses import combined_loss, reverse_kl, target_mask
from ..data import MESSAGES, is_empty, read_records, record_value, report_skipped, require_file
from ..loading import load_model
from .trl_stage import TRLArgs, train_and_save


@dataclass
class SFTArgs(TRLArgs):
    """TRLArgs (data: a tasks spec or a .jsonl of chat rows; extra: more SFTConfig fields) plus SFT's own."""
    n: int | None = 512
    out: str = "runs/sft"
    max_length: int = 512
    packing: bool = True
    warmup_steps: int = 5
    weight_decay: float = 0.0
    teacher: str | None = None  # distillation-SFT
    kl_weight: float = 0.0
    loss_chunk: int = 1024  # token rows per chunk of the vocabulary loss; 0: TRL's own loss

    def __post_init__(self):
        if self.kl_weight < 0:
            raise ValueError(f"kl_weight={self.kl_weight} must be >= 0")
        if self.kl_weight > 0 and not self.teacher:
            raise ValueError("kl_weight > 0 needs a teacher")
        if self.loss_chunk < 0:
            raise ValueError(f"loss_chunk={self.loss_chunk} must be >= 0 (0: TRL's own loss)")
        self.check_positive(("max_steps", "batch_size", "grad_accum", "max_length"))


def rows_from(data: str, n: int | None = None, seed: int = 0) -> list[dict]:
    """Prompt/completion conversations from a tasks spec (gold <think> solutions) or a jsonl file.

    jsonl rows may hold `prompt` + `completion` (strings or message lists), or `messages` (the last assistant
    message is the completion), or `problem`/`question` + `solution`. Fields are checked as distill.data checks
    them (file and line on bad JSON, file, row, field and type on a wrong type); rows whose completion is empty are
    skipped and counted.
    """
    from ..evaluation.tasks import load_tasks, prompt_of
    require_file(data, "an existing .jsonl of chat rows, or a tasks spec such as synthetic:train")
    if not os.path.isfile(data) or not data.endswith(".jsonl"):
        return [{"prompt": [{"role": "user", "content": prompt_of(p)}],
                 "completion": [{"role": "assistant", "content": p.solution or f"\\boxed{{{p.answer}}}"}],
                 "answer": p.answer} for p in load_tasks(data, n=n, seed=seed)]
    rows, empty = [], 0
    for i, r in enumerate(read_records(data)):
        row = _chat_row(r, i, data)
        if is_empty(row["completion"]):
            empty += 1
        else:
            rows.append(row)
    report_skipped(empty, "completion", data)
    return rows[:n] if n is not None else rows


def _chat_row(r: dict, i: int, data: str) -> dict:
    """One jsonl row as {"prompt": messages, "completion": messages}, its fields type-checked."""
    text, chat = (str,), (str, MESSAGES)
    if "messages" in r:
        msgs = record_value(r, "messages", i, data, (MESSAGES,))
        last = max((j for j, m in enumerate(msgs) if m["role"] == "assistant"), default=None)
        if last is None:
            raise ValueError(f"{data} row {i}: 'messages' has no assistant message")
        return {"prompt": msgs[:last], "completion": [msgs[last]]}
    if "prompt" in r and "completion" in r:
        wrap = lambda v, role: v if isinstance(v, list) else [{"role": role, "content": v or ""}]  # noqa: E731
        return {"prompt": wrap(record_value(r, "prompt", i, data, chat), "user"),
                "completion": wrap(record_value(r, "completion", i, data, chat + (type(None),)), "assistant")}
    if ("problem" in r or "question" in r) and "solution" in r:
        key = "problem" if r.get("problem") or "question" not in r else "question"
        question = record_value(r, key, i, data, text)
        solution = record_value(r, "solution", i, data, text + (type(None),))
        return {"prompt": [{"role": "user", "content": question}],
                "completion": [{"role": "assistant", "content": solution or ""}]}
    raise ValueError(f"{data} row {i}: needs 'messages', 'prompt'+'completion' or 'problem'+'solution'; "
                     f"has {sorted(r)}")


class HybridSFTTrainer(SFTTrainer):
    """SFTTrainer plus an optional reverse-KL-to-teacher term on the label tokens."""

    def __init__(self, *args, teacher=None, kl_weight: float = 0.0, loss_chunk: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self.teacher, self.kl_weight, self.loss_chunk = teacher, kl_weight, loss_chunk
        if teacher is not None:
            teacher.requires_grad_(False).eval()

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.teacher is None or self.kl_weight == 0:  # plain SFT: the chunked NLL, or TRL's own loss
            if self.loss_chunk == 0 or return_outputs:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            return self._chunked_nll(model, inputs, num_items_in_batch)
        labels = inputs["labels"]
        fwd = {k: v for k, v in inputs.items() if k != "labels"}
        fwd["use_cache"] = False
        logits = model(**fwd).logits
        with torch.no_grad():
            t_logits = self.teacher(**fwd).logits
        mask = target_mask(labels)
        nll = torch.nn.functional.cross_entropy(logits[:, :-1][mask].float(), labels[:, 1:][mask], reduction="sum")
        rkl, count = reverse_kl(logits, t_logits, labels)
        denom = num_items_in_batch if num_items_in_batch is not None else count.clamp(min=1)
        loss = (nll + self.kl_weight * rkl) / torch.as_tensor(denom, device=nll.device).clamp(min=1)
        mode = "train" if model.training else "eval"
        self._metrics[mode]["reverse_kl"].append((rkl / count.clamp(min=1)).item())
        return (loss, None) if return_outputs else loss

    def _chunked_nll(self, model, inputs, num_items_in_batch=None):
        """The NLL of the label tokens through KD's chunked vocabulary loss, normalised as TRL normalises its own
        (by the batch's label tokens across gradient accumulation), with TRL's logged metrics."""
        labels = inputs["labels"]
        fwd = {k: v for k, v in inputs.items() if k != "labels"}
        fwd["use_cache"] = False
        logits = model(**fwd).logits  # [b, T, V]
        nll, count, _ = combined_loss({"ce": 1.0}, chunk=self.loss_chunk)(logits, None, labels)
        denom = num_items_in_batch if num_items_in_batch is not None else count.clamp(min=1)
        loss = nll / torch.as_tensor(denom, device=nll.device).clamp(min=1)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes  # the gradient is averaged over ranks, the count summed
        mode = "train" if model.training else "eval"
        correct, entropy = _token_stats(logits.detach(), labels, self.loss_chunk)
        gather = lambda x: self.accelerator.gather_for_metrics(  # noqa: E731
            torch.as_tensor(x, dtype=torch.float64, device=nll.device)).sum().item()
        valid = max(gather(count), 1.0)
        self._metrics[mode]["mean_token_accuracy"].append(gather(correct) / valid)
        self._metrics[mode]["entropy"].append(gather(entropy) / valid)
        if mode == "train":  # input tokens, as TRL counts them
            local = inputs["attention_mask"].sum() if "attention_mask" in inputs else inputs["position_ids"].size(1)
            self._total_train_tokens += int(gather(local)) // self._tp_size
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
        return loss


@torch.no_grad()
def _token_stats(logits: torch.Tensor, labels: torch.Tensor, chunk: int) -> tuple[int, float]:
    """(top-1 hits, summed entropy in nats) over the positions with a counted next-token label, `chunk` rows at a
    time in float32."""
    b, T, V = logits.shape
    where = target_mask(labels).reshape(-1).nonzero().flatten()  # flat indices into the [b * (T-1)] positions
    rows = where // (T - 1) * T + where % (T - 1)  # the same positions among the [b * T] logits rows
    flat, targets = logits.reshape(-1, V), labels[:, 1:].reshape(-1)[where]
    correct, entropy = 0, 0.0
    for i in range(0, rows.numel(), chunk):  # copies one chunk of rows at a time, never all of them
        z = flat.index_select(0, rows[i:i + chunk]).float()
        logp = torch.log_softmax(z, dim=-1)
        entropy -= float((logp.exp() * logp).sum())
        correct += int((z.argmax(-1) == targets[i:i + chunk]).sum())
    return correct, entropy


def sft_config(args: SFTArgs) -> SFTConfig:
    return args.trl_config(SFTConfig, max_length=args.max_length, packing=args.packing, padding_free=args.packing,
                           completion_only_loss=True, warmup_steps=args.warmup_steps,
                           weight_decay=args.weight_decay, dataset_num_proc=None)


def make_trainer(model, tokenizer, rows: list[dict], args: SFTArgs, teacher=None) -> HybridSFTTrainer:
    from datasets import Dataset
    if not rows:
        raise ValueError("SFT needs at least one row")
    ds = Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in rows])
    return HybridSFTTrainer(model=model, args=sft_config(args), train_dataset=ds, processing_class=tokenizer,
                            teacher=teacher, kl_weight=args.kl_weight, loss_chunk=args.loss_chunk)


def run_sft(args: SFTArgs, resume: bool = False) -> str:
    """Train, save the final model (+ tokenizer) to `args.out`/final, return that path. Resumable from the last
    checkpoint in `args.out` (Trainer checkpoints every save_steps)."""
    from hybrid import load_pretrained
    model, tok, _ = load_model(args.model, for_training=True)
    teacher = load_pretrained(args.teacher)[0] if args.teacher else None
    trainer = make_trainer(model, tok, rows_from(args.data, args.n, args.seed), args, teacher)
    return train_and_save(trainer, tok, args, resume, "sft", seq_len=args.max_length)
