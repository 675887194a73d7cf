"""`hybrid-distill bench sampler`: the engine's sampler against the sampler by its definition (multinomial over
the full distribution), gated on the tokens each may draw, then timed."""
from __future__ import annotations

import json

import torch

from hybrid.generation import SamplingParams, reference_sample, sample, sample_candidates

from .kernels import median_seconds


def run_sampler(batch: int = 16, vocab: int = 49152, reps: int = 20) -> list[dict]:
    """The engine's sampler vs `reference_sample`, median ms per call, on random logits scaled to a peaked and a
    flat next-token distribution. Gate: both draw only tokens the other's distribution allows (the engine's
    candidates are tested against the definition in tests/hybrid/test_sampling.py)."""
    rows = []
    g = torch.Generator().manual_seed(0)
    for shape, scale in (("peaked", 4.0), ("flat", 0.5)):
        logits = torch.randn(batch, vocab, generator=g) * scale
        for p in (SamplingParams(temperature=0.7), SamplingParams(temperature=0.7, top_p=0.95)):
            row = {"distribution": shape, "temperature": p.temperature, "top_p": p.top_p, "batch": batch,
                   "vocab": vocab, **_timed_if_gated(logits, p, g, reps)}
            rows.append(row)
            print(json.dumps(row))
    return rows


def _timed_if_gated(logits, p: SamplingParams, g, reps: int) -> dict:
    """The gate, then (where it passes) the median milliseconds of both samplers on `logits` with params p."""
    batch, vocab = logits.shape
    probs, ids = sample_candidates(logits, p)
    allowed = torch.zeros(batch, vocab, dtype=torch.bool).scatter_(-1, ids, probs > 0)
    ok = all(bool(allowed.gather(-1, f(logits, p, g)[:, None]).all()) for f in (sample, reference_sample))
    row = {"gate": "pass" if ok else "FAIL"}
    if ok:
        row["reference_ms"] = 1000 * median_seconds(lambda: reference_sample(logits, p, g), reps)
        row["engine_ms"] = 1000 * median_seconds(lambda: sample(logits, p, g), reps)
        row["speedup"] = row["reference_ms"] / row["engine_ms"]
    return row
