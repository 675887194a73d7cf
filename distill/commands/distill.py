"""`hybrid-distill distill`: incremental layer replacement from one recipe (distill.conversion.schedule)."""
from __future__ import annotations

import os

from .args import add_command, claim, need_file, out_flags


def add_parser(subparsers) -> None:
    d = add_command(subparsers, "distill",
                    help="incremental layer replacement: select, transfer, align, KD (a recipe)")
    d.add_argument("--config", required=True, help="recipes/<model>/distill.yaml")
    d.add_argument("--profile", default=None, help="a profile of the recipe (e.g. demo)")
    d.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a recipe key, e.g. kd.steps=10")
    d.add_argument("--out", default=None, help="output folder (default runs/<recipe folder>)")
    out_flags(d, resume=True, changes=True)
    d.set_defaults(func=main)


def main(args) -> int:
    from ..conversion.schedule import run_distill, summary_table
    from ..recipe import load_recipe

    recipe = load_recipe(need_file(args.config, "--config"), profile=args.profile, overrides=args.set or [])
    out = args.out or os.path.join("runs", os.path.basename(os.path.dirname(os.path.abspath(args.config))))
    inputs = [args.config, recipe.teacher, recipe.data.source, recipe.data.corpus.prompts]
    with claim(args, out, inputs, resume=args.resume):
        summary = run_distill(recipe, out, resume=args.resume, allow_changes=args.allow_changes)
    print(summary_table(summary))
    print(f"-> {out}/summary.md, {out}/final")
    return 0
