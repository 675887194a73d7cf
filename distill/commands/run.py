"""`hybrid-distill run`: the whole pipeline from one recipe folder (distill.pipeline)."""
from __future__ import annotations

import os

from .args import add_command, claim, need_file, out_flags


def add_parser(subparsers) -> None:
    rn = add_command(subparsers, "run",
                     help="the whole pipeline from one recipe folder: distill, SFT, RL, eval, bench, report")
    rn.add_argument("recipe", help="recipe folder, e.g. recipes/smollm2-135m")
    rn.add_argument("--profile", default=None, help="profile applied in every stage file that has it (e.g. quick)")
    rn.add_argument("--set", action="append", help="file.key=value override, e.g. sft.max_steps=5 (repeatable)")
    rn.add_argument("--out", default=None, help="run folder (default runs/<recipe>[-<profile>])")
    out_flags(rn, resume=True, changes=True)
    rn.add_argument("--keep-checkpoints", action="store_true",
                    help="keep the resume checkpoints of finished stages (default: delete them, keep final models)")
    rn.add_argument("--until", default=None, metavar="STAGE",
                    help="stop once STAGE is finished (e.g. distill: measure the hybrids, then go on with --resume)")
    rn.set_defaults(func=main)


def main(args) -> int:
    from ..pipeline import load_pipeline, run_pipeline

    recipe = load_pipeline(need_file(args.recipe, "recipe folder"), profile=args.profile, overrides=args.set or [])
    out = args.out or os.path.join("runs", os.path.basename(os.path.abspath(args.recipe)) +
                                   (f"-{args.profile}" if args.profile else ""))
    inputs = [args.recipe, recipe.distill.teacher, recipe.distill.data.source, recipe.distill.data.corpus.prompts]
    inputs += [getattr(cfg, k, None) for cfg in (recipe.sft, recipe.rl) if cfg is not None for k in ("model", "data")]
    with claim(args, out, inputs, resume=args.resume):
        result = run_pipeline(recipe, out, resume=args.resume, keep_checkpoints=args.keep_checkpoints,
                              allow_changes=args.allow_changes, until=args.until)
    from ..train import process_state
    if "until" in result:
        if process_state().is_main_process:
            print(f"stopped after {result['until']}; finished: {', '.join(result['stages'])}. "
                  f"Continue with --resume.")
        return 0
    if process_state().is_main_process:
        print(open(os.path.join(out, "report.md")).read())
        print(f"-> {out}/report.md")
    return 0
