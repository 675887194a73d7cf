"""distill/conversion/select.py: the strategies' short trainings taken a few rows at a time (micro_rows) make the same
loss and gradient as the whole batch at once, against an independent reference: the unchunked loss definitions on the
whole batch (losses.forward_kl, alignment_l2), one backward."""
import pytest
import torch
from helpers import assert_close, tiny_rows, tiny_teacher

from distill.conversion import select as sel
from distill.conversion.align import teacher_io
from distill.conversion.losses import IGNORE, alignment_l2, forward_kl
from distill.conversion.transfer import hybridize
from distill.data import model_inputs
from hybrid.modeling import packed_seq_idx


def _rows():
    rows = tiny_rows(n_docs=30, seq_len=24)  # packed rows: mixers see document boundaries (seq_idx) per row
    rows["labels"][0, :6] = IGNORE  # a masked prompt: rows count different numbers of targets
    return rows


def _step(params, parts):
    """Loss value and gradients of one step whose loss is the sum of `parts`, each back-propagated in turn."""
    for p in params:
        p.grad = None
    total = 0.0
    for loss in parts:
        loss.backward()
        total += float(loss)
    return total, [p.grad.clone() for p in params]


@pytest.mark.parametrize("micro_rows", [1, 2, 3])
def test_align_losses_a_few_rows_at_a_time_equal_the_whole_batch_loss(micro_rows):
    teacher = tiny_teacher("llama").requires_grad_(False)
    rows = _rows()
    layers = [0, 2]
    b = {k: v[:4] for k, v in rows.items()}
    io = teacher_io(teacher, layers, b)
    seq_idx = packed_seq_idx(b["position_ids"])
    assert seq_idx is not None
    student = hybridize(teacher, [1, 3], mixer="mamba2")
    mixers = {i: student.model.layers[i].mamba for i in layers}
    params = [p for m in mixers.values() for p in m.parameters()]
    tokens = b["input_ids"].numel()
    whole = sum(alignment_l2(mixers[i](io[i][0], seq_idx=seq_idx), io[i][1])[0] for i in layers) / tokens
    want, want_g = _step(params, [whole])
    got, got_g = _step(params, next(sel._align_losses([(io, seq_idx)], layers, mixers, 1, micro_rows)))
    assert want > 0.01
    assert got == pytest.approx(want, rel=1e-5)
    for g, w in zip(got_g, want_g):
        assert_close(g, w, atol=1e-6, rtol=1e-4, what="alignment gradient")


@pytest.mark.parametrize("micro_rows", [1, 3])
def test_kd_losses_a_few_rows_at_a_time_equal_the_unchunked_whole_batch_loss(monkeypatch, micro_rows):
    monkeypatch.setattr(sel, "CHUNK", 7)  # chunks that cut across sequences
    teacher = tiny_teacher("llama").requires_grad_(False)
    rows = _rows()
    student = hybridize(teacher, [0, 2], mixer="mamba2")
    params = [p for n, p in student.named_parameters() if "mamba" in n]
    batch = {k: v[:4] for k, v in rows.items()}
    kw = model_inputs(batch)
    with torch.no_grad():
        t = teacher(**kw).logits
    s, n = forward_kl(student(**kw).logits, t, batch["labels"])
    want, want_g = _step(params, [s / n])
    got, got_g = _step(params, next(sel._kd_losses(student, teacher, [batch], micro_rows)))
    assert want > 0.01
    assert got == pytest.approx(want, rel=1e-5)
    for g, w in zip(got_g, want_g):
        assert_close(g, w, atol=1e-6, rtol=1e-4, what="KD gradient")


def test_kl_guided_scores_do_not_depend_on_micro_rows_and_bad_rows_are_named():
    teacher = tiny_teacher("llama").requires_grad_(False)
    rows = _rows()
    ctx = lambda: sel.SelectContext(teacher, "mamba2", rows, {k: v[:4] for k, v in rows.items()}, batch_size=4)
    torch.manual_seed(0)  # the all-mixer student's initial weights
    a = sel.select("kl-guided", ctx(), align_steps=2, kd_steps=2, micro_rows=4)
    torch.manual_seed(0)
    b = sel.select("kl-guided", ctx(), align_steps=2, kd_steps=2, micro_rows=1, kd_rows=4)
    assert a.order == b.order
    for i in a.scores:
        assert b.scores[i] == pytest.approx(a.scores[i], rel=1e-4)
    assert len(set(round(v, 6) for v in a.scores.values())) > 1  # the layers are told apart
    with pytest.raises(ValueError, match=r"micro_rows=0 must be a positive number of rows"):
        sel.select("kl-guided", ctx(), micro_rows=0)
    with pytest.raises(ValueError, match=r"kd_rows=-2 must be a positive number of rows"):
        sel.select("kl-guided", ctx(), kd_rows=-2)
    with pytest.raises(ValueError, match=r"micro_rows=1.5"):
        sel.select("leave-one-out", ctx(), micro_rows=1.5)
