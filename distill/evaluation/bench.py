"""`hybrid-distill bench throughput`: decode speed of teachers and hybrids, measured side by side in one run.

    hybrid-distill bench throughput --models smollm2-135m smollm2-135m@attn=0.25 smollm2-135m@attn=0 \\
        --batch 1 16 --prompt-len 256 --gen-len 256 --context 512 2048 4096 --out runs/bench

A model spec is anything `load_pretrained` reads, optionally with `@attn=R`: the model converted on the fly to a
hybrid keeping a fraction R of its layers as attention (uniform selection, transfer-initialised weights: enough
for speed). Every model runs through the same engine (hybrid/generation.py), so the teacher is the fair
baseline; the teacher also runs through HF `generate()` (the baseline users know).

Order of work for each model: a correctness gate (engine greedy == HF greedy on the first tokens; a model that
fails is reported and not timed), a warm-up, then the timings. Reported: output tokens/s, time to first token,
time per output token, cache size; with --context, the time per output token at a given context length after a
real prefill of that length. A roofline column divides the bytes a decode step must read (weights, KV cache,
mixer states) by this machine's measured copy bandwidth. Results: bench.json, bench.csv, bench.png.
"""
from __future__ import annotations

import csv
import json
import os
import platform
import time

import torch
from transformers import GenerationMixin

from hybrid import load_pretrained
from hybrid.generation import SamplingParams, StaticDecodeStep, generate, resolve_decode, static_cache
from hybrid.prepack import prepacked_linears


def load_spec(spec: str, need_tokenizer: bool = False, dtype=None):
    """(model, tokenizer, label) for `path[@attn=R]`, in `dtype` (None: as stored, float32 for GGUF)."""
    base, _, opt = spec.partition("@")
    model, tok = load_pretrained(base, dtype=dtype)
    if need_tokenizer and tok is None:
        raise ValueError(f"{base} has no tokenizer; evaluation needs one")
    if opt:
        if not opt.startswith("attn="):
            raise ValueError(f"model spec {spec!r}: the only option is @attn=<ratio>")
        from ..conversion.transfer import hybridize
        from ..conversion.select import uniform_attention_layers
        ratio = float(opt[len("attn="):])
        n = model.config.num_hidden_layers
        model = hybridize(model, uniform_attention_layers(n, ratio)).eval()
    model.requires_grad_(False)
    return model, tok, spec


def copy_bandwidth(nbytes: int = 256 << 20, reps: int = 5, device="cpu") -> float:
    """Bytes per second moved by a large tensor copy (read + write) on `device`, best of reps."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).normal_()
    dst = torch.empty_like(src)
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    best = float("inf")
    for _ in range(reps):
        sync()
        t0 = time.perf_counter()
        dst.copy_(src)
        sync()
        best = min(best, time.perf_counter() - t0)
    return 2 * nbytes / best


def step_bytes(model, batch: int, context: int) -> int:
    """Bytes a decode step must read: all weights once, the KV cache of attention layers up to `context`, and the
    mixer states (read and written)."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    cfg = model.config
    hybrid = getattr(cfg, "model_type", None) == "hybrid"
    t = cfg.teacher_config if hybrid else cfg
    types = cfg.layer_types if hybrid else ["attention"] * t.num_hidden_layers
    el = next(model.parameters()).element_size()
    head_dim = getattr(t, "head_dim", None) or t.hidden_size // t.num_attention_heads
    kv_heads = getattr(t, "num_key_value_heads", None) or t.num_attention_heads
    total = weights
    for i, kind in enumerate(types):
        if kind == "attention":
            total += 2 * kv_heads * head_dim * context * batch * el
        else:
            mix = model.model.layers[i].mamba
            conv = mix.conv1d.weight.shape[0] * mix.conv1d.weight.shape[-1]
            ssm = mix.A_log.numel() * (mix.d_state if kind == "mamba2" else 1) * \
                (mix.headdim if kind == "mamba2" else 1)
            total += 2 * batch * (conv * el + ssm * 4)  # states are fp32
    return total


def _prompts(batch: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    low = 100 if vocab > 200 else 3  # skip special tokens of real vocabularies
    return torch.randint(low, min(vocab, 30000), (batch, length), generator=g).tolist()


def correctness_gate(model, tok, tokens: int = 8, decode: str = "auto") -> tuple[bool, str]:
    """Engine greedy == transformers' greedy on the first `tokens` tokens, up to near-ties: where the two first
    differ, the reference forward's logits for both candidates must agree within the dtype's noise (random-weight
    models, used for speed, have flat logits, and the fixed-shape step sums attention in another order).
    Returns (ok, what happened)."""
    prompt = _prompts(1, 16, model.config.vocab_size, 123)[0]
    ours = generate(model, [prompt], SamplingParams(max_new_tokens=tokens), eos_token_id=[], decode=decode).sequences[0]
    # transformers' own generate loop (HybridForCausalLM.generate would route plain calls to the engine)
    dev = next(model.parameters()).device
    ref = GenerationMixin.generate(model, torch.tensor([prompt], device=dev), max_new_tokens=tokens,
                                   min_new_tokens=tokens, do_sample=False, pad_token_id=0)[0, len(prompt):].tolist()
    if ours == ref:
        return True, "identical"
    i = next(j for j, (a, b) in enumerate(zip(ours, ref)) if a != b)
    with torch.no_grad():
        logits = model(torch.tensor([prompt + ref[:i]], device=dev)).logits[0, -1].float()
    margin = float(logits[ref[i]] - logits[ours[i]])
    tol = (1e-3 if next(model.parameters()).dtype == torch.float32 else 5e-2) * max(1.0, float(logits.abs().max()))
    if margin <= tol:
        return True, f"near-tie at token {i} (logit margin {margin:.2e} <= {tol:.1e})"
    return False, f"differs at token {i}: logit margin {margin:.2e} > {tol:.1e}"


def _clock(model):
    """perf_counter, synchronizing first on CUDA (kernels run asynchronously there)."""
    dev = next(model.parameters()).device
    if dev.type != "cuda":
        return time.perf_counter

    def clock():
        torch.cuda.synchronize(dev)
        return time.perf_counter()
    return clock


def time_engine(model, batch, prompt_len, gen_len, seed=0, decode="auto", prepack=None) -> dict:
    prompts = _prompts(batch, prompt_len, model.config.vocab_size, seed)
    out = generate(model, prompts, SamplingParams(max_new_tokens=gen_len), eos_token_id=[], timer=_clock(model),
                   decode=decode, prepack=prepack)
    total = out.prefill_seconds + out.decode_seconds
    return {"tokens_per_s": out.generated_tokens / total, "ttft_s": out.prefill_seconds,
            "tpot_ms": 1000 * out.decode_seconds / max(1, gen_len - 1), "generated": out.generated_tokens,
            "decode": out.decode_mode, "linear": out.linear}


def time_hf(model, batch, prompt_len, gen_len, seed=0) -> dict:
    dev = next(model.parameters()).device
    ids = torch.tensor(_prompts(batch, prompt_len, model.config.vocab_size, seed), device=dev)
    clock = _clock(model)
    t0 = clock()
    out = GenerationMixin.generate(model, ids, attention_mask=torch.ones_like(ids), max_new_tokens=gen_len,
                                   min_new_tokens=gen_len, do_sample=False, pad_token_id=0)
    dt = clock() - t0
    return {"tokens_per_s": batch * (out.shape[1] - prompt_len) / dt}


@torch.no_grad()
def time_context(model, batch, context, steps=8, seed=0, decode="auto", prepack=None) -> dict:
    """Time per output token at `context` tokens of cache, filled by a real prefill (median of `steps` steps),
    with the decode step `decode` (see hybrid.generation: eager, static, graph; auto picks as generate does) and
    the linear layers as generate would run them (`prepack`, see hybrid.prepack)."""
    dev = next(model.parameters()).device
    with prepacked_linears(model, prepack) as packed:
        return {**_time_context(model, batch, context, steps, seed, decode, dev),
                "linear": "onednn-packed" if packed else "aten"}


def _time_context(model, batch, context, steps, seed, decode, dev) -> dict:
    mode, step = _context_stepper(model, batch, context, steps, seed, decode, dev)
    times = sorted(step(s) for s in range(steps))
    return {"tpot_ms": 1000 * times[len(times) // 2], "decode": mode}  # median step


def _context_stepper(model, batch, context, steps, seed, decode, dev):
    """Prefill `context` tokens into a fresh cache; returns (decode mode, step(s) -> seconds of decode step s)."""
    mode = resolve_decode(model, decode, dev)
    total = context + steps + 1
    ids = torch.tensor(_prompts(batch, context, model.config.vocab_size, seed), device=dev)
    cache = static_cache(model, total, full_buffer=mode != "eager")
    mask = torch.ones(batch, total, dtype=torch.long, device=dev)
    pos = torch.arange(context, device=dev)[None].expand(batch, -1)
    logits = model(input_ids=ids, attention_mask=mask[:, :context], position_ids=pos, cache=cache, use_cache=True,
                   logits_to_keep=1).logits[:, -1]
    state = {"next": logits.argmax(-1)}
    fixed = StaticDecodeStep(model, cache, mask[:, :context], total, graph=mode == "graph") if mode != "eager" else None
    clock = _clock(model)

    def step(s: int) -> float:
        p = torch.full((batch, 1), context + s, device=dev)
        t0 = clock()
        if fixed is not None:
            logits = fixed(state["next"], p, context + s)
        else:
            logits = model(input_ids=state["next"][:, None], attention_mask=mask[:, :context + s + 1], position_ids=p,
                           cache=cache, use_cache=True).logits[:, -1]
        state["next"] = logits.argmax(-1)
        return clock() - t0
    return mode, step


@torch.no_grad()
def time_contexts_interleaved(entries, batch, context, steps=8, seed=0) -> dict:
    """Time per output token at `context` for several models, one decode step of each in turn, so drift of the
    machine's speed over minutes lands on every model alike (timing the models one after another puts it between
    them). entries: {label: (model, kernels, decode, prepack)}, kernels the HYBRID_KERNELS setting to step it under.
    Returns {label: row fields}."""
    import contextlib
    with contextlib.ExitStack() as stack:
        steppers = {}
        for label, (model, kernels, decode, prepack) in entries.items():
            if kernels is not None:
                os.environ["HYBRID_KERNELS"] = kernels
            dev = next(model.parameters()).device
            packed = stack.enter_context(prepacked_linears(model, prepack))
            mode, step = _context_stepper(model, batch, context, steps, seed, decode or "auto", dev)
            steppers[label] = (kernels, mode, step, "onednn-packed" if packed else "aten")
        times = {label: [] for label in steppers}
        for s in range(steps):
            for label, (kernels, _, step, _) in steppers.items():
                if kernels is not None:
                    os.environ["HYBRID_KERNELS"] = kernels
                times[label].append(step(s))
    return {label: {"tpot_ms": 1000 * sorted(times[label])[steps // 2], "decode": mode, "linear": linear,
                    "interleaved": True} for label, (_, mode, _, linear) in steppers.items()}


def environment() -> dict:
    import transformers

    from hybrid.ops.backends import active_backend
    return {"machine": platform.machine(), "processor": platform.processor(), "cpus": os.cpu_count(),
            "torch": torch.__version__, "transformers": transformers.__version__, "threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "mixer_backend": active_backend("cuda" if torch.cuda.is_available() else "cpu")}


def run_throughput(specs, batches, prompt_len, gen_len, contexts, out_dir, hf_baseline=True, context_batch=16,
                   context_steps=8, kernels=None, dtype=None, decode=None, prepack=None, interleave=False) -> dict:
    """kernels: HYBRID_KERNELS settings to run every hybrid under (e.g. ["torch", "csrc"]); None: as configured.
    dtype: load every model in this dtype (e.g. "bfloat16"); None: as stored.
    decode: engine decode steps to run every model with (e.g. ["eager", "graph"]); None: "auto" alone.
    prepack: engine linear settings to run every model with, "on" / "off" (hybrid.prepack); None: the default.
    interleave: time the context rows of all models together, a step of each in turn (time_contexts_interleaved;
    every model stays loaded), instead of model after model."""
    for p in prepack or []:
        if p not in ("on", "off"):
            raise ValueError(f"prepack={p!r}: each setting is 'on' or 'off'")
    runs = []
    for spec in specs:
        ks = kernels if kernels and ("@" in spec or _is_hybrid_path(spec)) else [None]
        runs += [(spec, k, d, p) for k in ks for d in (decode or [None]) for p in (prepack or [None])]
    return _run(runs, batches, prompt_len, gen_len, contexts, out_dir, hf_baseline, context_batch, context_steps,
                dtype, interleave)


def _is_hybrid_path(spec: str) -> bool:
    from hybrid.checkpoints import is_hybrid_dir
    return os.path.isdir(spec) and is_hybrid_dir(spec)


def _run(runs, batches, prompt_len, gen_len, contexts, out_dir, hf_baseline, context_batch, context_steps,
         dtype=None, interleave=False) -> dict:
    os.makedirs(out_dir, exist_ok=True)
    env = environment()
    env["dtype"] = dtype or "as stored"
    env["copy_bandwidth_GBps"] = copy_bandwidth(device="cuda" if torch.cuda.is_available() else "cpu") / 1e9
    print("environment:", json.dumps(env))
    rows = []
    kept = {}  # label -> (model, kernels, decode, prepack): the models whose context rows are timed interleaved
    for spec, kernels, decode, prepack in runs:
        if kernels is not None:
            os.environ["HYBRID_KERNELS"] = kernels
        model, tok, label = load_spec(spec, dtype=dtype)
        tags = [x for x in (kernels, decode, prepack and f"prepack {prepack}") if x is not None]
        prepack = None if prepack is None else prepack == "on"
        if tags:
            label = f"{label} [{', '.join(tags)}]"
        decode = decode or "auto"
        if torch.cuda.is_available():
            model = model.cuda()
        try:
            resolve_decode(model, decode, next(model.parameters()).device)
        except ValueError as e:  # e.g. graph on a CPU, or a sliding-window model: say so, go on with the others
            print(f"{label}: skipped: {e}")
            rows.append({"model": label, "skipped": str(e)})
            continue
        ok, how = correctness_gate(model, tok, decode=decode)
        print(f"{label}: correctness gate (engine greedy == HF greedy): {'pass' if ok else 'FAIL'} ({how})")
        if not ok:
            rows.append({"model": label, "gate": "fail", "gate_detail": how})
            continue
        time_engine(model, 2, 16, 4, decode=decode, prepack=prepack)  # warm-up
        for b in batches:
            r = {"model": label, "mode": "generate", "batch": b, "prompt_len": prompt_len, "gen_len": gen_len,
                 "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
                 **time_engine(model, b, prompt_len, gen_len, decode=decode, prepack=prepack)}
            r["roofline_ms"] = 1000 * step_bytes(model, b, prompt_len + gen_len // 2) / (env["copy_bandwidth_GBps"] * 1e9)
            if hf_baseline and getattr(model.config, "model_type", None) != "hybrid":
                r["hf_tokens_per_s"] = time_hf(model, b, prompt_len, gen_len)["tokens_per_s"]
            rows.append(r)
            print(json.dumps(r))
        if interleave:
            kept[label] = (model, kernels, decode, prepack)
            continue
        for c in contexts:
            r = {"model": label, "mode": "context", "batch": context_batch, "context": c,
                 **time_context(model, context_batch, c, context_steps, decode=decode, prepack=prepack)}
            r["roofline_ms"] = 1000 * step_bytes(model, context_batch, c) / (env["copy_bandwidth_GBps"] * 1e9)
            rows.append(r)
            print(json.dumps(r))
        del model
        _write(out_dir, {"environment": env, "results": rows})  # after every model: an interrupted run keeps these
    for c in contexts if kept else []:
        for label, timed in time_contexts_interleaved(kept, context_batch, c, context_steps).items():
            r = {"model": label, "mode": "context", "batch": context_batch, "context": c, **timed,
                 "roofline_ms": 1000 * step_bytes(kept[label][0], context_batch, c) / (env["copy_bandwidth_GBps"] * 1e9)}
            rows.append(r)
            print(json.dumps(r))
        _write(out_dir, {"environment": env, "results": rows})
    result = {"environment": env, "results": rows}
    _write(out_dir, result)
    plot_throughput(result, os.path.join(out_dir, "bench.png"))
    print(ratio_table(result))
    return result


def _write(out_dir: str, result: dict) -> None:
    """bench.json and bench.csv, each whole or not at all."""
    rows = result["results"]
    path = os.path.join(out_dir, "bench.json")
    with open(path + ".tmp", "w") as f:
        json.dump(result, f, indent=1)
    os.replace(path + ".tmp", path)
    keys = sorted({k for r in rows for k in r})
    path = os.path.join(out_dir, "bench.csv")
    with open(path + ".tmp", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    os.replace(path + ".tmp", path)


def ratio_table(result: dict) -> str:
    """Markdown: per model, time per output token vs the first model (the teacher) at each setting."""
    rows = [r for r in result["results"] if "mode" in r]  # timed rows (not failed gates or skipped modes)
    if not rows:
        return "no results"
    base = rows[0]["model"]
    lines = ["| model | setting | tok/s | TPOT ms | roofline ms | speed-up vs " + base +
             " | HF generate tok/s | engine / HF |", "|---|---|---|---|---|---|---|---|"]
    ref = {}
    for r in rows:
        key = (r["mode"], r["batch"], r.get("context"), r.get("gen_len"))
        if r["model"] == base:
            ref[key] = r["tpot_ms"]
    for r in rows:
        key = (r["mode"], r["batch"], r.get("context"), r.get("gen_len"))
        setting = (f"batch {r['batch']}, prompt {r['prompt_len']}, gen {r['gen_len']}" if r["mode"] == "generate"
                   else f"batch {r['batch']}, context {r['context']}")
        tps = f"{r['tokens_per_s']:.1f}" if "tokens_per_s" in r else ""
        speed = f"{ref[key] / r['tpot_ms']:.2f}x" if key in ref else ""
        hf = f"{r['hf_tokens_per_s']:.1f}" if "hf_tokens_per_s" in r else ""
        vs_hf = f"{r['tokens_per_s'] / r['hf_tokens_per_s']:.2f}x" if hf else ""
        lines.append(f"| {r['model']} | {setting} | {tps} | {r['tpot_ms']:.1f} | {r['roofline_ms']:.1f} | {speed} | {hf} "
                     f"| {vs_hf} |")
    return "\n".join(lines)


def plot_throughput(result: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [r for r in result["results"] if "mode" in r]
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for m in models:
        gen = [r for r in rows if r["model"] == m and r["mode"] == "generate"]
        ctx = [r for r in rows if r["model"] == m and r["mode"] == "context"]
        if gen:
            axes[0].plot([r["batch"] for r in gen], [r["tokens_per_s"] for r in gen], "o-", label=m)
        if ctx:
            axes[1].plot([r["context"] for r in ctx], [r["tpot_ms"] for r in ctx], "o-", label=m)
    axes[0].set(xlabel="batch", ylabel="output tokens / s", title="generation throughput", xscale="log")
    axes[1].set(xlabel="context length", ylabel="ms per output token", title="decode cost vs context", xscale="log")
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        else:  # e.g. no --context lengths asked for
            ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes, color="gray")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


OP_SHAPES = {"smollm2-135m": (9, 3, 64), "llama-3.2-3b": (24, 8, 128)}  # (heads, kv heads, head_dim = d_state)


def _time(fn, reps: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


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
            scan_batches=(1, 4)) -> list[dict]:
    """The project's kernels (csrc) against their PyTorch twins at real mixer shapes: the fused Mamba2 and Mamba1
    decode steps at `batches`, and the prefill ops (Mamba2 scan, causal conv1d) at T = scan_len, `scan_batches`."""
    from hybrid.ops import csrc
    from hybrid.ops.backends import active_backend
    ext = csrc.extension()
    print("environment:", json.dumps({**environment(), "csrc_built": ext is not None, "backend": active_backend()}))
    if ext is None:
        print("hybrid._C is not built here: nothing to compare")
        return []
    import torch.nn.functional as F

    from hybrid.ops.conv1d import causal_conv1d, causal_conv1d_update
    from hybrid.ops.selective_scan import selective_state_step
    from hybrid.ops.ssd import ssd_chunked, ssd_step
    rows = []
    for name, (H, kv, P) in OP_SHAPES.items():
        K, d_xb = 4, kv * P
        C = 2 * d_xb + H * P
        for b in batches:
            g = torch.Generator().manual_seed(0)
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
            # Mamba1 (MambaInLlama layout): d_inner = H * P channels, d_state 16, B grouped per kv head
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
        for b in scan_batches:
            g = torch.Generator().manual_seed(1)
            T = scan_len
            x = torch.randn(b, T, H, P, generator=g)
            dts = torch.rand(b, T, H, generator=g) * 0.1
            Bs, Cs = torch.randn(b, T, kv, P, generator=g), torch.randn(b, T, kv, P, generator=g)
            A, D = -torch.rand(H, generator=g), torch.randn(H, generator=g)
            _compare(rows, "ssd_scan_prefill", name, b, lambda: ssd_chunked(x, dts, A, Bs, Cs, D, 128),
                     lambda: ext.ssd_scan_cpu(x, dts, A, Bs, Cs, D, None, None), max(2, reps // 5), atol=1e-3, T=T)
            xc, wc, bc = torch.randn(b, T, C, generator=g), torch.randn(C, K, generator=g), torch.randn(C, generator=g)
            _compare(rows, "conv1d_prefill", name, b, lambda: causal_conv1d(xc, wc, bc, activation="silu"),
                     lambda: ext.causal_conv1d_cpu(xc, wc, bc, None, None, True), max(2, reps // 5), T=T)
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "ops.json"), "w") as f:
            json.dump(rows, f, indent=1)
    return rows


def run_sampler(batch: int = 16, vocab: int = 49152, reps: int = 20) -> list[dict]:
    """`hybrid-distill bench sampler`: the engine's sampler vs `reference_sample`, median ms per call, on random
    logits scaled to a peaked and a flat next-token distribution. Gate: both draw only tokens the other's
    distribution allows (the engine's candidates are tested against the definition in tests/test_sampling.py)."""
    from hybrid.generation import reference_sample, sample, sample_candidates
    rows = []
    g = torch.Generator().manual_seed(0)
    for shape, scale in (("peaked", 4.0), ("flat", 0.5)):
        logits = torch.randn(batch, vocab, generator=g) * scale
        for p in (SamplingParams(temperature=0.7), SamplingParams(temperature=0.7, top_p=0.95)):
            probs, ids = sample_candidates(logits, p)
            allowed = torch.zeros(batch, vocab, dtype=torch.bool).scatter_(-1, ids, probs > 0)
            ok = all(bool(allowed.gather(-1, f(logits, p, g)[:, None]).all()) for f in (sample, reference_sample))

            def median(fn):
                ts = []
                for _ in range(reps):
                    t0 = time.perf_counter()
                    fn()
                    ts.append(time.perf_counter() - t0)
                return 1000 * sorted(ts)[reps // 2]
            row = {"distribution": shape, "temperature": p.temperature, "top_p": p.top_p, "batch": batch,
                   "vocab": vocab, "gate": "pass" if ok else "FAIL"}
            if ok:
                row["reference_ms"] = median(lambda: reference_sample(logits, p, g))
                row["engine_ms"] = median(lambda: sample(logits, p, g))
                row["speedup"] = row["reference_ms"] / row["engine_ms"]
            rows.append(row)
            print(json.dumps(row))
    return rows
