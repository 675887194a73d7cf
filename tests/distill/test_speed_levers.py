"""Training's speed levers change no numerics beyond their dtype: a bf16 autocast step against the float32 step,
the frozen teacher's bf16 / packed forward against the teacher, packed linears and compile inside the Trainer,
the model-FLOP count against a count by hand, and `bench train` end to end on a tiny model."""
import json
import os

import pytest
import torch
from helpers import assert_close, tiny_rows, tiny_teacher

from distill import hybridize
from distill.conversion.kd import FrozenTeacher, kd_loss_step
from distill.data import model_inputs
from distill.flops import forward_flops, gemm_peak, train_flops
from distill.train import Trainer, TrainArgs, resolve_precision
from hybrid.prepack import op_works


def one_step(tmp, teacher, student, **args):
    student.requires_grad_(True)
    a = TrainArgs(steps=1, batch_size=4, lr=1e-3, warmup_steps=0, seed=0, **args)
    t = Trainer(student, kd_loss_step(teacher, {"kl": 1.0}, chunk=16), tiny_rows(n_docs=24), a, str(tmp))
    rec = t.train_step()
    return rec, {k: v.detach().clone() for k, v in student.state_dict().items()}


def test_a_bf16_autocast_step_equals_the_float32_step_within_bf16_tolerance(tmp_path):
    teacher = tiny_teacher("llama").requires_grad_(False)
    student = hybridize(teacher, [1, 3])
    start = {k: v.clone() for k, v in student.state_dict().items()}
    rec32, p32 = one_step(tmp_path / "a", teacher, student, mixed_precision="no")
    student.load_state_dict(start)
    rec16, p16 = one_step(tmp_path / "b", teacher, student, mixed_precision="bf16")
    assert abs(rec16["loss"] - rec32["loss"]) <= 0.02 * abs(rec32["loss"]) + 1e-3, (rec16["loss"], rec32["loss"])
    moved32 = torch.cat([(p32[k] - start[k]).flatten() for k in p32])
    moved16 = torch.cat([(p16[k] - start[k]).flatten() for k in p32])
    assert all(p16[k].dtype == torch.float32 for k in p16)  # master weights stay float32
    # AdamW's first step moves each weight by about lr * sign(gradient): the two steps agree in direction up to the
    # weights whose gradient is within bf16 rounding of zero
    cos = torch.nn.functional.cosine_similarity(moved16, moved32, dim=0)
    assert cos > 0.9, float(cos)


@pytest.mark.parametrize("dtype,packed", [(torch.bfloat16, False), (torch.float32, True), (torch.bfloat16, True)])
def test_the_frozen_teacher_forward_equals_the_teacher_in_its_dtype(dtype, packed):
    if packed and not op_works():
        pytest.skip("oneDNN packed linear unavailable")
    teacher = tiny_teacher("qwen2").requires_grad_(False)
    batch = tiny_rows(n_docs=24, seq_len=24)
    kw = model_inputs({k: v[:3] for k, v in batch.items()})
    with torch.no_grad():
        ref = teacher(**kw).logits
    with FrozenTeacher(teacher, dtype=dtype, packed=packed) as frozen:
        out = frozen(**kw)
    assert out.dtype == dtype
    tol = 5e-2 if dtype == torch.bfloat16 else 1e-4
    assert_close(out.float(), ref, atol=tol, rtol=tol, what=f"{dtype} packed={packed}")
    assert next(teacher.parameters()).dtype == torch.float32  # the teacher itself is untouched


def test_a_frozen_teacher_copy_refuses_a_parameter_the_student_trains():
    teacher = tiny_teacher("llama").requires_grad_(False)
    student = hybridize(teacher, [1, 3])
    student.model.layers[1].mlp = teacher.model.layers[1].mlp  # shared module
    student.model.layers[1].mlp.requires_grad_(True)
    with pytest.raises(ValueError, match=r"model\.layers\.1\.mlp"):
        FrozenTeacher(teacher, student, dtype=torch.bfloat16)


@pytest.mark.parametrize("lever", ["packed_linears", "compile", "activation_checkpointing"])
def test_packed_linears_and_compile_train_like_the_plain_step(tmp_path, lever):
    if lever == "packed_linears" and not op_works():
        pytest.skip("oneDNN packed linear unavailable")
    teacher = tiny_teacher("llama").requires_grad_(False)
    student = hybridize(teacher, [1])
    start = {k: v.clone() for k, v in student.state_dict().items()}
    plain = Trainer(student.requires_grad_(True), kd_loss_step(teacher, {"kl": 1.0}), tiny_rows(n_docs=24),
                    TrainArgs(steps=3, batch_size=4, lr=1e-3, warmup_steps=0, log_every=1), str(tmp_path / "a"))
    plain.run()
    ref = {k: v.clone() for k, v in student.state_dict().items()}
    student.load_state_dict(start)
    other = Trainer(student.requires_grad_(True), kd_loss_step(teacher, {"kl": 1.0}), tiny_rows(n_docs=24),
                    TrainArgs(steps=3, batch_size=4, lr=1e-3, warmup_steps=0, log_every=1, **{lever: True}),
                    str(tmp_path / "b"))
    other.run()
    for a, b in zip(plain.history, other.history):
        if "loss" in a:
            assert abs(a["loss"] - b["loss"]) < 1e-4, (a["loss"], b["loss"])
    for k, v in student.state_dict().items():
        assert_close(v, ref[k], atol=1e-4, rtol=1e-4, what=k)
    assert all("forward" not in vars(m) for m in student.modules())  # packed forwards removed after the run


def test_activation_checkpointing_keeps_few_activations_and_is_off_after_the_run(tmp_path):
    teacher = tiny_teacher("llama").requires_grad_(False)
    student = hybridize(teacher, [1])
    saved = {}
    for on in (False, True):
        t = Trainer(student.requires_grad_(True), kd_loss_step(teacher, {"kl": 1.0}), tiny_rows(n_docs=24),
                    TrainArgs(steps=2, batch_size=4, warmup_steps=0, activation_checkpointing=on),
                    str(tmp_path / str(on)))
        count = [0]

        def pack(x, count=count):  # what the step's forward keeps for backward (recomputation keeps its own)
            count[0] += x.numel()
            return x
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
            t.train_step()
        saved[on] = count[0]
        t.run()
    assert saved[True] * 10 < saved[False], saved
    assert not any(getattr(m, "gradient_checkpointing", False) for m in student.modules())
    with pytest.raises(ValueError, match=r"align: activation_checkpointing needs a transformers model; the trained "
                                         r"module is a ModuleDict"):
        Trainer(torch.nn.ModuleDict({"a": torch.nn.Linear(2, 2)}), lambda m, b: None, tiny_rows(n_docs=24),
                TrainArgs(steps=1, activation_checkpointing=True), str(tmp_path / "x"), name="align")


def test_model_flops_match_a_count_by_hand():
    teacher = tiny_teacher("llama", num_layers=2)  # hidden 64, 4 heads x 16, 2 kv heads, mlp 96, vocab 97
    c = teacher.config
    linears = 2 * (64 * 64 + 2 * 64 * 32 + 64 * 64 + 3 * 64 * 96) + 97 * 64  # q, k, v, o, gate/up/down, head
    T = 31
    by_hand = 2 * linears + 2 * 4 * 4 * 16 * (T + 1) / 2
    assert forward_flops(teacher, T) == by_hand
    teacher.requires_grad_(True)
    attention = 2 * 4 * 4 * 16 * (T + 1) / 2
    assert train_flops(teacher, T) == 3 * by_hand  # everything trains: 6 N + 3 A
    teacher.requires_grad_(False)
    assert train_flops(teacher, T) == 4 * linears + 3 * attention  # frozen: no weight gradients
    hybrid = hybridize(teacher, [1])
    mixer = hybrid.model.layers[0].mamba
    assert mixer.conv1d.weight.numel() > 0
    assert forward_flops(hybrid, T) > forward_flops(teacher, T) - 2 * 4 * 4 * 16 * (T + 1) / 2  # mixer != free
    assert c.num_hidden_layers == 2


def test_gemm_peak_is_measured_positive_and_cached():
    a = gemm_peak(torch.float32, seconds=0.05)
    assert a > 1e8 and gemm_peak(torch.float32) == a


def test_auto_precision_is_float32_on_this_suites_cpu_and_bf16_on_cuda():
    expect = "bf16" if torch.cuda.is_available() else "no"
    assert resolve_precision("auto") == expect
    assert resolve_precision("fp16") == "fp16"


def test_auto_precision_trusts_the_cpus_bf16_instructions_without_timing(monkeypatch):
    import distill.flops
    import distill.train as train
    monkeypatch.setenv("HYBRID_CPU_BF16", "1")
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: True)

    def no_timing(*a, **k):
        raise AssertionError("a CPU with native bf16 instructions must not be timed")
    monkeypatch.setattr(distill.flops, "gemm_peak", no_timing)
    monkeypatch.setattr(train, "cpu_flags", lambda: {"avx512f", "avx512_bf16"})
    assert train.cpu_bf16_wins() and resolve_precision("auto") == ("bf16")
    # without the instructions the measurement decides
    monkeypatch.setattr(train, "cpu_flags", lambda: {"avx512f"})
    monkeypatch.setattr(distill.flops, "gemm_peak", lambda dtype, *a, **k: 1.0 if dtype == torch.bfloat16 else 2.0)
    assert not train.cpu_bf16_wins()
    monkeypatch.setenv("HYBRID_CPU_BF16", "0")
    assert not train.cpu_bf16_wins()


def test_a_resumed_run_continues_in_the_precision_its_checkpoint_was_trained_in(tmp_path):
    teacher = tiny_teacher("llama").requires_grad_(False)
    student = hybridize(teacher, [1]).requires_grad_(True)
    a = TrainArgs(steps=2, batch_size=4, save_every=1, mixed_precision="bf16")
    t = Trainer(student, kd_loss_step(teacher, {"kl": 1.0}), tiny_rows(n_docs=24), a, str(tmp_path))
    t.train_step()
    t.save()
    # the same run resumed where `auto` resolves to float32 (another machine, or a busy one)
    t2 = Trainer(student, kd_loss_step(teacher, {"kl": 1.0}), tiny_rows(n_docs=24),
                 TrainArgs(steps=2, batch_size=4, save_every=1, mixed_precision="no"), str(tmp_path))
    assert t2.autocast_dtype is None and t2.step_dtype() == torch.float32
    t2.load(t2.latest_checkpoint())
    assert t2.precision == "bf16" and t2.autocast_dtype == torch.bfloat16 and t2.step_dtype() == torch.bfloat16
    t2.save()
    t3 = Trainer(student, kd_loss_step(teacher, {"kl": 1.0}), tiny_rows(n_docs=24), a, str(tmp_path))
    t3.load(t3.latest_checkpoint())  # the same precision: nothing changes
    assert t3.precision == "bf16" and t3.autocast_dtype == torch.bfloat16


def test_stages_log_tokens_per_second_and_mfu(tmp_path):
    teacher = tiny_teacher("llama").requires_grad_(False)
    student = hybridize(teacher, [1]).requires_grad_(True)
    t = Trainer(student, kd_loss_step(teacher, {"kl": 1.0}), tiny_rows(n_docs=24),
                TrainArgs(steps=2, batch_size=4, log_every=1), str(tmp_path),
                flops_per_token=train_flops(student, 32) + forward_flops(teacher, 32))
    t.run()
    logged = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert all(r["tokens_per_s"] > 0 and 0 < r["mfu"] < 1.5 for r in logged if "loss" in r)


@pytest.mark.parametrize("stage", ["kd", "sft", "grpo"])
def test_bench_train_runs_every_variant_and_writes_its_results(tmp_path, stage):
    from distill.evaluation.training import TrainBenchSettings, run_train_bench, train_table
    teacher = tiny_teacher("llama")
    teacher.save_pretrained(tmp_path / "teacher")
    variants = ["fp32", "fp32+chunked", "fp32+teacher-packed"] if stage == "kd" else ["fp32", "fp32+chunked"]
    s = TrainBenchSettings(model=f"{tmp_path / 'teacher'}@attn=0.5", stage=stage, batch=2, seq_len=16, steps=2,
                           warmup=1, variants=variants, out=str(tmp_path / "out"))
    result = run_train_bench(s)
    rows_ = result["rows"]
    assert [r["variant"] for r in rows_[:len(variants)]] == variants
    assert all(r["tokens_per_s"] > 0 and r["mfu"] > 0 for r in rows_)
    trained = rows_[:len(variants)]
    # the same start, the same rows: exact levers give the same losses
    for r in trained[1:]:
        assert r["losses"] == pytest.approx(trained[0]["losses"], rel=1e-4, abs=1e-4)
    if stage == "grpo":
        assert rows_[-1]["variant"] == "rollout (engine)"
    for name in ("bench_train.json", "bench_train.csv", "bench_train.md", "bench_train.png"):
        assert os.path.getsize(tmp_path / "out" / name) > 0
    assert "vs first" in train_table(result)
    # each timed step's page faults and kernel share, read from getrusage around the step; the allocator named
    assert all(r["page_faults_per_step"] >= 0 and 0.0 <= r["kernel_cpu_share"] <= 1.0 for r in trained)
    assert result["environment"]["allocator"] in ("glibc", "tcmalloc", "jemalloc")
    assert "page faults / step" in train_table(result) and "C allocator" in train_table(result)


def test_malloc_in_use_reads_the_mapped_libraries(monkeypatch, tmp_path):
    import builtins

    from distill.evaluation.training import malloc_in_use
    maps = tmp_path / "maps"
    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda f, *a, **k: real_open(maps if f == "/proc/self/maps" else f, *a, **k))
    maps.write_text("7f00 r-xp 00000000 /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4.5.10\n")
    assert malloc_in_use() == "tcmalloc"
    maps.write_text("7f00 r-xp 00000000 /usr/lib/x86_64-linux-gnu/libc.so.6\n")
    assert malloc_in_use() == "glibc"


def test_bench_train_names_a_bad_variant():
    from distill.evaluation.training import TrainBenchSettings
    with pytest.raises(ValueError, match="fp32\\+turbo"):
        TrainBenchSettings(model="x", variants=["fp32+turbo"])
