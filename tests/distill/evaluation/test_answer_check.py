"""Answer checking is bounded: hostile completions return at once, slow symbolic checks time out in any thread and
are counted, plain numbers never reach the checker process, and box extraction is linear."""
import logging
import os
import random
import subprocess
import sys
import threading
import time

import pytest

from distill.evaluation import evaluate

from distill.posttrain import rewards

from distill.evaluation import tasks
from distill.evaluation.tasks import Problem, check_stats, extract_answer, is_correct, last_boxed

TOWER = r"\boxed{10^{10^{10}}}"


def _finishes(seconds: float, fn, *args, **kw):
    """fn(*args, **kw) run in a thread: (result, elapsed seconds); fails, instead of hanging, past `seconds`."""
    box = {}

    def run():
        t = time.perf_counter()
        box["result"] = fn(*args, **kw)
        box["elapsed"] = time.perf_counter() - t

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"{getattr(fn, '__name__', fn)} still running after {seconds} s"
    assert "result" in box, f"{getattr(fn, '__name__', fn)} raised"
    return box["result"], box["elapsed"]


def _diff(before: dict) -> dict:
    return {k: v - before[k] for k, v in check_stats().items() if v != before[k]}


@pytest.fixture
def warm():
    """A started, idle checker process, so that a timed call measures the check and not the start-up."""
    assert is_correct(r"\boxed{\sqrt{9}}", "3")


def test_exponent_tower_is_wrong_without_a_symbolic_parse():
    before = check_stats()
    ok, secs = _finishes(20, is_correct, TOWER, "42")
    assert ok is False and secs < 2
    assert _diff(before) == {"checks": 1, "rejected": 1}
    for tower in ["2**3**4", "{10}^{{10}^{10}}", "x^{20000}", "10^10^10"]:
        assert tasks._rejection(tower, tasks.MAX_ANSWER_CHARS), tower
    for fine in ["e^{-x^2}", "2^{2023}", "10^{-5}", "x^2+7x+10", r"\left(1, \frac{\sqrt{3}}{2}\right]"]:
        assert tasks._rejection(fine, tasks.MAX_ANSWER_CHARS) is None, fine
    assert tasks._rejection("x+" * 101, tasks.MAX_ANSWER_CHARS) == "longer than 200 characters"
    assert "deeper" in tasks._rejection("{" * 11 + "1" + "}" * 11, tasks.MAX_ANSWER_CHARS)


def test_ten_thousand_unclosed_boxes_return_at_once():
    text = "\\boxed{" * 10000 + "1"
    boxed, secs = _finishes(20, last_boxed, text)
    assert boxed is None and secs < 1
    ok, secs = _finishes(20, is_correct, text, "42")
    assert ok is False and secs < 1


def test_two_thousand_nested_unclosed_boxes_are_cheap():
    rollout = "".join(f"\\boxed{{ so {i} " for i in range(2000))

    def ten_checks():
        return [is_correct(rollout, "1999") for _ in range(10)]
    oks, secs = _finishes(20, ten_checks)
    assert oks == [True] * 10 and secs < 1  # no box closes: the last number answers
    closed = rollout + "}"  # only the innermost box closes
    assert _finishes(20, extract_answer, closed)[0] == "so 1999"


def _quadratic_last_boxed(text):
    """The definition: scan forward from each box, last first, until one closes."""
    start = text.rfind(tasks.BOXED)
    while start != -1:
        i, depth = start + len(tasks.BOXED), 1
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            return text[start + len(tasks.BOXED):i - 1].strip()
        start = text.rfind(tasks.BOXED, 0, start)
    return None


def test_linear_box_extraction_matches_the_quadratic_definition():
    rng = random.Random(0)
    pieces = ["\\boxed{", "\\boxed{", "{", "}", "}", "a", "1", " ", "\\boxed", "\\frac{1}{2}"]
    found = 0
    for _ in range(400):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 30)))
        assert last_boxed(text) == _quadratic_last_boxed(text), text
        found += last_boxed(text) is not None
    assert 100 < found < 400  # both outcomes are exercised
    assert last_boxed(r"\boxed{1} \boxed{2} \boxed{ {") == "2"  # an unbalanced later box falls back
    assert last_boxed(r"\boxed{a \boxed{b} c") == "b"


def test_plain_numbers_are_compared_exactly_without_the_checker(monkeypatch):
    def no_worker(*args):
        raise AssertionError("a plain number reached the checker process")
    monkeypatch.setattr(tasks, "_symbolic", no_worker)
    before = check_stats()
    pairs = [("1/2", "0.5"), (r"\frac{1}{2}", "0.5"), ("1,000", "1000"), ("-3", "-3.0"), (r"-\dfrac{3}{4}", "-0.75"),
             ("$12$", "12"), ("0.333333", r"\frac{1}{3}")]  # a decimal rounds to 6 places, as math-verify does
    assert [is_correct(rf"\boxed{{{p}}}", g) for p, g in pairs] == [True] * len(pairs)
    assert not is_correct(r"\boxed{1/3}", "0.33") and not is_correct(r"\boxed{2}", "3")
    assert not is_correct(r"\boxed{3}", "3.0000006") and not is_correct("so 1,000 apples", "100")
    assert _diff(before) == {"checks": len(pairs) + 4, "exact": len(pairs) + 4}


def test_symbolic_forms_go_to_the_checker():
    before = check_stats()
    assert is_correct(r"\boxed{\sqrt{4}}", "2") and is_correct(r"\boxed{x+1}", "1+x")
    assert is_correct(r"\boxed{e^{-x^2}}", "e^{-x^{2}}") and not is_correct(r"\boxed{x^2}", "12")
    assert _diff(before) == {"checks": 4, "symbolic": 4}


def _slow_check(monkeypatch, seconds=30.0):
    monkeypatch.setattr(tasks, "_SLEEP_FOR_TESTS", seconds)  # the checker sleeps this long before each check


def test_a_slow_check_times_out_at_the_limit_counts_as_wrong_and_restarts_the_checker(warm, monkeypatch):
    worker = tasks._pool().idle[-1]
    _slow_check(monkeypatch)
    before = check_stats()
    ok, secs = _finishes(20, is_correct, r"\boxed{\sqrt{4}}", "2", timeout=0.5)
    assert ok is False and 0.5 <= secs < 1.5
    assert _diff(before) == {"checks": 1, "symbolic": 1, "timeouts": 1}
    assert worker.proc.poll() is not None  # killed, not left computing
    assert worker not in tasks._pool().live and len(tasks._pool().live) <= tasks.MAX_WORKERS
    monkeypatch.setattr(tasks, "_SLEEP_FOR_TESTS", 0.0)
    assert is_correct(r"\boxed{\sqrt{4}}", "2")  # the fresh checker judges again


def test_the_limit_holds_in_a_worker_thread_and_comes_from_the_environment(warm, monkeypatch):
    _slow_check(monkeypatch)
    monkeypatch.setenv("HYBRID_ANSWER_TIMEOUT", "0.4")
    before, box = check_stats(), {}

    def check():
        t = time.perf_counter()
        box["ok"], box["secs"] = is_correct(r"\boxed{x+1}", "1+x"), time.perf_counter() - t
    thread = threading.Thread(target=check)
    thread.start()
    thread.join(20)
    assert not thread.is_alive() and box["ok"] is False and 0.4 <= box["secs"] < 1.4
    assert _diff(before)["timeouts"] == 1


def test_the_limit_is_validated(monkeypatch):
    with pytest.raises(ValueError, match="timeout=0"):
        is_correct(r"\boxed{1}", "1", timeout=0)
    monkeypatch.setenv("HYBRID_ANSWER_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="HYBRID_ANSWER_TIMEOUT='soon'"):
        is_correct(r"\boxed{1}", "1")
    monkeypatch.setenv("HYBRID_ANSWER_TIMEOUT", "2.5")
    assert tasks.answer_timeout() == 2.5 and tasks.answer_timeout(0.1) == 0.1


def test_check_stats_snapshot_and_reset():
    is_correct(r"\boxed{1}", "1")
    snap = check_stats(reset=True)
    assert snap["checks"] >= 1 and set(snap) == {"checks", "exact", "symbolic", "rejected", "timeouts", "errors"}
    assert check_stats() == dict.fromkeys(snap, 0)


def _timing_out(monkeypatch):
    """_symbolic as a check that always runs out of time (without a process to restart)."""
    def timeout(gold, pred, limit):
        tasks._count("symbolic")
        tasks._count("timeouts")
        return False
    monkeypatch.setattr(tasks, "_symbolic", timeout)


def test_correctness_reward_logs_how_many_checks_timed_out(monkeypatch, caplog):
    _timing_out(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="distill.posttrain.rewards"):
        out = rewards.correctness(["p"] * 3, [r"\boxed{x}", r"\boxed{7}", r"\boxed{y}"], answer=["x", "7", "y"])
    assert out == [0.0, 1.0, 0.0]
    assert "2 of 3 answer checks ran past" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="distill.posttrain.rewards"):
        rewards.correctness(["p"], [r"\boxed{7}"], answer=["7"])
    assert "ran past" not in caplog.text


def test_score_records_timed_out_checks(monkeypatch):
    probs = [Problem("a", "p", "7"), Problem("b", "q", "x")]
    assert evaluate.score(probs[:1], [[r"\boxed{7}", "7"]])["check_timeouts"] == 0
    _timing_out(monkeypatch)
    s = evaluate.score(probs, [[r"\boxed{7}", r"\boxed{y}"], [r"\boxed{x}", r"\boxed{x}"]], ks=(2,))
    assert s["pass@1"] == 0.25 and s["check_timeouts"] >= 3  # majority-vote comparisons count too


def test_a_busy_checker_is_killed_at_exit(tmp_path):
    """A process that exits while its checker is stuck leaves no checker running."""
    code = f"""
import sys, threading, time
sys.path.insert(0, {os.path.dirname(os.path.dirname(os.path.dirname(tasks.__file__)))!r})
from distill.evaluation import tasks
assert tasks.is_correct(r"\\boxed{{\\sqrt{{4}}}}", "2")
tasks._SLEEP_FOR_TESTS = 60.0
threading.Thread(target=tasks.is_correct, args=(r"\\boxed{{x}}", "x"), kwargs={{"timeout": 60}}, daemon=True).start()
time.sleep(0.5)
print(next(iter(tasks._pool().live)).proc.pid, flush=True)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    pid = int(out.stdout.split()[-1])
    for _ in range(50):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(pid, 9)
    pytest.fail(f"checker {pid} outlived its parent")

