"""The `hybrid-distill` command.

    hybrid-distill convert --teacher smollm2-135m --attn-ratio 0.5 --out runs/smollm2-h50
    hybrid-distill generate --model runs/smollm2-h50 --prompt "What is 12 * 7?"
"""
from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import time

import yaml

from .runfolder import RunLock, check_out, is_main_rank, mark, record_recipe


def _int_list(text: str) -> list[int]:
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


_positive = _bounded(int, lambda v: v >= 1, "must be >= 1")
_unit = _bounded(float, lambda v: 0 < v <= 1, "must lie in (0, 1]")  # a probability mass (top-p)
_seconds = _bounded(float, lambda v: 0 < v < float("inf"), "must be a positive number of seconds")


def _need_file(path, flag: str) -> str:
    """A path the command reads: an error naming the flag when it is missing (not a traceback from deep inside)."""
    if not os.path.exists(os.path.expanduser(path)):
        raise ValueError(f"{flag} {path}: no such file or folder")
    return path


@contextlib.contextmanager
def _claim(args, out: str, inputs=(), resume: bool = False, file: bool = False):
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


def cmd_convert(args) -> int:
    from hybrid import load_pretrained

    from .conversion.transfer import hybridize
    from .conversion.select import uniform_attention_layers

    t0 = time.perf_counter()
    with _claim(args, args.out, [args.teacher]):
        teacher, tok = load_pretrained(args.teacher, dtype=args.dtype)
        n = teacher.config.num_hidden_layers
        attn = args.attn_layers if args.attn_layers is not None else uniform_attention_layers(n, args.attn_ratio)
        t1 = time.perf_counter()
        import torch
        torch.manual_seed(args.seed)  # the mixer parts without an attention counterpart are random: repeatable
        student = hybridize(teacher, attn, mixer=args.mixer)
        student.save_pretrained(args.out)
        if tok is not None:
            tok.save_pretrained(args.out)
    t2 = time.perf_counter()
    print(f"converted {args.teacher}: {n} layers, attention kept at {attn}, {args.mixer} elsewhere -> {args.out}")
    print(f"load {t1 - t0:.1f}s, convert+save {t2 - t1:.1f}s")
    return 0


def cmd_generate(args) -> int:
    import sys

    import torch

    from hybrid.generation import SamplingParams, generate

    from .data import prompt_ids
    from .loading import load_model, pad_and_eos

    model, tok, _ = load_model(args.model, need_tokenizer=True, dtype=args.dtype)
    ids = prompt_ids(tok, args.prompt, chat=False if args.raw else None)
    torch.manual_seed(args.seed)
    params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                            top_p=args.top_p if args.temperature > 0 else 1.0, seed=args.seed)
    pad, eos = pad_and_eos(model, tok)
    tokens: list[int] = []
    shown = ""

    def stream(step, active):  # decode the whole text so far: multi-token characters print once complete
        nonlocal shown
        if not active[0]:
            return
        tokens.append(step[0])
        text = tok.decode(tokens, skip_special_tokens=True)
        if not text.endswith("\ufffd"):
            sys.stdout.write(text[len(shown):])
            sys.stdout.flush()
            shown = text

    generate(model, [ids], params, eos_token_id=eos, pad_token_id=pad, on_step=stream)
    sys.stdout.write("\n")
    return 0


def cmd_distill(args) -> int:
    from .recipe import load_recipe
    from .conversion.schedule import run_distill, summary_table

    recipe = load_recipe(_need_file(args.config, "--config"), profile=args.profile, overrides=args.set or [])
    out = args.out or os.path.join("runs", os.path.basename(os.path.dirname(os.path.abspath(args.config))))
    inputs = [args.config, recipe.teacher, recipe.data.source, recipe.data.corpus.prompts]
    with _claim(args, out, inputs, resume=args.resume):
        summary = run_distill(recipe, out, resume=args.resume, allow_changes=args.allow_changes)
    print(summary_table(summary))
    print(f"-> {out}/summary.md, {out}/final")
    return 0


def cmd_run(args) -> int:
    from .pipeline import load_pipeline, run_pipeline

    recipe = load_pipeline(_need_file(args.recipe, "recipe folder"), profile=args.profile, overrides=args.set or [])
    out = args.out or os.path.join("runs", os.path.basename(os.path.abspath(args.recipe)) +
                                   (f"-{args.profile}" if args.profile else ""))
    inputs = [args.recipe, recipe.distill.teacher, recipe.distill.data.source, recipe.distill.data.corpus.prompts]
    inputs += [getattr(cfg, k, None) for cfg in (recipe.sft, recipe.rl) if cfg is not None for k in ("model", "data")]
    with _claim(args, out, inputs, resume=args.resume):
        run_pipeline(recipe, out, resume=args.resume, keep_checkpoints=args.keep_checkpoints,
                     allow_changes=args.allow_changes)
    from .train import process_state
    if process_state().is_main_process:
        print(open(os.path.join(out, "report.md")).read())
        print(f"-> {out}/report.md")
    return 0


TRL_STAGES = {  # command -> (module, args class, run function)
    "sft": ("sft", "SFTArgs", "run_sft"), "rl": ("rl", "RLArgs", "run_rl"), "dpo": ("dpo", "DPOArgs", "run_dpo"),
}


def cmd_trl_stage(args) -> int:
    import dataclasses
    import importlib

    from .recipe import load_recipe

    module, cls, run = TRL_STAGES[args.command]
    mod = importlib.import_module(f"distill.posttrain.{module}")
    cfg = load_recipe(_need_file(args.config, "--config"), cls=getattr(mod, cls), profile=args.profile,
                      overrides=args.set or [])
    if args.out:
        cfg.out = args.out
    inputs = [args.config, cfg.model, cfg.data, getattr(cfg, "teacher", None)]
    with _claim(args, cfg.out, inputs, resume=args.resume):
        if is_main_rank():
            record_recipe(cfg.out, dataclasses.asdict(cfg), resume=args.resume, allow_changes=args.allow_changes)
        print(f"-> {getattr(mod, run)(cfg, resume=args.resume)}")
    return 0


def cmd_select(args) -> int:
    from hybrid import load_pretrained

    from .data import DataSpec, build_rows, split_rows
    from .conversion.select import SelectContext, save_selection, select

    with _claim(args, args.out, [args.teacher, args.data]):
        teacher, tok = load_pretrained(args.teacher)
        teacher.requires_grad_(False)
        rows = train = held = None
        if args.data:
            rows = build_rows(DataSpec(source=args.data, format=args.format), tok, args.seq_len)
            train, held = split_rows(rows, args.eval_rows)
        sel = select(args.strategy, SelectContext(teacher, args.mixer, train, held), **dict(args.param or []))
        save_selection(sel, args.out, keep_ratio=args.keep_ratio)
    print(f"{args.strategy}: replacement order {sel.order}")
    print(f"kept at {args.keep_ratio}: {sel.kept(args.keep_ratio)} -> {args.out}/select.json, select.png")
    return 0


def cmd_corpus(args) -> int:
    from hybrid import load_pretrained

    from .conversion.corpus import build_corpus, read_prompts

    with _claim(args, args.out, [args.teacher, args.prompts], resume=args.resume, file=True):
        teacher, tok = load_pretrained(args.teacher)
        n = build_corpus(teacher, tok, read_prompts(args.prompts), args.out, args.max_new_tokens, args.batch_size,
                         args.temperature, args.top_p, args.seed)
    print(f"{n} records -> {args.out}")
    return 0


def cmd_summary(args) -> int:
    import json

    from .conversion.schedule import summary_table

    summaries = []
    for run in args.runs:
        path = os.path.join(run, "summary.json")
        if not os.path.isfile(path):
            raise ValueError(f"{run} has no summary.json (is it a finished distill run?)")
        with open(path) as f:
            summaries.append(json.load(f))
    table = summary_table(*summaries)
    print(table)
    if args.out:
        check_out(args.out, args.runs, overwrite=True)  # a table is cheap to remake: only inputs are protected
        with open(args.out, "w") as f:
            f.write(table + "\n")
    return 0


def cmd_bench_throughput(args) -> int:
    from .evaluation.throughput import ThroughputSettings, run_throughput

    settings = ThroughputSettings(models=args.models, out=args.out, batch=args.batch, prompt_len=args.prompt_len,
                                  gen_len=args.gen_len, context=args.context or [], context_batch=args.context_batch,
                                  context_steps=args.context_steps, hf_baseline=not args.no_hf, kernels=args.kernels,
                                  dtype=args.dtype, decode=args.decode, prepack=args.prepack,
                                  interleave=args.interleave)
    with _claim(args, args.out, [m.split("@")[0] for m in args.models]):
        run_throughput(settings)
    print(f"-> {args.out}/bench.json, bench.csv, bench.png")
    return 0


def cmd_eval(args) -> int:
    import json

    from .evaluation.evaluate import run_accuracy
    from .evaluation.tasks import load_tasks

    if args.mode == "compare":
        from .evaluation.evaluate import compare_table, paired_compare
        if not args.runs or len(args.runs) < 2:
            raise ValueError(f"eval compare needs --runs BASE OTHER [OTHER ...] (eval.json files or folders), got "
                             f"{args.runs}")
        rows = [paired_compare(args.runs[0], other) for other in args.runs[1:]]
        print(compare_table(rows))
        if args.out_json:
            check_out(args.out_json, args.runs, overwrite=True, what="--out-json")
            os.makedirs(os.path.dirname(os.path.abspath(args.out_json)), exist_ok=True)
            with open(args.out_json, "w") as f:
                json.dump(rows, f, indent=1)
        return 0
    if args.mode == "accuracy" and not args.model:
        raise ValueError("eval accuracy needs --model")
    if args.mode == "time-budget" and not args.models:
        raise ValueError("eval time-budget needs --models")
    problems = load_tasks(args.tasks, n=args.n, seed=args.seed)
    kw = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p, seed=args.seed)
    models = [args.model] if args.mode == "accuracy" else args.models
    with _claim(args, args.out, [m.split("@")[0] for m in models] + [args.tasks.split(":")[0]]):
        if args.mode == "accuracy":
            result = run_accuracy(args.model, problems, args.samples, args.out, tasks=args.tasks,
                                  batch_size=args.batch_size, **kw)
            print(json.dumps(result, indent=1))
            return 0
        from .evaluation.evaluate import run_time_budget
        run_time_budget(args.models, problems, args.samples, args.budgets, args.batch_candidates, args.out,
                        title=f"{args.tasks}, {len(problems)} problems", tasks=args.tasks, **kw)
    print(f"-> {args.out}/time_budget.json, time_budget.png")
    return 0


def cmd_lm_eval(args) -> int:
    from .evaluation.lm_eval_bridge import run_lm_eval, save_results
    from .loading import load_model

    with _claim(args, args.out, [args.model, args.include_path]):
        model, tok, label = load_model(args.model, need_tokenizer=True)
        results = run_lm_eval(model, tok, [t for t in args.tasks.split(",") if t], include_path=args.include_path,
                              limit=args.limit, num_fewshot=args.num_fewshot, batch_size=args.batch_size,
                              apply_chat_template=args.chat, seed=args.seed)
    for task, metrics in results.items():
        shown = ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if isinstance(v, float))
        print(f"{task}: {shown}")
    print(f"-> {save_results(results, args.out, label)}")
    return 0


def cmd_import(args) -> int:
    from hybrid.checkpoints import tokenizer_or_none
    from hybrid.released import load_released

    with _claim(args, args.out, [args.src]):
        model, variant = load_released(_need_file(args.src, "--from"))
        model.save_pretrained(args.out)
        tok = tokenizer_or_none(args.src)
        if tok is not None:
            tok.save_pretrained(args.out)
    print(f"imported {variant} checkpoint {args.src} -> {args.out} (loads with no mamba_config.json)")
    return 0


def cmd_export(args) -> int:
    from hybrid import load_pretrained
    from hybrid.export import export_granitemoehybrid

    with _claim(args, args.out, [args.model]):
        model, tok = load_pretrained(args.model)
        diff = export_granitemoehybrid(model, args.out, tokenizer=tok, atol=args.atol)
    print(f"exported {args.model} -> {args.out} (GraniteMoeHybrid); transformers' logits match ours to {diff:.2e}")
    return 0


def cmd_bench_sampler(args) -> int:
    from .evaluation.sampler import run_sampler

    run_sampler(args.batch, args.vocab, args.reps)
    return 0


def cmd_bench_ops(args) -> int:
    from .evaluation.kernels import run_ops

    if not args.out:
        run_ops(args.batch, args.reps, args.out, scan_len=args.scan_len, scan_batches=args.scan_batch)
        return 0
    with _claim(args, args.out):
        run_ops(args.batch, args.reps, args.out, scan_len=args.scan_len, scan_batches=args.scan_batch)
    return 0


def cmd_bench_linear(args) -> int:
    from .evaluation.kernels import run_linears

    run_linears(args.rows, args.reps)
    return 0


def _param(text: str):
    from .recipe import yaml_value
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--param {text!r} must look like name=value")
    k, v = text.split("=", 1)
    return k, yaml_value(v)


def _common() -> argparse.ArgumentParser:
    """Flags every command takes (SUPPRESS: a subcommand's default must not undo the same flag given before it)."""
    c = argparse.ArgumentParser(add_help=False)
    c.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help="show the traceback of an error (also HYBRID_DEBUG=1)")
    return c


def _add(sub, name: str, **kw) -> argparse.ArgumentParser:
    return sub.add_parser(name, parents=[_common()], **kw)


def _out_flags(parser, resume: bool = False, changes: bool = False) -> None:
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a non-empty --out written earlier by this project")
    if resume:
        parser.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    if changes:
        parser.add_argument("--allow-changes", action="store_true",
                            help="resume although the recipe differs from the stored one (recorded in "
                                 "recipe_history.jsonl)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hybrid-distill", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter, parents=[_common()])
    sub = p.add_subparsers(dest="command", required=True)

    c = _add(sub, "convert", help="teacher -> hybrid by attention-to-Mamba weight transfer")
    c.add_argument("--teacher", required=True, help="hub id, model dir, .gguf file or alias (smollm2-135m)")
    which = c.add_mutually_exclusive_group(required=True)
    which.add_argument("--attn-layers", type=_int_list, help="attention layers to keep, e.g. 1,3,5")
    which.add_argument("--attn-ratio", type=float, help="fraction of layers kept as attention, evenly spaced")
    c.add_argument("--mixer", choices=["mamba2", "mamba"], default="mamba2")
    c.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 (default: float32)")
    c.add_argument("--seed", type=int, default=0, help="seed of the mixers' default-initialised parameters")
    c.add_argument("--out", required=True)
    _out_flags(c)
    c.set_defaults(func=cmd_convert)

    g = _add(sub, "generate", help="stream a completion for one prompt")
    g.add_argument("--model", required=True)
    g.add_argument("--prompt", required=True)
    g.add_argument("--max-new-tokens", type=_positive, default=128)
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    g.add_argument("--top-p", type=_unit, default=1.0)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--raw", action="store_true", help="do not apply the chat template")
    g.add_argument("--dtype", default=None)
    g.set_defaults(func=cmd_generate)

    d = _add(sub, "distill", help="incremental layer replacement: select, transfer, align, KD (a recipe)")
    d.add_argument("--config", required=True, help="recipes/<model>/distill.yaml")
    d.add_argument("--profile", default=None, help="a profile of the recipe (e.g. demo)")
    d.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a recipe key, e.g. kd.steps=10")
    d.add_argument("--out", default=None, help="output folder (default runs/<recipe folder>)")
    _out_flags(d, resume=True, changes=True)
    d.set_defaults(func=cmd_distill)

    s = _add(sub, "select", help="rank layers for replacement with a selection strategy")
    s.add_argument("--teacher", required=True)
    s.add_argument("--strategy", default="uniform")
    s.add_argument("--mixer", choices=["mamba2", "mamba"], default="mamba2")
    s.add_argument("--data", default=None, help="jsonl/parquet/arrow data (needed by leave-one-out, kl-guided)")
    s.add_argument("--format", default="prompt_completion")
    s.add_argument("--seq-len", type=_positive, default=256)
    s.add_argument("--eval-rows", type=_positive, default=4)
    s.add_argument("--keep-ratio", type=float, default=0.5)
    s.add_argument("--param", action="append", type=_param, help="strategy parameter name=value")
    s.add_argument("--out", required=True)
    _out_flags(s)
    s.set_defaults(func=cmd_select)

    b = _add(sub, "bench", help="benchmarks")
    bsub = b.add_subparsers(dest="bench", required=True)
    bt = _add(bsub, "throughput", help="decode throughput of teachers and hybrids, side by side")
    bt.add_argument("--models", nargs="+", required=True, help="specs; append @attn=R to convert on the fly")
    bt.add_argument("--batch", nargs="+", type=_positive, default=[1, 16])
    bt.add_argument("--prompt-len", type=_positive, default=256)
    bt.add_argument("--gen-len", type=_positive, default=256)
    bt.add_argument("--context", nargs="*", type=_positive, default=[], help="context lengths for time-per-token")
    bt.add_argument("--context-batch", type=_positive, default=16)
    bt.add_argument("--context-steps", type=_positive, default=8)
    bt.add_argument("--no-hf", action="store_true", help="skip the HF generate() baseline")
    bt.add_argument("--kernels", nargs="+", default=None, choices=["torch", "csrc", "mamba_ssm", "auto"],
                    help="run every hybrid under each kernel backend (hybrid.ops.backends.use), side by side")
    bt.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                    help="load every model in this dtype (default: as stored)")
    bt.add_argument("--decode", nargs="+", default=None, choices=["auto", "eager", "static", "graph"],
                    help="run every model with each of these engine decode steps (graph: CUDA graphs, CUDA only); "
                         "default auto alone (graph on CUDA where it applies)")
    bt.add_argument("--prepack", nargs="+", default=None, choices=["on", "off"],
                    help="run every model with its CPU linear layers on oneDNN-packed weights (on) and/or on "
                         "F.linear (off), side by side; default: on for CPU models (hybrid.prepack)")
    bt.add_argument("--interleave", action="store_true",
                    help="time the --context rows of all models together, one decode step of each in turn (all "
                         "models stay loaded), so drift of the machine's speed lands on every model alike")
    bt.add_argument("--out", default="runs/bench")
    _out_flags(bt)
    bt.set_defaults(func=cmd_bench_throughput)

    e = _add(sub, "eval", help="task accuracy (pass@1, pass@k, maj@k), or accuracy under time budgets")
    e.add_argument("mode", nargs="?", choices=["accuracy", "time-budget", "compare"], default="accuracy",
                   help="compare: paired difference in pass@1 of each --runs entry over the first")
    e.add_argument("--runs", nargs="+", help="eval.json files or folders (compare): the base first")
    e.add_argument("--out-json", default=None, help="also write the comparison rows here (compare)")
    e.add_argument("--model", help="model spec (accuracy)")
    e.add_argument("--models", nargs="+", help="model specs (time-budget)")
    e.add_argument("--tasks", default="synthetic:test", help="synthetic:test, a GSM8K/MATH .jsonl, or a HF id")
    e.add_argument("--n", type=_positive, default=None, help="number of problems")
    e.add_argument("--samples", type=_positive, default=4)
    e.add_argument("--max-new-tokens", type=_positive, default=256)
    e.add_argument("--temperature", type=float, default=0.7)
    e.add_argument("--top-p", type=_unit, default=0.95)
    e.add_argument("--batch-size", type=_positive, default=16)
    e.add_argument("--batch-candidates", nargs="+", type=_positive, default=[4, 16, 32])
    e.add_argument("--budgets", nargs="+", type=_seconds, default=[1, 3, 10, 30, 100])
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--out", default="runs/eval")
    _out_flags(e)
    e.set_defaults(func=cmd_eval)

    rn = _add(sub, "run", help="the whole pipeline from one recipe folder: distill, SFT, RL, eval, bench, report")
    rn.add_argument("recipe", help="recipe folder, e.g. recipes/smollm2-135m")
    rn.add_argument("--profile", default=None, help="profile applied in every stage file that has it (e.g. quick)")
    rn.add_argument("--set", action="append", help="file.key=value override, e.g. sft.max_steps=5 (repeatable)")
    rn.add_argument("--out", default=None, help="run folder (default runs/<recipe>[-<profile>])")
    _out_flags(rn, resume=True, changes=True)
    rn.add_argument("--keep-checkpoints", action="store_true",
                    help="keep the resume checkpoints of finished stages (default: delete them, keep final models)")
    rn.set_defaults(func=cmd_run)

    for name, what in (("sft", "SFT on reasoning traces (TRL SFTTrainer)"),
                       ("rl", "GRPO with verifiable rewards (TRL GRPOTrainer)"),
                       ("dpo", "DPO on preference pairs (TRL DPOTrainer), optional last stage")):
        st = _add(sub, name, help=what)
        module, cls, _ = TRL_STAGES[name]
        st.add_argument("--config", required=True, help=f"YAML of distill.posttrain.{module}.{cls}")
        st.add_argument("--profile", default=None)
        st.add_argument("--set", action="append", help="key=value override (repeatable)")
        st.add_argument("--out", default=None)
        _out_flags(st, resume=True, changes=True)
        st.set_defaults(func=cmd_trl_stage)

    le = _add(sub, "lm-eval", help="run lm-evaluation-harness tasks on a model (optional extra: eval)")
    le.add_argument("--model", required=True, help="model spec (hybrid dir, HF dir / id, .gguf, smollm2-135m)")
    le.add_argument("--tasks", required=True, help="comma-separated lm-eval task names")
    le.add_argument("--include-path", default=None, help="folder with extra task YAMLs (local data)")
    le.add_argument("--limit", type=float, default=None, help="examples per task (or fraction if < 1)")
    le.add_argument("--num-fewshot", type=int, default=None)
    le.add_argument("--batch-size", type=_positive, default=8)
    le.add_argument("--chat", action="store_true", help="apply the tokenizer's chat template")
    le.add_argument("--seed", type=int, default=0)
    le.add_argument("--out", default="runs/lm-eval")
    _out_flags(le)
    le.set_defaults(func=cmd_lm_eval)

    im = _add(sub, "import", help="MambaInLlama / M1 checkpoint -> this project's self-describing format")
    im.add_argument("--from", dest="src", required=True)
    im.add_argument("--out", required=True)
    _out_flags(im)
    im.set_defaults(func=cmd_import)

    ex = _add(sub, "export", help="write a transformers-native checkpoint that vLLM / SGLang serve")
    ex.add_argument("--model", required=True)
    ex.add_argument("--to", choices=["granitemoehybrid"], default="granitemoehybrid")
    ex.add_argument("--out", required=True)
    ex.add_argument("--atol", type=float, default=1e-4, help="logit tolerance of the self-check")
    _out_flags(ex)
    ex.set_defaults(func=cmd_export)

    bs = _add(bsub, "sampler", help="the engine's sampler against the sampler by its definition (multinomial)")
    bs.add_argument("--batch", type=_positive, default=16)
    bs.add_argument("--vocab", type=_positive, default=49152)
    bs.add_argument("--reps", type=_positive, default=20)
    bs.set_defaults(func=cmd_bench_sampler)
    bo = _add(bsub, "ops", help="the project's kernels against their PyTorch twins, at real mixer shapes")
    bo.add_argument("--batch", nargs="+", type=_positive, default=[1, 16, 64])
    bo.add_argument("--reps", type=_positive, default=20)
    bo.add_argument("--scan-len", type=_positive, default=2048, help="sequence length of the prefill ops")
    bo.add_argument("--scan-batch", nargs="+", type=_positive, default=[1, 4], help="batches of the prefill ops")
    bo.add_argument("--out", default=None)
    _out_flags(bo)
    bo.set_defaults(func=cmd_bench_ops)
    bl = _add(bsub, "linear", help="F.linear against oneDNN-packed weights at SmolLM2-135M's shapes (hybrid.prepack)")
    bl.add_argument("--rows", type=_positive, default=16, help="input rows (the decode batch)")
    bl.add_argument("--reps", type=_positive, default=40)
    bl.set_defaults(func=cmd_bench_linear)

    su = _add(sub, "summary", help="one table over finished distill runs")
    su.add_argument("runs", nargs="+")
    su.add_argument("--out", default=None, help="also write the table to this markdown file")
    su.set_defaults(func=cmd_summary)

    co = _add(sub, "corpus", help="sample a distillation corpus from the teacher (resumable: --resume)")
    co.add_argument("--teacher", required=True)
    co.add_argument("--prompts", required=True, help="a number (synthetic prompts), a .jsonl or a .txt file")
    co.add_argument("--out", required=True)
    co.add_argument("--max-new-tokens", type=_positive, default=96)
    co.add_argument("--batch-size", type=_positive, default=16)
    co.add_argument("--temperature", type=float, default=0.7)
    co.add_argument("--top-p", type=_unit, default=0.95)
    co.add_argument("--seed", type=int, default=0)
    _out_flags(co, resume=True)
    co.set_defaults(func=cmd_corpus)
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
