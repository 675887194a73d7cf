"""The chunked vocabulary losses (losses.VocabLoss) against the definitions computed on all rows at once: values,
parts and gradients, for every registered loss and mixes of them, in float32 and bfloat16."""
import pytest
import torch

from distill.conversion.losses import IGNORE, combined_loss
from helpers import assert_close

MIXES = [{"kl": 1.0}, {"reverse_kl": 1.0}, {"ce": 1.0}, {"mixed_kl": 1.0}, {"reverse_kl": 1.0, "ce": 0.1},
         {"kl": 0.5, "reverse_kl": 0.25, "ce": 0.0}]


def _case(dtype, seed=0, b=3, T=11, V=37):
    g = torch.Generator().manual_seed(seed)
    s = (3 * torch.randn(b, T, V, generator=g)).to(dtype)
    t = (3 * torch.randn(b, T, V, generator=g)).to(dtype)
    labels = torch.randint(0, V, (b, T), generator=g)
    labels[0, :4] = IGNORE  # a masked prompt
    labels[2, 7] = IGNORE  # a packed document's first token
    return s, t, labels


@pytest.mark.parametrize("weights", MIXES, ids=lambda w: "+".join(w))
@pytest.mark.parametrize("chunk,temperature", [(1, 1.7), (4, 1.7), (1000, 1.7), (4, 1.0)])
def test_chunked_losses_equal_the_definitions_in_values_and_gradients(weights, chunk, temperature):
    s, t, labels = _case(torch.float32)
    full, chunked = combined_loss(weights, temperature=temperature, alpha=0.3), \
        combined_loss(weights, temperature=temperature, alpha=0.3, chunk=chunk)
    s1, s2 = s.clone().requires_grad_(True), s.clone().requires_grad_(True)
    a, n_a, parts_a = full(s1, t, labels)
    b, n_b, parts_b = chunked(s2, t, labels)
    assert int(n_a) == int(n_b)
    assert_close(b, a, atol=1e-4, rtol=1e-5, what="total")
    for name in weights:
        assert_close(parts_b[name], parts_a[name], atol=1e-4, rtol=1e-5, what=name)
    (a * 0.7).backward()
    (b * 0.7).backward()
    assert_close(s2.grad, s1.grad, atol=1e-6, rtol=1e-4, what="gradient")
    assert s1.grad.abs().sum() > 0


@pytest.mark.parametrize("weights", [{"reverse_kl": 1.0, "ce": 0.1}, {"kl": 1.0}, {"reverse_kl": 1.0}, {"ce": 1.0}],
                         ids=lambda w: "+".join(w))
def test_chunked_losses_in_bfloat16_match_the_float32_definition_within_rounding(weights):
    s, t, labels = _case(torch.bfloat16, seed=1)
    s1 = s.float().requires_grad_(True)
    s2 = s.clone().requires_grad_(True)
    a, _, _ = combined_loss(weights, temperature=1.0)(s1, t.float(), labels)
    b, _, _ = combined_loss(weights, temperature=1.0, chunk=5)(s2, t, labels)
    assert_close(b, a, atol=1e-3, rtol=1e-4, what="total")  # the same bf16 inputs, both summed in float32
    a.backward()
    b.backward()
    assert s2.grad.dtype == torch.bfloat16  # the gradient comes back in the logits' dtype, no float32 copy kept
    assert_close(s2.grad.float(), s1.grad, atol=1e-3, rtol=1e-2, what="gradient")


def test_sft_cross_entropy_needs_no_teacher_logits():
    s, _, labels = _case(torch.float32, seed=2)
    a, _, _ = combined_loss({"ce": 1.0})(s, None, labels)
    b, _, _ = combined_loss({"ce": 1.0}, chunk=3)(s, None, labels)
    assert_close(b, a, atol=1e-4, rtol=1e-5)


def test_a_bad_chunk_names_the_value():
    with pytest.raises(ValueError, match="chunk=0"):
        combined_loss({"kl": 1.0}, chunk=0)


def test_one_term_keeps_its_gradient_not_the_logits_for_backward():
    """One needed term: the gradient is computed in forward and is all the graph keeps (the teacher's logits are
    free once the loss is computed); several terms keep the logits and recompute in backward."""
    s, t, labels = _case(torch.float32, seed=3)
    for weights, kept in (({"kl": 1.0}, 1), ({"reverse_kl": 1.0, "ce": 0.1}, 4)):
        s1 = s.clone().requires_grad_(True)
        total, _, _ = combined_loss(weights, chunk=4)(s1, t, labels)
        saved = total.grad_fn.next_functions[0][0]  # sum(c * sums[k]) -> the VocabLoss node
        while type(saved).__name__ != "VocabLossBackward":
            saved = saved.next_functions[0][0]
        assert len(saved.saved_tensors) == kept
        assert all(x.data_ptr() != t.data_ptr() for x in saved.saved_tensors) == (kept == 1)
