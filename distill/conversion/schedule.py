"""`hybrid-distill distill`: incremental layer replacement, stage after stage, from one recipe.

    hybrid-distill distill --config recipes/smollm2-135m/distill.yaml [--profile demo] [--out DIR] [--resume]

For each keep-ratio r of `schedule` (e.g. [0.75, 0.5, 0.25]) the next layers in the selection order are
replaced: their attention is transferred into mixers (transfer.py), the new mixers are aligned to the teacher's
attention outputs (align.py), then the whole hybrid is distilled on logits (kd.py: the teacher's text; then, with
onpolicy.steps, onpolicy.py: the student's own samples), continuing from the previous stage's weights. After every phase the held-out KL to the teacher and the perplexity ratio are measured. Each
phase is one function with one signature (phase.py); `phases()` lists them in order.

Everything lands in the output folder: select.json/png, stage<k>/<phase>/ (a loadable hybrid), metrics.jsonl,
summary.json and summary.md (the table). `--resume` skips finished phases and resumes an interrupted one from
its last checkpoint.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from hybrid import load_pretrained
from hybrid.attention import use_document_attention
from hybrid.checkpoints import load_hybrid

from .align import run_align
from .corpus import build_corpus, read_prompts
from ..data import DataSpec, build_rows, split_rows
from .heldout import HeldOut
from .kd import run_kd
from .onpolicy import run_onpolicy
from .phase import PhaseContext
from ..recipe import DistillRecipe, recipe_to_dict
from ..runfolder import Record, record_recipe
from .select import Selection, SelectContext, save_selection, select
from .transfer import run_transfer
from ..train import process_state


def prepare_data(recipe: DistillRecipe, teacher, tok, out: str):
    d = recipe.data
    if d.source is None:
        c = d.corpus
        path = os.path.join(out, "corpus.jsonl")
        t0 = time.perf_counter()
        build_corpus(teacher, tok, read_prompts(c.prompts, c.n, c.seed), path, c.max_new_tokens, c.batch_size, c.temperature,
                     c.top_p, c.seed)
        source, fmt, seconds = path, "prompt_completion", time.perf_counter() - t0
    else:
        source, fmt, seconds = d.source, d.format, 0.0
    spec = DataSpec(**{f.name: getattr(d, f.name) for f in dataclasses.fields(DataSpec)})
    spec.source, spec.format = source, fmt
    rows = build_rows(spec, tok, d.seq_len, limit=d.max_records)
    train, held = split_rows(rows, d.eval_rows, seed=recipe.seed)
    return train, held, seconds


def phases(recipe: DistillRecipe) -> list[tuple[str, Callable, object]]:
    """The phases of every stage, in order: (name, phase function (phase.py), its settings: the recipe section of
    that name, the whole recipe for transfer). The name keys progress.json (stage<k>/<name>) and names the phase's
    folder; a new phase is one entry here."""
    out = [("transfer", run_transfer, recipe), ("align", run_align, recipe.align), ("kd", run_kd, recipe.kd)]
    if recipe.onpolicy.steps:  # listed only where it runs: runs without it record what they always did
        out.append(("onpolicy", run_onpolicy, recipe.onpolicy))
    return out


@dataclass
class _Run:
    """What every phase of one run shares: the recipe, the run folder, its progress record, the process state."""
    recipe: DistillRecipe
    out: str
    progress: Record
    state: object


def run_distill(recipe: DistillRecipe, out: str, resume: bool = False, teacher=None, tok=None,
                stop_after: int | None = None, allow_changes: bool = False) -> dict:
    """Run the schedule; returns the summary. `teacher`/`tok` may be passed in (tests); `stop_after` simulates an
    interruption inside the first training phase that runs. A resumed run refuses a recipe that differs from the
    stored one unless allow_changes (distill.runfolder.record_recipe)."""
    state = process_state()  # under `accelerate launch`: rank 0 writes files, every rank trains
    run = _Run(recipe, out, _open_progress(recipe, out, resume, allow_changes, state), state)
    torch.manual_seed(recipe.seed)
    if teacher is None:
        teacher, tok = load_pretrained(recipe.teacher, dtype=recipe.dtype, device=state.device)
    use_document_attention(teacher)  # packed KD rows attend per document; the hybrids inherit it
    teacher.requires_grad_(False)
    teacher.eval()
    with state.main_process_first():  # rank 0 samples the corpus; the others then read it
        train_rows, eval_rows, corpus_s = prepare_data(recipe, teacher, tok, out)
    data = (train_rows, eval_rows)
    ev = HeldOut(teacher, eval_rows, recipe.eval_batch_size)
    sel = _selection(run, teacher, data, ev, corpus_s)
    base = PhaseContext(stage=0, keep_ratio=1.0, kept=[], new=[], heldout=ev, eval_batch_size=recipe.eval_batch_size,
                        resume=resume, stop_after=stop_after, tokenizer=tok)
    student = _run_stages(run, sel, teacher, data, base)
    summary = {"teacher": recipe.teacher, "selection": sel.strategy, "corpus_seconds": corpus_s,
               "phases": [v for key, v in run.progress.done.items() if key.startswith("stage")]}
    if state.is_main_process:
        _write_results(summary, student, tok, out)
    return summary


def _open_progress(recipe: DistillRecipe, out: str, resume: bool, allow_changes: bool, state) -> Record:
    """The run folder's progress.json, after refusing to start over a finished run and recording the recipe."""
    os.makedirs(out, exist_ok=True)
    if not resume and os.path.exists(os.path.join(out, "progress.json")):
        raise ValueError(f"{out} already holds a run: pass --resume to continue it, or choose another --out")
    state.wait_for_everyone()
    if state.is_main_process:
        record_recipe(out, recipe_to_dict(recipe), resume=resume, allow_changes=allow_changes,
                      defaults=recipe_to_dict(type(recipe)()))
    return Record(os.path.join(out, "progress.json"), write=state.is_main_process)


def _selection(run: _Run, teacher, data, ev: HeldOut, corpus_s: float) -> Selection:
    """The replacement order: the recorded one on resume, else the recipe's strategy (select.json/png)."""
    done = run.progress.done
    if "select" in done:
        s = done["select"]
        return Selection(s["strategy"], s["order"], {int(k): v for k, v in s["scores"].items()}, s["score_name"])
    t0 = time.perf_counter()
    ctx = SelectContext(teacher, run.recipe.mixer, data[0], data[1], run.recipe.eval_batch_size, heldout=ev)
    sel = select(run.recipe.select.strategy, ctx, **run.recipe.select.params)
    if run.state.is_main_process:
        save_selection(sel, run.out, keep_ratio=run.recipe.schedule[-1])
    run.progress.finish("select", {"strategy": sel.strategy, "order": sel.order, "score_name": sel.score_name,
                                   "scores": {str(k): v for k, v in sel.scores.items()},
                                   "seconds": time.perf_counter() - t0, "corpus_seconds": corpus_s})
    return sel


def _run_stages(run: _Run, sel: Selection, teacher, data, base: PhaseContext):
    """Every keep ratio of the schedule in turn, each stage's phases in order; returns the last student."""
    student, prev_attn = teacher, list(range(teacher.config.num_hidden_layers))
    for k, ratio in enumerate(run.recipe.schedule):
        kept = sel.kept(ratio)
        ctx = dataclasses.replace(base, stage=k, keep_ratio=ratio, kept=kept,
                                  new=[i for i in prev_attn if i not in kept])
        for phase in phases(run.recipe):
            student = _run_phase(run, phase, student, teacher, data, ctx)
        prev_attn = kept
    return student


def _run_phase(run: _Run, phase, student, teacher, data, ctx: PhaseContext):
    """One phase of one stage. A recorded phase is not rerun: its saved model is loaded (a skipped one saved
    none). Otherwise the phase runs, and its student is frozen, saved to <folder>/model and recorded with the
    stage, the kept layers and its wall and CPU seconds."""
    name, fn, settings = phase
    key, folder = f"stage{ctx.stage}/{name}", os.path.join(run.out, f"stage{ctx.stage}", name)
    if key in run.progress.done:
        return _reload(os.path.join(folder, "model"), student, teacher, run.recipe.dtype)
    t0, c0 = time.perf_counter(), time.process_time()
    record = {"stage": ctx.stage, "phase": name, "keep_ratio": ctx.keep_ratio, "attention_layers": ctx.kept}
    student, measured = fn(student, teacher, data, settings, folder, ctx)
    record.update(measured)
    if measured.get("skipped"):
        run.progress.finish(key, record)
        return student
    student.requires_grad_(False)
    student.eval()
    record["seconds"] = time.perf_counter() - t0
    record["cpu_seconds"] = time.process_time() - c0
    if run.state.is_main_process:
        student.save_pretrained(os.path.join(folder, "model"))
        if ctx.tokenizer is not None:  # every phase's model loads and generates on its own (e.g. `eval --model`)
            ctx.tokenizer.save_pretrained(os.path.join(folder, "model"))
    run.state.wait_for_everyone()
    run.progress.finish(key, record)
    return student


def _reload(model_dir: str, student, teacher, dtype: str):
    """The model a finished phase saved, or `student` unchanged where it saved none (a skipped phase)."""
    if not os.path.isdir(model_dir):
        return student
    student = load_hybrid(model_dir, dtype=dtype)
    # same attention kernel as the uninterrupted run, so that a resumed run is bit-identical
    student.set_attn_implementation(teacher.config._attn_implementation)
    return student


def _write_results(summary: dict, student, tok, out: str) -> None:
    """out/final (the last student, with the tokenizer), summary.json and summary.md."""
    final = os.path.join(out, "final")
    student.save_pretrained(final)
    if tok is not None:
        tok.save_pretrained(final)
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write(summary_table(summary) + "\n")


def summary_table(*summaries: dict, names: list[str] | None = None) -> str:
    """One markdown table over one or more runs (e.g. two selection strategies side by side); names: a first
    column naming each run (runs of the same selection, e.g. offline KD against on-policy distillation, are told
    apart only by it)."""
    if names is not None and len(names) != len(summaries):
        raise ValueError(f"{len(names)} names for {len(summaries)} runs")
    first = "| run " if names else ""
    lines = [f"teacher `{summaries[0]['teacher']}`", "",
             first + "| selection | stage | phase | attention kept | held-out KL | ppl ratio (student / teacher) "
             "| mixer alignment error (before -> after) | wall s | CPU s |",
             "|---" * (10 if names else 9) + "|"]
    for i, summary in enumerate(summaries):
        for r in summary["phases"]:
            if r.get("skipped"):
                continue
            align = ""
            if "alignment_error" in r:  # mean over the newly replaced layers of ||mixer - attn||^2 / ||attn||^2
                errs = list(r["alignment_error"].values())
                align = (f"{sum(e['before'] for e in errs) / len(errs):.3f} -> "
                         f"{sum(e['after'] for e in errs) / len(errs):.3f}")
            lines.append((f"| {names[i]} " if names else "") + f"| {summary['selection']} | {r['stage']} | "
                         f"{r['phase']} | {len(r['attention_layers'])} ({r['keep_ratio']:.0%}) | {r['kl']:.4f} | "
                         f"{r['ppl_ratio']:.3f} | {align} | {r['seconds']:.0f} | {r['cpu_seconds']:.0f} |")
    return "\n".join(lines)
