"""The engine's sampler against a direct definition: temperature, top-k, nucleus, and draws with those
probabilities."""
import pytest
import torch
from helpers import assert_close

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


class _ByteTokenizer:
    """A stub byte-level tokenizer: the i-th generated token is one byte of a UTF-8 text whose characters take
    1, 2, 3 and 4 bytes in turn (the token's id picks which character), so every character but the ASCII ones
    takes several tokens and a text cut inside a character decodes to a trailing "\ufffd"."""
    WIDTHS = (1, 2, 3, 4)

    def decode(self, ids, skip_special_tokens=False):
        out, j = bytearray(), 0
        while j < len(ids):
            for w in self.WIDTHS:
                for k, t in enumerate(ids[j:j + w]):
                    if w == 1:
                        out.append(0x41 + int(t) % 26)  # A-Z
                    elif k == 0:
                        out.append({2: 0xC3, 3: 0xE4 + int(t) % 6, 4: 0xF0}[w])  # no overlong, no surrogate
                    elif w == 4 and k == 1:
                        out.append(0x90 + int(t) % 48)  # U+10000 and up
                    else:
                        out.append(0x80 + int(t) % 64)
                j += w
        return out.decode("utf-8", errors="replace")


def test_stream_text_writes_whole_characters_only():
    from helpers import tiny_teacher

    from hybrid.generation import stream_text

    model, tok = tiny_teacher(), _ByteTokenizer()
    pieces: list[str] = []
    params = SamplingParams(max_new_tokens=20, temperature=1.0, seed=3)  # 20 tokens: two rounds of 1+2+3+4 bytes
    text = stream_text(model, tok, [1, 5, 9, 13], params, pieces.append, eos_token_id=[])
    assert len(text) == 8 and "\ufffd" not in text and any(ord(c) > 0xFFFF for c in text)
    assert "".join(pieces) == text
    assert pieces == list(text)  # one piece per character, written when its last token arrived
    early: list[str] = []  # 5 tokens: stopped inside the 3-byte character, whose start is never written
    cut = stream_text(model, tok, [1, 5, 9, 13], SamplingParams(max_new_tokens=5, temperature=1.0, seed=3),
                      early.append, eos_token_id=[])
    assert cut.endswith("\ufffd") and "".join(early) == cut[:-1] == text[:2]
