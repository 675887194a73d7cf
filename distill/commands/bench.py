"""`hybrid-distill bench throughput | train | sampler | ops | linear`: decode throughput of teachers and hybrids
(distill.evaluation.throughput), the speed of a training step (distill.evaluation.training), the engine's sampler
(distill.evaluation.sampler), the kernels and the packed linears (distill.evaluation.kernels)."""
from __future__ import annotations

from .args import add_command, claim, out_flags, positive


def add_parser(subparsers) -> None:
    b = add_command(subparsers, "bench", help="benchmarks")
    bsub = b.add_subparsers(dest="bench", required=True)
    _throughput_flags(add_command(bsub, "throughput", help="decode throughput of teachers and hybrids, side by side"))
    _train_flags(add_command(bsub, "train", help="tokens/s, MFU and memory of one training step, levers side by side"))
    bs = add_command(bsub, "sampler", help="the engine's sampler against the sampler by its definition (multinomial)")
    bs.add_argument("--batch", type=positive, default=16)
    bs.add_argument("--vocab", type=positive, default=49152)
    bs.add_argument("--reps", type=positive, default=20)
    bs.set_defaults(func=main)
    bo = add_command(bsub, "ops", help="the project's kernels against their PyTorch twins, at real mixer shapes")
    bo.add_argument("--batch", nargs="+", type=positive, default=[1, 16, 64])
    bo.add_argument("--reps", type=positive, default=20)
    bo.add_argument("--scan-len", type=positive, default=2048, help="sequence length of the prefill ops")
    bo.add_argument("--scan-batch", nargs="+", type=positive, default=[1, 4], help="batches of the prefill ops")
    bo.add_argument("--attention-len", nargs="*", type=positive, default=[128, 512, 2048],
                    help="KV cache lengths of the decode attention rows (batch 16, float32 and bfloat16)")
    bo.add_argument("--out", default=None)
    out_flags(bo)
    bo.set_defaults(func=main)
    bl = add_command(bsub, "linear",
                     help="F.linear, oneDNN-packed weights and the csrc few-rows kernel at SmolLM2-135M's shapes, "
                          "weights read from memory as in a model (hybrid.prepack)")
    bl.add_argument("--rows", type=positive, default=16, help="input rows (the decode batch)")
    bl.add_argument("--reps", type=positive, default=10)
    bl.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    bl.add_argument("--warm", action="store_true",
                    help="time one weight again and again from the caches (optimistic) instead of from memory")
    bl.set_defaults(func=main)


def _throughput_flags(bt) -> None:
    bt.add_argument("--models", nargs="+", required=True, help="specs; append @attn=R to convert on the fly")
    bt.add_argument("--batch", nargs="+", type=positive, default=[1, 16])
    bt.add_argument("--prompt-len", type=positive, default=256)
    bt.add_argument("--gen-len", type=positive, default=256)
    bt.add_argument("--context", nargs="*", type=positive, default=[], help="context lengths for time-per-token")
    bt.add_argument("--context-batch", type=positive, default=16)
    bt.add_argument("--context-steps", type=positive, default=8)
    bt.add_argument("--no-hf", action="store_true", help="skip the HF generate() baseline")
    bt.add_argument("--kernels", nargs="+", default=None, choices=["torch", "csrc", "mamba_ssm", "auto"],
                    help="run every model under each kernel backend (hybrid.ops.backends.use: mixer kernels and "
                         "one-token attention), side by side")
    bt.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                    help="load every model in this dtype (default: as stored)")
    bt.add_argument("--decode", nargs="+", default=None, choices=["auto", "eager", "static", "graph", "compiled"],
                    help="run every model with each of these engine decode steps (graph: CUDA graphs, CUDA only; "
                         "compiled: the static step through torch.compile, compiled once per model, batch and cache "
                         "length, compile time reported apart, its steps on inductor's GEMMs, --prepack then sets its "
                         "prefill's); default auto alone (graph on CUDA where it applies)")
    bt.add_argument("--prepack", nargs="+", default=None, choices=["on", "off", "csrc", "onednn"],
                    help="run every model with its CPU linear layers on packed weights (on: the csrc few-rows kernel "
                         "where it builds, else oneDNN; csrc or onednn: that one) and/or on F.linear (off), side by "
                         "side; default: on for CPU models (hybrid.prepack)")
    bt.add_argument("--interleave", action="store_true",
                    help="time the --context rows of all models together, one decode step of each in turn (all "
                         "models stay loaded), so drift of the machine's speed lands on every model alike")
    bt.add_argument("--out", default="runs/bench")
    out_flags(bt)
    bt.set_defaults(func=main)


def main(args) -> int:
    return {"throughput": _throughput, "train": _train, "sampler": _sampler, "ops": _ops,
            "linear": _linear}[args.bench](args)


def _throughput(args) -> int:
    from ..evaluation.throughput import ThroughputSettings, run_throughput

    settings = ThroughputSettings(models=args.models, out=args.out, batch=args.batch, prompt_len=args.prompt_len,
                                  gen_len=args.gen_len, context=args.context or [], context_batch=args.context_batch,
                                  context_steps=args.context_steps, hf_baseline=not args.no_hf, kernels=args.kernels,
                                  dtype=args.dtype, decode=args.decode, prepack=args.prepack,
                                  interleave=args.interleave)
    with claim(args, args.out, [m.split("@")[0] for m in args.models]):
        run_throughput(settings)
    print(f"-> {args.out}/bench.json, bench.csv, bench.png")
    return 0


def _sampler(args) -> int:
    from ..evaluation.sampler import run_sampler

    run_sampler(args.batch, args.vocab, args.reps)
    return 0


def _ops(args) -> int:
    from ..evaluation.kernels import run_ops

    if not args.out:
        run_ops(args.batch, args.reps, args.out, scan_len=args.scan_len, scan_batches=args.scan_batch,
                attention_lens=args.attention_len)
        return 0
    with claim(args, args.out):
        run_ops(args.batch, args.reps, args.out, scan_len=args.scan_len, scan_batches=args.scan_batch,
                attention_lens=args.attention_len)
    return 0


def _linear(args) -> int:
    from ..evaluation.kernels import run_linears

    run_linears(args.rows, args.reps, args.dtype, cold_bytes=0 if args.warm else 256 << 20)
    return 0


def _train_flags(bt) -> None:
    bt.add_argument("--model", required=True, help="the student: a spec, e.g. smollm2-135m@attn=0.5")
    bt.add_argument("--teacher", default=None, help="kd: the teacher spec (default: --model without @attn=)")
    bt.add_argument("--stage", choices=["kd", "sft", "grpo"], default="kd")
    bt.add_argument("--batch", type=positive, default=8)
    bt.add_argument("--seq-len", type=positive, default=512)
    bt.add_argument("--steps", type=positive, default=3, help="timed optimizer steps per variant")
    bt.add_argument("--warmup", type=int, default=1, help="untimed first steps per variant")
    bt.add_argument("--variants", nargs="+", default=["fp32"],
                    help="levers joined by '+': fp32|bf16, teacher-bf16, teacher-packed, chunked, packed, compile")
    bt.add_argument("--train", default="all", choices=["mixers", "mixers+mlp", "all"], help="kd: what trains")
    bt.add_argument("--loss-chunk", type=positive, default=1024, help="token rows per chunk of the chunked loss")
    bt.add_argument("--seed", type=int, default=0)
    bt.add_argument("--out", default="runs/bench-train")
    out_flags(bt)
    bt.set_defaults(func=main)


def _train(args) -> int:
    from ..evaluation.training import TrainBenchSettings, run_train_bench, train_table

    settings = TrainBenchSettings(model=args.model, out=args.out, teacher=args.teacher, stage=args.stage,
                                  batch=args.batch, seq_len=args.seq_len, steps=args.steps, warmup=args.warmup,
                                  variants=args.variants, train=args.train, loss_chunk=args.loss_chunk,
                                  seed=args.seed)
    inputs = [args.model.split("@")[0]] + ([args.teacher.split("@")[0]] if args.teacher else [])
    with claim(args, args.out, inputs):
        result = run_train_bench(settings)
    print(train_table(result))
    print(f"-> {args.out}/bench_train.json, bench_train.csv, bench_train.md, bench_train.png")
    return 0
