"""The `hybrid-distill` command.

    hybrid-distill convert --teacher smollm2-135m --attn-ratio 0.5 --out runs/smollm2-h50
    hybrid-distill generate --model runs/smollm2-h50 --prompt "What is 12 * 7?"
"""
# The docstring above is the top-level help text. Each command lives in its own module of distill/commands/
# (`add_parser(subparsers)` and `main(args)`); this module only collects them and turns errors into exit codes.
from __future__ import annotations

import argparse
import os
import re
import sys

import yaml

from .commands import (bench, convert, corpus, distill, export, generate, imports, lm_eval, plan, posttrain, run,
                       select, summary)
from .commands import eval as evaluate
from .commands.args import common_flags

# The commands in the order `hybrid-distill --help` lists them.
COMMANDS = (convert, generate, distill, select, bench, evaluate, run, plan, posttrain, lm_eval, imports, export,
            summary, corpus)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hybrid-distill", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter, parents=[common_flags()])
    sub = p.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return p


# Expected failures: bad input, missing or broken files, an unreachable model. They get one line and exit code 2;
# anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, OSError, yaml.YAMLError)


def _one_line(err: BaseException) -> str:
    text = str(err) or type(err).__name__
    if isinstance(err, OSError) and err.filename and str(err.filename) not in text:
        text = f"{err.filename}: {text}"
    return re.sub(r"\s+", " ", text).strip()


def main(argv=None) -> int:
    if argv is None:  # the command line itself (not a call from Python): run on tcmalloc where installed
        from .allocator import rerun_under_tcmalloc
        try:
            rerun_under_tcmalloc()
        except ValueError as err:
            print(f"hybrid-distill: error: {err}", file=sys.stderr)
            return 2
    from .train import NonFiniteLoss  # here, not at the top: `hybrid-distill --help` stays fast

    args = build_parser().parse_args(argv)
    debug = getattr(args, "debug", False) or os.environ.get("HYBRID_DEBUG", "") not in ("", "0")
    name = f"hybrid-distill {args.command}"
    try:
        return args.func(args)
    except NonFiniteLoss as err:
        if debug:
            raise
        print(f"{name}: stopped: {_one_line(err)}", file=sys.stderr)
        return 3
    except USER_ERRORS as err:
        if debug:
            raise
        print(f"{name}: error: {_one_line(err)}", file=sys.stderr)
        print(f"{name}: (--debug or HYBRID_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
