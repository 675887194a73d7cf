"""`path@attn=R` specs: one spec is one model, in every process."""
import torch

from distill.conversion.select import uniform_attention_layers
from distill.conversion.transfer import hybridize
from distill.loading import load_model
from tests.helpers import tiny_teacher


def test_attn_spec_gives_the_same_hybrid_whatever_the_callers_random_state(tmp_path):
    teacher = tiny_teacher("llama")
    teacher.save_pretrained(tmp_path / "teacher")
    layers = uniform_attention_layers(teacher.config.num_hidden_layers, 0.5)
    # the conversion has random parts: unseeded, two conversions differ (what the seeding has to remove)
    torch.manual_seed(1)
    a = hybridize(teacher, layers).state_dict()
    torch.manual_seed(2)
    b = hybridize(teacher, layers).state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a)
    spec = f"{tmp_path / 'teacher'}@attn=0.5"
    loaded = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        model, _, _ = load_model(spec)
        loaded.append(model.state_dict())
        # the caller's random stream is left where it was
        after = torch.rand(4)
        torch.manual_seed(seed)
        assert torch.equal(after, torch.rand(4))
    assert loaded[0].keys() == loaded[1].keys()
    assert all(torch.equal(loaded[0][k], loaded[1][k]) for k in loaded[0])
    assert model.config.layer_types.count("attention") == len(layers)
