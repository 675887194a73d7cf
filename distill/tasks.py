"""Verifiable reasoning tasks: a seeded synthetic math generator, loaders for GSM8K- and MATH-style files, and
answer checking through math-verify.

Reasoning format of gold solutions: `<think> step by step </think>` then `\\boxed{answer}`.

Answer extraction (`extract_answer`): the last `\\boxed{...}` of the text (brace-matched; a final answer written
twice counts once, and the last box is the one a model commits to), else the last number. Nothing extracted,
or anything math-verify cannot parse, is wrong: `is_correct` never raises.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
from dataclasses import asdict, dataclass

# math-verify warns on every call that its signal-based timeout is off; it is off on purpose (signals only work in
# the main thread, and rewards may be computed elsewhere), and our answers are short.
logging.getLogger("math_verify").setLevel(logging.ERROR)

BOXED = "\\boxed{"
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?")


@dataclass
class Problem:
    id: str
    problem: str
    answer: str
    solution: str = ""
    level: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def last_boxed(text: str) -> str | None:
    """Content of the last brace-balanced \\boxed{...}, or None."""
    start = text.rfind(BOXED)
    while start != -1:
        i, depth = start + len(BOXED), 1
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            return text[start + len(BOXED):i - 1].strip()
        start = text.rfind(BOXED, 0, start)  # unbalanced: try an earlier box
    return None


def extract_answer(text: str) -> str | None:
    """The model's final answer: last boxed content, else the last number (after </think> when present)."""
    if not isinstance(text, str) or not text.strip():
        return None
    boxed = last_boxed(text)
    if boxed:
        return boxed
    tail = text.split("</think>")[-1]
    nums = _NUMBER.findall(tail)
    return nums[-1].replace(",", "") if nums else None


def is_correct(completion: str, gold: str) -> bool:
    """Whether the completion's final answer equals gold (math-verify: 1/2 == 0.5, \\frac{1}{2} == 0.5)."""
    pred = extract_answer(completion)
    if pred is None:
        return False
    try:
        from math_verify import parse, verify
        g = parse(f"${gold}$", parsing_timeout=None)
        p = parse(f"${pred}$", parsing_timeout=None)
        if not g or not p:
            return False
        return bool(verify(g, p, timeout_seconds=None))
    except Exception:  # noqa: BLE001 - malformed answers are wrong, never an error
        return False


# ---------------- synthetic math ----------------
_NAMES = ["Ava", "Ben", "Chloe", "Dev", "Emma", "Finn", "Gia", "Hugo", "Iris", "Jon"]
_ITEMS = ["apples", "books", "coins", "shells", "stamps", "cards", "beads", "marbles"]


def _arith(rng: random.Random, level: int):
    """A chain of `level + 1` operations on small integers, evaluated left to right with steps shown."""
    value = rng.randint(2, 9 + 5 * level)
    text, steps = str(value), []
    for _ in range(level + 1):
        op = rng.choice("+-*") if level > 1 else rng.choice("+-")
        b = rng.randint(2, 9 if op == "*" else 10 + 10 * level)
        new = {"+": value + b, "-": value - b, "*": value * b}[op]
        steps.append(f"{value} {op} {b} = {new}.")
        text, value = f"({text} {op} {b})", new
    return f"Compute {text}.", steps, value


def _word(rng: random.Random, level: int):
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    have = rng.randint(3, 20 + 10 * level)
    sentences, steps, value = [f"{name} has {have} {item}."], [], have
    for _ in range(level + 1):
        kind = rng.choice(["buy", "give", "double"] if level > 1 else ["buy", "give"])
        if kind == "buy":
            b = rng.randint(2, 15)
            sentences.append(f"Then {name} gets {b} more.")
            steps.append(f"{value} + {b} = {value + b}.")
            value += b
        elif kind == "give":
            b = rng.randint(1, max(1, value - 1))
            sentences.append(f"Then {name} gives away {b}.")
            steps.append(f"{value} - {b} = {value - b}.")
            value -= b
        else:
            sentences.append(f"Then the number of {item} doubles.")
            steps.append(f"{value} * 2 = {value * 2}.")
            value *= 2
    sentences.append(f"How many {item} does {name} have now?")
    return " ".join(sentences), steps, value


def _make(rng: random.Random, level: int) -> Problem:
    text, steps, value = (_arith if rng.random() < 0.5 else _word)(rng, level)
    solution = "<think> " + " ".join(steps) + " </think> The answer is \\boxed{" + str(value) + "}."
    pid = hashlib.sha1(text.encode()).hexdigest()[:12]
    return Problem(id=pid, problem=text, answer=str(value), solution=solution, level=level)


def split_of(problem_text: str, test_fraction: float = 0.2) -> str:
    """Split by a hash of the problem text: the same problem always lands in the same split."""
    h = int(hashlib.sha1(problem_text.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "test" if h < test_fraction else "train"


def synthetic_math(n: int, split: str = "train", levels=(1, 2, 3), seed: int = 0) -> list[Problem]:
    """n distinct problems of `split` (train/test never share a problem), cycling through `levels`; seeded."""
    if split not in ("train", "test"):
        raise ValueError(f"split={split!r} is not one of train, test")
    if n < 0:
        raise ValueError(f"n={n} must be >= 0")
    bad = [lv for lv in levels if not 1 <= int(lv) <= 5]
    if bad:
        raise ValueError(f"levels {bad} must lie in 1..5")
    rng = random.Random(f"{seed}")
    out, seen = [], set()
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 200 * (n + 10):
            raise ValueError(f"could not draw {n} distinct {split} problems at levels {list(levels)}")
        p = _make(rng, int(levels[len(out) % len(levels)]))
        if p.id in seen or split_of(p.problem) != split:
            continue
        seen.add(p.id)
        out.append(p)
    return out


# ---------------- loaders ----------------
def _read_jsonl(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load_gsm8k(path: str) -> list[Problem]:
    """GSM8K-style jsonl: `question`, and `answer` ending in `#### n`."""
    out = []
    for i, rec in enumerate(_read_jsonl(path)):
        for key in ("question", "answer"):
            if key not in rec:
                raise ValueError(f"{path}: row {i} has no field {key!r} (fields: {sorted(rec)})")
        if "####" not in rec["answer"]:
            raise ValueError(f"{path}: row {i} answer has no '#### <number>' line")
        sol, gold = rec["answer"].rsplit("####", 1)
        out.append(Problem(id=f"gsm8k-{i}", problem=rec["question"], answer=gold.strip().replace(",", ""),
                           solution=sol.strip()))
    return out


def load_math(path: str) -> list[Problem]:
    """MATH / AIME-style jsonl: `problem` and `answer`, or a `solution` whose last \\boxed{} is the answer."""
    out = []
    for i, rec in enumerate(_read_jsonl(path)):
        if "problem" not in rec:
            raise ValueError(f"{path}: row {i} has no field 'problem' (fields: {sorted(rec)})")
        gold = rec.get("answer")
        if gold is None and "solution" in rec:
            gold = last_boxed(rec["solution"])
        if gold is None:
            raise ValueError(f"{path}: row {i} has neither 'answer' nor a boxed answer in 'solution'")
        out.append(Problem(id=str(rec.get("id", f"math-{i}")), problem=rec["problem"], answer=str(gold),
                           solution=rec.get("solution", ""), level=int(rec.get("level", 0) or 0)
                           if str(rec.get("level", 0)).isdigit() else 0))
    return out


def load_tasks(spec: str, n: int | None = None, seed: int = 0) -> list[Problem]:
    """`synthetic:test` / `synthetic:train[:levels=1,2]`, a GSM8K- or MATH-style .jsonl, or a HF dataset id."""
    if spec.startswith("synthetic"):
        parts = spec.split(":")
        split = parts[1] if len(parts) > 1 else "test"
        levels = (1, 2, 3)
        for extra in parts[2:]:
            if extra.startswith("levels="):
                levels = tuple(int(x) for x in extra[len("levels="):].split(","))
        return synthetic_math(n if n is not None else 100, split, levels, seed)
    if os.path.isfile(spec):
        first = _read_jsonl(spec)[:1]
        probs = load_gsm8k(spec) if first and "question" in first[0] else load_math(spec)
    else:
        import datasets
        ds = datasets.load_dataset(spec, split="test")
        probs = [Problem(id=f"{spec}-{i}", problem=r.get("question") or r["problem"],
                         answer=(r["answer"].rsplit("####", 1)[-1] if "####" in str(r.get("answer", ""))
                                 else str(r.get("answer") or last_boxed(r.get("solution", "")))).strip())
                 for i, r in enumerate(ds)]
    return probs[:n] if n is not None else probs


def prompt_of(problem: Problem) -> str:
    return (f"{problem.problem}\nThink step by step inside <think> </think>, then give the final answer as "
            "\\boxed{answer}.")
