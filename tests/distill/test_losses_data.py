"""Distillation losses against hand computation; data encoding, masking and packing."""
import json
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_teacher, tiny_tokenizer

from distill.data import DataSpec, build_rows, encode_record, model_inputs, pack, split_rows
from distill.conversion.losses import (LOSSES, alignment_l2, combined_loss, cross_entropy, forward_kl, get_loss, mixed_kl,
                            reverse_kl)


def _kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


def test_kl_losses_match_hand_computation_and_respect_the_mask():
    s = torch.tensor([[[0.0, 1.0, 2.0], [1.0, 0.0, 0.0], [3.0, 3.0, 0.0]]])
    t = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 0.0, 0.0], [9.0, 9.0, 9.0]]])
    labels = torch.tensor([[5, 1, -100]])  # position 0 predicts labels[1] (counted); position 1 predicts -100
    ps, pt = F.softmax(s[0, 0], -1).tolist(), F.softmax(t[0, 0], -1).tolist()
    total, count = forward_kl(s, t, labels)
    assert count == 1
    assert total.item() == pytest.approx(_kl(pt, ps), rel=1e-5)
    total, _ = reverse_kl(s, t, labels)
    assert total.item() == pytest.approx(_kl(ps, pt), rel=1e-5)
    total, _ = mixed_kl(s, t, labels, alpha=0.25)
    assert total.item() == pytest.approx(0.25 * _kl(pt, ps) + 0.75 * _kl(ps, pt), rel=1e-5)
    # temperature: softened distributions, scaled by T^2
    T = 2.0
    ps2, pt2 = F.softmax(s[0, 0] / T, -1).tolist(), F.softmax(t[0, 0] / T, -1).tolist()
    total, _ = forward_kl(s, t, labels, temperature=T)
    assert total.item() == pytest.approx(T * T * _kl(pt2, ps2), rel=1e-5)
    # changing a masked position changes nothing
    s2 = s.clone()
    s2[0, 1] = torch.tensor([50.0, -50.0, 7.0])
    assert forward_kl(s2, t, labels)[0].item() == pytest.approx(forward_kl(s, t, labels)[0].item())


def test_cross_entropy_and_alignment():
    logits = torch.randn(2, 5, 7)
    labels = torch.randint(0, 7, (2, 5))
    labels[0, 3] = -100
    total, count = cross_entropy(logits, None, labels)
    ref = F.cross_entropy(logits[:, :-1].reshape(-1, 7), labels[:, 1:].reshape(-1), ignore_index=-100,
                          reduction="sum")
    assert count == 7 and total.item() == pytest.approx(ref.item(), rel=1e-5)
    a = torch.randn(2, 4, 6)
    assert alignment_l2(a, a.clone())[0].item() == 0.0
    s, n = alignment_l2(a + 1.0, a, mask=torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0]]))
    assert n == 3 and s.item() == pytest.approx(3.0)


def test_loss_registry_resolves_and_rejects_unknown_names():
    for name in LOSSES:
        assert callable(get_loss(name))
    with pytest.raises(ValueError, match="unknown loss 'kll'.*registered"):
        combined_loss({"kll": 1.0})
    with pytest.raises(ValueError, match="kl=-1"):
        combined_loss({"kl": -1})


def test_prompt_masking_for_chat_records():
    tok = tiny_tokenizer()
    spec = DataSpec(source="mem", format="prompt_completion", mask_prompt=True)
    ids, labels = encode_record({"prompt": "ab", "completion": "xyz"}, tok, spec)
    prompt = tok.apply_chat_template([{"role": "user", "content": "ab"}], add_generation_prompt=True, tokenize=True)
    prompt = prompt["input_ids"] if hasattr(prompt, "keys") else prompt
    n = len(prompt)
    assert labels[:n] == [-100] * n and labels[n:] == ids[n:] and len(ids) > n
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},
            {"role": "user", "content": "q"}, {"role": "assistant", "content": "ok"}]
    ids, labels = encode_record({"messages": msgs}, tok, DataSpec(source="mem", format="messages", mask_prompt=True))
    targets = tok.decode([i for i, l in zip(ids, labels) if l != -100]).replace(" ", "")
    assert targets == "yo</s>ok</s>"


def test_missing_field_names_it(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"question": "q", "answer": "a"}) + "\n")
    with pytest.raises(ValueError, match=r"record 0 has no field 'prompt' \(fields: \['answer', 'question'\]\)"):
        build_rows(DataSpec(source=str(path)), tiny_tokenizer(), 32)
    with pytest.raises(ValueError, match="no field 'body'"):
        build_rows(DataSpec(source=str(path), format="text", text_field="body"), tiny_tokenizer(), 32)
    with pytest.raises(ValueError, match="format='chat'"):
        DataSpec(source=str(path), format="chat")


def test_pack_resets_positions_and_masks_document_starts():
    rows = pack([([5, 6, 7], [5, 6, 7]), ([8, 9], [8, 9]), ([10, 11, 12, 13], [10, 11, 12, 13])], 6, pad_id=0)
    assert rows["input_ids"].tolist() == [[5, 6, 7, 8, 9, 0], [10, 11, 12, 13, 0, 0]]
    assert rows["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 0, 1]]
    assert rows["labels"].tolist() == [[-100, 6, 7, -100, 9, -100], [-100, 11, 12, 13, -100, -100]]
    train, held = split_rows({k: v.repeat(5, 1) for k, v in rows.items()}, 3)
    assert train["input_ids"].shape[0] == 7 and held["input_ids"].shape[0] == 3


def test_packed_loss_equals_documents_separately():
    """The KD loss over a packed row equals the sum over its documents run one by one."""
    from distill import hybridize
    teacher = tiny_teacher("llama")
    student = hybridize(teacher, [1, 3])
    docs = [torch.randint(3, 97, (n,)) for n in (9, 14, 6)]
    rows = pack([(d.tolist(), d.tolist()) for d in docs], 29, pad_id=0)
    loss = combined_loss({"kl": 1.0, "ce": 0.5})
    with torch.no_grad():
        kw = model_inputs(rows)
        packed, n_packed, _ = loss(student(**kw).logits, teacher(**kw).logits, rows["labels"])
        sep, n_sep = 0.0, 0
        for d in docs:
            labels = d[None].clone()
            labels[0, 0] = -100
            s, n, _ = loss(student(d[None]).logits, teacher(d[None]).logits, labels)
            sep, n_sep = sep + s, n_sep + n
    assert n_packed == n_sep == sum(len(d) - 1 for d in docs)
    assert packed.item() == pytest.approx(sep.item(), rel=1e-5, abs=1e-6)


def test_parquet_and_arrow_sources_read_like_jsonl(tmp_path):
    import datasets
    recs = [{"text": "abc"}, {"text": "de"}]
    ds = datasets.Dataset.from_list(recs)
    ds.to_parquet(str(tmp_path / "d.parquet"))
    ds.save_to_disk(str(tmp_path / "arrow"))
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    from distill.data import read_records
    for src in ("d.parquet", "arrow", "d.jsonl"):
        assert read_records(str(tmp_path / src)) == recs, src
    with pytest.raises(ValueError, match="unsupported file type"):
        (tmp_path / "d.csv").write_text("text\nabc\n")
        read_records(str(tmp_path / "d.csv"))


def test_corpus_resumes_to_the_same_file(tmp_path):
    from distill.conversion.corpus import build_corpus
    teacher, tok = tiny_teacher("llama"), tiny_tokenizer()
    prompts = [f"q{i}" for i in range(10)]
    kw = dict(max_new_tokens=5, batch_size=4, temperature=1.0, top_p=1.0, seed=7)
    build_corpus(teacher, tok, prompts, str(tmp_path / "full.jsonl"), **kw)
    part = tmp_path / "part.jsonl"
    build_corpus(teacher, tok, prompts[:6], str(part), **kw)  # "interrupted" after 6 prompts (mid batch 2)
    with open(part, "a") as f:
        f.write('{"prompt": "torn')  # and a torn last line
    build_corpus(teacher, tok, prompts, str(part), **kw)
    assert part.read_text() == (tmp_path / "full.jsonl").read_text()
    assert len(part.read_text().splitlines()) == 10


def test_corpus_batches_prompts_by_length_and_resumes_in_that_order(tmp_path, monkeypatch):
    """Batches hold prompts of similar token length (a batch decodes until its longest answer), and an interrupted
    run resumes to the file an uninterrupted one writes; a corpus begun in the prompts' own order is continued in
    it, and one begun with other prompts is refused."""
    import hybrid.generation as generation
    from distill.conversion.corpus import build_corpus
    teacher, tok = tiny_teacher("llama"), tiny_tokenizer()
    prompts = [" ".join(["word"] * n) for n in (9, 1, 7, 3, 8, 2, 6, 4, 5, 10)]
    kw = dict(max_new_tokens=4, batch_size=4, temperature=1.0, top_p=1.0, seed=3)
    batches = []
    real = generation.generate

    def recording(model, ids, *a, **k):
        batches.append([len(x) for x in ids])
        return real(model, ids, *a, **k)
    monkeypatch.setattr(generation, "generate", recording)
    full = tmp_path / "full.jsonl"
    build_corpus(teacher, tok, prompts, str(full), **kw)
    flat = [n for b in batches for n in b]
    assert flat == sorted(flat) and len(batches) == 3  # 4 + 4 + 2 rows, shortest prompts first
    rows = [json.loads(line)["prompt"] for line in full.read_text().splitlines()]
    assert sorted(rows) == sorted(prompts) and [len(p.split()) for p in rows] == list(range(1, 11))

    calls = []

    def interrupted(model, ids, *a, **k):  # the second batch is interrupted
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(model, ids, *a, **k)
    monkeypatch.setattr(generation, "generate", interrupted)
    part = tmp_path / "part.jsonl"
    with pytest.raises(KeyboardInterrupt):
        build_corpus(teacher, tok, prompts, str(part), **kw)
    assert len(part.read_text().splitlines()) == 4
    monkeypatch.setattr(generation, "generate", real)
    build_corpus(teacher, tok, prompts, str(part), **kw)
    assert part.read_text() == full.read_text()

    # begun in the prompts' own order: continued in it (its first batch is the first four prompts)
    legacy = tmp_path / "legacy.jsonl"
    legacy.write_text("".join(json.dumps({"prompt": p, "completion": "x"}) + "\n" for p in prompts[:4]))
    build_corpus(teacher, tok, prompts, str(legacy), **kw)
    assert [json.loads(line)["prompt"] for line in legacy.read_text().splitlines()] == prompts
    other = tmp_path / "other.jsonl"
    other.write_text("".join(json.dumps({"prompt": f"other {i}", "completion": "x"}) + "\n" for i in range(4)))
    with pytest.raises(ValueError, match="row 0 holds a prompt"):
        build_corpus(teacher, tok, prompts, str(other), **kw)
