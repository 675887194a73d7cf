"""The kernel and sampler benchmarks (`bench linear`, `bench ops`, `bench sampler`): every row gated and timed."""
import pytest
import torch

import hybrid.prepack as prepack
from hybrid.ops import csrc
from distill.evaluation.sampler import run_sampler

needs_prepack = pytest.mark.skipif(not prepack.op_works(), reason="oneDNN packed linear does not run in this build")
needs_csrc = pytest.mark.skipif(csrc.extension() is None, reason="hybrid._C could not be built here (no C++ compiler?)")


@needs_prepack
@pytest.mark.parametrize("cold", [0, 4 << 20])
def test_linear_benchmark_times_every_path_on_equal_results(capsys, cold):
    from distill.evaluation.kernels import LINEAR_SHAPES, run_linears
    rows = run_linears(rows=2, reps=1, cold_bytes=cold)
    paths = ["f_linear", "packed"] + (["csrc"] if prepack.skinny_supported(torch.float32) else [])
    assert [r["shape"] for r in rows] == list(LINEAR_SHAPES)
    for r in rows:
        assert r["copies"] == (1 if not cold else max(1, -(-cold // (4 * r["in"] * r["out"]))))
        assert all(r[f"{p}_us"] > 0 and r[f"{p}_max_abs_diff"] < 1e-3 for p in paths), r
    out = capsys.readouterr().out
    assert "oneDNN packed linear works: True" in out and ("from memory" if cold else "from the caches") in out


@needs_csrc
def test_ops_benchmark_gates_and_times_every_kernel(tmp_path):
    import json

    from distill.evaluation.kernels import OP_SHAPES, run_ops
    rows = run_ops(batches=(1,), reps=1, out_dir=str(tmp_path), scan_len=16, scan_batches=(1,))
    assert len(rows) == 4 * len(OP_SHAPES) and all(r["gate"] == "pass" and r["speedup"] > 0 for r in rows)
    assert json.loads((tmp_path / "ops.json").read_text()) == rows


def test_bench_sampler_gates_and_times_both_samplers(capsys):
    rows = run_sampler(batch=2, vocab=500, reps=2)
    assert len(rows) == 4 and all(r["gate"] == "pass" and r["engine_ms"] > 0 and r["reference_ms"] > 0 for r in rows)
    assert capsys.readouterr().out.count('"gate": "pass"') == 4
