"""`hybrid-distill summary`: one table over finished distill runs."""
from __future__ import annotations

import json
import os

from ..runfolder import check_out
from .args import add_command


def add_parser(subparsers) -> None:
    su = add_command(subparsers, "summary", help="one table over finished distill runs")
    su.add_argument("runs", nargs="+")
    su.add_argument("--out", default=None, help="also write the table to this markdown file")
    su.set_defaults(func=main)


def main(args) -> int:
    from ..conversion.schedule import summary_table

    summaries = []
    for run in args.runs:
        path = os.path.join(run, "summary.json")
        if not os.path.isfile(path):
            raise ValueError(f"{run} has no summary.json (is it a finished distill run?)")
        with open(path) as f:
            summaries.append(json.load(f))
    names = [os.path.basename(os.path.normpath(run)) for run in args.runs]
    table = summary_table(*summaries, names=names if len(summaries) > 1 else None)
    print(table)
    if args.out:
        check_out(args.out, args.runs, overwrite=True)  # a table is cheap to remake: only inputs are protected
        with open(args.out, "w") as f:
            f.write(table + "\n")
    return 0
