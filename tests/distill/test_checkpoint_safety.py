"""Resume never runs code planted in a checkpoint and survives checkpoints cut short.

- distill trainer (`distill/train.py`): every file of an interrupted run's checkpoints, one at a time, replaced by a
  pickle payload or truncated: resume falls back to the previous checkpoint (bit-identical to an uninterrupted
  run) or refuses with CheckpointError naming the file; the payload never runs.
- TRL stages (`distill/posttrain/trl_stage.py`): a kill while TRL writes checkpoint-N leaves a folder without
  trainer_state.json; resume sets it aside, continues from the previous one and ends on the uninterrupted weights.
"""
import json
import logging
import os
import pickle
import shutil

import pytest
import torch
from helpers import tiny_teacher, tiny_tokenizer

from distill.data import pack
from distill.train import CheckpointError, StopRequested, Trainer, TrainArgs, read_checkpoint


class Payload:
    """Unpickling it (pickle.load, or torch.load with weights_only=False) creates the file `marker`."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


def _payload_pickle(path, marker):
    with open(path, "wb") as f:
        pickle.dump(Payload(marker), f)


def _payload_torch(path, marker):
    torch.save({"state": Payload(marker)}, path)


def _truncate(path, marker):
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[:len(data) // 2])


PLANTS = {"pickle": _payload_pickle, "torch.save": _payload_torch, "truncated": _truncate}


def test_payloads_are_live(tmp_path):
    """The payloads do run when unpickled the unsafe way, so their marker not appearing below means something."""
    marker = tmp_path / "marker"
    _payload_pickle(tmp_path / "a", marker)
    with open(tmp_path / "a", "rb") as f:
        pickle.load(f)
    assert marker.exists()
    marker.unlink()
    _payload_torch(tmp_path / "b", marker)
    torch.load(tmp_path / "b", weights_only=False)
    assert marker.exists()


# ---- distill trainer ----
def _rows():
    g = torch.Generator().manual_seed(0)
    docs = [torch.randint(3, 97, (int(torch.randint(5, 20, (1,), generator=g)),), generator=g).tolist()
            for _ in range(24)]
    return pack([(d, d) for d in docs], 32, pad_id=0)


def _ce_step(module, batch):
    logits = module(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), batch["labels"][:, 1:].flatten(),
                                             ignore_index=-100, reduction="sum")
    return loss, {}


def _trainer(out, keep=2):
    """A one-layer random Llama with tied embeddings (shared storage, which safetensors must be given apart)."""
    model = tiny_teacher("llama", num_layers=1, tie=True).train()
    args = TrainArgs(steps=6, batch_size=4, lr=2e-3, warmup_steps=2, log_every=1, save_every=2, seed=1,
                     keep_checkpoints=keep)
    return Trainer(model, _ce_step, _rows(), args, str(out)), model


def _losses(trainer):
    return [r["loss"] for r in trainer.history if "loss" in r]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An uninterrupted run's losses and weights, and a run stopped after step 4 (checkpoints at 2 and 4)."""
    root = tmp_path_factory.mktemp("distill")
    straight, model = _trainer(root / "straight")
    straight.run()
    stopped, _ = _trainer(root / "stopped")
    with pytest.raises(StopRequested):
        stopped.run(stop_after=4)
    return {"losses": _losses(straight), "weights": model.state_dict(), "stopped": root / "stopped"}


def _files(folder):
    return sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs)


def _resume(out, runs, keep=2):
    """Resume the stopped run's copy in `out`; when it resumes, it must end where the uninterrupted run ended."""
    trainer, model = _trainer(out, keep)
    trainer.run(resume=True)
    assert _losses(trainer) == runs["losses"]
    for k, v in runs["weights"].items():
        assert torch.equal(model.state_dict()[k], v), k


def test_checkpoint_layout_holds_no_pickle(runs):
    ckpts = runs["stopped"] / "checkpoints"
    assert _files(ckpts) == ["latest"] + [f"step-000000{s}/{f}" for s in (2, 4)
                                          for f in ("module.safetensors", "trainer.json", "trainer.safetensors")]
    from safetensors import safe_open
    assert (ckpts / "latest").read_text() == "step-0000004"
    for f in _files(ckpts)[1:]:  # each file reads as what it claims to be: safetensors or JSON, nothing to unpickle
        if f.endswith(".json"):
            assert json.loads((ckpts / f).read_text())["format"] == "hybrid-distill-trainer/1"
        else:
            with safe_open(str(ckpts / f), "pt") as st_file:
                assert list(st_file.keys()), f
    module_state, st = read_checkpoint(str(ckpts / "step-0000004"))
    assert st["step"] == 4 and isinstance(st["rng"]["python"], tuple) and st["rng"]["torch"].dtype == torch.uint8
    assert torch.equal(module_state["lm_head.weight"], module_state["model.embed_tokens.weight"])


@pytest.mark.parametrize("plant", sorted(PLANTS))
def test_planted_file_never_runs_and_resume_falls_back(runs, tmp_path, plant, caplog):
    """keep_checkpoints=2: whichever file is spoiled, resume continues from a readable checkpoint, exactly."""
    marker = tmp_path / "marker"
    files = _files(runs["stopped"] / "checkpoints")
    for i, name in enumerate(files):
        out = tmp_path / f"run{i}"
        shutil.copytree(runs["stopped"], out)
        PLANTS[plant](out / "checkpoints" / name, marker)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="distill.train"):
            _resume(out, runs)
        assert not marker.exists(), f"{name}: the payload ran"
        if name.startswith("step-0000004/"):  # named in a warning, set aside, then written anew
            assert "skipping an unreadable checkpoint" in caplog.text and os.path.basename(name) in caplog.text
            assert (out / "checkpoints" / "step-0000004.unreadable").is_dir(), name


@pytest.mark.parametrize("plant", sorted(PLANTS))
def test_planted_file_in_the_only_checkpoint_refuses_naming_it(runs, tmp_path, plant):
    """keep_checkpoints=1: nothing to fall back to, so resume refuses and names the spoiled file."""
    marker = tmp_path / "marker"
    for i, name in enumerate(f"step-0000004/{f}" for f in ("module.safetensors", "trainer.json",
                                                            "trainer.safetensors")):
        out = tmp_path / f"run{i}"
        shutil.copytree(runs["stopped"], out)
        shutil.rmtree(out / "checkpoints" / "step-0000002")
        PLANTS[plant](out / "checkpoints" / name, marker)
        trainer, _ = _trainer(out, keep=1)
        with pytest.raises(CheckpointError, match="cannot resume.*" + name.replace("/", r"[/\\]")):
            trainer.run(resume=True)
        assert not marker.exists(), f"{name}: the payload ran"
        assert (out / "checkpoints" / "step-0000004").is_dir()  # refused, not set aside


def test_pointer_outside_the_checkpoint_root_is_ignored(runs, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(runs["stopped"], out)
    shutil.copytree(out / "checkpoints" / "step-0000002", tmp_path / "elsewhere")
    (out / "checkpoints" / "latest").write_text("../../elsewhere")
    trainer, _ = _trainer(out)
    assert trainer.latest_checkpoint() is None
    assert trainer.resume_candidates()[0].endswith("step-0000004")
    _resume(out, runs)


def test_older_pickle_checkpoints_resume_through_the_restricted_loader(runs, tmp_path):
    """module.pt + trainer.pt of earlier versions still resume (torch.load weights_only=True); a payload there is
    refused."""
    marker = tmp_path / "marker"
    out = tmp_path / "run"
    shutil.copytree(runs["stopped"], out)
    for step in ("step-0000002", "step-0000004"):
        folder = out / "checkpoints" / step
        module_state, st = read_checkpoint(str(folder))
        for f in os.listdir(folder):
            os.remove(folder / f)
        torch.save(module_state, folder / "module.pt")
        torch.save(st, folder / "trainer.pt")
    spoiled = tmp_path / "spoiled"
    shutil.copytree(out, spoiled)
    _resume(out, runs)
    _payload_torch(spoiled / "checkpoints" / "step-0000004" / "trainer.pt", marker)
    shutil.rmtree(spoiled / "checkpoints" / "step-0000002")
    trainer, _ = _trainer(spoiled, keep=1)
    with pytest.raises(CheckpointError, match=r"trainer\.pt: unreadable"):
        trainer.run(resume=True)
    assert not marker.exists()


# ---- TRL stages ----
def _sft_args(root, out):
    from distill.posttrain.sft import SFTArgs
    return SFTArgs(model=str(root / "h"), data="synthetic:train", n=8, out=str(root / out), max_steps=4,
                   batch_size=2, lr=1e-3, save_steps=2, max_length=128, logging_steps=1)


def test_sft_resume_skips_a_checkpoint_killed_mid_save(tmp_path, monkeypatch, caplog):
    """TRL's save of checkpoint-4 dies after weights, optimizer and scheduler, before rng_state.pth and
    trainer_state.json (as `kill -9` would leave it): resume sets it aside, continues from checkpoint-2 and ends on
    the uninterrupted run's weights."""
    from distill import hybridize
    from distill.posttrain.sft import HybridSFTTrainer, run_sft
    from hybrid import load_pretrained
    model = hybridize(tiny_teacher("llama", num_layers=2), [1], chunk_size=16)
    model.save_pretrained(tmp_path / "h")
    tiny_tokenizer().save_pretrained(tmp_path / "h")
    straight = load_pretrained(run_sft(_sft_args(tmp_path, "a")))[0].state_dict()

    real = HybridSFTTrainer._save_rng_state

    def killed_at_step_4(self, output_dir):
        if self.state.global_step == 4:
            raise KeyboardInterrupt("killed while writing checkpoint-4")
        return real(self, output_dir)

    monkeypatch.setattr(HybridSFTTrainer, "_save_rng_state", killed_at_step_4)
    with pytest.raises(KeyboardInterrupt):
        run_sft(_sft_args(tmp_path, "b"))
    monkeypatch.setattr(HybridSFTTrainer, "_save_rng_state", real)
    partial = tmp_path / "b" / "checkpoint-4"
    assert (partial / "model.safetensors").is_file() and not (partial / "trainer_state.json").exists()

    started_from = []
    real_train = HybridSFTTrainer.train

    def train(self, resume_from_checkpoint=None, **kw):
        started_from.append(resume_from_checkpoint)
        return real_train(self, resume_from_checkpoint=resume_from_checkpoint, **kw)

    monkeypatch.setattr(HybridSFTTrainer, "train", train)
    with caplog.at_level(logging.WARNING, logger="distill.posttrain.trl_stage"):
        resumed = load_pretrained(run_sft(_sft_args(tmp_path, "b"), resume=True))[0].state_dict()
    assert started_from == [str(tmp_path / "b" / "checkpoint-2")]
    assert f"skipping incomplete checkpoint {partial}" in caplog.text
    assert (tmp_path / "b" / "incomplete-checkpoints" / "checkpoint-4").is_dir()
    assert json.loads((partial / "trainer_state.json").read_text())["global_step"] == 4  # written anew
    initial = load_pretrained(str(tmp_path / "h"))[0].state_dict()
    assert all(not torch.equal(straight[k], initial[k]) for k in straight)  # the run did train
    for k, v in straight.items():
        assert torch.equal(resumed[k], v), k


def test_checkpoint_problem_names_what_is_missing_or_cut_short(tmp_path):
    """A complete TRL-like checkpoint passes; each way of cutting it short is named."""
    from safetensors.torch import save_file

    from distill.posttrain.trl_stage import checkpoint_problem, resume_checkpoint

    def make(step):
        d = tmp_path / f"checkpoint-{step}"
        d.mkdir()
        save_file({"w": torch.ones(4, 4)}, d / "model.safetensors")
        torch.save({"state": {}, "param_groups": []}, d / "optimizer.pt")
        torch.save({"last_epoch": step}, d / "scheduler.pt")
        torch.save({"cpu": torch.get_rng_state()}, d / "rng_state.pth")
        (d / "trainer_state.json").write_text(json.dumps({"global_step": step}))
        return d

    assert checkpoint_problem(str(make(1))) is None
    cases = {
        "trainer_state.json": lambda d: (d / "trainer_state.json").unlink(),
        "trainer_state.json: JSONDecodeError": lambda d: (d / "trainer_state.json").write_text('{"global_st'),
        "model.safetensors: truncated": lambda d: _truncate(d / "model.safetensors", None),
        "no model weights": lambda d: (d / "model.safetensors").unlink(),
        "optimizer.pt is not a whole torch archive": lambda d: _truncate(d / "optimizer.pt", None),
        "no optimizer state": lambda d: (d / "optimizer.pt").unlink(),
        "no scheduler state": lambda d: (d / "scheduler.pt").unlink(),
        "rng_state.pth is not a whole torch archive": lambda d: _truncate(d / "rng_state.pth", None),
    }
    for step, (expected, spoil) in enumerate(cases.items(), start=2):
        d = make(step)
        spoil(d)
        assert expected in (checkpoint_problem(str(d)) or "complete"), expected
    assert checkpoint_problem(str(tmp_path / "checkpoint-7"), optimizer=False) is None  # a save_only_model run
    assert resume_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-1")
    assert sorted(os.listdir(tmp_path / "incomplete-checkpoints")) == sorted(f"checkpoint-{s}" for s in range(2, 10))
