"""`hybrid-distill run`: a tiny recipe end to end, its report, resume after an interruption, recipe validation."""
import glob
import json
import os

import pytest
import torch
from helpers import tiny_teacher, tiny_tokenizer

from distill.data import synthetic_prompts
from distill.pipeline import load_pipeline, run_pipeline
from distill.train import StopRequested

HERE = os.path.dirname(__file__)


def tiny_recipe(tmp_path):
    teacher = tmp_path / "teacher"
    tiny_teacher("llama").save_pretrained(teacher)
    tiny_tokenizer().save_pretrained(teacher)
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "completion": p[::-1]}) + "\n" for p in synthetic_prompts(40)))
    folder = tmp_path / "recipe"
    folder.mkdir()
    (folder / "distill.yaml").write_text(f"""teacher: {teacher}
schedule: [0.5]
chunk_size: 16
data: {{source: {data}, seq_len: 64, eval_rows: 2}}
align: {{steps: 2, batch_size: 2, save_every: 1}}
kd: {{steps: 3, batch_size: 2, save_every: 1}}
profiles: {{quick: {{kd.steps: 2}}}}
""")
    (folder / "sft.yaml").write_text("n: 6\nmax_steps: 2\nbatch_size: 2\nmax_length: 128\nsave_steps: 1\n")
    (folder / "rl.yaml").write_text("n: 2\nmax_steps: 1\nnum_generations: 2\nbatch_size: 2\n"
                                    "max_completion_length: 6\n")
    (folder / "bench.yaml").write_text("n: 3\nsamples: 2\nmax_new_tokens: 6\nbatch: [2]\nprompt_len: 8\n"
                                       "gen_len: 6\nbudgets: [0.05, 1]\nbatch_candidates: [2]\nmax_samples: 4\n")
    return str(folder)


def test_tiny_recipe_runs_end_to_end_and_reports_every_section(tmp_path):
    from distill.cli import main
    folder = tiny_recipe(tmp_path)
    out = tmp_path / "run"
    assert main(["run", folder, "--profile", "quick", "--out", str(out)]) == 0
    report = (out / "report.md").read_text()
    for section in ("## Distillation", "## Task accuracy", "## Throughput", "## Accuracy under a wall-clock budget",
                    "## Time per stage"):
        assert section in report, section
    for row in ("| teacher | base |", "| teacher | sft |", "| teacher | rl |", "| hybrid | base |", "| hybrid | rl |"):
        assert row in report, row
    stages = json.loads((out / "stages.json").read_text())
    assert list(stages) == ["distill", "sft-teacher", "sft-hybrid", "rl-teacher", "rl-hybrid", "eval", "bench",
                            "report"]
    assert os.path.isfile(out / "bench" / "time_budget.png") and os.path.isfile(out / "rl-hybrid" / "final"
                                                                                / "config.json")
    summary = json.loads((out / "distill" / "summary.json").read_text())
    assert [p["phase"] for p in summary["phases"]] == ["transfer", "align", "kd"]
    import yaml
    assert yaml.safe_load((out / "distill" / "recipe.yaml").read_text())["kd"]["steps"] == 2  # the quick profile
    # finished stages keep their final models, not their resume checkpoints (weights + optimizer state)
    left = [d for d in glob.glob(str(out / "**"), recursive=True)
            if os.path.basename(d) == "checkpoints" or os.path.basename(d).startswith("checkpoint-")]
    assert not left, left
    # a finished run is never overwritten
    assert main(["run", folder, "--out", str(out)]) == 2


def test_interrupted_run_resumes_to_the_same_weights(tmp_path):
    folder = tiny_recipe(tmp_path)
    recipe = load_pipeline(folder)
    recipe.sft = recipe.rl = None  # the resume contract is the pipeline's; keep the test short
    recipe.bench.n, recipe.bench.samples = 1, 1
    straight = tmp_path / "straight"
    run_pipeline(recipe, str(straight))
    cut = tmp_path / "cut"
    with pytest.raises(StopRequested):
        run_pipeline(recipe, str(cut), stop_after=("distill", 2))  # inside the align phase
    run_pipeline(recipe, str(cut), resume=True)
    from safetensors.torch import load_file
    a = load_file(str(straight / "distill" / "final" / "model.safetensors"))
    b = load_file(str(cut / "distill" / "final" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((cut / "stages.json").read_text()).keys() == json.loads(
        (straight / "stages.json").read_text()).keys()


def profiles_of(folder):
    """Every profile any stage file of a recipe folder has."""
    import yaml
    names = set()
    for name in ("distill", "sft", "rl", "bench"):
        path = os.path.join(folder, f"{name}.yaml")
        if os.path.isfile(path):
            names |= set((yaml.safe_load(open(path)) or {}).get("profiles") or {})
    return sorted(names)


def test_every_recipe_validates_and_broken_ones_name_file_key_value(tmp_path):
    folders = sorted({os.path.dirname(p) for p in glob.glob(os.path.join(HERE, "..", "..", "recipes", "*", "distill.yaml"))})
    assert len(folders) >= 6
    for folder in folders:  # loading validates (distill.recipe.validate_recipe), under every profile
        for profile in [None, *profiles_of(folder)]:
            load_pipeline(folder, profile=profile)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "distill.yaml").write_text("teacher: x\nkd: {stepz: 3}\n")
    with pytest.raises(ValueError, match=r"distill.yaml.*stepz"):
        load_pipeline(str(bad))
    (bad / "distill.yaml").write_text("teacher: x\nselect: {strategy: explicit, params: {layers: [1, 40]}}\n")
    (bad / "teacher_config.json").write_text(json.dumps(tiny_teacher("llama").config.to_dict()))
    with pytest.raises(ValueError, match=r"distill.yaml.*select.params.layers.*40"):
        load_pipeline(str(bad))
    (bad / "distill.yaml").write_text("teacher: x\nkd: {steps: 3, loss: {kl: 1.0, cosine: 0.5}}\n")
    with pytest.raises(ValueError, match=r"distill.yaml: kd.loss has 'cosine'"):
        load_pipeline(str(bad))
    with pytest.raises(ValueError, match="profile 'nope'"):
        load_pipeline(folders[0], profile="nope")


@pytest.mark.slow
def test_pipeline_under_two_processes(tmp_path):
    """`accelerate launch` with two processes (gloo on the CPU): training stages run data-parallel, rank 0 alone
    evaluates, benchmarks and writes; the report is complete."""
    import subprocess
    import sys
    folder = tiny_recipe(tmp_path)
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                        "-m", "distill.cli", "run", folder, "--profile", "quick", "--out", str(out),
                        "--keep-checkpoints"],
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count(f"-> {out}/report.md") == 1  # one rank reports
    assert list(json.loads((out / "stages.json").read_text())) == ["distill", "sft-teacher", "sft-hybrid",
                                                                   "rl-teacher", "rl-hybrid", "eval", "bench",
                                                                   "report"]
    assert "## Time per stage" in (out / "report.md").read_text()
    # SFT saw 2 rows per process per step: 2 steps over 6 rows is one epoch with two processes (2/3 with one)
    last = max(glob.glob(str(out / "sft-hybrid" / "checkpoint-*")), key=lambda d: int(d.rsplit("-", 1)[1]))
    state = json.loads(open(os.path.join(last, "trainer_state.json")).read())
    assert state["epoch"] == pytest.approx(1.0)


def test_reasoner_first_converts_the_sft_teacher_on_its_own_answers_and_skips_hybrid_sft(tmp_path):
    from distill.cli import main
    folder = tiny_recipe(tmp_path)
    distill_yaml = os.path.join(folder, "distill.yaml")
    text = open(distill_yaml).read().replace(  # the corpus: the reasoner's answers to the task's prompts
        "data: {source: " + str(tmp_path / "data.jsonl") + ", seq_len: 64, eval_rows: 2}",
        "data: {corpus: {prompts: 'synthetic:train', n: 12, max_new_tokens: 8, batch_size: 4}, seq_len: 64, "
        "eval_rows: 2}")
    assert "corpus" in text
    open(distill_yaml, "w").write(text)
    open(os.path.join(folder, "pipeline.yaml"), "w").write("protocol: reasoner-first\n")
    out = tmp_path / "run"
    # --until: the reasoner and its hybrid first (retention is measured there), then the rest with --resume
    assert main(["run", folder, "--profile", "quick", "--out", str(out), "--until", "distill"]) == 0
    assert list(json.loads((out / "stages.json").read_text())) == ["sft-teacher", "distill"]
    assert not (out / "report.md").exists() and not (out / "rl-teacher").exists()
    assert main(["run", folder, "--profile", "quick", "--out", str(out), "--resume"]) == 0
    stages = json.loads((out / "stages.json").read_text())
    assert list(stages) == ["sft-teacher", "distill", "rl-teacher", "rl-hybrid", "eval", "bench", "report"]
    import yaml
    recorded = yaml.safe_load((out / "distill" / "recipe.yaml").read_text())
    assert recorded["teacher"] == str(out / "sft-teacher" / "final")  # converted from the reasoner
    corpus = [json.loads(line) for line in open(out / "distill" / "corpus.jsonl")]
    from distill.conversion.corpus import read_prompts
    assert sorted(r["prompt"] for r in corpus) == sorted(read_prompts("synthetic:train", n=12))  # in length order
    assert stages["rl-hybrid"]["from"] == str(out / "distill" / "final")
    assert stages["rl-teacher"]["from"] == str(out / "sft-teacher" / "final")
    assert not (out / "sft-hybrid").exists()
    report = (out / "report.md").read_text()
    assert f"(the reasoner: `{out / 'sft-teacher' / 'final'}`)" in report
    assert os.path.isfile(out / "distill" / "stage0" / "kd" / "model" / "tokenizer_config.json")  # loads alone
    assert "Protocol: reasoner-first" in report and "| hybrid | sft |" not in report and "| hybrid | rl |" in report
    # evaluated: the reasoner, its RL'd self, the hybrid and its RL'd self; not the untuned base teacher
    assert sorted(k for k in stages["eval"] if k != "seconds") == ["hybrid-base", "hybrid-rl", "teacher-rl",
                                                                    "teacher-sft"]
    assert not (out / "eval" / "teacher-base").exists() and "| teacher | base |" not in report
    assert json.loads((out / "report.json").read_text())["protocol"] == "reasoner-first"


def test_unknown_protocol_and_reasoner_first_without_sft_are_refused(tmp_path):
    folder = tiny_recipe(tmp_path)
    open(os.path.join(folder, "pipeline.yaml"), "w").write("protocol: student-first\n")
    with pytest.raises(ValueError, match="student-first"):
        load_pipeline(folder)
    open(os.path.join(folder, "pipeline.yaml"), "w").write("protocol: reasoner-first\n")
    with pytest.raises(ValueError, match="until='sft-hybrid' is not a stage of this recipe"):
        run_pipeline(load_pipeline(folder), str(tmp_path / "run"), until="sft-hybrid")  # reasoner-first has none
    assert not (tmp_path / "run").exists()
    os.remove(os.path.join(folder, "sft.yaml"))
    with pytest.raises(ValueError, match="no sft.yaml"):
        load_pipeline(folder)
