"""`hybrid-distill plan` on every recipe folder: parameter counts against the teacher's config dims, memory rules
per strategy, suggestions that really fit when re-planned, and the command's output and errors. Meta device only."""
import functools
import glob
import json
import os
import re

import pytest

from distill import plan as P
from distill.cli import main
from distill.pipeline import load_pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RECIPES = sorted(os.path.dirname(p) for p in glob.glob(os.path.join(ROOT, "recipes", "*", "distill.yaml")))
GPU_SETUPS = [("ddp", 1, 24.0), ("fsdp2", 8, 80.0), ("zero3", 4, 40.0)]


@functools.lru_cache(maxsize=None)
def stages_of(folder: str, overrides=()):
    """(pipeline recipe, stages) of a recipe folder; cached, the tests only read them."""
    pipe = load_pipeline(folder, overrides=overrides)
    return pipe, P.recipe_stages(pipe, P.teacher_config(folder))[0]


# ---- parameter counts from the config's dims alone ----
def dims(cfg: dict) -> dict:
    h, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    hd = cfg.get("head_dim") or h // heads
    return {"h": h, "heads": heads, "d_in": heads * hd, "d_xb": (cfg.get("num_key_value_heads") or heads) * hd,
            "I": cfg["intermediate_size"], "L": cfg["num_hidden_layers"], "V": cfg["vocab_size"]}


def attention_params(cfg: dict) -> int:
    d = dims(cfg)
    n = d["h"] * d["d_in"] * 2 + 2 * d["h"] * d["d_xb"]  # q, o; k, v
    if cfg["model_type"] == "qwen2":  # q/k/v biases, always
        n += d["d_in"] + 2 * d["d_xb"]
    elif cfg.get("attention_bias"):
        n += d["d_in"] + 2 * d["d_xb"] + d["h"]
    return n


def mlp_params(cfg: dict) -> int:
    d = dims(cfg)
    return 3 * d["h"] * d["I"] + (2 * d["I"] + d["h"] if cfg.get("mlp_bias") else 0)


def mamba2_params(cfg: dict, d_conv: int = 4) -> int:
    """in_proj (z, x, B, C, dt), depthwise conv with bias, dt_bias / A_log / D, gated-norm weight, out_proj."""
    d = dims(cfg)
    conv = d["d_in"] + 2 * d["d_xb"]
    return (d["h"] * (2 * d["d_in"] + 2 * d["d_xb"] + d["heads"]) + conv * (d_conv + 1) + 3 * d["heads"] + d["d_in"]
            + d["d_in"] * d["h"])


def teacher_params(cfg: dict) -> int:
    d = dims(cfg)
    layer = attention_params(cfg) + mlp_params(cfg) + 2 * d["h"]  # two RMSNorms
    return d["V"] * d["h"] * (1 if cfg.get("tie_word_embeddings") else 2) + d["L"] * layer + d["h"]


@pytest.mark.parametrize("folder", RECIPES, ids=os.path.basename)
def test_every_recipe_plans_with_counts_from_the_config_dims(folder):
    pipe, stages = stages_of(folder)
    with open(os.path.join(folder, "teacher_config.json")) as f:
        cfg = json.load(f)
    assert cfg["model_type"] in ("llama", "qwen2") and pipe.distill.mixer == "mamba2"  # what the counts know
    n_teacher, L, d = teacher_params(cfg), cfg["num_hidden_layers"], pipe.distill
    names = [s.name for s in stages]
    # the stages `hybrid-distill run` has, in order: align/kd per schedule step, then SFT and GRPO of both models
    assert names.count("stage0-kd") == (d.kd.steps > 0) and len([n for n in names if n.endswith("-kd")]) == \
        (len(d.schedule) if d.kd.steps else 0)
    assert ("sft-teacher" in names and "sft-hybrid" in names) == (pipe.sft is not None)
    assert ("rl-teacher" in names and "rl-hybrid" in names) == (pipe.rl is not None)
    for s in stages:
        mixers = L - round(float(d.schedule[int(s.name[5])]) * L) if s.name.startswith("stage") else \
            (0 if s.name.endswith("teacher") else L - round(min(d.schedule) * L))
        hybrid = n_teacher + mixers * (mamba2_params(cfg) - attention_params(cfg))
        assert s.params == hybrid, s.name
        if s.kind == "kd":
            assert s.teacher_params == n_teacher
            expect = {"all": hybrid, "mixers": mixers * mamba2_params(cfg),
                      "mixers+mlp": mixers * (mamba2_params(cfg) + mlp_params(cfg))}[d.kd.train]
            assert s.trainable == expect and s.engine_frozen == hybrid - expect
        elif s.kind in ("sft", "rl"):
            assert s.trainable == s.params
        else:
            assert 0 < s.trainable < s.params and s.trainable % mamba2_params(cfg) == 0
        assert P.tokens(s, 8) == s.steps * s.rows * s.grad_accum * 8 * s.row_tokens == 8 * P.tokens(s, 1)


@pytest.mark.parametrize("folder", RECIPES, ids=os.path.basename)
def test_memory_rules_per_strategy(folder):
    _, stages = stages_of(folder)
    for s in stages:
        w, gathered = s.weight_bytes, s.gathered * s.compute_bytes
        one, eight = P.memory(s, "ddp", 1), P.memory(s, "ddp", 8)
        # ddp replicates: the same on every GPU, whatever their number (DDP's buckets: a second copy of the grads)
        assert one["weights"] == eight["weights"] == (s.trainable + s.engine_frozen) * w
        assert one["optimizer"] == eight["optimizer"] == 2 * w * s.trainable
        assert eight["gradients"] == 2 * one["gradients"] == 2 * w * s.trainable
        for strategy in ("fsdp2", "zero3"):
            one, eight = P.memory(s, strategy, 1), P.memory(s, strategy, 8)
            for part in ("weights", "gradients", "optimizer"):  # sharded: the one-GPU figure over N
                less = gathered if part == "weights" else 0
                assert eight[part] - less == pytest.approx((one[part] - less) / 8)
            for part in ("activations", "frozen_outside", "reserve"):  # not sharded
                assert eight[part] == one[part]
        # fp32 masters + two fp32 moments: 16 bytes a trained parameter under both sharded strategies
        states = {k: sum(P.memory(s, k, 4)[p] for p in ("weights", "gradients", "optimizer")) - gathered
                  for k in ("fsdp2", "zero3")}
        assert states["fsdp2"] == pytest.approx((16 * s.trainable + w * s.engine_frozen) / 4)
        if w == 2:
            assert states["zero3"] == pytest.approx(states["fsdp2"])
        plain, ckpt = (P.memory(s, "ddp", 1, checkpointing=c)["activations"] for c in (False, True))
        assert ckpt <= plain
        assert P.memory(s, "ddp", 1, rows=2, checkpointing=False)["activations"] >= \
            P.memory(s, "ddp", 1, rows=1, checkpointing=False)["activations"]


def apply(s, option: str, strategy: str, gpus: int) -> dict:
    """The memory settings a suggestion names ("activation checkpointing", "micro-batch R (...)", "fsdp2 on N
    GPUs", or several joined by " + ")."""
    kw = {"strategy": strategy, "gpus": gpus}
    for part in option.split(" + "):
        if part.startswith("activation checkpointing"):
            kw["checkpointing"] = True
        elif m := re.match(r"micro-batch (\d+) \(grad_accum (\d+)\)", part):
            kw["rows"] = int(m.group(1))
            assert int(m.group(1)) * int(m.group(2)) == s.rows * s.grad_accum  # the same rows per optimizer step
        elif m := re.match(r"(fsdp2|zero3) on (\d+) GPUs?", part):
            kw["strategy"], kw["gpus"] = m.group(1), int(m.group(2))
        else:
            raise AssertionError(f"unknown suggestion {part!r}")
    return kw


@pytest.mark.parametrize("folder", RECIPES, ids=os.path.basename)
def test_every_suggestion_fits_when_replanned(folder):
    _, stages = stages_of(folder)
    for strategy, gpus, limit in GPU_SETUPS:
        for s in stages:
            verdict = P.assess(s, strategy, gpus, limit)
            assert verdict["fits"] == (P.total_gb(s, strategy, gpus) <= limit)
            for option in verdict["options"]:
                if option.startswith("nothing"):
                    continue
                kw = apply(s, option, strategy, gpus)
                st, n = kw.pop("strategy"), kw.pop("gpus")
                assert P.total_gb(s, st, n, **kw) <= limit, (s.name, option)


def test_fp32_3b_adamw_does_not_fit_one_16gb_gpu_but_fits_sharded_over_enough():
    folder = os.path.join(ROOT, "recipes", "llama3.2-3b")
    _, stages = stages_of(folder, ("distill.dtype=float32", "sft.batch_size=1", "sft.max_length=512"))
    s = next(s for s in stages if s.name == "sft-hybrid")
    assert s.weight_bytes == 4 and s.trainable > 3e9
    assert P.memory(s, "ddp", 1)["optimizer"] / P.GB > 16  # two fp32 moments of 3.4B weights: 25 GB
    verdict = P.assess(s, "fsdp2", 1, 16.0)
    n = P.smallest_gpus(s, "fsdp2", 16.0)
    assert not verdict["fits"] and n > 1 and f"fsdp2 on {n} GPUs" in verdict["options"]
    assert P.assess(s, "fsdp2", n, 16.0)["fits"] and not P.assess(s, "fsdp2", n - 1, 16.0)["fits"]
    assert P.smallest_gpus(s, "ddp", 16.0) is None  # replicated, no number of GPUs helps
    # the whole plan, re-planned on the suggested number of GPUs
    plan = P.plan_recipe(folder, gpus=n, strategy="fsdp2", gpu_memory_gb=16.0,
                         overrides=["distill.dtype=float32", "sft.batch_size=1", "sft.max_length=512"])
    assert next(r for r in plan["stages"] if r["name"] == "sft-hybrid")["fits"]


def test_plan_recipe_rejects_bad_values_naming_them():
    folder = os.path.join(ROOT, "recipes", "smollm2-135m")
    for kw, text in (({"gpus": 0}, "gpus=0"), ({"strategy": "tp"}, "'tp'"), ({"gpu_memory_gb": -1.0}, "-1.0"),
                     ({"tokens_per_s_per_gpu": 0.0}, "0.0")):
        with pytest.raises(ValueError, match=re.escape(text)):
            P.plan_recipe(folder, **kw)


def test_cli_prints_the_table_and_writes_plan_files(tmp_path, capsys):
    folder = os.path.join(ROOT, "recipes", "llama3.2-3b")
    out = tmp_path / "plan"
    assert main(["plan", folder, "--gpus", "8", "--strategy", "fsdp2", "--gpu-memory", "80GB",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| stage | trains |" in printed and "8 x 80 GB, fsdp2" in printed
    for name in ("stage0-align", "stage0-kd", "stage1-kd", "sft-teacher", "sft-hybrid", "rl-hybrid"):
        assert f"| {name} |" in printed
    assert (out / "plan.md").read_text().strip() == printed.strip()
    stored = json.loads((out / "plan.json").read_text())
    assert stored["gpus"] == 8 and stored["strategy"] == "fsdp2" and len(stored["stages"]) == 8
    assert main(["plan", folder, "--out", str(out)]) == 2  # an earlier plan is replaced only with --overwrite
    assert main(["plan", folder, "--out", str(out), "--overwrite", "--tokens-per-s-per-gpu", "1e4"]) == 0
    assert "10,000 tokens/s per GPU (given)" in capsys.readouterr().out


@pytest.mark.parametrize("value", ["eighty", "0GB", "80XB"])
def test_cli_bad_gpu_memory_exits_2_naming_the_value(value, capsys):
    with pytest.raises(SystemExit) as e:
        main(["plan", os.path.join(ROOT, "recipes", "smollm2-135m"), "--gpu-memory", value])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--gpu-memory" in err and repr(value) in err and len(err.strip().splitlines()[-1]) < 200


def test_the_onpolicy_phase_is_planned_after_each_kd_like_kd_on_its_rows():
    """An onpolicy phase with kd's settings on rows as long as kd's (256 assumed prompt tokens + max_new_tokens =
    data.seq_len) keeps what kd keeps per row; its sampling cache (batch_size rows of the student's KV cache and
    mixer states) is the other candidate for the peak; one such stage follows every schedule step's kd."""
    folder = os.path.join(ROOT, "recipes", "smollm2-135m-long")
    base, _ = stages_of(folder)
    d = base.distill
    T = d.data.seq_len
    pipe, stages = stages_of(folder, (
        "distill.onpolicy.steps=7", f"distill.onpolicy.batch_size={d.kd.batch_size}",
        f"distill.onpolicy.grad_accum={d.kd.grad_accum}", f"distill.onpolicy.train={d.kd.train}",
        f"distill.onpolicy.max_new_tokens={T - P.ONPOLICY_PROMPT_TOKENS}"))
    names = [s.name for s in stages]
    for k in range(len(d.schedule)):
        assert names.index(f"stage{k}-onpolicy") == names.index(f"stage{k}-kd") + 1
        kd, op = stages[names.index(f"stage{k}-kd")], stages[names.index(f"stage{k}-onpolicy")]
        assert (op.kind, op.rows, op.row_tokens, op.steps) == ("onpolicy", d.kd.batch_size, T, 7)
        for field in ("params", "trainable", "engine_frozen", "outside_bytes", "act_row", "act_row_ckpt",
                      "act_fixed"):
            assert getattr(op, field) == getattr(kd, field), field
        assert op.rollout_bytes > 0 and kd.rollout_bytes == 0
        assert op.flops_per_token > kd.flops_per_token  # the samples' forward on top
        assert P.tokens(op, 2) == 7 * d.kd.batch_size * d.kd.grad_accum * 2 * T
        mem = P.memory(op, "ddp", 1)
        assert mem["activations"] == max(op.rows * op.act_row + op.act_fixed, op.rollout_bytes)
    _, twice = stages_of(folder, ("distill.onpolicy.steps=7", f"distill.onpolicy.batch_size={2 * d.kd.batch_size}",
                                  f"distill.onpolicy.max_new_tokens={T - P.ONPOLICY_PROMPT_TOKENS}"))
    ops = [s for s in stages if s.kind == "onpolicy"], [s for s in twice if s.kind == "onpolicy"]
    assert [2 * s.rollout_bytes for s in ops[0]] == pytest.approx([s.rollout_bytes for s in ops[1]])
    _, notes = P.recipe_stages(pipe, P.teacher_config(folder))
    assert any(n.startswith(f"onpolicy rows: {P.ONPOLICY_PROMPT_TOKENS} prompt tokens (assumed)") for n in notes)


def test_the_distill_trainers_checkpointing_switch_is_planned():
    """kd.activation_checkpointing / onpolicy.activation_checkpointing: the stage keeps only each layer's input for
    backward (act_row_ckpt), as TRL stages do with their gradient_checkpointing."""
    folder = os.path.join(ROOT, "recipes", "smollm2-135m-long")
    _, plain = stages_of(folder, ("distill.onpolicy.steps=3",))
    _, ckpt = stages_of(folder, ("distill.onpolicy.steps=3", "distill.kd.activation_checkpointing=true",
                                 "distill.onpolicy.activation_checkpointing=true"))
    for a, b in zip(plain, ckpt):
        if a.kind in ("kd", "onpolicy"):
            assert (a.checkpointing, b.checkpointing) == (False, True), a.name
            assert P.memory(b, "ddp", 1)["activations"] < P.memory(a, "ddp", 1)["activations"]
    assert "onpolicy.activation_checkpointing: true" in P.CHECKPOINTING_HOW["onpolicy"]
