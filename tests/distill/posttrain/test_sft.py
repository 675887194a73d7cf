"""SFT through TRL's SFTTrainer on our hybrid: labels, packing without leakage, distillation-SFT, a short run."""
import json

import pytest
import torch
from helpers import tiny_teacher, tiny_tokenizer

from distill import hybridize
from distill.posttrain.sft import SFTArgs, make_trainer, reverse_kl, rows_from, run_sft

ROWS = [{"prompt": [{"role": "user", "content": "ab"}], "completion": [{"role": "assistant", "content": "cdef"}]},
        {"prompt": [{"role": "user", "content": "xyz12"}], "completion": [{"role": "assistant", "content": "42"}]},
        {"prompt": [{"role": "user", "content": "q"}], "completion": [{"role": "assistant", "content": "r s t"}]}]


def _trainer(model, packing, tmp_path, **kw):
    args = SFTArgs(out=str(tmp_path / f"sft-{packing}"), max_steps=1, batch_size=len(ROWS), packing=packing, **kw)
    return make_trainer(model, tiny_tokenizer(), ROWS, args, teacher=kw.get("teacher_model"))


def _batch(trainer):
    ds = trainer.train_dataset
    return trainer.data_collator([ds[i] for i in range(len(ds))])


@pytest.fixture
def hybrid():
    return hybridize(tiny_teacher("llama"), [1, 3], chunk_size=16).eval()


def test_only_assistant_tokens_carry_labels(hybrid, tmp_path):
    tok = tiny_tokenizer()
    batch = _batch(_trainer(hybrid, False, tmp_path))
    ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]
    assert (mask == 0).any()  # rows of different lengths: padding present
    assert (labels[mask == 0] == -100).all()
    for i, row in enumerate(ROWS):
        prompt = tok.apply_chat_template(row["prompt"], add_generation_prompt=True, return_dict=True)["input_ids"]
        real = ids[i][mask[i].bool()].tolist()
        lab = labels[i][mask[i].bool()].tolist()
        assert real[:len(prompt)] == prompt and all(x == -100 for x in lab[:len(prompt)])
        assert lab[len(prompt):] == real[len(prompt):]  # the completion (and its end-of-turn) is learned
        assert tok.decode(real[len(prompt):]).replace(" ", "").startswith(row["completion"][0]["content"]
                                                                             .replace(" ", ""))


def test_packed_loss_equals_separate_loss(hybrid, tmp_path):
    packed_tr = _trainer(hybrid, True, tmp_path)
    batch = _batch(packed_tr)
    assert batch["input_ids"].shape[0] == 1 and (batch["position_ids"][0] == 0).sum() == len(ROWS)
    with torch.no_grad():
        packed = packed_tr.compute_loss(hybrid, dict(batch)).item()
        n_tokens = (batch["labels"][:, 1:] != -100).sum().item()
        total = 0.0
        for row in ROWS:  # each example alone, no padding
            one = make_trainer(hybrid, tiny_tokenizer(), [row], SFTArgs(out=str(tmp_path / "one"), packing=False))
            b = _batch(one)
            k = (b["labels"][:, 1:] != -100).sum().item()
            total += one.compute_loss(hybrid, dict(b)).item() * k
    assert packed == pytest.approx(total / n_tokens, rel=1e-5)


@pytest.mark.parametrize("packing", [True, False])
def test_chunked_nll_equals_trl_loss_in_value_gradients_and_metrics(hybrid, tmp_path, packing):
    """Our chunked NLL (loss_chunk > 0) against TRL's own loss (loss_chunk=0) on the same batch: the loss, every
    parameter's gradient, and the logged token accuracy and entropy."""
    hybrid.train()
    results = []
    for chunk in (0, 3):
        tr = _trainer(hybrid, packing, tmp_path / str(chunk), loss_chunk=chunk)
        batch = _batch(tr)
        hybrid.zero_grad()
        loss = tr.compute_loss(hybrid, dict(batch), num_items_in_batch=(batch["labels"][:, 1:] != -100).sum())
        loss.backward()
        grads = {k: p.grad.clone() for k, p in hybrid.named_parameters() if p.grad is not None}
        m = tr._metrics["train"]
        results.append((loss.item(), grads, m["mean_token_accuracy"][-1], m["entropy"][-1], m["num_tokens"][-1]))
    (ref, ref_g, ref_acc, ref_ent, ref_tok), (ours, g, acc, ent, tok) = results
    assert ours == pytest.approx(ref, rel=1e-5)
    assert ref_g.keys() == g.keys() and len(g) > 10
    for k in g:
        torch.testing.assert_close(g[k], ref_g[k], atol=1e-6, rtol=1e-4, msg=k)
    assert acc == pytest.approx(ref_acc) and ent == pytest.approx(ref_ent, rel=1e-4) and tok == ref_tok
    with pytest.raises(ValueError, match="loss_chunk=-1"):
        SFTArgs(loss_chunk=-1)


def test_reverse_kl_term(hybrid, tmp_path):
    logits = torch.randn(1, 5, 7)
    labels = torch.tensor([[-100, -100, 3, 4, -100]])
    rkl, n = reverse_kl(logits, logits.clone(), labels)
    assert n == 2 and abs(rkl.item()) < 1e-6
    other = torch.randn(1, 5, 7)
    s, t = logits[0, 1:3].log_softmax(-1), other[0, 1:3].log_softmax(-1)  # positions predicting the labels
    assert reverse_kl(logits, other, labels)[0].item() == pytest.approx((s.exp() * (s - t)).sum().item(), rel=1e-5)
    # with the student as its own teacher the term vanishes and the loss is the plain NLL
    import copy
    tr_kl = make_trainer(hybrid, tiny_tokenizer(), ROWS,
                         SFTArgs(out=str(tmp_path / "kl"), packing=True, teacher="self", kl_weight=0.5),
                         teacher=copy.deepcopy(hybrid))
    tr_plain = _trainer(hybrid, True, tmp_path)
    batch = _batch(tr_plain)
    with torch.no_grad():
        assert tr_kl.compute_loss(hybrid, dict(batch)).item() == pytest.approx(
            tr_plain.compute_loss(hybrid, dict(batch)).item(), rel=1e-5)


def test_sft_run_trains_saves_and_reloads(tmp_path):
    from hybrid import load_pretrained
    model = hybridize(tiny_teacher("llama"), [1, 3], chunk_size=16)
    model.save_pretrained(tmp_path / "h")
    tiny_tokenizer().save_pretrained(tmp_path / "h")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    final = run_sft(SFTArgs(model=str(tmp_path / "h"), data="synthetic:train", n=8, out=str(tmp_path / "run"),
                            max_steps=3, batch_size=2, lr=1e-3, save_steps=2, max_length=256, logging_steps=1))
    after, _ = load_pretrained(final)
    logged = json.loads((tmp_path / "run" / "checkpoint-2" / "trainer_state.json").read_text())["log_history"]
    assert all(r["input_tokens_per_s"] > 0 and r["mfu"] > 0 for r in logged if "loss" in r) and logged  # speed
    changed = [k for k, v in after.state_dict().items() if not torch.equal(v, before[k])]
    assert any(".mamba." in k for k in changed) and any("self_attn" in k for k in changed)
    assert json.loads((tmp_path / "run" / "sft_args.json").read_text())["max_steps"] == 3
    log = [json.loads(line) for line in (tmp_path / "run" / "sft_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [1, 2, 3]  # the whole run, kept beside the checkpoints
    assert [r for r in log if r["step"] <= 2][:2] == [r for r in logged if "loss" in r][:2]


def test_bad_sft_input(tmp_path):
    with pytest.raises(ValueError, match="kl_weight > 0 needs a teacher"):
        SFTArgs(kl_weight=0.1)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "1+1"}) + "\n")
    with pytest.raises(ValueError, match="row 0: needs"):
        rows_from(str(bad))


def test_sft_and_rl_cli_from_yaml(tmp_path, capsys):
    import glob

    from distill.cli import main
    from distill.recipe import load_recipe
    from distill.posttrain.rl import RLArgs
    for path in glob.glob("recipes/*/sft.yaml"):
        for profile in [None, *load_recipe(path, cls=SFTArgs).profiles]:
            load_recipe(path, cls=SFTArgs, profile=profile)
    for path in glob.glob("recipes/*/rl.yaml"):
        for profile in [None, *load_recipe(path, cls=RLArgs).profiles]:
            load_recipe(path, cls=RLArgs, profile=profile)
    model = hybridize(tiny_teacher("llama"), [1, 3], chunk_size=16)
    model.save_pretrained(tmp_path / "h")
    tiny_tokenizer().save_pretrained(tmp_path / "h")
    (tmp_path / "sft.yaml").write_text(f"model: {tmp_path / 'h'}\nn: 4\nmax_steps: 1\nbatch_size: 2\n")
    assert main(["sft", "--config", str(tmp_path / "sft.yaml"), "--out", str(tmp_path / "s")]) == 0
    (tmp_path / "rl.yaml").write_text(f"model: {tmp_path / 's' / 'final'}\nn: 2\nmax_steps: 1\nnum_generations: 2\n"
                                      "batch_size: 2\nmax_completion_length: 4\n")
    assert main(["rl", "--config", str(tmp_path / "rl.yaml"), "--out", str(tmp_path / "r")]) == 0
    assert (tmp_path / "r" / "final" / "config.json").is_file()
    assert main(["rl", "--config", str(tmp_path / "rl.yaml"), "--set", "lossType=grpo"]) == 2
    assert "unknown key 'lossType'" in capsys.readouterr().err
