"""DPO through TRL's DPOTrainer on a tiny hybrid: the first loss is log 2 (policy == reference), weights move."""
import math

import pytest
import torch
from helpers import tiny_teacher, tiny_tokenizer

from distill import hybridize
from distill.posttrain.dpo import DPOArgs, make_trainer, preference_rows


def test_one_dpo_step_on_a_hybrid(tmp_path, monkeypatch):
    model = hybridize(tiny_teacher("llama"), [1, 3], chunk_size=16)
    rows = preference_rows("synthetic:train:levels=1", n=4)
    assert all(r["chosen"] != r["rejected"] for r in rows)
    tr = make_trainer(model, tiny_tokenizer(), rows, DPOArgs(out=str(tmp_path), max_steps=1, batch_size=4, lr=1e-2,
                                                             max_length=256))
    losses = []
    real = tr.compute_loss

    def spy(*a, **k):
        loss = real(*a, **k)
        losses.append(loss.item())
        return loss

    monkeypatch.setattr(tr, "compute_loss", spy)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tr.train()
    assert losses[0] == pytest.approx(math.log(2), abs=1e-4)  # -log sigmoid(beta * 0): policy == reference
    assert any(not torch.equal(v, before[k]) for k, v in model.state_dict().items() if ".mamba." in k)


def test_bad_preference_rows(tmp_path):
    bad = tmp_path / "p.jsonl"
    bad.write_text('{"prompt": "a", "chosen": "b"}\n')
    with pytest.raises(ValueError, match="row 0 has no 'rejected' field"):
        preference_rows(str(bad))
    with pytest.raises(ValueError, match="beta=0"):
        DPOArgs(beta=0)


def test_dpo_cli_and_recipe(tmp_path):
    from distill.cli import main
    from distill.recipe import load_recipe
    load_recipe("recipes/smollm2-135m/dpo.yaml", cls=DPOArgs, profile="demo")
    model = hybridize(tiny_teacher("llama"), [1, 3], chunk_size=16)
    model.save_pretrained(tmp_path / "h")
    tiny_tokenizer().save_pretrained(tmp_path / "h")
    (tmp_path / "dpo.yaml").write_text(f"model: {tmp_path / 'h'}\nn: 2\nmax_steps: 1\nbatch_size: 2\n")
    assert main(["dpo", "--config", str(tmp_path / "dpo.yaml"), "--out", str(tmp_path / "d")]) == 0
    assert (tmp_path / "d" / "final" / "config.json").is_file()
