"""The throughput benchmark (distill.evaluation.throughput): kernel, dtype, decode and prepack settings, the
correctness gate, interleaved context rows."""
import pytest
import torch
from helpers import tiny_hybrid, tiny_teacher

from distill import hybridize


def test_bench_throughput_runs_each_kernel_setting_in_the_requested_dtype(tmp_path):
    import json

    from distill.evaluation.throughput import ThroughputSettings, run_throughput
    from hybrid.ops import backends
    folder = tmp_path / "h"
    hybridize(tiny_teacher("llama"), [1, 3], chunk_size=16).save_pretrained(folder)
    before = backends.kernel_choice()
    run_throughput(ThroughputSettings(models=[str(folder)], out=str(tmp_path / "bench"), batch=[2], prompt_len=8,
                                      gen_len=4, context=[32], hf_baseline=False, context_steps=2,
                                      kernels=["torch", "csrc"], dtype="bfloat16",
                                      decode=["eager", "static", "graph"]))
    assert backends.kernel_choice() == before  # each setting held for its runs only
    result = json.loads((tmp_path / "bench" / "bench.json").read_text())
    assert result["environment"]["dtype"] == "bfloat16"
    skipped = [r for r in result["results"] if "skipped" in r]  # no CUDA graphs on a CPU: said, not fatal
    assert torch.cuda.is_available() or (len(skipped) == 2 and all("needs a CUDA model" in r["skipped"] for r in skipped))
    rows = [r for r in result["results"] if "skipped" not in r]
    assert {r["model"].split(" [", 1)[1] for r in rows} == {"torch, eager]", "csrc, eager]", "torch, static]",
                                                             "csrc, static]"}
    assert all(r["model"].endswith(f"{r['decode']}]") for r in rows)
    assert all(r.get("gate") != "fail" and r["tpot_ms"] > 0 for r in rows)
    assert {r["mode"] for r in rows} == {"generate", "context"}
    assert all(r["dtype"] == "bfloat16" for r in rows if r["mode"] == "generate")


def test_bench_throughput_runs_the_teacher_with_packed_and_plain_linears(tmp_path):
    import json

    from distill.evaluation.throughput import ThroughputSettings, ratio_table, run_throughput
    from hybrid.prepack import LABELS, packing_kind, skinny_supported
    folder = tmp_path / "t"
    tiny_teacher("llama").save_pretrained(folder)
    with pytest.raises(ValueError, match="prepack='maybe'"):
        ThroughputSettings(models=[str(folder)], out=str(tmp_path / "bench"), prepack=["maybe"])
    result = run_throughput(ThroughputSettings(models=[str(folder)], out=str(tmp_path / "bench"), batch=[2],
                                               prompt_len=8, gen_len=4, context=[32], context_steps=2,
                                               prepack=["on", "off", "onednn"] +
                                               (["csrc"] if skinny_supported(torch.float32) else [])))
    assert json.loads((tmp_path / "bench" / "bench.json").read_text()) == json.loads(json.dumps(result))
    rows = result["results"]
    linear = {r["model"].split(" [", 1)[1]: r["linear"] for r in rows}
    want = {"prepack on]": LABELS[packing_kind(torch.float32)], "prepack off]": "aten",
            "prepack onednn]": LABELS[packing_kind(torch.float32, "onednn")]}
    if skinny_supported(torch.float32):
        want["prepack csrc]"] = "csrc-skinny"
    assert linear == want
    gen = [r for r in rows if r["mode"] == "generate"]
    assert len(gen) == len(want) and all(r["hf_tokens_per_s"] > 0 for r in gen)
    table = ratio_table(result)
    assert all(f"{r['tokens_per_s'] / r['hf_tokens_per_s']:.2f}x" in table for r in gen)


def test_bench_correctness_gate_passes_equal_and_near_tied_tokens_only(monkeypatch):
    import distill.evaluation.throughput as bench
    model = tiny_teacher("llama").eval()
    assert bench.correctness_gate(model, None) == (True, "identical")
    prompt = bench._prompts(1, 16, model.config.vocab_size, 123)[0]
    with torch.no_grad():
        logits = model(torch.tensor([prompt])).logits[0, -1]
    first, worst, twin = int(logits.argmax()), int(logits.argmin()), (int(logits.argmax()) + 1) % 97
    with torch.no_grad():
        model.lm_head.weight[twin] = model.lm_head.weight[first]  # an exact tie with the reference's first token
    real = bench.generate

    def engine_picking(token):
        def fake(*args, **kwargs):
            out = real(*args, **kwargs)
            out.sequences[0][0] = token
            return out
        return fake

    monkeypatch.setattr(bench, "generate", engine_picking(twin))
    ok, how = bench.correctness_gate(model, None)
    assert ok and how.startswith("near-tie at token 0")
    monkeypatch.setattr(bench, "generate", engine_picking(worst))
    ok, how = bench.correctness_gate(model, None)
    assert not ok and how.startswith("differs at token 0")


def test_bench_interleaved_context_rows_time_every_model_in_turn(tmp_path, monkeypatch):
    import distill.evaluation.throughput as bench
    t, h = tmp_path / "t", tmp_path / "h"
    teacher = tiny_teacher("llama")
    teacher.save_pretrained(t)
    hybridize(teacher, [1, 3], chunk_size=16).save_pretrained(h)
    order = []
    real = bench._context_stepper

    def spy(model, *a):  # record which model each timed step belongs to
        mode, step = real(model, *a)
        name = type(model).__name__
        return mode, lambda s: order.append(name) or step(s)
    monkeypatch.setattr(bench, "_context_stepper", spy)
    result = bench.run_throughput(bench.ThroughputSettings(
        models=[str(t), str(h)], out=str(tmp_path / "bench"), batch=[2], prompt_len=8, gen_len=4, context=[32, 48],
        hf_baseline=False, context_steps=3, interleave=True))
    ctx = [r for r in result["results"] if r["mode"] == "context"]
    assert [(r["model"], r["context"]) for r in ctx] == [(str(t), 32), (str(h), 32), (str(t), 48), (str(h), 48)]
    assert all(r["interleaved"] and r["tpot_ms"] > 0 for r in ctx)
    assert order == ["LlamaForCausalLM", "HybridForCausalLM"] * 6  # a step of each in turn, 3 steps x 2 contexts


def test_roofline_is_the_larger_of_the_memory_and_compute_bounds(monkeypatch):
    import distill.evaluation.throughput as bench
    model = tiny_hybrid("llama", mixer="mamba2", num_layers=4)  # attention at layers 1 and 3
    t = model.config.teacher_config
    per_token = 4 * t.num_attention_heads * (t.hidden_size // t.num_attention_heads) * 2  # two attention layers
    assert bench.decode_flops(model, 300) - bench.decode_flops(model, 100) == per_token * 200
    monkeypatch.setattr(bench, "gemm_peak", lambda dtype, device: 1e9)
    env = {"copy_bandwidth_GBps": 1e6}  # memory costs nothing: the compute bound binds
    r = bench._roofline(model, 4, 100, env)
    assert r["roofline_bound"] == "compute" and r["roofline_ms"] == r["roofline_compute_ms"] > r["roofline_memory_ms"]
    assert r["roofline_compute_ms"] == pytest.approx(1000 * 4 * bench.decode_flops(model, 100) / 1e9)
    assert env["gemm_peak_GFLOPs"] == {"float32": 1.0}
    env = {"copy_bandwidth_GBps": 1e-6, "gemm_peak_GFLOPs": {"float32": 1.0}}
    assert bench._roofline(model, 4, 100, env)["roofline_bound"] == "memory"
