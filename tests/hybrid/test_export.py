"""Export to GraniteMoeHybrid: transformers' own class reproduces our logits; inexpressible layouts are refused."""
import pytest
import torch
from helpers import assert_close, tiny_hybrid
from transformers import GraniteMoeHybridForCausalLM

from hybrid.export import export_granitemoehybrid


@pytest.mark.parametrize("family,tie", [("llama", False), ("qwen2", True)])
def test_export_round_trip_matches_transformers(tmp_path, family, tie):
    ours = tiny_hybrid(family, [1, 3], tie=tie)  # 50 % Mamba2, GQA 4 query / 2 kv heads
    with torch.no_grad():
        for name, p in ours.named_parameters():  # non-trivial conv and gate so that every mapping matters
            if ".mamba." in name:
                p.add_(0.05 * torch.randn_like(p))
    export_granitemoehybrid(ours, str(tmp_path))
    theirs = GraniteMoeHybridForCausalLM.from_pretrained(tmp_path).eval()
    theirs.set_attn_implementation("eager")
    ours.set_attn_implementation("eager")
    ids = torch.randint(3, 97, (2, 40))
    with torch.no_grad():
        assert_close(theirs(ids).logits, ours(ids).logits, atol=1e-4, rtol=0)
        g1 = ours.generate(ids[:, :10], max_new_tokens=6, do_sample=False, pad_token_id=0)
        g2 = theirs.generate(ids[:, :10], max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(g1, g2)


def test_export_refuses_what_it_cannot_express(tmp_path):
    with pytest.raises(ValueError, match="Mamba1 layers"):
        export_granitemoehybrid(tiny_hybrid("llama", [1], mixer="mamba"), str(tmp_path))
    with pytest.raises(ValueError, match="q and k"):
        export_granitemoehybrid(tiny_hybrid("qwen3", [1]), str(tmp_path))
    with pytest.raises(ValueError, match="gated-norm eps"):
        export_granitemoehybrid(tiny_hybrid("llama", [1], mamba_norm_eps=1e-3), str(tmp_path))
    with pytest.raises(ValueError, match="sliding-window"):
        export_granitemoehybrid(tiny_hybrid("mistral", [1]), str(tmp_path))

