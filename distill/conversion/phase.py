"""What the schedule hands each phase of a stage (transfer, align, kd), so that a phase owns its whole run.

A phase is one function

    run_<phase>(student, teacher, data, settings, folder, ctx) -> (student, record)

that trains (or replaces) `student` against the frozen `teacher` on data = (train rows, held-out rows), with
`settings` its recipe section, writing its checkpoints under `folder`. It returns the model it leaves and what it
measured; {"skipped": True} leaves the student as it was. The schedule (schedule.py) resumes, times, saves and
records every phase the same way, so a new phase is one more entry in its list.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..train import TrainArgs
from .heldout import HeldOut


@dataclass
class PhaseContext:
    """Where in the schedule a phase runs and how: the stage, its layers, the shared held-out evaluator (its
    teacher logits are computed once per run), and whether to resume or stop early."""
    stage: int  # index in the schedule
    keep_ratio: float
    kept: list[int]  # attention layers kept after this stage
    new: list[int]  # layers this stage replaces
    heldout: HeldOut
    eval_batch_size: int = 4
    resume: bool = False  # continue an interrupted phase from its last checkpoint
    stop_after: int | None = None  # raise StopRequested after this many optimizer steps (a simulated interruption)
    tokenizer: object = None  # the teacher's (phases that pose prompts: onpolicy)

    def name(self, phase: str) -> str:
        """The Trainer's name of a phase (progress bar, metrics.jsonl, TensorBoard)."""
        return f"stage{self.stage}-{phase}"


def train_args(settings) -> TrainArgs:
    """The TrainArgs part of a phase's recipe section: checkpoints store exactly these fields, not the section's
    own (loss weights, temperature...), so they read the same whatever a section adds."""
    return TrainArgs(**{k: getattr(settings, k) for k in TrainArgs.__dataclass_fields__})
