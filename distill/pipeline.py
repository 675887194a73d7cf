"""One command from teacher to benchmarked hybrid: `hybrid-distill run recipes/<model>`.

A recipe is a folder with one YAML per stage: distill.yaml (required; distill.recipe.DistillRecipe), sft.yaml
(distill.posttrain.sft.SFTArgs), rl.yaml (distill.posttrain.rl.RLArgs), bench.yaml (BenchRecipe below); a missing optional file
skips its stages. `--profile NAME` applies the profile of that name in every file that has one (an error if none
has it); `--set file.key=value` (e.g. `sft.max_steps=5`, `distill.conversion.kd.steps=10`) overrides one file's key.

Stages, in order, each recorded in OUT/stages.json when finished (with its wall time):
  distill                convert -> select -> align/KD schedule (distill.conversion.schedule.run_distill): OUT/distill/final
  sft-teacher, sft-hybrid   the same SFT budget for the teacher (the fair baseline) and the hybrid
  rl-teacher, rl-hybrid     the same GRPO budget, from each SFT checkpoint
  eval                   held-out task accuracy of both models at every stage (base, SFT, RL)
  bench                  throughput (one engine, side by side) and accuracy under wall-clock budgets
  report                 OUT/report.md (+ report.json, PNGs)
A rerun with --resume skips finished stages and resumes an interrupted one from its last checkpoint (distill and
the TRL stages checkpoint every save interval), so Ctrl-C loses at most one checkpoint interval.
"""
from __future__ import annotations

import copy
import json
import os
import time
from dataclasses import asdict, dataclass, field

from tqdm.auto import tqdm

from .recipe import DistillRecipe, load_recipe
from .runfolder import record_recipe

STAGES = ("distill", "sft-teacher", "sft-hybrid", "rl-teacher", "rl-hybrid", "eval", "bench", "report")


@dataclass
class BenchRecipe:
    tasks: str = "synthetic:test:levels=1"  # held-out problems (distill.evaluation.tasks.load_tasks spec)
    n: int = 100
    samples: int = 4
    max_new_tokens: int = 64
    temperature: float = 0.7
    top_p: float = 0.95
    batch: list = field(default_factory=lambda: [1, 16])  # throughput batches
    prompt_len: int = 128
    gen_len: int = 128
    context: list = field(default_factory=list)  # time per token at these context lengths
    budgets: list = field(default_factory=lambda: [1, 3, 10, 30, 100])  # seconds
    batch_candidates: list = field(default_factory=lambda: [4, 16])
    seed: int = 0
    profiles: dict = field(default_factory=dict)


@dataclass
class PipelineRecipe:
    folder: str
    distill: DistillRecipe
    sft: object | None = None  # SFTArgs
    rl: object | None = None  # RLArgs
    bench: BenchRecipe = field(default_factory=BenchRecipe)


def load_pipeline(folder: str, profile: str | None = None, overrides=()) -> PipelineRecipe:
    from .posttrain.rl import RLArgs
    from .posttrain.sft import SFTArgs
    if not os.path.isdir(folder):
        raise ValueError(f"recipe folder {folder!r} does not exist")
    files = {"distill": DistillRecipe, "sft": SFTArgs, "rl": RLArgs, "bench": BenchRecipe}
    per_file: dict[str, list[str]] = {k: [] for k in files}
    for item in overrides:
        head, _, rest = item.partition(".")
        if head not in files or not rest:
            raise ValueError(f"--set {item!r}: must look like <{'|'.join(files)}>.key=value")
        per_file[head].append(rest)
    if not os.path.isfile(os.path.join(folder, "distill.yaml")):
        raise ValueError(f"{folder} has no distill.yaml (every recipe needs one)")
    loaded, profile_found = {}, profile is None
    import yaml
    for name, cls in files.items():
        path = os.path.join(folder, f"{name}.yaml")
        if not os.path.isfile(path):
            if per_file[name]:
                raise ValueError(f"--set {name}.*: {path} does not exist")
            continue
        with open(path) as f:
            profiles = (yaml.safe_load(f) or {}).get("profiles") or {}
        use = profile if profile in profiles else None
        profile_found |= use is not None
        loaded[name] = load_recipe(path, cls=cls, profile=use, overrides=per_file[name])
    if not profile_found:
        raise ValueError(f"no file in {folder} has a profile {profile!r}")
    return PipelineRecipe(folder, loaded["distill"], loaded.get("sft"), loaded.get("rl"),
                          loaded.get("bench", BenchRecipe()))


class Stages:
    """OUT/stages.json: finished stages with their wall seconds; written atomically after each stage."""

    def __init__(self, out: str, write: bool = True):
        self.path, self.write = os.path.join(out, "stages.json"), write
        self.done = json.load(open(self.path)) if os.path.isfile(self.path) else {}

    def finish(self, stage: str, seconds: float, **extra):
        self.done[stage] = {"seconds": seconds, **extra}
        if not self.write:
            return
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.done, f, indent=1)
        os.replace(tmp, self.path)


def _evaluate(spec: str, bench: BenchRecipe, out: str) -> dict:
    """Held-out accuracy of one checkpoint (cached in out/eval.json, so a resumed run does not redo it)."""
    from .evaluation.evaluate import run_accuracy
    from .evaluation.tasks import load_tasks
    path = os.path.join(out, "eval.json")
    if os.path.isfile(path):
        return json.load(open(path))
    return run_accuracy(spec, load_tasks(bench.tasks, n=bench.n, seed=bench.seed), bench.samples, out,
                        tasks=bench.tasks, max_new_tokens=bench.max_new_tokens, temperature=bench.temperature,
                        top_p=bench.top_p, seed=bench.seed)


def prune_checkpoints(stage_dir: str) -> int:
    """Delete the resume checkpoints under a finished stage's folder (TRL's checkpoint-*, the distill trainer's
    checkpoints/ folders: weights plus optimizer state, about 1.6 GB each at 135M parameters); final models,
    summaries and logs stay. Returns the number of folders removed."""
    import shutil
    removed = 0
    for root, dirs, _ in os.walk(stage_dir):
        for d in list(dirs):
            if d == "checkpoints" or d.startswith("checkpoint-"):
                shutil.rmtree(os.path.join(root, d))
                dirs.remove(d)
                removed += 1
    return removed


def run_pipeline(recipe: PipelineRecipe, out: str, resume: bool = False, stop_after: tuple | None = None,
                 keep_checkpoints: bool = False, allow_changes: bool = False) -> dict:
    """Run every stage not yet finished; returns report.json's content. stop_after=("distill", k) simulates an
    interruption after k optimizer steps of the distill stage's first training phase (tests). Once a training
    stage is recorded as finished its resume checkpoints are deleted unless keep_checkpoints."""
    from .train import process_state
    state = process_state()  # under `accelerate launch`: all ranks train; rank 0 evaluates and writes
    if os.path.isfile(os.path.join(out, "stages.json")) and not resume:
        raise ValueError(f"{out} already holds a run: pass --resume to continue it, or choose another --out")
    state.wait_for_everyone()  # every rank has checked before rank 0 can write stages.json
    os.makedirs(out, exist_ok=True)
    if state.is_main_process:  # a resumed run with another recipe is refused unless allow_changes
        record_recipe(out, _recipe_record(recipe), resume=resume, allow_changes=allow_changes)
    state.wait_for_everyone()
    stages = Stages(out, write=state.is_main_process)
    teacher = recipe.distill.teacher
    hybrid = os.path.join(out, "distill", "final")
    models = {"teacher": {"base": teacher}, "hybrid": {"base": hybrid}}
    todo = [s for s in STAGES if s not in stages.done]
    bar = tqdm(total=len(STAGES), initial=len(STAGES) - len(todo), desc="pipeline", unit="stage",
               disable=not state.is_main_process)
    for stage in STAGES:
        who = stage.split("-", 1)[1] if "-" in stage else None
        kind = stage.split("-")[0]
        if kind in ("sft", "rl"):
            cfg = getattr(recipe, kind)
            if cfg is not None:
                start = models[who]["sft"] if kind == "rl" and "sft" in models[who] else models[who]["base"]
                models[who][kind] = os.path.join(out, stage, "final")
        if stage in stages.done:
            continue
        bar.set_postfix_str(stage)
        t0 = time.perf_counter()
        extra = {}
        if stage == "distill":
            from .conversion.schedule import run_distill
            folder = os.path.join(out, "distill")
            run_distill(recipe.distill, folder, resume=os.path.isfile(os.path.join(folder, "progress.json")),
                        stop_after=stop_after[1] if stop_after and stop_after[0] == "distill" else None,
                        allow_changes=allow_changes)
        elif kind in ("sft", "rl"):
            cfg = getattr(recipe, kind)
            if cfg is None:
                extra["skipped"] = True
            else:
                cfg = copy.deepcopy(cfg)
                cfg.model, cfg.out = start, os.path.join(out, stage)
                if kind == "sft":
                    from .posttrain.sft import run_sft
                    run_sft(cfg, resume=True)
                else:
                    from .posttrain.rl import run_rl
                    run_rl(cfg, resume=True)
        elif not state.is_main_process:
            pass  # eval, bench and report run on rank 0 alone (one set of numbers, no two writers)
        elif stage == "eval":
            for who_, ckpts in models.items():
                for step, spec in ckpts.items():
                    r = _evaluate(spec, recipe.bench, os.path.join(out, "eval", f"{who_}-{step}"))
                    extra[f"{who_}-{step}"] = {k: r[k] for k in r if k.startswith(("pass@", "maj@"))}
        elif stage == "bench":
            from .evaluation.bench import run_throughput
            from .evaluation.evaluate import run_time_budget
            from .evaluation.tasks import load_tasks
            b = recipe.bench
            final = {who_: list(ckpts.values())[-1] for who_, ckpts in models.items()}
            run_throughput([final["teacher"], final["hybrid"]], b.batch, b.prompt_len, b.gen_len, b.context,
                           os.path.join(out, "bench"), hf_baseline=False)
            problems = load_tasks(b.tasks, n=b.n, seed=b.seed)
            run_time_budget([final["teacher"], final["hybrid"]], problems, b.samples, b.budgets,
                            b.batch_candidates, os.path.join(out, "bench"),
                            title=f"{b.tasks}, {len(problems)} problems", tasks=b.tasks,
                            max_new_tokens=b.max_new_tokens, temperature=b.temperature, top_p=b.top_p, seed=b.seed)
        elif stage == "report":
            write_report(recipe, out, stages.done, models)
        state.wait_for_everyone()
        stages.finish(stage, time.perf_counter() - t0, **extra)
        if state.is_main_process and not keep_checkpoints and (stage == "distill" or kind in ("sft", "rl")):
            prune_checkpoints(os.path.join(out, stage))
        bar.update(1)
    bar.close()
    return json.load(open(os.path.join(out, "report.json")))


def _recipe_record(recipe: PipelineRecipe) -> dict:
    """Every stage file's settings, as the pipeline ran them (compared on --resume)."""
    return {name: asdict(cfg) for name in ("distill", "sft", "rl", "bench")
            if (cfg := getattr(recipe, name)) is not None}


def _fmt(x, nd=3):
    return "" if x is None else f"{x:.{nd}f}"


def write_report(recipe: PipelineRecipe, out: str, done: dict, models: dict) -> None:
    """OUT/report.md and report.json from the stages' outputs."""
    from .evaluation.bench import ratio_table
    from .conversion.schedule import summary_table
    lines = [f"# {os.path.basename(os.path.abspath(recipe.folder))}: teacher vs hybrid", "",
             f"teacher `{recipe.distill.teacher}`; hybrid `{os.path.join(out, 'distill', 'final')}` "
             f"({recipe.distill.mixer}, attention kept: schedule {recipe.distill.schedule})", ""]
    report: dict = {"recipe": recipe.folder, "stages": done}
    # distillation
    with open(os.path.join(out, "distill", "summary.json")) as f:
        summary = json.load(f)
    report["distill"] = summary
    lines += ["## Distillation (held-out KL to the teacher)", "", summary_table(summary), ""]
    # accuracy
    acc = done.get("eval", {})
    report["accuracy"] = {k: v for k, v in acc.items() if k != "seconds"}
    lines += ["## Task accuracy", "", f"`{recipe.bench.tasks}`, {recipe.bench.n} problems x {recipe.bench.samples} "
              f"samples (temperature {recipe.bench.temperature}); ± is the standard error over problems", "",
              "| model | stage | pass@1 | maj@k | pass@k |", "|---|---|---|---|---|"]
    k = recipe.bench.samples
    for who, ckpts in models.items():
        for step in ckpts:
            r = acc.get(f"{who}-{step}")
            if r:
                lines.append(f"| {who} | {step} | {_fmt(r['pass@1'])} ± {_fmt(r.get('pass@1_se'))} | "
                             f"{_fmt(r.get(f'maj@{k}'))} | {_fmt(r.get(f'pass@{k}'))} |")
    lines.append("")
    # throughput and time budgets (model paths shown by their role)
    roles = {spec: f"{who} ({step})" for who, ckpts in models.items() for step, spec in ckpts.items()}
    start = len(lines)
    bench_dir = os.path.join(out, "bench")
    if os.path.isfile(os.path.join(bench_dir, "bench.json")):
        with open(os.path.join(bench_dir, "bench.json")) as f:
            bench = json.load(f)
        report["throughput"] = bench["results"]
        lines += ["## Throughput (one engine, side by side; speed-up vs the teacher)", "", ratio_table(bench), "",
                  "![throughput](bench/bench.png)", ""]
    if os.path.isfile(os.path.join(bench_dir, "time_budget.json")):
        with open(os.path.join(bench_dir, "time_budget.json")) as f:
            tb = json.load(f)
        report["time_budget"] = tb
        first = next(iter(tb["curves"].values()))
        lines += ["## Accuracy under a wall-clock budget", "",
                  "| model | s/sample | " + " | ".join(f"{r['budget_s']:g} s" for r in first) + " |",
                  "|---|---|" + "---|" * len(first)]
        for label, rows in tb["curves"].items():
            lines.append(f"| {label} | {tb['models'][label]['seconds_per_sample']:.3f} | " + " | ".join(
                f"k={r['k']}: {r['coverage']:.2f} / {_fmt(r['majority'], 2)}" for r in rows) + " |")
        lines += ["", "cells: samples per problem within the budget: coverage (pass@k) / majority-vote accuracy", "",
                  "![time budget](bench/time_budget.png)", ""]
    for i in range(start, len(lines)):
        for spec, role in sorted(roles.items(), key=lambda kv: -len(kv[0])):
            lines[i] = lines[i].replace(spec, role)
    # time per stage
    lines += ["## Time per stage", "", "| stage | wall s |", "|---|---|"]
    lines += [f"| {s} | {done[s]['seconds']:.0f} |" for s in STAGES if s in done]
    lines.append("")
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write("\n".join(lines))
    report["recipe_args"] = {"distill": asdict(recipe.distill), "bench": asdict(recipe.bench)}
    with open(os.path.join(out, "report.json"), "w") as f:
        json.dump(report, f, indent=1, default=str)


FAMILIES = ("llama", "qwen2", "qwen3", "mistral")


def validate_recipe(folder: str) -> None:
    """Parse every stage file under every profile it has; with a committed teacher_config.json beside them, check
    the layer indices and dims against the teacher. Errors name the file, the key and the value."""
    import yaml
    profiles = set()
    for name in ("distill", "sft", "rl", "bench"):
        path = os.path.join(folder, f"{name}.yaml")
        if os.path.isfile(path):
            profiles |= set((yaml.safe_load(open(path)) or {}).get("profiles") or {})
    recipes = [load_pipeline(folder)] + [load_pipeline(folder, profile=p) for p in sorted(profiles)]
    cfg_path = os.path.join(folder, "teacher_config.json")
    if not os.path.isfile(cfg_path):
        return
    cfg = json.load(open(cfg_path))
    where = os.path.join(folder, "distill.yaml")
    if cfg.get("model_type") not in FAMILIES:
        raise ValueError(f"{cfg_path}: model_type {cfg.get('model_type')!r} is not one of {FAMILIES}")
    n, heads = cfg["num_hidden_layers"], cfg["num_attention_heads"]
    kv = cfg.get("num_key_value_heads") or heads
    if heads % kv:
        raise ValueError(f"{cfg_path}: num_attention_heads {heads} is not a multiple of num_key_value_heads {kv}")
    if not cfg.get("head_dim") and cfg["hidden_size"] % heads:
        raise ValueError(f"{cfg_path}: hidden_size {cfg['hidden_size']} is not a multiple of {heads} heads")
    from .conversion.losses import LOSSES
    for r in recipes:
        d = r.distill
        for loss in d.kd.loss:
            if loss not in LOSSES:
                raise ValueError(f"{where}: kd.loss has {loss!r}; registered losses: {sorted(LOSSES)}")
        if d.chunk_size < 1 or d.chunk_size > 4096:
            raise ValueError(f"{where}: chunk_size={d.chunk_size} must lie in [1, 4096]")
        layers = d.select.params.get("layers")
        if layers is not None:
            bad = [i for i in layers if not (isinstance(i, int) and 0 <= i < n)]
            if bad:
                raise ValueError(f"{where}: select.params.layers={layers}: {bad} out of range for the teacher's "
                                 f"{n} layers")
        kept = round(min(d.schedule) * n)  # as distill.conversion.select.kept_layers counts
        if layers is not None and len(layers) != kept:
            raise ValueError(f"{where}: select.params.layers has {len(layers)} layers but schedule {d.schedule} "
                             f"keeps {kept} of {n}")
