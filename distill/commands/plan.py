"""`hybrid-distill plan`: parameters, memory per GPU, tokens and GPU-hours of every training stage of a recipe,
and whether each fits, from the recipe folder alone (models on the meta device; distill.plan)."""
from __future__ import annotations

import contextlib

from .args import add_command, claim, memory_size, need_file, out_flags, positive, rate

RATE_HELP = ("training speed per GPU in input tokens/s, for GPU-hours (default: 40%% MFU of an H100's 989 TFLOP/s "
             "dense bf16 peak over each stage's model FLOPs per token, i.e. 6N per token when every weight "
             "trains; see distill/plan.py)")


def add_parser(subparsers) -> None:
    pl = add_command(subparsers, "plan", help="parameters, memory per GPU, tokens and GPU-hours of a recipe's "
                                              "stages, and whether they fit (nothing is loaded)")
    pl.add_argument("recipe", help="recipe folder with distill.yaml and teacher_config.json, e.g. recipes/llama3.2-3b")
    pl.add_argument("--gpus", type=positive, default=1, help="GPUs, one data-parallel rank each (default 1)")
    pl.add_argument("--strategy", choices=("ddp", "fsdp2", "zero3"), default="ddp",
                    help="ddp replicates weights, gradients and AdamW state; fsdp2 and zero3 shard them over the GPUs "
                         "(recipes/accelerate/<strategy>.yaml)")
    pl.add_argument("--gpu-memory", type=memory_size, default=80.0, metavar="SIZE",
                    help="memory of one GPU, e.g. 80GB (GB = 2^30 bytes; default 80GB)")
    pl.add_argument("--tokens-per-s-per-gpu", type=rate, default=None, metavar="X", help=RATE_HELP)
    pl.add_argument("--profile", default=None, help="profile applied in every stage file that has it (e.g. quick)")
    pl.add_argument("--set", action="append", help="file.key=value override, e.g. sft.batch_size=2 (repeatable)")
    pl.add_argument("--out", default=None, help="also write plan.json and plan.md to this folder")
    out_flags(pl)
    pl.set_defaults(func=main)


def main(args) -> int:
    from ..plan import plan_markdown, plan_recipe, write_plan

    need_file(args.recipe, "recipe folder")
    with claim(args, args.out, inputs=[args.recipe]) if args.out else contextlib.nullcontext():
        plan = plan_recipe(args.recipe, gpus=args.gpus, strategy=args.strategy, gpu_memory_gb=args.gpu_memory,
                           tokens_per_s_per_gpu=args.tokens_per_s_per_gpu, profile=args.profile,
                           overrides=args.set or [])
        print(plan_markdown(plan))
        if args.out:
            write_plan(plan, args.out)
    return 0
