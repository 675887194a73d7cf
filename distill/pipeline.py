"""One command from teacher to benchmarked hybrid: `hybrid-distill run recipes/<model>`.

A recipe is a folder with one YAML per stage: distill.yaml (required; distill.recipe.DistillRecipe), sft.yaml
(distill.posttrain.sft.SFTArgs), rl.yaml (distill.posttrain.rl.RLArgs), bench.yaml (BenchRecipe below), pipeline.yaml
(ProtocolRecipe below: which protocol); a missing optional file skips its stages. `--profile NAME` applies the profile of that name in every file that has one (an error if none
has it); `--set file.key=value` (e.g. `sft.max_steps=5`, `distill.conversion.kd.steps=10`) overrides one file's key.

Stages, in order (PIPELINE below: one entry each), each recorded in OUT/stages.json when finished (with its wall
time):
  distill                convert -> select -> align/KD schedule (distill.conversion.schedule.run_distill): OUT/distill/final
  sft-teacher, sft-hybrid   the same SFT budget for the teacher (the fair baseline) and the hybrid
  rl-teacher, rl-hybrid     the same GRPO budget, from each SFT checkpoint
  eval                   held-out task accuracy of both models at every stage (base, SFT, RL)
  bench                  throughput (one engine, side by side) and accuracy under wall-clock budgets
  report                 OUT/report.md (+ report.json, PNGs)
That is the distill-first protocol (M1's order: convert from the base model, then SFT each). The reasoner-first
protocol (pipeline.yaml `protocol: reasoner-first`) makes the reasoner first and converts it:
  sft-teacher            the teacher fine-tuned on the task (the reasoner)
  distill                convert the reasoner, distilled on its own outputs (distill.yaml's corpus: the task's
                         prompts, e.g. `data.corpus.prompts: long:train:tokens=100..800`): OUT/distill/final
  rl-teacher, rl-hybrid  the same GRPO budget, from the reasoner and from the distilled hybrid (no hybrid SFT)
  eval, bench, report    as above; the report names the protocol that ran.
A rerun with --resume skips finished stages and resumes an interrupted one from its last checkpoint (distill and
the TRL stages checkpoint every save interval), so Ctrl-C loses at most one checkpoint interval.
"""
from __future__ import annotations

import copy
import functools
import json
import os
import time
from dataclasses import asdict, dataclass, field

from tqdm.auto import tqdm

from .recipe import DistillRecipe, load_recipe, validate_recipe
from .runfolder import Record, record_recipe

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
    budgets: list = field(default_factory=lambda: [1, 3, 10, 30, 100])  # seconds, or "Nx": N x the teacher's s/sample
    batch_candidates: list = field(default_factory=lambda: [4, 16])
    max_samples: int = 64  # time budget: each model draws enough samples to fill the largest budget, at most this many
    bootstrap: int = 1000  # resamples of the problems for the time-budget intervals
    seed: int = 0
    profiles: dict = field(default_factory=dict)

    def __post_init__(self):
        from .evaluation.budget import parse_budget
        if not isinstance(self.budgets, list) or not self.budgets:
            raise ValueError(f"bench budgets={self.budgets!r} must be a list of seconds or 'Nx'")
        self.budgets = [parse_budget(T) for T in self.budgets]  # names the bad value


PROTOCOLS = ("distill-first", "reasoner-first")


@dataclass
class ProtocolRecipe:
    """pipeline.yaml: the order in which teacher and hybrid are made (module docstring)."""
    protocol: str = "distill-first"
    profiles: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol={self.protocol!r} is not one of {', '.join(PROTOCOLS)}")


@dataclass
class PipelineRecipe:
    folder: str
    distill: DistillRecipe
    sft: object | None = None  # SFTArgs
    rl: object | None = None  # RLArgs
    bench: BenchRecipe = field(default_factory=BenchRecipe)
    pipeline: ProtocolRecipe = field(default_factory=ProtocolRecipe)

    def __post_init__(self):
        if self.pipeline.protocol == "reasoner-first" and self.sft is None:
            raise ValueError(f"{self.folder}: protocol reasoner-first makes the reasoner with SFT, but the recipe "
                             "has no sft.yaml")


def load_pipeline(folder: str, profile: str | None = None, overrides=()) -> PipelineRecipe:
    """Every stage file of a recipe folder, parsed strictly, with the profile and `--set` overrides applied; the
    distill recipe is then checked against the teacher (recipe.validate_recipe), so a bad recipe fails at load."""
    from .posttrain.rl import RLArgs
    from .posttrain.sft import SFTArgs
    if not os.path.isdir(folder):
        raise ValueError(f"recipe folder {folder!r} does not exist")
    files = {"distill": DistillRecipe, "sft": SFTArgs, "rl": RLArgs, "bench": BenchRecipe,
             "pipeline": ProtocolRecipe}
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
    validate_recipe(loaded["distill"], folder)
    return PipelineRecipe(folder, loaded["distill"], loaded.get("sft"), loaded.get("rl"),
                          loaded.get("bench", BenchRecipe()), loaded.get("pipeline", ProtocolRecipe()))


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


@dataclass
class PipelineRun:
    """What every stage of one pipeline run is given."""
    recipe: PipelineRecipe
    out: str
    state: object  # accelerate's process state
    models: dict  # {"teacher" | "hybrid": {"base" | "sft" | "rl": model spec}}: every model the run makes
    done: dict  # stages.json's record so far (the report reads it)
    stop_after: tuple | None = None
    allow_changes: bool = False


def _checkpoints(recipe: PipelineRecipe, out: str) -> dict:
    """Every model the run makes, by role and step, in stage order: the teacher and the distilled hybrid, then the
    final folder of each SFT / RL stage the recipe has a file for (reasoner-first: the hybrid has no SFT stage, it
    is distilled from the SFT teacher)."""
    models = {"teacher": {"base": recipe.distill.teacher}, "hybrid": {"base": os.path.join(out, "distill", "final")}}
    for kind in ("sft", "rl"):
        if getattr(recipe, kind) is not None:
            for who, ckpts in models.items():
                if kind == "sft" and who == "hybrid" and _reasoner_first(recipe):
                    continue
                ckpts[kind] = os.path.join(out, f"{kind}-{who}", "final")
    return models


def _reasoner_first(recipe: PipelineRecipe) -> bool:
    return recipe.pipeline.protocol == "reasoner-first"


def distill_teacher(recipe: PipelineRecipe, out: str) -> str:
    """The model the hybrid is converted from: the base teacher, or (reasoner-first) the SFT reasoner."""
    return os.path.join(out, "sft-teacher", "final") if _reasoner_first(recipe) else recipe.distill.teacher


def _distill(run: PipelineRun) -> dict:
    """convert -> select -> align/KD schedule into OUT/distill, resumed where its progress.json exists."""
    from .conversion.schedule import run_distill
    folder, stop = os.path.join(run.out, "distill"), run.stop_after
    recipe = copy.deepcopy(run.recipe.distill)
    recipe.teacher = distill_teacher(run.recipe, run.out)
    run_distill(recipe, folder, resume=os.path.isfile(os.path.join(folder, "progress.json")),
                stop_after=stop[1] if stop and stop[0] == "distill" else None, allow_changes=run.allow_changes)
    return {}


def _post_train(kind: str, who: str, run: PipelineRun) -> dict:
    """sft-<who> / rl-<who>: the recipe's SFT or GRPO budget, the same for teacher and hybrid, from the model's
    latest checkpoint (RL from the SFT model where there is one); skipped without sft.yaml / rl.yaml."""
    cfg = getattr(run.recipe, kind)
    if cfg is None:
        return {"skipped": True}
    ckpts = run.models[who]
    cfg = copy.deepcopy(cfg)
    cfg.model = ckpts["sft"] if kind == "rl" and "sft" in ckpts else ckpts["base"]
    cfg.out = os.path.join(run.out, f"{kind}-{who}")
    if kind == "sft":
        from .posttrain.sft import run_sft
        run_sft(cfg, resume=True)
    else:
        from .posttrain.rl import run_rl
        run_rl(cfg, resume=True)
    return {"from": cfg.model}


def _eval(run: PipelineRun) -> dict:
    """Held-out task accuracy of every model the run made; stages.json keeps the pass@ / maj@ numbers.
    Reasoner-first leaves out the base teacher: the comparison starts from the reasoner (teacher-sft), and the
    untuned model mostly writes to the length limit on long tasks, the slowest sampling of the stage."""
    extra = {}
    for who, ckpts in run.models.items():
        for step, spec in ckpts.items():
            if _reasoner_first(run.recipe) and (who, step) == ("teacher", "base"):
                continue
            r = _evaluate(spec, run.recipe.bench, os.path.join(run.out, "eval", f"{who}-{step}"))
            extra[f"{who}-{step}"] = {k: r[k] for k in r if k.startswith(("pass@", "maj@"))}
    return extra


def _bench(run: PipelineRun) -> dict:
    """Throughput (one engine, side by side) and accuracy under wall-clock budgets of the final teacher and hybrid.
    A rerun after an interruption keeps a finished throughput run and continues the time-budget draws."""
    from .evaluation.evaluate import run_time_budget
    from .evaluation.tasks import load_tasks
    from .evaluation.throughput import ThroughputSettings, run_throughput
    recipe, out, models = run.recipe, run.out, run.models
    b = recipe.bench
    final = {who_: list(ckpts.values())[-1] for who_, ckpts in models.items()}
    if not os.path.isfile(os.path.join(out, "bench", "bench.png")):  # written last: the throughput run finished
        run_throughput(ThroughputSettings(
            models=[final["teacher"], final["hybrid"]], out=os.path.join(out, "bench"), batch=b.batch,
            prompt_len=b.prompt_len, gen_len=b.gen_len, context=b.context, hf_baseline=False))
    problems = load_tasks(b.tasks, n=b.n, seed=b.seed)
    run_time_budget([final["teacher"], final["hybrid"]], problems, b.samples, b.budgets,
                    b.batch_candidates, os.path.join(out, "bench"),
                    title=f"{b.tasks}, {len(problems)} problems", tasks=b.tasks,
                    max_new_tokens=b.max_new_tokens, temperature=b.temperature, top_p=b.top_p, seed=b.seed,
                    max_samples=b.max_samples, bootstrap=b.bootstrap, resume=True)
    return {}


def _report(run: PipelineRun) -> dict:
    write_report(run.recipe, run.out, run.done, run.models)
    return {}


def _rank0(stage):
    """A stage that rank 0 runs alone (one set of numbers, no two writers); the other ranks record it empty."""
    @functools.wraps(stage)
    def on_rank0(run: PipelineRun) -> dict:
        return stage(run) if run.state.is_main_process else {}
    return on_rank0


# The stages in order: (name, stage(run) -> what stages.json records beside the wall seconds). The name is also the
# stage's folder under OUT; a new stage is one entry here.
PIPELINE = [
    ("distill", _distill),
    ("sft-teacher", functools.partial(_post_train, "sft", "teacher")),
    ("sft-hybrid", functools.partial(_post_train, "sft", "hybrid")),
    ("rl-teacher", functools.partial(_post_train, "rl", "teacher")),
    ("rl-hybrid", functools.partial(_post_train, "rl", "hybrid")),
    ("eval", _rank0(_eval)),
    ("bench", _rank0(_bench)),
    ("report", _rank0(_report)),
]
STAGES = tuple(name for name, _ in PIPELINE)
# reasoner-first: the reasoner before the conversion, no hybrid SFT
REASONER_FIRST = ("sft-teacher", "distill", "rl-teacher", "rl-hybrid", "eval", "bench", "report")


def pipeline_stages(recipe: PipelineRecipe) -> list:
    """The (name, stage) entries of this recipe's protocol, in the order they run."""
    if not _reasoner_first(recipe):
        return PIPELINE
    by_name = dict(PIPELINE)
    return [(name, by_name[name]) for name in REASONER_FIRST]
TRAINING = ("distill", "sft-teacher", "sft-hybrid", "rl-teacher", "rl-hybrid")  # resume checkpoints to prune


def _open_stages(recipe: PipelineRecipe, out: str, resume: bool, allow_changes: bool, state) -> Record:
    """OUT/stages.json, after refusing to start over a finished run and recording (or, resumed, checking) the
    recipe."""
    if os.path.isfile(os.path.join(out, "stages.json")) and not resume:
        raise ValueError(f"{out} already holds a run: pass --resume to continue it, or choose another --out")
    state.wait_for_everyone()  # every rank has checked before rank 0 can write stages.json
    os.makedirs(out, exist_ok=True)
    if state.is_main_process:  # a resumed run with another recipe is refused unless allow_changes
        record_recipe(out, _recipe_record(recipe), resume=resume, allow_changes=allow_changes,
                      defaults=_recipe_record(recipe, defaults=True))
    state.wait_for_everyone()
    return Record(os.path.join(out, "stages.json"), write=state.is_main_process)


def run_pipeline(recipe: PipelineRecipe, out: str, resume: bool = False, stop_after: tuple | None = None,
                 keep_checkpoints: bool = False, allow_changes: bool = False, until: str | None = None) -> dict:
    """Run every stage not yet finished; returns report.json's content. stop_after=("distill", k) simulates an
    interruption after k optimizer steps of the distill stage's first training phase (tests). Once a training
    stage is recorded as finished its resume checkpoints are deleted unless keep_checkpoints.

    until: stop once that stage is finished (measure the models made so far, then continue with --resume); returns
    {"until": the stage, "stages": stages.json's record} instead of the report."""
    from .train import process_state
    order = pipeline_stages(recipe)
    names = [name for name, _ in order]
    if until is not None and until not in names:
        raise ValueError(f"until={until!r} is not a stage of this recipe; its stages: {names}")
    state = process_state()  # under `accelerate launch`: all ranks train; rank 0 evaluates and writes
    stages = _open_stages(recipe, out, resume, allow_changes, state)
    run = PipelineRun(recipe, out, state, _checkpoints(recipe, out), stages.done, stop_after, allow_changes)
    if until is not None:
        order = order[:names.index(until) + 1]
    todo = [name for name, _ in order if name not in stages.done]
    bar = tqdm(total=len(order), initial=len(order) - len(todo), desc="pipeline", unit="stage",
               disable=not state.is_main_process)
    for name, stage in order:
        if name in stages.done:
            continue
        bar.set_postfix_str(name)
        t0 = time.perf_counter()
        extra = stage(run)
        state.wait_for_everyone()
        stages.finish(name, {"seconds": time.perf_counter() - t0, **extra})
        if state.is_main_process and not keep_checkpoints and name in TRAINING:
            prune_checkpoints(os.path.join(out, name))
        bar.update(1)
    bar.close()
    if until is not None and until != names[-1]:
        return {"until": until, "stages": dict(stages.done)}
    return json.load(open(os.path.join(out, "report.json")))


def _recipe_record(recipe: PipelineRecipe, defaults: bool = False) -> dict:
    """Every stage file's settings, as the pipeline ran them (compared on --resume); defaults: each file's default
    values instead."""
    return {name: asdict(type(cfg)() if defaults else cfg) for name in ("distill", "sft", "rl", "bench", "pipeline")
            if (cfg := getattr(recipe, name)) is not None}


def _fmt(x, nd=3):
    return "" if x is None else f"{x:.{nd}f}"


def _protocol_line(recipe: PipelineRecipe) -> str:
    if _reasoner_first(recipe):
        return ("Protocol: reasoner-first. The teacher was fine-tuned on the task first (the reasoner); the hybrid was "
                "converted from the reasoner and distilled on the reasoner's own answers to the task's prompts; both "
                "then had the same GRPO budget.")
    return ("Protocol: distill-first. The hybrid was distilled from the base teacher, then teacher and hybrid had "
            "the same SFT and GRPO budgets.")


def write_report(recipe: PipelineRecipe, out: str, done: dict, models: dict) -> None:
    """OUT/report.md and report.json from the stages' outputs."""
    from .evaluation.throughput import ratio_table
    from .conversion.schedule import summary_table
    tb_path = os.path.join(out, "bench", "time_budget.json")
    tb = json.load(open(tb_path)) if os.path.isfile(tb_path) else None
    lines = [f"# {os.path.basename(os.path.abspath(recipe.folder))}: teacher vs hybrid", ""]
    verdict_rows = []  # the time-budget verdict first: who wins at which budgets, by how much
    for sentence in (tb or {}).get("verdict", "").splitlines():
        verdict_rows.append(len(lines))
        lines += [f"**Under a wall-clock budget:** {sentence}", ""]
    reasoner = f" (the reasoner: `{distill_teacher(recipe, out)}`)" if _reasoner_first(recipe) else ""
    lines += [f"teacher `{recipe.distill.teacher}`{reasoner}; hybrid `{os.path.join(out, 'distill', 'final')}` "
              f"({recipe.distill.mixer}, attention kept: schedule {recipe.distill.schedule})", "",
              _protocol_line(recipe), ""]
    report: dict = {"recipe": recipe.folder, "protocol": recipe.pipeline.protocol, "stages": done}
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
    if tb is not None:
        from .evaluation.budget import budget_table
        report["time_budget"] = tb
        lines += ["## Accuracy under a wall-clock budget", ""]
        for label, meta in tb["models"].items():
            lines += [f"**{label}**{' (reference)' if label == tb.get('reference') else ''}: "
                      f"{meta['seconds_per_sample']:.4g} s/sample at batch {meta['best_batch']}, "
                      f"{meta.get('samples', tb['samples'])} samples per problem"
                      + (" (capped)" if meta.get("capped") else ""), "", budget_table(tb, label), ""]
        lines += ["k: samples per problem within the budget; [ ]: 95 % bootstrap interval over problems; − ref: the "
                  "paired difference to the reference ± its standard error (a tie within 2 s.e.)", "",
                  "![time budget](bench/time_budget.png)", ""]
    for i in [*verdict_rows, *range(start, len(lines))]:
        for spec, role in sorted(roles.items(), key=lambda kv: -len(kv[0])):
            lines[i] = lines[i].replace(spec, role)
    # time per stage
    lines += ["## Time per stage", "", "| stage | wall s |", "|---|---|"]
    lines += [f"| {s} | {done[s]['seconds']:.0f} |" for s, _ in pipeline_stages(recipe) if s in done]
    lines.append("")
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write("\n".join(lines))
    report["recipe_args"] = {"distill": asdict(recipe.distill), "bench": asdict(recipe.bench)}
    with open(os.path.join(out, "report.json"), "w") as f:
        json.dump(report, f, indent=1, default=str)
