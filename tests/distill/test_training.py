"""Align and KD stages on a tiny teacher: they learn, freeze what they should, resume exactly, fail loudly."""
import json
import os
import subprocess
import sys

import pytest
import torch
from helpers import tiny_rows, tiny_teacher, tiny_tokenizer

from distill import hybridize
from distill.conversion.align import MixerStack, align_loss_step, count_all_tokens
from distill.data import synthetic_prompts
from distill.conversion.kd import kd_loss_step, set_trainable
from distill.recipe import DistillRecipe, from_dict, load_recipe
from distill.conversion.select import STRATEGIES, SelectContext, get_strategy, kept_layers, select
from distill.train import NonFiniteLoss, StopRequested, Trainer, TrainArgs

HERE = os.path.dirname(__file__)


def _snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_align_reduces_loss_and_trains_only_replaced_mixers(tmp_path):
    teacher = tiny_teacher("llama").requires_grad_(False)
    student = hybridize(teacher, [1, 3])
    before = _snapshot(student)
    student.requires_grad_(False)
    stack = MixerStack(student, [0, 2])
    stack.requires_grad_(True)
    args = TrainArgs(steps=30, batch_size=4, lr=3e-3, warmup_steps=2, log_every=1)
    trainer = Trainer(stack, align_loss_step(teacher, [0, 2]), tiny_rows(), args, str(tmp_path),
                      count_fn=count_all_tokens)
    trainer.run()
    losses = [r["loss"] for r in trainer.history if "loss" in r]
    assert losses[-1] < 0.7 * losses[0], losses
    after = student.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(".mamba." in k and k.split(".")[2] in ("0", "2") for k in changed), changed


@pytest.mark.parametrize("which", ["mixers", "mixers+mlp"])
def test_kd_reduces_loss_and_keeps_frozen_parameters_bit_identical(tmp_path, which):
    teacher = tiny_teacher("llama").requires_grad_(False)
    student = hybridize(teacher, [1, 3])
    before = _snapshot(student)
    names = set(set_trainable(student, which))
    args = TrainArgs(steps=25, batch_size=4, lr=3e-3, warmup_steps=2, log_every=1)
    trainer = Trainer(student, kd_loss_step(teacher, {"kl": 1.0}), tiny_rows(), args, str(tmp_path))
    trainer.run()
    losses = [r["loss"] for r in trainer.history if "loss" in r]
    assert losses[-1] < 0.7 * losses[0], losses
    after = student.state_dict()
    for k in before:
        if k in names:
            continue
        assert torch.equal(before[k], after[k]), f"frozen {k} changed"
    assert any(not torch.equal(before[k], after[k]) for k in names)
    if which == "mixers":
        assert all(".mamba." in k for k in names)
    else:
        assert any(".mlp." in k for k in names) and not any("self_attn" in k or "embed" in k for k in names)


def _kd_trainer(out, steps=8, save_every=0):
    teacher = tiny_teacher("llama").requires_grad_(False)
    student = hybridize(teacher, [1])
    set_trainable(student, "mixers+mlp")
    args = TrainArgs(steps=steps, batch_size=3, grad_accum=2, lr=2e-3, warmup_steps=2, log_every=1,
                     save_every=save_every, seed=3)
    return Trainer(student, kd_loss_step(teacher, {"kl": 1.0, "ce": 0.1}), tiny_rows(), args, str(out)), student


def test_resume_continues_the_loss_curve_exactly(tmp_path):
    straight, s_model = _kd_trainer(tmp_path / "a")
    straight.run()
    first, _ = _kd_trainer(tmp_path / "b", save_every=3)
    with pytest.raises(StopRequested):
        first.run(stop_after=3)
    second, r_model = _kd_trainer(tmp_path / "b", save_every=3)
    second.run(resume=True)
    loss_a = [r["loss"] for r in straight.history if "loss" in r]
    loss_b = [r["loss"] for r in second.history if "loss" in r]
    assert loss_a == loss_b
    for (k, a), (_, b) in zip(s_model.state_dict().items(), r_model.state_dict().items()):
        assert torch.equal(a, b), k


def test_non_finite_loss_stops_naming_the_step(tmp_path):
    trainer, _ = _kd_trainer(tmp_path, steps=6, save_every=2)
    real = trainer.loss_step
    calls = {"n": 0}

    def poisoned(module, batch):
        calls["n"] += 1
        s, parts = real(module, batch)
        return (s * float("nan"), parts) if calls["n"] > 2 * 3 else (s, parts)  # step 4 (2 micro-batches a step)

    trainer.loss_step = poisoned
    with pytest.raises(NonFiniteLoss, match=r"at step 4; last good checkpoint: .*step-0000002"):
        trainer.run()
    assert trainer.latest_checkpoint().endswith("step-0000002")


@pytest.mark.slow
def test_two_processes_match_one_process_on_the_same_global_batch(tmp_path):
    script = os.path.join(HERE, "dist_kd_step.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, script, str(tmp_path / "one.json"), "2"], env=env,
                         capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    # --multi_gpu on a machine without GPUs starts torchrun processes that join over gloo, on the CPU.
    two = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                          script, str(tmp_path / "two.json"), "1"],
                         env=env, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("one.json", "two.json"))
    assert b["world"] == 2 and a["world"] == 1
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    assert a["checksum"] == pytest.approx(b["checksum"], rel=1e-5)


def test_every_strategy_resolves_and_returns_a_valid_order():
    teacher = tiny_teacher("llama").requires_grad_(False)
    rows = tiny_rows(40)
    ctx = SelectContext(teacher, "mamba2", rows, {k: v[:4] for k, v in rows.items()}, batch_size=4)
    params = {"explicit": {"layers": [0, 3]}, "leave-one-out": {"align_steps": 3},
              "kl-guided": {"align_steps": 2, "kd_steps": 2}}
    for name in STRATEGIES:
        sel = select(name, ctx, **params.get(name, {}))
        assert sorted(sel.order) == [0, 1, 2, 3], name
        assert len(kept_layers(sel.order, 0.5)) == 2
        assert set(kept_layers(sel.order, 0.25)) <= set(kept_layers(sel.order, 0.5)) <= set(kept_layers(sel.order, 0.75))
    assert kept_layers(select("explicit", ctx, layers=[0, 3]).order, 0.5) == [0, 3]
    with pytest.raises(ValueError, match="unknown selection strategy 'random'"):
        get_strategy("random")
    with pytest.raises(ValueError, match="no parameter"):
        select("uniform", ctx, align_steps=3)


def test_recipe_errors_name_file_key_and_value(tmp_path):
    bad = tmp_path / "distill.yaml"
    bad.write_text("teacher: x\nkd:\n  stpes: 3\n")
    with pytest.raises(ValueError, match=r"distill.yaml: unknown key 'kd.stpes'"):
        load_recipe(str(bad))
    bad.write_text("teacher: x\nschedule: [0.5, 1.5]\n")
    with pytest.raises(ValueError, match=r"keep-ratio 1.5 must lie in \(0, 1\]"):
        load_recipe(str(bad))
    bad.write_text("teacher: x\nschedule: [0.0]\n")
    with pytest.raises(ValueError, match=r"keep-ratio 0.0"):
        load_recipe(str(bad))
    bad.write_text("teacher: x\nalign:\n  lr: fast\n")
    with pytest.raises(ValueError, match=r"align.lr='fast'"):
        load_recipe(str(bad))
    with pytest.raises(ValueError, match="mixer='rwkv'"):
        from_dict(DistillRecipe, {"mixer": "rwkv"})
    good = tmp_path / "ok.yaml"
    good.write_text("teacher: x\nkd: {steps: 3}\nprofiles: {demo: {kd.steps: 1}}\n")
    r = load_recipe(str(good), profile="demo", overrides=["kd.lr=0.5"])
    assert r.kd.steps == 1 and r.kd.lr == 0.5
    for path in ("recipes/smollm2-135m/distill.yaml",):
        load_recipe(os.path.join(HERE, "..", "..", path))
        load_recipe(os.path.join(HERE, "..", "..", path), profile="demo")


def test_distill_pipeline_runs_and_resumes(tmp_path):
    from distill.conversion.schedule import run_distill
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "completion": p[::-1]}) + "\n" for p in synthetic_prompts(60)))
    recipe = from_dict(DistillRecipe, {
        "teacher": "tiny", "schedule": [0.75, 0.5], "chunk_size": 16,
        "data": {"source": str(data), "seq_len": 64, "eval_rows": 4},
        "align": {"steps": 4, "batch_size": 4, "save_every": 2},
        "kd": {"steps": 4, "batch_size": 4, "save_every": 2}})
    teacher, tok = tiny_teacher("llama"), tiny_tokenizer()
    full = run_distill(recipe, str(tmp_path / "a"), teacher=teacher, tok=tok)
    phases = [(p["stage"], p["phase"]) for p in full["phases"]]
    assert phases == [(0, "transfer"), (0, "align"), (0, "kd"), (1, "transfer"), (1, "align"), (1, "kd")]
    kl = {(p["stage"], p["phase"]): p["kl"] for p in full["phases"]}
    assert kl[(0, "kd")] < kl[(0, "transfer")]
    with pytest.raises(StopRequested):
        run_distill(recipe, str(tmp_path / "b"), teacher=tiny_teacher("llama"), tok=tok, stop_after=3)
    with pytest.raises(ValueError, match="--resume"):
        run_distill(recipe, str(tmp_path / "b"), teacher=tiny_teacher("llama"), tok=tok)
    resumed = run_distill(recipe, str(tmp_path / "b"), resume=True, teacher=tiny_teacher("llama"), tok=tok)
    for x, y in zip(full["phases"], resumed["phases"]):
        assert x["kl"] == pytest.approx(y["kl"], rel=1e-6), (x["stage"], x["phase"])
    assert os.path.isfile(tmp_path / "a" / "select.png") and os.path.isfile(tmp_path / "a" / "summary.md")


def test_ctrl_c_saves_the_last_finished_step_and_resume_continues_exactly(tmp_path):
    straight, s_model = _kd_trainer(tmp_path / "a")
    straight.run()
    first, _ = _kd_trainer(tmp_path / "b", save_every=100)
    real, calls = first.loss_step, {"n": 0}

    def interrupted(module, batch):
        calls["n"] += 1
        if calls["n"] == 2 * 5 + 1:  # inside step 6 (2 micro-batches a step)
            raise KeyboardInterrupt
        return real(module, batch)

    first.loss_step = interrupted
    with pytest.raises(KeyboardInterrupt):
        first.run()
    assert first.latest_checkpoint().endswith("step-0000005")
    second, r_model = _kd_trainer(tmp_path / "b", save_every=100)
    second.run(resume=True)
    assert [r["loss"] for r in straight.history if "loss" in r] == [r["loss"] for r in second.history if "loss" in r]
    for (k, a), (_, b) in zip(s_model.state_dict().items(), r_model.state_dict().items()):
        assert torch.equal(a, b), k


def test_max_seconds_stops_at_the_time_budget_and_counts_across_a_resume(tmp_path, monkeypatch):
    """Each optimizer step takes 10 s of a fake clock: a 35 s budget stops after 4 steps (30 s < 35 s <= 40 s), the
    steps' seconds survive a resume, and evaluation and saving are not counted."""
    import distill.train as train_mod
    now = {"t": 0.0}
    monkeypatch.setattr(train_mod.time, "perf_counter", lambda: now["t"])
    trainer, _ = _kd_trainer(tmp_path / "a", steps=8, save_every=2)
    trainer.args.max_seconds = 35.0
    real = trainer.train_step

    def ten_seconds():
        now["t"] += 10.0
        return real()

    trainer.train_step = ten_seconds
    record = trainer.run()
    assert (record["steps_done"], record["train_seconds"], trainer.step) == (4, 40.0, 4)
    assert [r["step"] for r in trainer.history if "loss" in r][-1] == 4  # the last step is logged
    # interrupted after 2 steps (20 s), resumed: 2 more steps reach the budget, as one uninterrupted run does
    first, _ = _kd_trainer(tmp_path / "b", steps=8, save_every=2)
    first.args.max_seconds = 35.0
    step_b = first.train_step
    first.train_step = lambda: (now.__setitem__("t", now["t"] + 10.0), step_b())[1]
    with pytest.raises(StopRequested):
        first.run(stop_after=2)
    second, _ = _kd_trainer(tmp_path / "b", steps=8, save_every=2)
    second.args.max_seconds = 35.0
    step_c = second.train_step
    second.train_step = lambda: (now.__setitem__("t", now["t"] + 10.0), step_c())[1]
    again = second.run(resume=True)
    assert (again["steps_done"], again["train_seconds"]) == (4, 40.0)
    with pytest.raises(ValueError, match="max_seconds=-1"):
        TrainArgs(max_seconds=-1)
