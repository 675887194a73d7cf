"""What the command modules share: argparse types that check a flag's value, the flags every command takes,
the --out flags, and `claim`, which checks and locks a command's output folder."""
from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys

from ..runfolder import RunLock, check_out, is_main_rank, mark


def int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--attn-layers={text!r} is not a comma-separated list of integers") from None


def _bounded(kind, ok, what: str):
    """An argparse type: `kind(text)` that must satisfy `ok`, else an error saying `what` it must be."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") \
                from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"{value} {what}")
        return value
    return parse


positive = _bounded(int, lambda v: v >= 1, "must be >= 1")
unit = _bounded(float, lambda v: 0 < v <= 1, "must lie in (0, 1]")  # a probability mass (top-p)
rate = _bounded(float, lambda v: 0 < v < float("inf"), "must be a positive number per second")


def budget(text: str) -> float | str:
    """An argparse type: a wall-clock budget, seconds or "Nx" (N times the reference's seconds per sample)."""
    from ..evaluation.budget import parse_budget
    try:
        return parse_budget(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


_UNITS = {"": 1.0, "g": 1.0, "gb": 1.0, "gib": 1.0, "m": 2 ** -10, "mb": 2 ** -10, "mib": 2 ** -10,
          "t": 2 ** 10, "tb": 2 ** 10, "tib": 2 ** 10}


def memory_size(text: str) -> float:
    """An argparse type: a memory size in GB (2**30 bytes, as GPU memory is quoted: 80GB, 24GiB, 141 GB, 512MB;
    a bare number is GB)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    if m is None or m.group(2).lower() not in _UNITS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a memory size such as 80GB, 24GiB or 512MB")
    value = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive memory size")
    return value


def param(text: str):
    """An argparse type: name=value, the value read as YAML."""
    from ..recipe import yaml_value
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--param {text!r} must look like name=value")
    k, v = text.split("=", 1)
    return k, yaml_value(v)


def need_file(path, flag: str) -> str:
    """A path the command reads: an error naming the flag when it is missing (not a traceback from deep inside)."""
    if not os.path.exists(os.path.expanduser(path)):
        raise ValueError(f"{flag} {path}: no such file or folder")
    return path


@contextlib.contextmanager
def claim(args, out: str, inputs=(), resume: bool = False, file: bool = False):
    """Check `out` against the command's inputs and earlier results (distill.runfolder), note that this project
    writes it, and hold its lock while the command runs. Only rank 0 of a distributed launch does this."""
    if not is_main_rank():
        yield
        return
    check_out(out, inputs, resume=resume, overwrite=getattr(args, "overwrite", False))
    if not file:
        mark(out, args.command)
    with RunLock(out, command=" ".join(sys.argv), file=file):
        yield


def common_flags() -> argparse.ArgumentParser:
    """Flags every command takes (SUPPRESS: a subcommand's default must not undo the same flag given before it)."""
    c = argparse.ArgumentParser(add_help=False)
    c.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help="show the traceback of an error (also HYBRID_DEBUG=1)")
    return c


def add_command(subparsers, name: str, **kw) -> argparse.ArgumentParser:
    """A sub-parser `name` with the flags every command takes."""
    return subparsers.add_parser(name, parents=[common_flags()], **kw)


def out_flags(parser, resume: bool = False, changes: bool = False) -> None:
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a non-empty --out written earlier by this project")
    if resume:
        parser.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    if changes:
        parser.add_argument("--allow-changes", action="store_true",
                            help="resume although the recipe differs from the stored one (recorded in "
                                 "recipe_history.jsonl)")
