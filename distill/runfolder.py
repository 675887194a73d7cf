"""Output folders that commands can trust: never on top of an input, never reused by accident, one writer at a
time, and a record of the recipe that actually ran.

- `check_out(out, inputs, resume, overwrite)`: an `--out` that equals, contains or lies inside one of the
  command's local inputs is refused (writing it would destroy the input); so is a non-empty `--out` unless the
  command resumes (`--resume`) or replaces it (`--overwrite`). `--overwrite` deletes the folder only where this
  project wrote it (it holds MARKER), so a mistyped `--out ~` never removes anything it did not make.
- `RunLock(out)`: `out/.lock` (for a command that writes one file, `out.lock` beside it) holds the writer's PID, host and start time; a second run on the same folder stops
  with a message naming the holder. A lock whose PID is dead on this host is stale and taken over with a warning.
- `record_recipe(out, recipe, resume, allow_changes)`: the first run writes `recipe.yaml`; a resumed run compares
  the recipe it is given with it and refuses with the changed keys (a resumed optimizer and schedule would keep
  the old settings while the record claimed the new ones), unless `allow_changes`, which appends the changes to
  `recipe_history.jsonl` (the changes and the whole recipe now in force) and leaves `recipe.yaml` as the recipe
  the run started with; a later resume compares against the newest history entry.
- `Record(path)`: the finished steps of a run and what each measured (stages.json, progress.json), written
  atomically after every step; a resumed run skips what it names.
"""
from __future__ import annotations

import datetime
import json
import logging
import os
import shutil
import socket

import yaml

logger = logging.getLogger(__name__)

MARKER = ".hybrid-distill"
LOCK = ".lock"


class RunLocked(ValueError):
    """Another live process holds the run folder's lock."""


def _real(path: str) -> str:
    return os.path.realpath(os.path.expanduser(path))


def _within(inner: str, outer: str) -> bool:
    return inner == outer or inner.startswith(outer.rstrip(os.sep) + os.sep)


def overlap(out: str, inputs) -> str | None:
    """The first local input that `out` equals, contains or lies inside (None if none does). Inputs that are not
    local paths (hub ids, aliases, numbers) are ignored."""
    target = _real(out)
    for item in inputs:
        if not isinstance(item, str) or not item or not os.path.exists(os.path.expanduser(item)):
            continue
        src = _real(item)
        if _within(target, src) or _within(src, target):
            return item
    return None


def _is_empty(path: str) -> bool:
    if os.path.isdir(path):
        return not any(name != LOCK for name in os.listdir(path))
    return not os.path.exists(path) or os.path.getsize(path) == 0


def check_out(out: str, inputs=(), resume: bool = False, overwrite: bool = False, what: str = "--out") -> None:
    """Refuse an output that would destroy an input or silently reuse earlier results; with overwrite, remove an
    earlier output of this project first. `out` may be a folder or, for commands that write one file, a file."""
    if not out:
        raise ValueError(f"{what} is empty")
    hit = overlap(out, inputs)
    if hit is not None:
        raise ValueError(f"{what} {out} overlaps the input {hit}: writing there would overwrite it; choose a "
                         f"folder outside the inputs")
    if _is_empty(out) or resume:
        return
    if not overwrite:
        raise ValueError(f"{what} {out} is not empty: pass --resume to continue the run in it, --overwrite to "
                         f"replace it, or choose another {what}")
    if os.path.isfile(out):
        os.remove(out)
    elif os.path.isfile(os.path.join(out, MARKER)):
        lock = read_lock(lock_path(out))
        if lock is not None and _alive(lock):
            raise RunLocked(f"{out} is in use by {_describe(lock)}: stop that run first")
        shutil.rmtree(out)
    else:
        raise ValueError(f"{what} {out} is not empty and was not written by hybrid-distill (no {MARKER} file): "
                         f"--overwrite removes only folders this project made; remove it yourself or choose "
                         f"another {what}")


def mark(out: str, command: str) -> None:
    """Note in `out` that this project writes it (what `--overwrite` may later remove)."""
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, MARKER)
    if not os.path.exists(path):
        with open(path, "w") as f:
            json.dump({"command": command, "created": _now()}, f)
            f.write("\n")


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


# ---------------- the lock ----------------
def lock_path(out: str, file: bool = False) -> str:
    """Where the lock of output `out` lives: inside a folder, beside a file."""
    return out + LOCK if file else os.path.join(out, LOCK)


def read_lock(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {"pid": None, "host": None, "started": "?"}  # unreadable: treat as held by an unknown writer


def _alive(lock: dict) -> bool:
    if lock.get("host") != socket.gethostname() or not isinstance(lock.get("pid"), int):
        return True  # another machine (shared filesystem) or unknown: assume it lives
    try:
        os.kill(lock["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _describe(lock: dict) -> str:
    return f"PID {lock.get('pid')} on {lock.get('host')} (since {lock.get('started')})"


class RunLock:
    """`with RunLock(out): ...`: exclusive use of a run folder by this process (see the module docstring).
    Re-entrant within one process, so a command that calls another stage on the same folder does not block."""

    _held: dict[str, int] = {}

    def __init__(self, out: str, command: str = "", file: bool = False):
        self.out, self.command = out, command
        self.path = lock_path(out, file)

    def __enter__(self):
        key = _real(self.path)
        if key in RunLock._held:
            RunLock._held[key] += 1
            return self
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": _now(), "command": self.command}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                held = read_lock(self.path)
                if held is None:
                    continue  # released between the two calls
                if _alive(held):
                    raise RunLocked(f"{self.out} is in use by {_describe(held)}: wait for it to finish, stop it, "
                                    f"or choose another --out") from None
                logger.warning("taking over the stale lock of %s (%s is not running)", self.out, _describe(held))
                os.remove(self.path)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(record, f)
            RunLock._held[key] = 1
            return self
        raise RunLocked(f"could not take the lock {self.path}")

    def __exit__(self, *exc):
        key = _real(self.path)
        RunLock._held[key] -= 1
        if not RunLock._held[key]:
            del RunLock._held[key]
            try:
                os.remove(self.path)
            except FileNotFoundError:
                pass
        return False


def is_main_rank() -> bool:
    """Rank 0 under `accelerate launch` / torchrun (the one process that writes run-folder records)."""
    return int(os.environ.get("RANK", "0")) == 0


# ---------------- the recipe record ----------------
def _flat(data, prefix: str = "") -> dict:
    if isinstance(data, dict):
        out = {}
        for k, v in data.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out or {prefix.rstrip("."): {}}
    return {prefix.rstrip("."): data}


def recipe_changes(old: dict, new: dict, defaults: dict | None = None) -> dict[str, tuple]:
    """{dotted key: (stored value, given value)} for every key whose value differs (or exists on one side only). A
    key the stored recipe lacks is no change where the given value is that key's default (`defaults`, the same
    shape as `new`): a setting added to the toolkit after the run started, left as it was."""
    a, b, d = _flat(old), _flat(new), _flat(defaults or {})
    missing = "<absent>"
    return {k: (a.get(k, missing), b.get(k, missing)) for k in sorted(set(a) | set(b)) if a.get(k, missing) !=
            b.get(k, missing) and not (k not in a and k in d and d[k] == b[k])}


def _in_force(out: str, path: str) -> dict:
    """The recipe a run last ran with: the newest history entry's, else recipe.yaml."""
    history = os.path.join(out, "recipe_history.jsonl")
    if os.path.isfile(history):
        with open(history) as f:
            lines = [line for line in f if line.strip()]
        for n in range(len(lines), 0, -1):
            try:
                return json.loads(lines[n - 1])["recipe"]
            except (ValueError, KeyError):
                logger.warning("%s line %d: unreadable history entry, skipped", history, n)
    try:
        with open(path) as f:
            return yaml.safe_load(f) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: cannot parse the stored recipe ({err})") from None


def record_recipe(out: str, recipe: dict, resume: bool, allow_changes: bool = False, name: str = "recipe.yaml",
                  defaults: dict | None = None):
    """Write the recipe of a new run, or check a resumed run's recipe against it (see the module docstring);
    `defaults`: the recipe's default values (recipe_changes), so that a run started before a setting existed
    resumes while that setting keeps its default."""
    path = os.path.join(out, name)
    # through YAML and back, so that tuples, numbers and nested dataclasses compare as they are stored
    given = yaml.safe_load(yaml.safe_dump(recipe, sort_keys=False))
    if resume and os.path.isfile(path):
        stored = _in_force(out, path)
        defaults = yaml.safe_load(yaml.safe_dump(defaults, sort_keys=False)) if defaults else None
        changes = recipe_changes(stored, given, defaults)
        if not changes:
            return
        shown = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changes.items())
        if not allow_changes:
            raise ValueError(f"{out}: the recipe differs from the one this run started with ({shown}). A resumed "
                             f"run keeps its optimizer and schedule; pass --allow-changes to continue with the "
                             f"changes anyway (recorded in recipe_history.jsonl), or start a new --out")
        logger.warning("%s: resuming with recipe changes %s", out, shown)
        with open(os.path.join(out, "recipe_history.jsonl"), "a") as f:
            f.write(json.dumps({"resumed": _now(), "changes": {k: list(v) for k, v in changes.items()},
                                "recipe": given}) + "\n")
        return
    os.makedirs(out, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        yaml.safe_dump(given, f, sort_keys=False)
    os.replace(tmp, path)


# ---------------- the record of finished steps ----------------
class Record:
    """A JSON file of what a run has finished (the pipeline's stages.json, the schedule's progress.json): {name:
    what that step measured}. It is rewritten whole, through a temporary file, after every step, so that an
    interrupted run finds a complete record and resumes after the last step it names. Only the writer process
    (`write=True`) touches the file; the others keep the same record in memory."""

    def __init__(self, path: str, write: bool = True):
        self.path, self.write = path, write
        self.done: dict[str, dict] = {}
        if os.path.isfile(path):
            with open(path) as f:
                self.done = json.load(f)

    def finish(self, name: str, record: dict) -> None:
        self.done[name] = record
        if not self.write:
            return
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.done, f, indent=1)
        os.replace(tmp, self.path)
