"""Commands are safe to run: outputs never overwrite inputs, one writer per run folder, a resumed run keeps the
recipe it started with, expected failures are one line with exit code 2 (3 for a non-finite loss), and every
model load is strict."""
import json
import os
import subprocess
import sys
import time

import pytest
import torch
from helpers import tiny_teacher, tiny_tokenizer
from safetensors.torch import load_file, save_file

from distill.cli import main
from distill.data import synthetic_prompts
from distill.runfolder import MARKER, RunLock, RunLocked, check_out, recipe_changes
from hybrid import load_pretrained


@pytest.fixture
def teacher_dir(tmp_path):
    path = tmp_path / "teacher"
    tiny_teacher("llama").save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


def distill_recipe(tmp_path, teacher_dir, kd_steps=3):
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "completion": p[::-1]}) + "\n" for p in synthetic_prompts(24)))
    recipe = tmp_path / "recipe" / "distill.yaml"
    recipe.parent.mkdir(exist_ok=True)
    recipe.write_text(f"""teacher: {teacher_dir}
schedule: [0.5]
chunk_size: 16
data: {{source: {data}, seq_len: 64, eval_rows: 2}}
kd: {{steps: {kd_steps}, batch_size: 2, save_every: 1}}
""")
    return str(recipe)


def tree(path) -> dict:
    """Every file under path with its bytes (a folder's exact content)."""
    out = {}
    for root, _, files in os.walk(path):
        for f in files:
            full = os.path.join(root, f)
            with open(full, "rb") as fh:
                out[os.path.relpath(full, path)] = fh.read()
    return out


# ---------------- outputs never overwrite inputs ----------------
@pytest.mark.parametrize("command", ["convert", "import", "export"])
@pytest.mark.parametrize("where", ["same", "inside"])
def test_out_onto_its_input_is_refused_and_the_input_is_untouched(tmp_path, teacher_dir, command, where, capsys):
    src = teacher_dir
    if command == "export":  # export reads a hybrid: make one
        src = tmp_path / "hybrid"
        assert main(["convert", "--teacher", str(teacher_dir), "--attn-layers", "1,3", "--out", str(src)]) == 0
    before = tree(src)
    out = str(src) if where == "same" else str(src / "sub")
    flag = {"convert": ["--teacher", str(src), "--attn-ratio", "0.5"], "import": ["--from", str(src)],
            "export": ["--model", str(src)]}[command]
    assert main([command, *flag, "--out", out, "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "overlaps the input" in err and str(src) in err
    assert tree(src) == before


def test_out_that_contains_an_input_is_refused(tmp_path, teacher_dir):
    with pytest.raises(ValueError, match="overlaps the input"):
        check_out(str(tmp_path), [str(teacher_dir)], overwrite=True)


def test_non_empty_out_needs_resume_or_overwrite_and_overwrite_removes_only_our_folders(tmp_path, teacher_dir,
                                                                                      capsys):
    out = tmp_path / "h"
    args = ["convert", "--teacher", str(teacher_dir), "--attn-layers", "1,3", "--out", str(out)]
    assert main(args) == 0 and (out / MARKER).is_file()
    (out / "stale.txt").write_text("from an earlier run")
    assert main(args) == 2
    assert "is not empty" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0
    assert not (out / "stale.txt").exists() and (out / "config.json").is_file()
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    assert main(args[:-1] + [str(foreign), "--overwrite"]) == 2
    assert "not written by hybrid-distill" in capsys.readouterr().err
    assert (foreign / "thesis.tex").read_text() == "precious"


# ---------------- one writer per run folder ----------------
def test_a_second_run_on_a_locked_folder_stops_naming_the_holder(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        out = tmp_path / "run"
        out.mkdir()
        (out / ".lock").write_text(json.dumps({"pid": holder.pid, "host": os.uname().nodename, "started": "then"}))
        with pytest.raises(RunLocked, match=f"PID {holder.pid}"):
            with RunLock(str(out)):
                pass
        assert (out / ".lock").is_file()  # the holder's lock stays
    finally:
        holder.kill()
        holder.wait()


def test_a_stale_lock_is_taken_over_with_a_warning(tmp_path, caplog):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "run"
    out.mkdir()
    (out / ".lock").write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename, "started": "then"}))
    with RunLock(str(out)):
        assert json.loads((out / ".lock").read_text())["pid"] == os.getpid()
    assert "stale lock" in caplog.text
    assert not (out / ".lock").exists()  # released on exit


def test_two_distill_runs_on_one_out_do_not_interleave(tmp_path, teacher_dir, capsys):
    recipe = distill_recipe(tmp_path, teacher_dir)
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        out.mkdir()
        (out / ".lock").write_text(json.dumps({"pid": holder.pid, "host": os.uname().nodename, "started": "t"}))
        assert main(["distill", "--config", recipe, "--out", str(out), "--resume"]) == 2
        assert f"PID {holder.pid}" in capsys.readouterr().err
        assert not (out / "metrics.jsonl").exists() and not (out / "recipe.yaml").exists()
    finally:
        holder.kill()
        holder.wait()


# ---------------- resume keeps the recipe that ran ----------------
def test_resume_with_a_changed_recipe_is_refused_unless_allowed_and_recorded(tmp_path, teacher_dir, capsys):
    from distill.recipe import load_recipe
    from distill.conversion.schedule import run_distill
    from distill.train import StopRequested

    recipe = distill_recipe(tmp_path, teacher_dir)
    out = tmp_path / "run"
    with pytest.raises(StopRequested):
        run_distill(load_recipe(recipe), str(out), stop_after=1)
    stored = (out / "recipe.yaml").read_text()
    base = ["distill", "--config", recipe, "--out", str(out), "--resume"]
    assert main(base + ["--set", "kd.lr=1e-4"]) == 2
    err = capsys.readouterr().err
    assert "kd.lr: 0.001 -> 0.0001" in err and "--allow-changes" in err
    assert (out / "recipe.yaml").read_text() == stored  # the record still names the recipe that ran
    assert main(base + ["--set", "kd.lr=1e-4", "--allow-changes"]) == 0
    assert (out / "recipe.yaml").read_text() == stored
    history = [json.loads(line) for line in (out / "recipe_history.jsonl").read_text().splitlines()]
    assert history[-1]["changes"] == {"kd.lr": [0.001, 0.0001]}


def test_recipe_changes_lists_nested_added_and_removed_keys():
    old = {"kd": {"lr": 1e-3, "loss": {"kl": 1.0}}, "seed": 0}
    new = {"kd": {"lr": 1e-3, "loss": {"kl": 1.0, "ce": 0.5}}, "seed": 1}
    assert recipe_changes(old, new) == {"kd.loss.ce": ("<absent>", 0.5), "seed": (0, 1)}
    # a setting the stored recipe predates is no change while it keeps its default, and is one when it does not
    added = {"kd": {"lr": 1e-3, "loss": {"kl": 1.0}, "max_seconds": 0.0}, "seed": 0}
    defaults = {"kd": {"lr": 3e-4, "loss": {"kl": 1.0}, "max_seconds": 0.0}, "seed": 0}
    assert recipe_changes(old, added, defaults) == {}
    added["kd"]["max_seconds"] = 60.0
    assert recipe_changes(old, added, defaults) == {"kd.max_seconds": ("<absent>", 60.0)}
    assert recipe_changes(old, {"kd": {"lr": 3e-4, "loss": {"kl": 1.0}}, "seed": 0}, defaults) == {
        "kd.lr": (1e-3, 3e-4)}  # a stored value changed to the default is still a change


# ---------------- one error path ----------------
def test_expected_failures_are_one_line_with_exit_code_2(tmp_path, teacher_dir, capsys):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("kd: {steps: [\n")
    broken = tmp_path / "broken"
    tiny_teacher("llama").save_pretrained(broken)
    (broken / "config.json").write_text('{"model_type": "llama", ')
    cases = {
        "missing.yaml": (["distill", "--config", str(tmp_path / "missing.yaml")], "missing.yaml"),
        "bad yaml": (["distill", "--config", str(bad_yaml)], "bad.yaml"),
        "corrupt config.json": (["convert", "--teacher", str(broken), "--attn-ratio", "0.5", "--out",
                                 str(tmp_path / "o1")], "config.json"),
        "missing local model": (["convert", "--teacher", "./no/such/model", "--attn-ratio", "0.5", "--out",
                                 str(tmp_path / "o2")], "./no/such/model"),
        "missing tasks file": (["eval", "--model", str(teacher_dir), "--tasks", "nope.jsonl", "--out",
                                str(tmp_path / "o3")], "nope.jsonl"),
    }
    capsys.readouterr()
    for name, (argv, named) in cases.items():
        t0 = time.perf_counter()
        assert main(argv) == 2, name
        err = [line for line in capsys.readouterr().err.splitlines() if "%|" not in line]  # no progress bars
        assert len(err) == 2 and named in err[0] and "Traceback" not in err[0], (name, err)
        assert time.perf_counter() - t0 < 30, f"{name}: no hub retries for a local-looking path"


def test_debug_shows_the_traceback(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="missing.yaml"):
        main(["distill", "--config", str(tmp_path / "missing.yaml"), "--debug"])
    with pytest.raises(ValueError, match="missing.yaml"):
        main(["--debug", "distill", "--config", str(tmp_path / "missing.yaml")])
    monkeypatch.setenv("HYBRID_DEBUG", "1")
    with pytest.raises(ValueError, match="missing.yaml"):
        main(["distill", "--config", str(tmp_path / "missing.yaml")])


def test_non_finite_loss_exits_3_naming_the_step_and_the_last_good_checkpoint(tmp_path, teacher_dir, capsys,
                                                                                monkeypatch):
    import distill.conversion.kd as kd

    real = kd.kd_loss_step
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        step = real(*args, **kwargs)

        def loss_step(module, batch):
            s, parts = step(module, batch)
            calls["n"] += 1
            return (s * float("nan") if calls["n"] >= 3 else s), parts
        return loss_step

    monkeypatch.setattr(kd, "kd_loss_step", poisoned)
    recipe = distill_recipe(tmp_path, teacher_dir, kd_steps=5)
    out = tmp_path / "run"
    assert main(["distill", "--config", recipe, "--out", str(out)]) == 3
    err = capsys.readouterr().err
    assert "non-finite loss" in err and "at step 3" in err and "step-0000002" in err


# ---------------- strict loads ----------------
def test_truncated_safetensors_is_an_error_naming_the_file(tmp_path):
    path = tmp_path / "m"
    tiny_teacher("llama").save_pretrained(path)
    weights = path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) - 1000])
    with pytest.raises(ValueError, match="model.safetensors: truncated"):
        load_pretrained(str(path), tokenizer=False)


def test_plain_folder_with_a_missing_tensor_is_refused_naming_it(tmp_path):
    path = tmp_path / "m"
    tiny_teacher("llama").save_pretrained(path)
    tensors = load_file(path / "model.safetensors")
    del tensors["model.layers.1.self_attn.q_proj.weight"]
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"missing_keys.*model\.layers\.1\.self_attn\.q_proj\.weight"):
        load_pretrained(str(path), tokenizer=False)


def test_released_hybrid_without_mamba_config_is_named_as_an_incomplete_download(tmp_path):
    path = tmp_path / "released"
    teacher = tiny_teacher("llama")
    teacher.save_pretrained(path)
    tensors = load_file(path / "model.safetensors")
    for k in [k for k in tensors if k.startswith("model.layers.1.self_attn.")]:
        tensors[k.replace("self_attn", "mamba")] = tensors.pop(k)
    tensors["model.layers.1.mamba.A_log"] = torch.zeros(4)
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="no mamba_config.json"):
        load_pretrained(str(path), tokenizer=False)


@pytest.mark.parametrize("argv", [
    ["eval", "--n", "0"], ["eval", "--samples", "0"], ["generate", "--model", "m", "--prompt", "p", "--top-p", "2"],
    ["bench", "throughput", "--models", "m", "--batch", "0"], ["eval", "time-budget", "--budgets", "-1"],
    ["eval", "time-budget", "--budgets", "2y"], ["eval", "time-budget", "--budgets", "0x"],
    ["generate", "--model", "m", "--prompt", "p", "--max-new-tokens", "x"],
])
def test_out_of_range_flags_are_refused_before_any_work(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert f"argument {next(a for a in argv if a.startswith('--') and a not in ('--model', '--prompt', '--models'))}" \
        in capsys.readouterr().err


def test_export_of_a_plain_model_is_an_error_not_a_traceback(tmp_path, teacher_dir, capsys):
    assert main(["export", "--model", str(teacher_dir), "--out", str(tmp_path / "served")]) == 2
    assert "export needs a hybrid" in capsys.readouterr().err


def test_a_one_file_output_is_locked_beside_the_file(tmp_path):
    out = tmp_path / "corpus.jsonl"
    with RunLock(str(out), file=True):
        assert json.loads((tmp_path / "corpus.jsonl.lock").read_text())["pid"] == os.getpid()
    assert os.listdir(tmp_path) == []  # released, and no folder left behind
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "corpus.jsonl.lock").write_text(json.dumps({"pid": holder.pid, "host": os.uname().nodename}))
        with pytest.raises(RunLocked, match=f"PID {holder.pid}"):
            with RunLock(str(out), file=True):
                pass
    finally:
        holder.kill()
        holder.wait()
