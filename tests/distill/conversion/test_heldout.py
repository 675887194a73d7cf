"""distill/conversion/heldout.py: the held-out KL and perplexities, computed on the teacher's target rows only and a
few rows at a time, equal the loss definitions (losses.forward_kl, losses.cross_entropy) on full logits."""
import math

import torch
from helpers import assert_close, tiny_rows, tiny_teacher

from distill.conversion import heldout
from distill.conversion.losses import IGNORE, cross_entropy, forward_kl
from distill.data import model_inputs


def test_heldout_equals_the_full_logit_definitions(monkeypatch):
    monkeypatch.setattr(heldout, "CHUNK", 7)  # chunks that cut across sequences
    teacher, student = tiny_teacher("llama", seed=0), tiny_teacher("llama", seed=1)
    rows = tiny_rows(n_docs=12, seq_len=24)  # packed: documents' first tokens and the padding do not count
    rows["labels"][0, :5] = IGNORE  # and a masked prompt
    labels = rows["labels"]
    assert rows["input_ids"].shape[0] >= 4 and (labels == IGNORE).sum() > 5
    got = heldout.HeldOut(teacher, rows, batch_size=2)(student)
    with torch.no_grad():
        s, t = student(**model_inputs(rows)).logits, teacher(**model_inputs(rows)).logits
    kl, n = forward_kl(s, t, labels)
    ce_s, _ = cross_entropy(s, None, labels)
    ce_t, _ = cross_entropy(t, None, labels)
    assert 0 < int(n) < labels.numel() - 5
    assert got["kl"] > 0.01
    assert_close(torch.tensor(got["kl"]), kl / n, rtol=1e-5, what="held-out KL")
    assert_close(torch.tensor(got["ppl"]), torch.exp(ce_s / n), rtol=1e-5, what="student perplexity")
    assert_close(torch.tensor(got["teacher_ppl"]), torch.exp(ce_t / n), rtol=1e-5, what="teacher perplexity")
    assert math.isclose(got["ppl_ratio"], got["ppl"] / got["teacher_ppl"])
    same = heldout.HeldOut(teacher, rows, batch_size=3)(teacher)  # the teacher against itself
    assert abs(same["kl"]) < 1e-6 and math.isclose(same["ppl_ratio"], 1.0, rel_tol=1e-6)
