"""`hybrid-distill distill`: incremental layer replacement, stage after stage, from one recipe.

    hybrid-distill distill --config recipes/smollm2-135m/distill.yaml [--profile demo] [--out DIR] [--resume]

For each keep-ratio r of `schedule` (e.g. [0.75, 0.5, 0.25]) the next layers in the selection order are
replaced: their attention is transferred into mixers (init.py), the new mixers are aligned to the teacher's
attention outputs (align.py), then the whole hybrid is distilled on logits (kd.py), continuing from the previous
stage's weights. After every phase the held-out KL to the teacher and the perplexity ratio are measured.

Everything lands in the output folder: select.json/png, stage<k>/<phase>/ (a loadable hybrid), metrics.jsonl,
summary.json and summary.md (the table). `--resume` skips finished phases and resumes an interrupted one from
its last checkpoint.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time

import torch

from hybrid import load_pretrained
from hybrid.checkpoints import load_hybrid

from .align import MixerStack, align_loss_step, alignment_errors, count_all_tokens
from .corpus import build_corpus, read_prompts
from ..data import DataSpec, build_rows, split_rows
from .heldout import HeldOut
from .transfer import hybridize
from .kd import kd_loss_step, set_trainable
from ..recipe import DistillRecipe, recipe_to_dict
from ..runfolder import record_recipe
from .select import Selection, SelectContext, save_selection, select
from ..train import Trainer, TrainArgs, process_state


def _train_args(stage_recipe) -> TrainArgs:
    names = {f for f in TrainArgs.__dataclass_fields__}
    return TrainArgs(**{k: getattr(stage_recipe, k) for k in names})


class Progress:
    """progress.json: the finished phases and what they measured."""

    def __init__(self, out: str, write: bool = True):
        self.path, self.write = os.path.join(out, "progress.json"), write
        self.done: dict[str, dict] = {}
        if os.path.exists(self.path):
            with open(self.path) as f:
                self.done = json.load(f)

    def finish(self, phase: str, record: dict):
        self.done[phase] = record
        if not self.write:
            return
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.done, f, indent=1)
        os.replace(tmp, self.path)


def prepare_data(recipe: DistillRecipe, teacher, tok, out: str):
    d = recipe.data
    if d.source is None:
        c = d.corpus
        path = os.path.join(out, "corpus.jsonl")
        t0 = time.perf_counter()
        build_corpus(teacher, tok, read_prompts(c.prompts), path, c.max_new_tokens, c.batch_size, c.temperature,
                     c.top_p, c.seed)
        source, fmt, seconds = path, "prompt_completion", time.perf_counter() - t0
    else:
        source, fmt, seconds = d.source, d.format, 0.0
    spec = DataSpec(**{f.name: getattr(d, f.name) for f in dataclasses.fields(DataSpec)})
    spec.source, spec.format = source, fmt
    rows = build_rows(spec, tok, d.seq_len, limit=d.max_records)
    train, held = split_rows(rows, d.eval_rows, seed=recipe.seed)
    return train, held, seconds


def run_distill(recipe: DistillRecipe, out: str, resume: bool = False, teacher=None, tok=None,
                stop_after: int | None = None, allow_changes: bool = False) -> dict:
    """Run the schedule; returns the summary. `teacher`/`tok` may be passed in (tests); `stop_after` simulates an
    interruption inside the first training phase that runs. A resumed run refuses a recipe that differs from the
    stored one unless allow_changes (distill.runfolder.record_recipe)."""
    state = process_state()  # under `accelerate launch`: rank 0 writes files, every rank trains
    os.makedirs(out, exist_ok=True)
    if not resume and os.path.exists(os.path.join(out, "progress.json")):
        raise ValueError(f"{out} already holds a run: pass --resume to continue it, or choose another --out")
    state.wait_for_everyone()
    if state.is_main_process:
        record_recipe(out, recipe_to_dict(recipe), resume=resume, allow_changes=allow_changes)
    progress = Progress(out, write=state.is_main_process)
    torch.manual_seed(recipe.seed)
    if teacher is None:
        teacher, tok = load_pretrained(recipe.teacher, dtype=recipe.dtype, device=state.device)
    teacher.requires_grad_(False)
    teacher.eval()
    with state.main_process_first():  # rank 0 samples the corpus; the others then read it
        train_rows, eval_rows, corpus_s = prepare_data(recipe, teacher, tok, out)
    n = teacher.config.num_hidden_layers
    ev = HeldOut(teacher, eval_rows, recipe.eval_batch_size)

    # 1. selection
    if "select" in progress.done:
        s = progress.done["select"]
        sel = Selection(s["strategy"], s["order"], {int(k): v for k, v in s["scores"].items()}, s["score_name"])
    else:
        t0 = time.perf_counter()
        ctx = SelectContext(teacher, recipe.mixer, train_rows, eval_rows, recipe.eval_batch_size, heldout=ev)
        sel = select(recipe.select.strategy, ctx, **recipe.select.params)
        if state.is_main_process:
            save_selection(sel, out, keep_ratio=recipe.schedule[-1])
        progress.finish("select", {"strategy": sel.strategy, "order": sel.order, "score_name": sel.score_name,
                                   "scores": {str(k): v for k, v in sel.scores.items()},
                                   "seconds": time.perf_counter() - t0, "corpus_seconds": corpus_s})

    # 2. the stages
    student, prev_attn = teacher, list(range(n))
    for k, ratio in enumerate(recipe.schedule):
        kept = sel.kept(ratio)
        new = [i for i in prev_attn if i not in kept]
        phases = [("transfer", None), ("align", recipe.align), ("kd", recipe.kd)]
        for phase, stage_recipe in phases:
            key, folder = f"stage{k}/{phase}", os.path.join(out, f"stage{k}", phase)
            if key in progress.done:
                if os.path.isdir(os.path.join(folder, "model")):
                    student = load_hybrid(os.path.join(folder, "model"), dtype=recipe.dtype)
                    # same attention kernel as the uninterrupted run, so that a resumed run is bit-identical
                    student.set_attn_implementation(teacher.config._attn_implementation)
                continue
            t0, c0 = time.perf_counter(), time.process_time()
            record = {"stage": k, "phase": phase, "keep_ratio": ratio, "attention_layers": kept}
            if phase == "transfer":
                torch.manual_seed(recipe.seed + k)
                student = hybridize(student, kept, mixer=recipe.mixer, chunk_size=recipe.chunk_size)
            elif stage_recipe.steps == 0 or (phase == "align" and not new):
                progress.finish(key, {**record, "skipped": True})
                continue
            elif phase == "align":
                before = alignment_errors(student, teacher, new, eval_rows, recipe.eval_batch_size)
                stack = MixerStack(student, new)
                for p in student.parameters():
                    p.requires_grad_(False)
                for p in stack.parameters():
                    p.requires_grad_(True)
                trainer = Trainer(stack, align_loss_step(teacher, new), train_rows, _train_args(stage_recipe),
                                  folder, eval_fn=lambda _stack: ev(student), name=f"stage{k}-align",
                                  count_fn=count_all_tokens)
                record.update(trainer.run(resume=resume, stop_after=stop_after))
                after = alignment_errors(student, teacher, new, eval_rows, recipe.eval_batch_size)
                record["alignment_error"] = {str(i): {"before": before[i], "after": after[i]} for i in new}
            else:
                set_trainable(student, stage_recipe.train)
                trainer = Trainer(student, kd_loss_step(teacher, stage_recipe.loss, stage_recipe.temperature,
                                                        stage_recipe.alpha),
                                  train_rows, _train_args(stage_recipe), folder, eval_fn=ev, name=f"stage{k}-kd")
                record.update(trainer.run(resume=resume, stop_after=stop_after))
                student = trainer.acc.unwrap_model(trainer.module)
            if phase == "transfer":
                record.update(ev(student))
            student.requires_grad_(False)
            student.eval()
            record["seconds"] = time.perf_counter() - t0
            record["cpu_seconds"] = time.process_time() - c0
            if state.is_main_process:
                student.save_pretrained(os.path.join(folder, "model"))
            state.wait_for_everyone()
            progress.finish(key, record)
        prev_attn = kept
    summary = {"teacher": recipe.teacher, "selection": sel.strategy, "corpus_seconds": corpus_s,
               "phases": [v for key, v in progress.done.items() if key.startswith("stage")]}
    if state.is_main_process:
        final = os.path.join(out, "final")
        student.save_pretrained(final)
        if tok is not None:
            tok.save_pretrained(final)
        with open(os.path.join(out, "summary.json"), "w") as f:
            json.dump(summary, f, indent=1)
        with open(os.path.join(out, "summary.md"), "w") as f:
            f.write(summary_table(summary) + "\n")
    return summary


def summary_table(*summaries: dict) -> str:
    """One markdown table over one or more runs (e.g. two selection strategies side by side)."""
    lines = [f"teacher `{summaries[0]['teacher']}`", "",
             "| selection | stage | phase | attention kept | held-out KL | ppl ratio (student / teacher) "
             "| mixer alignment error (before -> after) | wall s | CPU s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for summary in summaries:
        for r in summary["phases"]:
            if r.get("skipped"):
                continue
            align = ""
            if "alignment_error" in r:  # mean over the newly replaced layers of ||mixer - attn||^2 / ||attn||^2
                errs = list(r["alignment_error"].values())
                align = (f"{sum(e['before'] for e in errs) / len(errs):.3f} -> "
                         f"{sum(e['after'] for e in errs) / len(errs):.3f}")
            lines.append(f"| {summary['selection']} | {r['stage']} | {r['phase']} | "
                         f"{len(r['attention_layers'])} ({r['keep_ratio']:.0%}) | {r['kl']:.4f} | "
                         f"{r['ppl_ratio']:.3f} | {align} | {r['seconds']:.0f} | {r['cpu_seconds']:.0f} |")
    return "\n".join(lines)
