"""The engine's sampler against a direct definition: temperature, top-k, nucleus, and draws with those
probabilities."""
import pytest
import torch
from helpers import assert_close

from distill.evaluation.sampler import run_sampler
from hybrid.generation import SamplingParams, _draw, reference_probs, sample, sample_candidates


def definition_probs(logits, temperature, top_k, top_p):
    return reference_probs(logits, SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p)).double()


def dense(probs, ids, V):
    out = torch.zeros(probs.shape[0], V, dtype=torch.float64).scatter_add(-1, ids, probs.double())
    return out / out.sum(-1, keepdim=True)


@pytest.mark.parametrize("scale", [0.3, 3.0, 12.0])  # flat (the nucleus needs the sort), medium, peaked
@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.7, 0, 0.95), (0.7, 0, 0.5), (1.3, 40, 1.0),
                                                     (0.7, 40, 0.9), (1.0, 5000, 0.99)])
def test_candidates_are_the_defined_distribution(scale, temperature, top_k, top_p):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 3001, generator=g) * scale
    p = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p)
    probs, ids = sample_candidates(logits, p)
    assert_close(dense(probs, ids, 3001), definition_probs(logits, temperature, top_k, top_p), atol=1e-6, rtol=1e-4,
                 what=f"T={temperature} top_k={top_k} top_p={top_p} scale={scale}")


def test_draws_follow_the_probabilities_never_hit_zero_and_are_seeded():
    probs = torch.tensor([[0.5, 0.0, 0.2, 0.3, 0.0], [0.0, 0.0, 0.0, 0.0, 2.0]])  # unnormalised is fine
    ids = torch.tensor([[10, 11, 12, 13, 14], [20, 21, 22, 23, 24]])
    n = 20000
    g = torch.Generator().manual_seed(1)
    draws = torch.stack([_draw(probs, ids, g) for _ in range(n)])  # [n, 2]
    assert set(draws[:, 1].tolist()) == {24}
    counts = torch.stack([(draws[:, 0] == t).sum() for t in (10, 11, 12, 13, 14)]).double() / n
    expected = torch.tensor([0.5, 0.0, 0.2, 0.3, 0.0], dtype=torch.float64)
    assert counts[1] == 0 and counts[4] == 0
    sd = (expected * (1 - expected) / n).sqrt()
    assert bool(((counts - expected).abs() <= 5 * sd + 1e-12).all()), (counts, expected)
    a = [_draw(probs, ids, torch.Generator().manual_seed(7)).tolist() for _ in range(2)]
    assert a[0] == a[1]


def test_sample_chi_square_on_a_real_sized_vocabulary():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(1, 49152, generator=g) * 4
    p = SamplingParams(temperature=0.7, top_p=0.9)
    ref = definition_probs(logits, 0.7, 0, 0.9)[0]
    support = (ref > 0).nonzero()[:, 0]
    n = 4000
    draws = torch.cat([sample(logits.expand(200, -1), p, g) for _ in range(n // 200)])
    assert bool(torch.isin(draws, support).all())  # nothing outside the nucleus
    top = support[ref[support].argsort(descending=True)[:5]]  # the five likeliest tokens: frequencies match
    freq = torch.stack([(draws == t).double().mean() for t in top])
    sd = (ref[top] * (1 - ref[top]) / n).sqrt()
    assert bool(((freq - ref[top]).abs() <= 5 * sd).all()), (freq, ref[top])


def test_bench_sampler_gates_and_times_both_samplers(capsys):
    rows = run_sampler(batch=2, vocab=500, reps=2)
    assert len(rows) == 4 and all(r["gate"] == "pass" and r["engine_ms"] > 0 and r["reference_ms"] > 0 for r in rows)
    assert capsys.readouterr().out.count('"gate": "pass"') == 4
