"""Training data: read records, apply chat templates, mask prompts, pack documents into fixed-length rows.

Record formats (`format` in a recipe):
- "text": one field of plain text (`text_field`, default "text"); every token is a target.
- "prompt_completion": `prompt_field` / `completion_field`; with a chat template the prompt is the user turn and
  the completion the assistant turn. `mask_prompt` keeps only completion tokens as targets.
- "messages": a list of {"role", "content"} (`messages_field`); `mask_prompt` keeps only assistant turns.
Sources: local .jsonl / .json / .parquet files, a directory saved by `datasets.save_to_disk` (arrow), or a
Hugging Face dataset id (needs network).

Checks: a malformed JSON line is an error naming the file and its (1-based) line; a field of the wrong type is an
error naming the file, the record (0-based index), the field and the type found. A record whose completion is
empty (null, blank, or a chat without a non-empty assistant turn; for "text", an empty text) is skipped, not an
error: it carries no target, and corpora sampled from a teacher hold a few. build_rows prints one line,
"skipped N records with empty completion in FILE" ("empty text" for "text"), so that the count is never silent. The SFT, DPO, GRPO and
corpus-prompt readers go through the same functions (read_records, check_value, is_empty, report_skipped).

Truncation happens before tokenisation: a text is cut to a character budget (CHARS_PER_TOKEN characters a token,
grown while it holds too few tokens, up to MAX_CHARS_PER_TOKEN), so a record of megabytes costs memory in
proportion to seq_len, not to its size. prompt_completion keeps the start of both: the completion's tail is cut,
and the prompt too where it would leave the completion less than half the row, the prompt/completion boundary
(the masked prefix) staying where the template puts it. A cut completion has no EOS.

Packing: documents are laid end to end in rows of `seq_len` tokens with position_ids restarting at 0 for each
document. The hybrid derives document boundaries from those restarts (attention masks and SSM state resets), and
the first token of each document carries label -100 so that no document is trained to predict the next one.
"""
from __future__ import annotations

import json
import os
import random
import sys
from dataclasses import dataclass

import torch

from .conversion.losses import IGNORE

FORMATS = ("text", "prompt_completion", "messages")
FILE_TYPES = (".jsonl", ".json", ".parquet")
SOURCES = ("an existing .jsonl, .json or .parquet file, a folder saved by datasets.save_to_disk, "
           "or a Hugging Face dataset id")
MESSAGES = list  # in check_value's types: a list of {"role": str, "content": str} chat messages
CHARS_PER_TOKEN = 8  # first character budget a token gets when a text is cut before tokenisation
MAX_CHARS_PER_TOKEN = 64  # the most it grows to: the bound on what one record costs to tokenise


def looks_like_path(source: str) -> bool:
    """Whether `source` names a local file or folder rather than a dataset id or a tasks spec."""
    return source.endswith(FILE_TYPES + (".txt", ".csv")) or source.startswith(("/", "./", "../", "~"))


def require_file(source: str, instead: str) -> None:
    """A path that does not exist is an error saying what to pass, instead of a hub lookup that fails later."""
    if looks_like_path(source) and not os.path.exists(source):
        raise ValueError(f"{source}: no such file; pass {instead}")


def _parse(text: str, path: str, line: int = 1):
    """JSON value of `text`, which starts at `line` of file `path`; an error names file, line and column."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: line {line + err.lineno - 1} is not valid JSON ({err.msg}, column "
                         f"{err.colno})") from None


def _objects(records: list, path: str, where) -> list[dict]:
    """records, each checked to be a JSON object; where(i) names record i's place in the file."""
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise ValueError(f"{path}: {where(i)} is a JSON {type(rec).__name__}, expected an object of fields")
    return records


def read_jsonl(path: str) -> list[dict]:
    """One JSON object a line, blank lines skipped; a bad line is an error naming the file and its line."""
    with open(path, encoding="utf-8") as f:
        numbered = [(n, _parse(line.strip(), path, n)) for n, line in enumerate(f, 1) if line.strip()]
    return _objects([rec for _, rec in numbered], path, lambda i: f"line {numbered[i][0]}")


def _read_json(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        data = _parse(f.read(), path)
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    return _objects(data, path, lambda i: f"record {i}")


def read_records(source: str, split: str = "train") -> list[dict]:
    """Records from a local file or folder, or a Hugging Face dataset id."""
    require_file(source, SOURCES)
    if os.path.isfile(source):
        if source.endswith(".jsonl"):
            return read_jsonl(source)
        if source.endswith(".json"):
            return _read_json(source)
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


def _type_names(types) -> str:
    names = {MESSAGES: "list of messages", type(None): "null"}
    return " or ".join(names.get(t, t.__name__) for t in types)


def check_value(value, name: str, index: int, source: str, types=(str,)):
    """`value` when it has one of `types` (MESSAGES: a list of chat messages, type(None): null), else an error naming
    the file, the record, the field and the type found. A bool is no number here: JSON true is not 1."""
    ok = any(isinstance(value, t) and not (isinstance(value, bool) and t is not bool) for t in types)
    if not ok:
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        raise ValueError(f"{source}: record {index} field {name!r} is {type(value).__name__} ({shown}), expected "
                         f"{_type_names(types)}")
    if isinstance(value, list):
        for k, m in enumerate(value):
            if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
                raise ValueError(f"{source}: record {index} field {name!r} message {k} must be "
                                 f"{{'role': str, 'content': str}}, got {m!r:.60}")
    return value


def record_value(rec: dict, name: str, index: int, source: str, types=(str,)):
    """Field `name` of record `index`, present and of one of `types` (check_value)."""
    return check_value(_field(rec, name, index, source), name, index, source, types)


def is_empty(value) -> bool:
    """A null, a blank string, or chat messages whose contents are all blank: nothing to train on."""
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    return all(is_empty(m["content"]) for m in value)


def report_skipped(n: int, what: str, source: str) -> None:
    """One line on stderr for records skipped as empty, so that dropping them is never silent."""
    if n:
        print(f"skipped {n} records with empty {what} in {source}", file=sys.stderr)


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


def _head(text: str, encode, n: int) -> tuple[str, list[int]]:
    """(a prefix of text, its encoding) holding more than n tokens where text has them, found by encoding prefixes
    of CHARS_PER_TOKEN * n characters, doubled up to MAX_CHARS_PER_TOKEN * n: never the whole of a huge text.
    More than n, so that the token the cut splits is not among the first n."""
    budget = CHARS_PER_TOKEN * n
    while True:
        head = text[:budget]
        ids = encode(head)
        if len(ids) > n or len(head) == len(text) or budget >= MAX_CHARS_PER_TOKEN * n:
            return head, ids
        budget *= 2


def _fit(text: str, limit: int, encode) -> str:
    """A head of text whose encoding has at most `limit` tokens (cut in proportion until it fits)."""
    ids = encode(text)
    while len(ids) > limit and text:
        text = text[:min(len(text) - 1, len(text) * limit // len(ids))]
        ids = encode(text)
    return text


def prompt_ids(tok, prompt: str, chat: bool | None = None) -> list[int]:
    """Token ids of a single-turn prompt, ready for the model to answer: with a chat template (chat None: when the
    tokenizer has one) the user turn followed by the generation prompt that opens the assistant's turn; without,
    the plain encoding with the tokenizer's special tokens (a BOS where it adds one), as pretraining text began."""
    if chat is None:
        chat = bool(getattr(tok, "chat_template", None))
    if chat:
        return _chat_ids(tok, [{"role": "user", "content": prompt}], add_generation_prompt=True)
    return tok(prompt, add_special_tokens=True).input_ids


def _pair_ids(tok, chat: bool, prompt: str, completion: str) -> tuple[list[int], list[int]]:
    """(prompt ids, prompt + completion ids); with a chat template, user and assistant turns."""
    p_ids = prompt_ids(tok, prompt, chat)
    if chat:
        ids = _chat_ids(tok, [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}])
        if ids[:len(p_ids)] == p_ids:
            return p_ids, ids
        # the template rewrote the prefix: fall back to concatenation
    return p_ids, p_ids + tok(completion, add_special_tokens=False).input_ids + [tok.eos_token_id]


def _encode_pair(tok, chat: bool, prompt: str, completion: str, seq_len: int | None) -> tuple[list[int], int]:
    """(ids, prompt length) within seq_len: the completion's tail is cut, and the prompt's where it would leave the
    completion less than half the row. Both texts are cut to a few times seq_len tokens before anything else."""
    if seq_len is None:
        p_ids, ids = _pair_ids(tok, chat, prompt, completion)
        return ids, len(p_ids)
    plain = lambda t: tok(t, add_special_tokens=False).input_ids  # noqa: E731
    prompt, completion = _head(prompt, plain, seq_len)[0], _head(completion, plain, seq_len)[0]
    p_ids, ids = _pair_ids(tok, chat, prompt, completion)
    limit = max(seq_len - (len(ids) - len(p_ids)), seq_len // 2)
    if len(ids) > seq_len and len(p_ids) > limit:
        prompt = _fit(prompt, limit, lambda t: prompt_ids(tok, t, chat))
        p_ids, ids = _pair_ids(tok, chat, prompt, completion)
    return ids[:seq_len], min(len(p_ids), seq_len)


def _clip_messages(messages: list[dict], chars: int) -> list[dict]:
    """The messages up to a total of `chars` content characters, the last one cut."""
    out = []
    for m in messages:
        if chars <= 0:
            break
        out.append({**m, "content": m["content"][:chars]})
        chars -= len(out[-1]["content"])
    return out


def _fields(rec: dict, spec: DataSpec, index: int) -> tuple:
    """The record's fields for spec.format, type-checked: (text,), (prompt, completion) or (messages,)."""
    if not isinstance(rec, dict):
        raise ValueError(f"{spec.source}: record {index} is {type(rec).__name__}, expected a mapping of fields")
    if spec.format == "text":
        return (record_value(rec, spec.text_field, index, spec.source, (str, type(None))),)
    if spec.format == "prompt_completion":
        return (record_value(rec, spec.prompt_field, index, spec.source),
                record_value(rec, spec.completion_field, index, spec.source, (str, type(None))))
    return (record_value(rec, spec.messages_field, index, spec.source, (MESSAGES,)),)


def record_is_empty(rec: dict, spec: DataSpec, index: int = 0) -> bool:
    """Whether the record has nothing to train on (module docstring); a wrong-typed field is an error."""
    fields = _fields(rec, spec, index)
    if spec.format == "messages":
        return is_empty([m for m in fields[0] if m["role"] == "assistant"])
    return is_empty(fields[-1])


def encode_record(rec: dict, tok, spec: DataSpec, index: int = 0,
                  seq_len: int | None = None) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of one record; labels are -100 where a token is not a target. seq_len: cut to that many
    tokens, tokenising no more than a bounded multiple of it (module docstring)."""
    chat = bool(getattr(tok, "chat_template", None))
    fields = _fields(rec, spec, index)
    if spec.format == "text":
        encode = lambda t: tok(t, add_special_tokens=True).input_ids  # noqa: E731
        text = fields[0] or ""
        ids = encode(text) if seq_len is None else _head(text, encode, seq_len)[1][:seq_len]
        return ids, list(ids)
    if spec.format == "prompt_completion":
        ids, n_prompt = _encode_pair(tok, chat, fields[0], fields[1] or "", seq_len)
        labels = [IGNORE] * n_prompt + ids[n_prompt:] if spec.mask_prompt else list(ids)
        return ids, labels
    messages = fields[0]
    if not chat:
        raise ValueError(f"{spec.source}: format 'messages' needs a tokenizer with a chat template")
    if seq_len is not None:
        messages = _clip_messages(messages, CHARS_PER_TOKEN * seq_len)
    ids = _chat_ids(tok, messages)[:seq_len]
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
    """Read, encode and pack a dataset; records with an empty completion are skipped and counted."""
    records = read_records(spec.source, spec.split)
    if limit is not None:
        records = records[:limit]
    if not records:
        raise ValueError(f"{spec.source}: no records")
    kept = [(i, r) for i, r in enumerate(records) if not record_is_empty(r, spec, i)]
    report_skipped(len(records) - len(kept), "text" if spec.format == "text" else "completion", spec.source)
    if not kept:
        raise ValueError(f"{spec.source}: all {len(records)} records have an empty completion")
    examples = [encode_record(r, tok, spec, i, seq_len) for i, r in kept]
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
