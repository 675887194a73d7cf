"""`hybrid-distill sft | rl | dpo`: the TRL stages (distill.posttrain), one shape: a YAML of the stage's args
class, a profile, overrides, an output folder."""
from __future__ import annotations

from ..runfolder import is_main_rank, record_recipe
from .args import add_command, claim, need_file, out_flags

TRL_STAGES = {  # command -> (module, args class, run function)
    "sft": ("sft", "SFTArgs", "run_sft"), "rl": ("rl", "RLArgs", "run_rl"), "dpo": ("dpo", "DPOArgs", "run_dpo"),
}


def add_parser(subparsers) -> None:
    for name, what in (("sft", "SFT on reasoning traces (TRL SFTTrainer)"),
                       ("rl", "GRPO with verifiable rewards (TRL GRPOTrainer)"),
                       ("dpo", "DPO on preference pairs (TRL DPOTrainer), optional last stage")):
        st = add_command(subparsers, name, help=what)
        module, cls, _ = TRL_STAGES[name]
        st.add_argument("--config", required=True, help=f"YAML of distill.posttrain.{module}.{cls}")
        st.add_argument("--profile", default=None)
        st.add_argument("--set", action="append", help="key=value override (repeatable)")
        st.add_argument("--out", default=None)
        out_flags(st, resume=True, changes=True)
        st.set_defaults(func=main)


def main(args) -> int:
    import dataclasses
    import importlib

    from ..recipe import load_recipe

    module, cls, run = TRL_STAGES[args.command]
    mod = importlib.import_module(f"distill.posttrain.{module}")
    cfg = load_recipe(need_file(args.config, "--config"), cls=getattr(mod, cls), profile=args.profile,
                      overrides=args.set or [])
    if args.out:
        cfg.out = args.out
    inputs = [args.config, cfg.model, cfg.data, getattr(cfg, "teacher", None)]
    with claim(args, cfg.out, inputs, resume=args.resume):
        if is_main_rank():
            record_recipe(cfg.out, dataclasses.asdict(cfg), resume=args.resume, allow_changes=args.allow_changes,
                          defaults=dataclasses.asdict(type(cfg)()))
        print(f"-> {getattr(mod, run)(cfg, resume=args.resume)}")
    return 0
