"""`hybrid-distill bench throughput`: decode speed of teachers and hybrids, measured side by side in one run.

    hybrid-distill bench throughput --models smollm2-135m smollm2-135m@attn=0.25 smollm2-135m@attn=0 \\
        --batch 1 16 --prompt-len 256 --gen-len 256 --context 512 2048 4096 --out runs/bench

A model spec is anything `distill.loading.load_model` reads, `@attn=R` included: the model converted on the fly
to a hybrid keeping a fraction R of its layers as attention (uniform selection, transfer-initialised weights:
enough for speed). Every model runs through the same engine (hybrid/generation.py), so the teacher is the fair
baseline; the teacher also runs through HF `generate()` (the baseline users know).

Order of work for each model: a correctness gate (engine greedy == HF greedy on the first tokens; a model that
fails is reported and not timed), a warm-up, then the timings. Reported: output tokens/s, time to first token,
time per output token, cache size; with --context, the time per output token at a given context length after a
real prefill of that length. A roofline column gives the least time a decode step can take on this machine: the
larger of the bytes it must read (weights, KV cache, mixer states) over the measured copy bandwidth and the FLOPs
it must do (`decode_flops`, times the batch) over the measured GEMM peak for the dtype in use
(distill.flops.gemm_peak); each row names the binding bound (roofline_bound: "memory" or "compute"), and both
rates are in the environment block. Results: bench.json, bench.csv, bench.png.
"""
from __future__ import annotations

import contextlib
import csv
import json
import os
import platform
import time
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import transformers
from transformers import GenerationMixin

from hybrid.generation import (SamplingParams, StaticDecodeStep, decode_prepack, generate, resolve_decode,
                               static_cache)
from hybrid.ops import backends
from hybrid.prepack import prepacked_linears

from ..flops import forward_flops, gemm_peak
from ..loading import load_model


@dataclass
class ThroughputSettings:
    """What one `bench throughput` run measures; the CLI and the pipeline's bench stage each build one.

    kernels: backend settings to run every model under, side by side (e.g. ["torch", "csrc"], see
    hybrid.ops.backends.use: the mixers' kernels, and every model's one-token attention); None: as configured.
    dtype: load every model in this dtype (e.g. "bfloat16"); None: as stored.
    decode: engine decode steps to run every model with (e.g. ["eager", "graph"], "compiled": torch.compile);
    None: "auto" alone.
    prepack: engine linear settings to run every model with, "on" / "off" / "csrc" / "onednn" (hybrid.prepack);
    None: the default (with the compiled step, the setting of its prefill: its decode steps run inductor's own GEMMs).
    interleave: time the context rows of all models together, a step of each in turn (time_contexts_interleaved;
    every model stays loaded), instead of model after model.
    """
    models: list[str]
    out: str
    batch: list[int] = field(default_factory=lambda: [1, 16])
    prompt_len: int = 256
    gen_len: int = 256
    context: list[int] = field(default_factory=list)
    context_batch: int = 16
    context_steps: int = 8
    hf_baseline: bool = True
    kernels: list[str] | None = None
    dtype: str | None = None
    decode: list[str] | None = None
    prepack: list[str] | None = None
    interleave: bool = False

    def __post_init__(self):
        for p in self.prepack or []:
            if p not in ("on", "off", "csrc", "onednn"):
                raise ValueError(f"prepack={p!r}: each setting is 'on', 'off', 'csrc' or 'onednn'")


class _Run(NamedTuple):
    """One model under one setting: a row label of its own."""
    spec: str
    kernels: str | None
    decode: str | None
    prepack: str | None


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


def decode_flops(model, context: int) -> float:
    """FLOPs of one decode step per row with `context` tokens in the cache: 2 N (every weight in a matrix product,
    the vocabulary head included) + 4 heads * head_dim * context per attention layer (QK^T and AV over the whole
    cache) + the mixers' recurrence. distill.flops.forward_flops counts attention over the mean causal context
    (T + 1) / 2 of a sequence of T tokens; at T = 2 context - 1 that mean is the decode step's full context."""
    return forward_flops(model, 2 * context - 1)


def _gemm_peak(model, env: dict) -> float:
    """The measured GEMM peak (FLOP/s) for the model's dtype and device, recorded in env["gemm_peak_GFLOPs"]
    under the dtype's name the first time a model of that dtype asks (distill.flops.gemm_peak caches it)."""
    p = next(model.parameters())
    name = str(p.dtype).replace("torch.", "")
    peaks = env.setdefault("gemm_peak_GFLOPs", {})
    if name not in peaks:
        peaks[name] = gemm_peak(p.dtype, p.device) / 1e9
        print(f"environment: GEMM peak {name} {peaks[name]:.1f} GFLOP/s")
    return peaks[name] * 1e9


def _roofline(model, batch: int, context: int, env: dict) -> dict:
    """The decode step's least time on this machine: max(step_bytes / copy bandwidth, batch * decode_flops / GEMM
    peak), with both bounds and which one binds."""
    memory = 1000 * step_bytes(model, batch, context) / (env["copy_bandwidth_GBps"] * 1e9)
    compute = 1000 * batch * decode_flops(model, context) / _gemm_peak(model, env)
    return {"roofline_ms": max(memory, compute), "roofline_bound": "memory" if memory >= compute else "compute",
            "roofline_memory_ms": memory, "roofline_compute_ms": compute}


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
    total = out.prefill_seconds + out.decode_seconds  # a compiled step's compilation is apart (compile_s)
    row = {"tokens_per_s": out.generated_tokens / total, "ttft_s": out.prefill_seconds,
           "tpot_ms": 1000 * out.decode_seconds / max(1, gen_len - 1), "generated": out.generated_tokens,
           "decode": out.decode_mode, "linear": out.linear}
    if out.decode_mode == "compiled":
        row["compile_s"] = out.compile_seconds
    return row


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
    the linear layers as generate would run them (`prepack`, see hybrid.prepack; off for the compiled step's
    decode steps)."""
    dev = next(model.parameters()).device
    prepack = decode_prepack(resolve_decode(model, decode, dev), prepack)
    with prepacked_linears(model, prepack) as packed:
        return {**_time_context(model, batch, context, steps, seed, decode, dev), "linear": packed.label}


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
    fixed = (StaticDecodeStep(model, cache, mask[:, :context], total, graph=mode == "graph",
                              compiled=mode == "compiled") if mode != "eager" else None)  # compiled: compiles here
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


def _kernels(kernels: str | None):
    """The block runs under backend setting `kernels` (hybrid.ops.backends.use); None: as configured."""
    return backends.use(kernels) if kernels is not None else contextlib.nullcontext()


@torch.no_grad()
def time_contexts_interleaved(entries, batch, context, steps=8, seed=0) -> dict:
    """Time per output token at `context` for several models, one decode step of each in turn, so drift of the
    machine's speed over minutes lands on every model alike (timing the models one after another puts it between
    them). entries: {label: (model, kernels, decode, prepack)}, kernels the backend setting to step it under
    (hybrid.ops.backends.use; None: as configured). Returns {label: row fields}."""
    with contextlib.ExitStack() as stack:
        steppers = {}
        for label, (model, kernels, decode, prepack) in entries.items():
            dev = next(model.parameters()).device
            prepack = decode_prepack(resolve_decode(model, decode or "auto", dev), prepack)
            packed = stack.enter_context(prepacked_linears(model, prepack))
            with _kernels(kernels):
                mode, step = _context_stepper(model, batch, context, steps, seed, decode or "auto", dev)
            steppers[label] = (kernels, mode, step, packed.label)
        times = {label: [] for label in steppers}
        for s in range(steps):
            for label, (kernels, _, step, _) in steppers.items():
                with _kernels(kernels):
                    times[label].append(step(s))
    return {label: {"tpot_ms": 1000 * sorted(times[label])[steps // 2], "decode": mode, "linear": linear,
                    "interleaved": True} for label, (_, mode, _, linear) in steppers.items()}


def environment() -> dict:
    return {"machine": platform.machine(), "processor": platform.processor(), "cpus": os.cpu_count(),
            "torch": torch.__version__, "transformers": transformers.__version__, "threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "mixer_backend": backends.active_backend("cuda" if torch.cuda.is_available() else "cpu")}


def run_throughput(settings: ThroughputSettings) -> dict:
    """Gate and time every model of `settings` under each of its settings (kernels x decode x prepack); writes
    bench.json and bench.csv (after every model, so an interrupted run keeps what it measured), bench.png, and
    prints the ratio table. Returns {"environment": ..., "results": rows}."""
    s = settings
    os.makedirs(s.out, exist_ok=True)
    env = _environment(s.dtype)
    rows: list[dict] = []
    kept: dict = {}  # label -> (model, kernels, decode, prepack): the models whose context rows are timed interleaved
    for run in _runs(s):
        _measure(run, s, env, rows, kept)
    if kept:
        _interleaved_rows(kept, s, env, rows)
    result = {"environment": env, "results": rows}
    _write(s.out, result)
    plot_throughput(result, os.path.join(s.out, "bench.png"))
    print(ratio_table(result))
    return result


def _runs(s: ThroughputSettings) -> list[_Run]:
    """Every (model, setting) pair to time; kernel settings apply to every model (a plain model's decode attention
    runs on csrc's kernel too)."""
    runs = []
    for spec in s.models:
        ks = s.kernels or [None]
        runs += [_Run(spec, k, d, p) for k in ks for d in (s.decode or [None]) for p in (s.prepack or [None])]
    return runs


def _environment(dtype: str | None) -> dict:
    """The machine, the libraries and the copy bandwidth the roofline column divides by; printed. The GEMM peak
    of each dtype timed joins it as gemm_peak_GFLOPs when the first model of that dtype is measured."""
    env = environment()
    env["dtype"] = dtype or "as stored"
    env["copy_bandwidth_GBps"] = copy_bandwidth(device="cuda" if torch.cuda.is_available() else "cpu") / 1e9
    print("environment:", json.dumps(env))
    return env


def _measure(run: _Run, s: ThroughputSettings, env: dict, rows: list, kept: dict) -> None:
    """Load, gate and time one run under its backend setting, appending its rows; with s.interleave the model is
    kept in `kept` for its context rows instead."""
    with _kernels(run.kernels):
        model, tok, label = load_model(run.spec, dtype=s.dtype)
        tags = [x for x in (run.kernels, run.decode, run.prepack and f"prepack {run.prepack}") if x is not None]
        label = f"{label} [{', '.join(tags)}]" if tags else label
        decode = run.decode or "auto"
        prepack = {None: None, "on": True, "off": False}.get(run.prepack, run.prepack)  # csrc / onednn: that kind
        if torch.cuda.is_available():
            model = model.cuda()
        if not _passes(model, tok, label, decode, prepack, rows):
            return
        time_engine(model, 2, 16, 4, decode=decode, prepack=prepack)  # warm-up
        rows += _generate_rows(model, label, s, env, decode, prepack)
        if s.interleave:
            kept[label] = (model, run.kernels, decode, prepack)
            return
        for c in s.context:
            r = {"model": label, "mode": "context", "batch": s.context_batch, "context": c,
                 **time_context(model, s.context_batch, c, s.context_steps, decode=decode, prepack=prepack),
                 **_roofline(model, s.context_batch, c, env)}
            rows.append(r)
            print(json.dumps(r))
    _write(s.out, {"environment": env, "results": rows})  # after every model: an interrupted run keeps these


def _passes(model, tok, label: str, decode: str, prepack, rows: list) -> bool:
    """Whether the model runs with `decode` (and `prepack`) here and passes the correctness gate; a row saying why
    not otherwise (e.g. graph on a CPU, a sliding-window model: said, and the others go on)."""
    try:
        resolve_decode(model, decode, next(model.parameters()).device)
    except ValueError as e:
        print(f"{label}: skipped: {e}")
        rows.append({"model": label, "skipped": str(e)})
        return False
    ok, how = correctness_gate(model, tok, decode=decode)
    print(f"{label}: correctness gate (engine greedy == HF greedy): {'pass' if ok else 'FAIL'} ({how})")
    if not ok:
        rows.append({"model": label, "gate": "fail", "gate_detail": how})
    return ok


def _generate_rows(model, label: str, s: ThroughputSettings, env: dict, decode: str, prepack) -> list[dict]:
    """One generate row per batch size: engine throughput, roofline, and the HF baseline for plain models."""
    rows = []
    for b in s.batch:
        r = {"model": label, "mode": "generate", "batch": b, "prompt_len": s.prompt_len, "gen_len": s.gen_len,
             "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
             **time_engine(model, b, s.prompt_len, s.gen_len, decode=decode, prepack=prepack)}
        r.update(_roofline(model, b, s.prompt_len + s.gen_len // 2, env))
        if s.hf_baseline and getattr(model.config, "model_type", None) != "hybrid":
            r["hf_tokens_per_s"] = time_hf(model, b, s.prompt_len, s.gen_len)["tokens_per_s"]
        rows.append(r)
        print(json.dumps(r))
    return rows


def _interleaved_rows(kept: dict, s: ThroughputSettings, env: dict, rows: list) -> None:
    """The context rows of all kept models, timed a step of each in turn; written after each context length."""
    for c in s.context:
        for label, timed in time_contexts_interleaved(kept, s.context_batch, c, s.context_steps).items():
            r = {"model": label, "mode": "context", "batch": s.context_batch, "context": c, **timed,
                 **_roofline(kept[label][0], s.context_batch, c, env)}
            rows.append(r)
            print(json.dumps(r))
        _write(s.out, {"environment": env, "results": rows})


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
    lines = ["| model | setting | tok/s | TPOT ms | roofline ms (bound) | speed-up vs " + base +
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
        bound = {"memory": " (memory)", "compute": " (GEMM)"}.get(r.get("roofline_bound"), "")
        lines.append(f"| {r['model']} | {setting} | {tps} | {r['tpot_ms']:.1f} | {r['roofline_ms']:.1f}{bound} | "
                     f"{speed} | {hf} | {vs_hf} |")
    return "\n".join(lines + _roofline_legend(result.get("environment", {})))


def _roofline_legend(env: dict) -> list[str]:
    """The line under the table saying what the roofline column is and which rates it divides by."""
    if "gemm_peak_GFLOPs" not in env:  # a bench.json from before the compute bound
        return []
    peaks = ", ".join(f"{k} {v:.0f}" for k, v in env["gemm_peak_GFLOPs"].items())
    return ["", f"roofline: max(bytes a decode step reads / copy bandwidth {env['copy_bandwidth_GBps']:.1f} GB/s, "
                f"its FLOPs / GEMM peak ({peaks} GFLOP/s)); (memory) or (GEMM) names the bound that binds."]


def plot_throughput(result: dict, path: str) -> None:
    import matplotlib  # start-up time: only the plot needs it
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
