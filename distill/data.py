"""Training data: read records, apply chat templates, mask prompts, pack documents into fixed-length rows.

Record formats (`format` in a recipe):
- "text": one field of plain text (`text_field`, default "text"); every token is a target.
- "prompt_completion": `prompt_field` / `completion_field`; with a chat template the prompt is the user turn and
  the completion the assistant turn. `mask_prompt` keeps only completion tokens as targets.
- "messages": a list of {"role", "content"} (`messages_field`); `mask_prompt` keeps only assistant turns.
Sources: local .jsonl / .json / .parquet files, a directory saved by `datasets.save_to_disk` (arrow), or a
Hugging Face dataset id (needs network).

Packing: documents are laid end to end in rows of `seq_len` tokens with position_ids restarting at 0 for each
document. The hybrid derives document boundaries from those restarts (attention masks and SSM state resets), and
the first token of each document carries label -100 so that no document is trained to predict the next one.
"""
from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass

import torch

from .losses import IGNORE

FORMATS = ("text", "prompt_completion", "messages")


def read_records(source: str, split: str = "train") -> list[dict]:
    """Records from a local file or folder, or a Hugging Face dataset id."""
    if os.path.isfile(source):
        if source.endswith(".jsonl"):
            with open(source, encoding="utf-8") as f:
                return [json.loads(line) for line in f if line.strip()]
        if source.endswith(".json"):
            with open(source, encoding="utf-8") as f:
                data = json.load(f)
            if not isinstance(data, list):
                raise ValueError(f"{source}: expected a JSON list of records, got {type(data).__name__}")
            return data
        if source.endswith(".parquet"):
            import datasets
            return list(datasets.Dataset.from_parquet(source))
        raise ValueError(f"{source}: unsupported file type (use .jsonl, .json or .parquet)")
    import datasets
    if os.path.isdir(source):
        ds = datasets.load_from_disk(source)
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise ValueError(f"{source}: no split {split!r}; splits: {sorted(ds)}")
            ds = ds[split]
        return list(ds)
    return list(datasets.load_dataset(source, split=split))


def _field(rec: dict, name: str, index: int, source: str):
    if name not in rec:
        raise ValueError(f"{source}: record {index} has no field {name!r} (fields: {sorted(rec)})")
    return rec[name]


@dataclass
class DataSpec:
    source: str
    format: str = "prompt_completion"
    text_field: str = "text"
    prompt_field: str = "prompt"
    completion_field: str = "completion"
    messages_field: str = "messages"
    mask_prompt: bool = False
    split: str = "train"

    def __post_init__(self):
        if self.format not in FORMATS:
            raise ValueError(f"data format={self.format!r} is not one of {FORMATS}")


def model_inputs(batch: dict) -> dict:
    """Forward kwargs for a packed batch. use_cache=False matters: transformers only derives packed-document
    attention masks from position_ids when no cache is passed, and its models create one when use_cache is on."""
    return {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"], "use_cache": False}


def _chat_ids(tok, messages, add_generation_prompt=False) -> list[int]:
    out = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=add_generation_prompt)
    if isinstance(out, dict) or hasattr(out, "keys"):
        out = out["input_ids"]
    return list(out)


def encode_record(rec: dict, tok, spec: DataSpec, index: int = 0) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of one record; labels are -100 where a token is not a target."""
    chat = bool(getattr(tok, "chat_template", None))
    if spec.format == "text":
        ids = tok(_field(rec, spec.text_field, index, spec.source), add_special_tokens=True).input_ids
        return ids, list(ids)
    if spec.format == "prompt_completion":
        prompt = _field(rec, spec.prompt_field, index, spec.source)
        completion = _field(rec, spec.completion_field, index, spec.source)
        if chat:
            p_ids = _chat_ids(tok, [{"role": "user", "content": prompt}], add_generation_prompt=True)
            ids = _chat_ids(tok, [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}])
            if ids[:len(p_ids)] != p_ids:  # template rewrote the prefix: fall back to concatenation
                ids = p_ids + tok(completion, add_special_tokens=False).input_ids + [tok.eos_token_id]
        else:
            p_ids = tok(prompt, add_special_tokens=True).input_ids
            ids = p_ids + tok(completion, add_special_tokens=False).input_ids + [tok.eos_token_id]
        labels = [IGNORE] * len(p_ids) + ids[len(p_ids):] if spec.mask_prompt else list(ids)
        return ids, labels
    messages = _field(rec, spec.messages_field, index, spec.source)
    if not chat:
        raise ValueError(f"{spec.source}: format 'messages' needs a tokenizer with a chat template")
    ids = _chat_ids(tok, messages)
    if not spec.mask_prompt:
        return ids, list(ids)
    labels = [IGNORE] * len(ids)
    for k, m in enumerate(messages):  # target the tokens each assistant turn adds to the templated prefix
        if m.get("role") == "assistant":
            start = len(_chat_ids(tok, messages[:k], add_generation_prompt=True))
            end = len(_chat_ids(tok, messages[:k + 1]))
            labels[start:end] = ids[start:end]
    return ids, labels


def pack(examples, seq_len: int, pad_id: int) -> dict[str, torch.Tensor]:
    """Lay (ids, labels) documents end to end in rows of seq_len: input_ids, labels, position_ids [N, seq_len].

    A document longer than seq_len is cut; one that does not fit the rest of a row starts a new row; the tail
    of a row is filled with a padding document (labels -100, its own positions) that touches nothing else.
    """
    rows, cur = [], ([], [], [])

    def close():
        if cur[0]:
            n = seq_len - len(cur[0])
            cur[0].extend([pad_id] * n)
            cur[1].extend([IGNORE] * n)
            cur[2].extend(range(n))
            rows.append(tuple(list(c) for c in cur))
            for c in cur:
                c.clear()

    for ids, labels in examples:
        ids, labels = ids[:seq_len], list(labels[:seq_len])
        if not ids:
            continue
        labels[0] = IGNORE  # never predict a document's first token from the previous document
        if len(cur[0]) + len(ids) > seq_len:
            close()
        cur[0].extend(ids)
        cur[1].extend(labels)
        cur[2].extend(range(len(ids)))
    close()
    if not rows:
        raise ValueError("no tokens to pack")
    ids, labels, pos = (torch.tensor([r[i] for r in rows]) for i in range(3))
    return {"input_ids": ids, "labels": labels, "position_ids": pos}


def build_rows(spec: DataSpec, tok, seq_len: int, limit: int | None = None) -> dict[str, torch.Tensor]:
    """Read, encode and pack a dataset."""
    records = read_records(spec.source, spec.split)
    if limit is not None:
        records = records[:limit]
    if not records:
        raise ValueError(f"{spec.source}: no records")
    examples = [encode_record(r, tok, spec, i) for i, r in enumerate(records)]
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    return pack(examples, seq_len, pad)


def split_rows(rows: dict[str, torch.Tensor], eval_rows: int, seed: int = 0):
    """(train, held-out) split of packed rows; held-out rows are never trained on."""
    n = rows["input_ids"].shape[0]
    if not 0 < eval_rows < n:
        raise ValueError(f"eval_rows={eval_rows} must be between 1 and {n - 1} (the data has {n} rows)")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    held, train = perm[:eval_rows], perm[eval_rows:]
    return ({k: v[train] for k, v in rows.items()}, {k: v[held] for k, v in rows.items()})


class RowLoader:
    """Deterministic micro-batches over packed rows: epoch e uses permutation seed + e; position is resumable.

    With several processes, micro-batch i of the global stream goes to rank i % world, so that N processes see
    exactly the rows one process would see with N times the accumulation.
    """

    def __init__(self, rows: dict[str, torch.Tensor], batch_size: int, seed: int = 0, rank: int = 0, world: int = 1):
        n = rows["input_ids"].shape[0]
        if batch_size < 1 or batch_size > n:
            raise ValueError(f"batch_size={batch_size} must be between 1 and the number of rows ({n})")
        self.rows, self.batch_size, self.seed, self.rank, self.world = rows, batch_size, seed, rank, world
        self.per_epoch = n // batch_size
        self.position = 0  # global micro-batches consumed, all ranks together

    def _batch(self, index: int) -> dict[str, torch.Tensor]:
        epoch, k = divmod(index, self.per_epoch)
        perm = torch.randperm(self.rows["input_ids"].shape[0], generator=torch.Generator().manual_seed(self.seed + epoch))
        sel = perm[k * self.batch_size:(k + 1) * self.batch_size]
        return {key: v[sel] for key, v in self.rows.items()}

    def next_step(self, accum: int) -> list[dict[str, torch.Tensor]]:
        """This rank's micro-batches of the next optimizer step (accum per rank), advancing the position."""
        base = self.position
        self.position += accum * self.world
        return [self._batch(base + a * self.world + self.rank) for a in range(accum)]


_TOPICS = ["volcanoes", "honeybees", "the moon", "rainbows", "bicycles", "libraries", "trains", "coral reefs",
           "the water cycle", "photosynthesis", "chess", "bread", "glaciers", "owls", "lighthouses", "compasses",
           "electric cars", "tea", "deserts", "the internet", "maps", "music", "gardens", "kites", "clouds"]
_ASKS = ["Explain {t} to a ten-year-old.", "Write three facts about {t}.", "Write a short poem about {t}.",
         "What is the most surprising thing about {t}?", "Give a one-paragraph summary of {t}.",
         "Write a short story that involves {t}.", "List some questions a student might ask about {t}."]
_NAMES = ["Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Gus", "Hana"]
_ITEMS = ["apples", "marbles", "books", "stickers", "coins", "pencils", "cookies", "shells"]


def synthetic_prompts(n: int, seed: int = 0) -> list[str]:
    """Seeded mix of general questions and short arithmetic word problems (prompts for a teacher-sampled corpus)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        if i % 2:
            out.append(rng.choice(_ASKS).format(t=rng.choice(_TOPICS)))
        else:
            name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
            a, b, c = rng.randint(2, 40), rng.randint(2, 20), rng.randint(2, 9)
            out.append(rng.choice([
                f"{name} has {a} {item} and buys {b} more. How many {item} does {name} have now?",
                f"{name} has {a} {item} and gives away {min(b, a - 1)}. How many are left?",
                f"A box holds {c} {item}. How many {item} are in {b} boxes?",
                f"What is {a} + {b} * {c}? Think step by step.",
            ]))
    return out
