"""Kernel micro-benchmarks: `hybrid-distill bench ops` (the project's csrc kernels against their PyTorch twins at
real mixer shapes) and `hybrid-distill bench linear` (F.linear against oneDNN-packed weights, hybrid.prepack).

Every comparison is gated first: the fast op must equal its reference on the same inputs before either is timed,
so a speed-up is never reported for a kernel that computes something else.
"""
from __future__ import annotations

import json
import os
import time

import torch
import torch.nn.functional as F

from hybrid.ops import backends, csrc
from hybrid.ops.conv1d import causal_conv1d, causal_conv1d_update
from hybrid.ops.selective_scan import selective_state_step
from hybrid.ops.ssd import ssd_chunked, ssd_step
from hybrid.ops.csrc import extension as csrc_extension
from hybrid.prepack import dtype_supported, op_works, packed_linear, skinny_supported

from .throughput import environment

OP_SHAPES = {"smollm2-135m": (9, 3, 64), "llama-3.2-3b": (24, 8, 128)}  # (heads, kv heads, head_dim = d_state)
LINEAR_SHAPES = {"attention q/o": (576, 576), "attention k/v": (576, 192), "MLP up": (576, 1536),
                 "MLP down": (1536, 576), "vocabulary head": (576, 49152)}  # SmolLM2-135M: (in, out)


def _time(fn, reps: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def median_seconds(fn, reps: int, warmup: int = 0) -> float:
    """Median wall time of `reps` calls of fn after `warmup` untimed ones: the median, not the best, where a call
    is short enough that one lucky run would overstate the speed."""
    if reps < 1:
        raise ValueError(f"reps={reps}: a median needs at least one timed call")
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return sorted(ts)[reps // 2]


def _compare(rows, op, shape, batch, ref, fast, reps, atol=1e-4, **extra):
    """Gate (fast == ref on the same inputs), then best-of-reps timings of both; appends and prints the row."""
    a, b = ref(), fast()
    a, b = (a[0], b[0]) if isinstance(a, (tuple, list)) else (a, b)
    ok = torch.allclose(a.float(), b.float(), atol=atol, rtol=1e-4)
    row = {"op": op, "shape": shape, "batch": batch, **extra, "gate": "pass" if ok else "FAIL"}
    if ok:
        t_ref, t_fast = _time(ref, reps), _time(fast, reps)
        row.update({"torch_us": 1e6 * t_ref, "csrc_us": 1e6 * t_fast, "speedup": t_ref / t_fast})
    rows.append(row)
    print(json.dumps(row))


def run_ops(batches=(1, 16, 64), reps: int = 20, out_dir: str | None = None, scan_len: int = 2048,
            scan_batches=(1, 4), attention_lens=(), attention_batch: int = 16) -> list[dict]:
    """The project's kernels (csrc) against their PyTorch twins at real mixer shapes: the fused Mamba2 and Mamba1
    decode steps at `batches`, the prefill ops (Mamba2 scan, causal conv1d) at T = scan_len, `scan_batches`, and
    the decode attention at cache lengths `attention_lens` (batch `attention_batch`, float32 and bfloat16)."""
    ext = csrc.extension()
    print("environment:", json.dumps({**environment(), "csrc_built": ext is not None,
                                      "backend": backends.active_backend()}))
    if ext is None:
        print("hybrid._C is not built here: nothing to compare")
        return []
    rows = []
    for name, shape in OP_SHAPES.items():
        for b in batches:
            g = torch.Generator().manual_seed(0)  # one stream for both steps' inputs
            _compare_mamba2_step(rows, ext, name, shape, b, reps, g)
            _compare_mamba1_step(rows, ext, name, shape, b, reps, g)
        for b in scan_batches:
            _compare_prefill(rows, ext, name, shape, b, scan_len, reps)
        for T in attention_lens:
            for dtype in (torch.float32, torch.bfloat16):
                _compare_decode_attention(rows, ext, name, shape, attention_batch, T, dtype, reps)
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "ops.json"), "w") as f:
            json.dump(rows, f, indent=1)
    return rows


def _compare_mamba2_step(rows, ext, name, shape, b, reps, g) -> None:
    """The fused Mamba2 decode step against conv update + SSD step in PyTorch; inputs drawn from generator g."""
    (H, kv, P), K = shape, 4
    d_xb = kv * P
    C = 2 * d_xb + H * P
    xBC, w, bias = torch.randn(b, C, generator=g), torch.randn(C, K, generator=g), torch.randn(C, generator=g)
    dt, dt_bias = torch.randn(b, H, generator=g), torch.randn(H, generator=g)
    A, D = -torch.rand(H), torch.randn(H)
    conv0, ssm0 = torch.randn(b, C, K, generator=g), torch.randn(b, H, P, P, generator=g)

    def ref(conv=conv0.clone(), ssm=ssm0.clone()):
        a = causal_conv1d_update(xBC, conv, w, bias, "silu")
        x, B, Cm = torch.split(a, [d_xb, d_xb, H * P], dim=-1)
        x = x.view(b, kv, P).repeat_interleave(H // kv, 1)
        B = B.view(b, kv, P).repeat_interleave(H // kv, 1)
        y, new = ssd_step(ssm, x, F.softplus(dt + dt_bias), A, B, Cm.view(b, H, P), D)
        ssm.copy_(new)
        return y

    def fused(conv=conv0.clone(), ssm=ssm0.clone()):
        return ext.mamba2_step_cpu(xBC, conv, w, bias, dt, dt_bias, A, D, ssm, kv, d_xb)

    _compare(rows, "mamba2_decode_step", name, b, ref, fused, reps)


def _compare_mamba1_step(rows, ext, name, shape, b, reps, g) -> None:
    """The fused Mamba1 decode step (MambaInLlama layout: d_inner = H * P channels, d_state 16, B grouped per kv
    head) against conv update + selective state step in PyTorch; inputs drawn from generator g."""
    (H, kv, P), K = shape, 4
    Di, N = H * P, 16
    x1, delta = torch.randn(b, Di, generator=g), torch.rand(b, Di, generator=g) * 0.1
    A1, D1 = -torch.rand(Di, N, generator=g), torch.randn(Di, generator=g)
    B1, C1 = torch.randn(b, Di // N // (H // kv), N, generator=g), torch.randn(b, Di // N, N, generator=g)
    w1, b1 = torch.randn(Di, K, generator=g), torch.randn(Di, generator=g)
    c1, h1 = torch.randn(b, Di, K, generator=g), torch.randn(b, Di, N, generator=g)

    def ref1(conv=c1.clone(), h=h1.clone()):
        u = causal_conv1d_update(x1, conv, w1, b1, "silu")
        y, new = selective_state_step(h, u, delta, A1, B1, C1, D1)
        h.copy_(new)
        return y

    def fused1(conv=c1.clone(), h=h1.clone()):
        return ext.mamba1_step_cpu(x1, conv, w1, b1, delta, A1, B1, C1, D1, h)[0]

    _compare(rows, "mamba1_decode_step", name, b, ref1, fused1, reps)


def _compare_prefill(rows, ext, name, shape, b, T, reps) -> None:
    """The prefill ops at sequence length T: the Mamba2 chunked scan and the causal conv1d."""
    (H, kv, P), K = shape, 4
    C = 2 * kv * P + H * P
    g = torch.Generator().manual_seed(1)
    x = torch.randn(b, T, H, P, generator=g)
    dts = torch.rand(b, T, H, generator=g) * 0.1
    Bs, Cs = torch.randn(b, T, kv, P, generator=g), torch.randn(b, T, kv, P, generator=g)
    A, D = -torch.rand(H, generator=g), torch.randn(H, generator=g)
    _compare(rows, "ssd_scan_prefill", name, b, lambda: ssd_chunked(x, dts, A, Bs, Cs, D, 128),
             lambda: ext.ssd_scan_cpu(x, dts, A, Bs, Cs, D, None, None), max(2, reps // 5), atol=1e-3, T=T)
    xc, wc, bc = torch.randn(b, T, C, generator=g), torch.randn(C, K, generator=g), torch.randn(C, generator=g)
    _compare(rows, "conv1d_prefill", name, b, lambda: causal_conv1d(xc, wc, bc, activation="silu"),
             lambda: ext.causal_conv1d_cpu(xc, wc, bc, None, None, True), max(2, reps // 5), T=T)


ATTENTION_POOL_BYTES = 1 << 30  # KV read per timed call: more than this machine's caches hold


def _compare_decode_attention(rows, ext, name, shape, b, T, dtype, reps) -> None:
    """One-token attention over a KV cache of T slots (the last 8 masked, as a static cache's empty tail), query
    heads folded onto the KV heads: torch's scaled_dot_product_attention (what the static decode step runs) against
    csrc's kernel. A timed call reads a pool of layers' caches (ATTENTION_POOL_BYTES in all) once each, from memory
    as a decode step does; times are per layer."""
    (H, kv, P) = shape
    g = torch.Generator().manual_seed(2)
    layer_bytes = 2 * b * kv * T * P * torch.finfo(dtype).bits // 8
    layers = max(1, ATTENTION_POOL_BYTES // layer_bytes)
    q = torch.randn(b, kv, H // kv, P, generator=g).to(dtype)
    pool = [(torch.randn(b, kv, T, P, generator=g).to(dtype), torch.randn(b, kv, T, P, generator=g).to(dtype))
            for _ in range(layers)]
    mask = torch.zeros(b, 1, 1, T, dtype=dtype)
    mask[..., T - 8:] = torch.finfo(dtype).min
    scale = P ** -0.5

    def ref(caches=pool):
        return [F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale) for k, v in caches][0]

    def fast(caches=pool):
        return [ext.decode_attention_cpu(q, k, v, mask[:, 0, 0], scale) for k, v in caches][0]

    a, c = ref(pool[:1]), fast(pool[:1])
    ok = torch.allclose(a.float(), c.float(), atol=2e-2 if dtype == torch.bfloat16 else 1e-4, rtol=1e-2)
    row = {"op": "decode_attention", "shape": name, "batch": b, "T": T, "dtype": str(dtype).replace("torch.", ""),
           "layers": layers, "gate": "pass" if ok else "FAIL"}
    if ok:
        t_ref, t_fast = _time(ref, max(2, reps // 4)) / layers, _time(fast, max(2, reps // 4)) / layers
        row.update({"torch_us": 1e6 * t_ref, "csrc_us": 1e6 * t_fast, "speedup": t_ref / t_fast,
                    "csrc_GBps": layer_bytes / t_fast / 1e9})
    rows.append(row)
    print(json.dumps(row))


def run_linears(rows: int = 16, reps: int = 40, dtype: str = "float32", cold_bytes: int = 256 << 20) -> list[dict]:
    """`hybrid-distill bench linear`: the CPU linear paths generation can take (hybrid.prepack) side by side at
    SmolLM2-135M's shapes and `rows` input rows: F.linear (MKL), oneDNN-packed weights, and the csrc few-rows kernel
    where it builds for `dtype`. Each timed call reads its weight from memory, as a model's decode step does: the
    calls cycle through copies of the weight that together exceed `cold_bytes` (0: one weight, timed again and again
    from the caches, the optimistic figure). Median over `reps` passes after one warm-up pass; every path is checked
    against F.linear first. Returns one row per shape (also printed)."""
    dt = getattr(torch, dtype)
    works, skinny = op_works() and dtype_supported(dt), skinny_supported(dt)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, cpu capability "
          f"{torch.backends.cpu.get_cpu_capability()}, {dtype}, oneDNN packed linear works: {works}, csrc few-rows "
          f"kernel: {skinny}; weights {'from memory' if cold_bytes else 'from the caches'}")
    ext = csrc_extension() if skinny else None
    out = []
    for name, (n_in, n_out) in LINEAR_SHAPES.items():
        g = torch.Generator().manual_seed(0)
        w0 = torch.randn(n_out, n_in, generator=g).to(dt)
        copies = max(1, -(-cold_bytes // (w0.numel() * w0.element_size()))) if cold_bytes else 1
        ws = [w0] + [w0 + 0 for _ in range(copies - 1)]
        x = torch.randn(rows, n_in, generator=g).to(dt)
        ref = F.linear(x.double(), w0.double())
        paths = {"f_linear": (ws, lambda w: F.linear(x, w))}
        if works:
            paths["packed"] = ([w.to_mkldnn() for w in ws], lambda p: packed_linear(x, p, None))
        if skinny:
            paths["csrc"] = ([ext.skinny_pack_cpu(w) for w in ws], lambda p: ext.skinny_linear_cpu(x, p, None, n_out))
        row = {"shape": name, "in": n_in, "out": n_out, "rows": rows, "dtype": dtype, "copies": copies}
        for key, (weights, call) in paths.items():
            row[f"{key}_max_abs_diff"] = (call(weights[0]).double() - ref).abs().max().item()

            def one_pass(weights=weights, call=call):
                for w in weights:
                    call(w)
            row[f"{key}_us"] = 1e6 * median_seconds(one_pass, reps, warmup=1) / copies
            row[f"{key}_GBps"] = w0.numel() * w0.element_size() / row[f"{key}_us"] / 1e3
        for key in ("packed", "csrc"):
            if f"{key}_us" in row:
                row[f"{key}_speedup"] = row["f_linear_us"] / row[f"{key}_us"]
        out.append(row)
        cols = "  ".join(f"{k} {row[f'{k}_us']:9.1f} us ({row[f'{k}_GBps']:4.1f} GB/s)" for k in paths)
        print(f"{name:16s} {n_in:5d} -> {n_out:5d}: {cols}")
    return out
