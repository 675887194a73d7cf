"""GRPO through TRL's GRPOTrainer on a tiny hybrid: cached rollouts, group-normalized advantages, the loss by hand."""
import os
import pytest
import torch
from helpers import tiny_teacher, tiny_tokenizer

from distill import hybridize
from distill.posttrain.rewards import REWARDS, _text
from distill.posttrain.rl import RLArgs, make_trainer, rl_rows

ROWS = [{"prompt": [{"role": "user", "content": "1+1"}], "answer": "2"},
        {"prompt": [{"role": "user", "content": "2+3"}], "answer": "5"}]


def vowels(prompts, completions, **columns):  # a reward that varies across random completions
    return [float(sum(ch in "aeiou" for ch in _text(c))) for c in completions]


def test_one_grpo_step(monkeypatch, tmp_path):
    monkeypatch.setitem(REWARDS, "vowels", vowels)
    torch.manual_seed(0)
    model = hybridize(tiny_teacher("llama"), [1, 3], chunk_size=16)
    G, L = 4, 10
    tr = make_trainer(model, tiny_tokenizer(), ROWS, RLArgs(out=str(tmp_path), max_steps=1, num_generations=G,
                                                            batch_size=8, max_completion_length=L, lr=1e-2,
                                                            rewards=["vowels"], loss_type="dapo"))
    calls = []
    real_forward = model.forward

    def spy(*a, **k):
        ids = k.get("input_ids", a[0] if a else None)
        calls.append((ids.shape[1] if ids is not None else None, k.get("cache") is not None))
        return real_forward(*a, **k)

    captured = {}
    real_loss = tr._compute_loss

    def capture(m, inputs):
        loss = real_loss(m, inputs)
        captured.update(inputs=inputs, loss=loss.detach())
        return loss

    import hybrid.generation as engine
    real_generate, engine_calls = engine.generate, []
    monkeypatch.setattr(engine, "generate", lambda *a, **k: engine_calls.append(1) or real_generate(*a, **k))
    monkeypatch.setattr(model, "forward", spy)
    monkeypatch.setattr(tr, "_compute_loss", capture)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tr.train()

    assert engine_calls, "TRL's rollouts did not run on the decode engine"
    # rollouts: every cached forward after a prefill takes one token (no per-token recomputation of the prefix)
    cached = [n for n, with_cache in calls if with_cache]
    prefills = [i for i, n in enumerate(cached) if n > 1]
    assert prefills and len(cached) - len(prefills) >= L - 1
    assert all(n == 1 for i, n in enumerate(cached) if i not in prefills)

    inp = captured["inputs"]
    adv, mask = inp["advantages"].float(), inp["completion_mask"].float()
    tok = tiny_tokenizer()
    texts = tok.batch_decode(inp["completion_ids"] * inp["completion_mask"], skip_special_tokens=True)
    r = torch.tensor(vowels(None, texts))
    groups = {}  # TRL shuffles the generation batch: regroup the rows by their prompt
    for i, p in enumerate(inp["prompt_ids"].tolist()):
        groups.setdefault(tuple(p), []).append(i)
    assert sorted(len(g) for g in groups.values()) == [G, G]
    for idx in groups.values():
        rg, ag = r[idx], adv[idx]
        assert abs(ag.mean().item()) < 1e-4  # group-normalized
        if rg.std() > 0:
            assert torch.allclose(ag, (rg - rg.mean()) / (rg.std() + 1e-4), atol=1e-3)
    assert max(r[idx].std().item() for idx in groups.values()) > 0, "no reward variance: nothing to learn"
    # first iteration: the ratio is 1, so dapo's loss is -(sum_i A_i |o_i|) / (sum_i |o_i|)
    hand = -(adv[:, None] * mask).sum() / mask.sum()
    assert captured["loss"].item() == pytest.approx(hand.item(), abs=1e-5)
    assert any(not torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_bad_rl_input():
    with pytest.raises(ValueError, match=r"unknown reward 'acc'.*correctness"):
        RLArgs(rewards=["acc"])
    with pytest.raises(ValueError, match="multiple of num_generations"):
        RLArgs(num_generations=3, batch_size=8)
    with pytest.raises(ValueError, match="loss_type='ppo'"):
        RLArgs(loss_type="ppo")
    rows = rl_rows("synthetic:train:levels=1", n=3)
    assert len(rows) == 3 and all(r["answer"] for r in rows)
    from distill.posttrain.rewards import check_rows
    with pytest.raises(ValueError, match="row 1 has no 'answer' field"):
        check_rows([ROWS[0], {"prompt": "x"}])


def only_first_prompt_varies(prompts, completions, **columns):  # the second group gets a constant reward
    texts = [_text(p) for p in prompts]
    return [vowels(None, [c])[0] if "1+1" in t else 1.0 for t, c in zip(texts, completions)]


def test_zero_variance_groups_are_dropped_from_loss_and_normalizer(monkeypatch, tmp_path):
    monkeypatch.setitem(REWARDS, "first", only_first_prompt_varies)
    torch.manual_seed(1)
    model = hybridize(tiny_teacher("llama"), [1, 3], chunk_size=16)
    G = 4
    tr = make_trainer(model, tiny_tokenizer(), ROWS, RLArgs(out=str(tmp_path), max_steps=1, num_generations=G,
                                                            batch_size=8, max_completion_length=10, lr=1e-2,
                                                            rewards=["first"], drop_zero_variance_groups=True))
    captured = {}
    real_loss = tr._compute_loss

    def capture(m, inputs):
        loss = real_loss(m, inputs)
        captured.update(inputs=inputs, loss=loss.detach())
        return loss

    monkeypatch.setattr(tr, "_compute_loss", capture)
    tr.train()
    inp = captured["inputs"]
    adv, mask = inp["advantages"].float(), inp["completion_mask"].float()
    tok = tiny_tokenizer()
    prompts = tok.batch_decode(inp["prompt_ids"], skip_special_tokens=True)
    constant = torch.tensor(["2+3" in p.replace(" ", "") for p in prompts])
    assert constant.sum() == G and (adv[constant] == 0).all()
    assert (mask[constant] == 0).all() and (mask[~constant].sum(1) > 0).all()  # dropped: no tokens left
    assert inp["num_items_in_batch"].item() == mask.sum().item()  # the normalizer counts the kept tokens only
    hand = -(adv[:, None] * mask).sum() / mask.sum()
    assert captured["loss"].item() == pytest.approx(hand.item(), abs=1e-5)
    assert tr.state.log_history[0]["dropped_group_fraction"] == 0.5


def test_grpo_learns_a_toy_reward(monkeypatch, tmp_path):
    """End to end, the trainer raises a reward it can learn: the fraction of vowels in 12 sampled tokens."""
    def vowel_fraction(prompts, completions, **columns):
        return [sum(ch in "aeiou" for ch in _text(c)) / max(1, len(_text(c))) for c in completions]

    monkeypatch.setitem(REWARDS, "vowel_fraction", vowel_fraction)
    rows = [{"prompt": [{"role": "user", "content": f"{i}+{i}"}], "answer": str(2 * i)} for i in range(64)]
    torch.manual_seed(0)
    model = hybridize(tiny_teacher("llama"), [1, 3], chunk_size=16)
    tr = make_trainer(model, tiny_tokenizer(), rows, RLArgs(out=str(tmp_path), max_steps=150, num_generations=8,
                                                            batch_size=16, max_completion_length=12, lr=3e-3,
                                                            rewards=["vowel_fraction"], save_steps=1000))
    tr.train()
    rewards = [h["reward"] for h in tr.state.log_history if "reward" in h]
    first, last = sum(rewards[:10]) / 10, sum(rewards[-10:]) / 10
    assert last > 0.2 and last > 5 * first, (first, last)


def test_every_recipes_trl_stage_files_build_their_trl_config(tmp_path):
    """A recipe's `extra` may set a field its stage also sets (rl.yaml's `extra: {bf16: true}` on GPU recipes):
    the recipe's value wins instead of a TypeError hours into a run."""
    import glob

    from distill.posttrain.dpo import DPOArgs, dpo_config
    from distill.posttrain.rl import grpo_config
    from distill.posttrain.sft import SFTArgs, sft_config
    from distill.recipe import load_recipe
    root = os.path.join(os.path.dirname(__file__), "..", "..", "..", "recipes")
    built = 0
    for path in sorted(glob.glob(os.path.join(root, "*", "*.yaml"))):
        name = os.path.basename(path)
        make = {"rl.yaml": (RLArgs, grpo_config), "sft.yaml": (SFTArgs, sft_config),
                "dpo.yaml": (DPOArgs, dpo_config)}.get(name)
        if make is None:
            continue
        args = load_recipe(path, cls=make[0])
        args.out = str(tmp_path / "out")
        config = make[1](args)
        for key, value in args.extra.items():
            assert getattr(config, key) == value, (path, key)
        built += 1
    assert built >= 10


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_chunked_completion_logps_equal_trls_fused_head(arch, tmp_path):
    """The trainer's log-probabilities with loss_chunk (completion positions only, chunked, closed-form backward)
    equal TRL's own fused LM head on the same rows: values, entropies, and every parameter's gradient."""
    from trl import GRPOTrainer
    torch.manual_seed(0)
    model = hybridize(tiny_teacher(arch), [1, 3], chunk_size=16)
    tr = make_trainer(model, tiny_tokenizer(), ROWS, RLArgs(out=str(tmp_path), max_steps=1, num_generations=4,
                                                            batch_size=8, max_completion_length=6, loss_chunk=5,
                                                            temperature=0.7, rewards=["format"]))
    L, vocab = 6, model.config.vocab_size
    ids = torch.randint(3, vocab, (4, 9 + L))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # left-padded prompts
    mask[1, :1] = 0
    mask[2, -2:] = 0  # a completion that ended early
    mask[3, -4:] = 0
    weights = torch.randn(4, L)
    results = []
    for method in (tr._get_per_token_logps_and_entropies,
                   lambda *a, **k: GRPOTrainer._get_per_token_logps_and_entropies(tr, *a, **k)):
        tr.model.zero_grad()
        logp, ent, aux = method(tr.model, ids, mask, L, batch_size=3, compute_entropy=True)
        (logp * weights).sum().backward()
        results.append((logp.detach(), ent, {n: p.grad.clone() for n, p in tr.model.named_parameters()
                                              if p.grad is not None}))
        assert aux is None and logp.shape == ent.shape == (4, L)
    (ours, ours_ent, ours_grad), (trl, trl_ent, trl_grad) = results
    torch.testing.assert_close(ours, trl, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours_ent, trl_ent, rtol=1e-5, atol=1e-5)
    assert sorted(ours_grad) == sorted(trl_grad) and len(ours_grad) > 10
    for n in ours_grad:
        torch.testing.assert_close(ours_grad[n], trl_grad[n], rtol=1e-4, atol=2e-5, msg=n)
    assert (ours[2, -2:] == 0).all() and (ours[3, -4:] == 0).all()
    with torch.no_grad():  # the old / reference log-probabilities: no entropy asked, the same values
        logp, ent, _ = tr._get_per_token_logps_and_entropies(tr.model, ids, mask, L, compute_entropy=False)
    assert ent is None
    torch.testing.assert_close(logp, trl, rtol=1e-5, atol=1e-5)


def test_bad_loss_chunk_is_named():
    with pytest.raises(ValueError, match="loss_chunk=-1"):
        RLArgs(loss_chunk=-1)
