"""On-policy distillation (distill.conversion.onpolicy): the student's samples come from the decode engine, the loss
is the per-token reverse KL(student || teacher) on them (checked against a hand computation, values and
gradients), and the phase runs inside the distill schedule and resumes to the same weights."""
import json

import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_hybrid, tiny_teacher, tiny_tokenizer

from distill.conversion.onpolicy import Sampler, onpolicy_loss_step, prompt_rows, sampled_batch
from distill.data import synthetic_prompts
from distill.recipe import DistillRecipe, from_dict
from distill.train import StopRequested


def test_sampled_rows_label_exactly_the_completion_tokens():
    rows = sampled_batch([[5, 6, 7], [8]], [[9, 10], [11, 12, 13, 2]], pad=0)
    assert rows["input_ids"].tolist() == [[5, 6, 7, 9, 10], [8, 11, 12, 13, 2]]
    assert rows["labels"].tolist() == [[-100, -100, -100, 9, 10], [-100, 11, 12, 13, 2]]
    assert rows["position_ids"].tolist() == [[0, 1, 2, 3, 4]] * 2
    short = sampled_batch([[5, 6, 7], [8]], [[9], [11]], pad=0)
    assert short["input_ids"].tolist() == [[5, 6, 7, 9], [8, 11, 0, 0]]
    assert short["labels"].tolist() == [[-100, -100, -100, 9], [-100, 11, -100, -100]]


def test_samples_come_from_the_engine(monkeypatch):
    import hybrid.generation as gen
    student, tok = tiny_hybrid("llama", attn_layers=[0, 2]), tiny_tokenizer()
    rows = prompt_rows(tok, synthetic_prompts(3), pad=0)
    calls = []
    real = gen.generate

    def spy(model, prompts, params, **kw):
        out = real(model, prompts, params, **kw)
        calls.append((model, prompts, params, out.sequences))
        return out

    monkeypatch.setattr(gen, "generate", spy)
    sampler = Sampler(max_new_tokens=6, temperature=1.0, top_p=1.0, pad=0, eos=[1])
    torch.manual_seed(3)
    batch = sampler(student, rows)
    assert len(calls) == 1 and calls[0][0] is student
    model, prompts, params, sequences = calls[0]
    n = rows["prompt_len"].tolist()
    assert prompts == [r[:k].tolist() for r, k in zip(rows["input_ids"], n)]
    assert params.temperature == 1.0 and params.max_new_tokens == 6
    for i, (p, seq) in enumerate(zip(prompts, sequences)):  # the training rows are prompt + the engine's sample
        assert batch["input_ids"][i, :len(p) + len(seq)].tolist() == p + list(seq)
    assert sampler.tokens == sum(len(s) for s in sequences) and sampler.samples == 3
    # the step's RNG seeds the engine: the same RNG state samples the same completions
    torch.manual_seed(3)
    again = Sampler(6, 1.0, 1.0, 0, [1])(student, rows)
    assert torch.equal(again["input_ids"], batch["input_ids"])
    student.train()  # sampling runs in eval mode and gives the module back in the mode it found
    Sampler(6, 1.0, 1.0, 0, [1])(student, rows)
    assert student.training


def test_loss_is_the_hand_computed_reverse_kl_in_values_and_gradients():
    teacher = tiny_teacher("llama")
    student = tiny_hybrid("llama", attn_layers=[0, 2])
    batch = sampled_batch([[5, 6, 7], [8, 9]], [[11, 12, 13], [14, 2]], pad=0)
    total, parts = onpolicy_loss_step(teacher, chunk=2)(student, batch)
    total.backward()
    got = {n: p.grad.clone() for n, p in student.named_parameters() if p.grad is not None}
    student.zero_grad()
    # by hand: position t predicts token t + 1; sampled positions are those whose next token is a completion token
    s = F.log_softmax(student(input_ids=batch["input_ids"]).logits.float(), -1)
    with torch.no_grad():
        t = F.log_softmax(teacher(input_ids=batch["input_ids"]).logits.float(), -1)
    positions = [(0, 2), (0, 3), (0, 4), (1, 1), (1, 2)]
    hand = sum((s[b, i].exp() * (s[b, i] - t[b, i])).sum() for b, i in positions)
    hand.backward()
    assert total.item() == pytest.approx(hand.item(), rel=1e-5)
    assert parts["reverse_kl"].item() == pytest.approx(hand.item(), rel=1e-5)
    for n, p in student.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(got[n], p.grad, rtol=1e-4, atol=1e-6, msg=n)
    assert total.item() > 0


def _recipe(data, steps=3):
    return from_dict(DistillRecipe, {
        "teacher": "tiny", "schedule": [0.5], "chunk_size": 16,
        "data": {"source": str(data), "seq_len": 64, "eval_rows": 4},
        "align": {"steps": 2, "batch_size": 4},
        "kd": {"steps": 2, "batch_size": 4},
        "onpolicy": {"steps": steps, "batch_size": 2, "prompts": "synthetic:train", "n": 8, "max_new_tokens": 5,
                     "save_every": 1, "lr": 1e-3}})


def test_onpolicy_phase_runs_in_the_schedule_and_resumes_exactly(tmp_path):
    from safetensors.torch import load_file

    from distill.conversion.schedule import run_distill
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "completion": p[::-1]}) + "\n" for p in synthetic_prompts(40)))
    recipe, tok = _recipe(data), tiny_tokenizer()
    full = run_distill(recipe, str(tmp_path / "a"), teacher=tiny_teacher("llama"), tok=tok)
    assert [p["phase"] for p in full["phases"]] == ["transfer", "align", "kd", "onpolicy"]
    on = full["phases"][-1]
    assert on["samples"] == 3 * 2 and on["sampled_tokens"] > 0 and on["sample_seconds"] > 0
    kd_model = load_file(str(tmp_path / "a" / "stage0" / "kd" / "model" / "model.safetensors"))
    on_model = load_file(str(tmp_path / "a" / "final" / "model.safetensors"))
    assert any(not torch.equal(kd_model[k], on_model[k]) for k in kd_model)  # the phase trained
    metrics = [json.loads(line) for line in open(tmp_path / "a" / "stage0" / "onpolicy" / "metrics.jsonl")]
    assert any("reverse_kl" in m for m in metrics)
    # interrupted inside the phase, after 2 of its 3 steps
    with pytest.raises(StopRequested):
        _interrupt_onpolicy(_recipe(data), tmp_path / "b", tok)
    resumed = run_distill(_recipe(data), str(tmp_path / "b"), resume=True, teacher=tiny_teacher("llama"), tok=tok)
    b_model = load_file(str(tmp_path / "b" / "final" / "model.safetensors"))
    assert all(torch.equal(on_model[k], b_model[k]) for k in on_model)
    assert resumed["phases"][-1]["kl"] == pytest.approx(on["kl"], rel=1e-6)


def _interrupt_onpolicy(recipe, out, tok):
    """Run until the on-policy phase has finished 2 of its 3 steps, then stop (as a kill after a checkpoint)."""
    from distill.conversion import onpolicy
    from distill.conversion.schedule import run_distill
    real = onpolicy.run_onpolicy

    def stopping(student, teacher, data, settings, folder, ctx):
        import dataclasses
        return real(student, teacher, data, settings, folder, dataclasses.replace(ctx, stop_after=2))

    import distill.conversion.schedule as schedule
    saved = schedule.run_onpolicy
    schedule.run_onpolicy = stopping
    try:
        run_distill(recipe, str(out), teacher=tiny_teacher("llama"), tok=tok)
    finally:
        schedule.run_onpolicy = saved


def test_bad_onpolicy_settings_name_the_value():
    for bad, match in (({"temperature": 0}, "temperature=0"), ({"max_new_tokens": 0}, "max_new_tokens=0"),
                       ({"top_p": 1.5}, "top_p=1.5"), ({"teacher_dtype": "int8"}, "int8")):
        with pytest.raises(ValueError, match=match):
            from_dict(DistillRecipe, {"onpolicy": {"steps": 1, **bad}})


def test_corpus_prompts_from_a_task_family_are_the_tasks_prompts():
    from distill.conversion.corpus import read_prompts
    from distill.evaluation.tasks import load_tasks, prompt_of
    got = read_prompts("long:train:tokens=60..120", n=5, seed=2)
    assert got == [prompt_of(p) for p in load_tasks("long:train:tokens=60..120", n=5, seed=2)]
    assert len(read_prompts("synthetic:train", n=3)) == 3
