"""Bad inputs fail loudly and early: data rows (types, empty completions, bad JSON, missing files, huge records),
recipe floats written 3e-4, and prompts longer than the model's positions."""
import json

import pytest
import torch
from helpers import tiny_teacher, tiny_tokenizer

from distill import hybridize
from distill.conversion.corpus import read_prompts
from distill.data import DataSpec, build_rows, encode_record, read_records
from distill.posttrain.dpo import preference_rows
from distill.recipe import DistillRecipe, from_dict, load_recipe
from distill.posttrain.rl import RLArgs, rl_rows
from distill.posttrain.sft import SFTArgs, rows_from
from hybrid.generation import SamplingParams, generate


def _jsonl(path, *records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return str(path)


# one good record per reader, and the field a wrong type goes into
READERS = {
    "data": (lambda p: build_rows(DataSpec(source=p), tiny_tokenizer(), 32), {"prompt": "a", "completion": "b"},
             "prompt"),
    "sft": (rows_from, {"prompt": "a", "completion": "b"}, "prompt"),
    "dpo": (preference_rows, {"prompt": "a", "chosen": "b", "rejected": "c"}, "prompt"),
    "rl": (rl_rows, {"problem": "1+1?", "answer": "2"}, "problem"),
    "corpus": (read_prompts, {"prompt": "a"}, "prompt"),
}


@pytest.mark.parametrize("reader", sorted(READERS))
def test_data_rows_name_file_line_record_and_field(tmp_path, reader):
    read, good, field = READERS[reader]
    path = _jsonl(tmp_path / "d.jsonl", good, "", '{"prompt": "a", "completion": ', good)
    with pytest.raises(ValueError, match=r"d.jsonl: line 3 is not valid JSON"):
        read(path)
    path = _jsonl(tmp_path / "d.jsonl", good, {**good, field: 123})
    with pytest.raises(ValueError, match=rf"d.jsonl: record 1 field '{field}' is int \(123\), expected str"):
        read(path)
    with pytest.raises(ValueError, match=r"missing.jsonl: no such file; pass an? "):
        read(str(tmp_path / "missing.jsonl"))


def test_empty_completions_are_skipped_and_counted(tmp_path, capsys):
    tok = tiny_tokenizer()
    path = _jsonl(tmp_path / "d.jsonl", {"prompt": "a", "completion": None}, {"prompt": "b", "completion": "  "},
                  {"prompt": "c", "completion": "ok"})
    rows = build_rows(DataSpec(source=path, mask_prompt=True), tok, 32)
    ids, _ = encode_record({"prompt": "c", "completion": "ok"}, tok, DataSpec(source="mem"))
    assert rows["input_ids"][0, :len(ids)].tolist() == ids and rows["input_ids"].shape[0] == 1
    assert f"skipped 2 records with empty completion in {path}" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"record 0 field 'prompt' is int \(123\)"):
        build_rows(DataSpec(source=_jsonl(tmp_path / "e.jsonl", {"prompt": 123, "completion": None})), tok, 32)
    assert len(rows_from(path)) == 1
    assert "skipped 2 records with empty completion" in capsys.readouterr().err
    prefs = _jsonl(tmp_path / "p.jsonl", {"prompt": "a", "chosen": "", "rejected": "x"},
                   {"prompt": "a", "chosen": "y", "rejected": "x"})
    assert len(preference_rows(prefs)) == 1
    assert "skipped 1 records with empty completion" in capsys.readouterr().err
    with pytest.raises(ValueError, match="no such file; pass an existing .jsonl"):
        read_records(str(tmp_path / "gone.jsonl"))


@pytest.mark.parametrize("chat", [True, False])
def test_huge_records_are_cut_before_tokenising(tmp_path, monkeypatch, chat):
    tok = tiny_tokenizer()
    if not chat:
        tok.chat_template = None
    seen = []
    real = type(tok).__call__

    def spy(self, text, *args, **kwargs):
        seen.append(max(len(t) for t in text) if isinstance(text, list) else len(text))
        return real(self, text, *args, **kwargs)

    monkeypatch.setattr(type(tok), "__call__", spy)
    huge, seq_len = "x" * 2_000_000, 32
    cases = [({"text": huge}, DataSpec(source="mem", format="text")),
             ({"prompt": "why?", "completion": huge}, DataSpec(source="mem", mask_prompt=True)),
             ({"prompt": huge, "completion": "because"}, DataSpec(source="mem", mask_prompt=True))]
    if chat:
        cases.append(({"messages": [{"role": "user", "content": huge}, {"role": "assistant", "content": "a"}]},
                      DataSpec(source="mem", format="messages")))
    for rec, spec in cases:
        seen.clear()
        ids, labels = encode_record(rec, tok, spec, seq_len=seq_len)
        assert len(ids) == len(labels) == seq_len
        assert seen and max(seen) <= 64 * seq_len + 64, (spec.format, max(seen))
    seen.clear()  # and through the reader: a 2 MB line of a jsonl packs into one row of seq_len
    path = _jsonl(tmp_path / "big.jsonl", {"prompt": "why?", "completion": huge})
    rows = build_rows(DataSpec(source=path, mask_prompt=True), tok, seq_len)
    assert rows["input_ids"].shape == (1, seq_len) and max(seen) <= 64 * seq_len + 64
    # the prompt/completion boundary: a huge prompt leaves the completion (all of it here) its targets
    ids, labels = encode_record({"prompt": huge, "completion": "because"}, tok, DataSpec(source="mem", mask_prompt=True),
                                seq_len=seq_len)
    targets = tok.decode([i for i, label in zip(ids, labels) if label != -100]).replace(" ", "")
    assert targets == "because</s>"
    # a huge completion is cut at its tail, the whole prompt kept and masked
    ids, labels = encode_record({"prompt": "why?", "completion": huge}, tok, DataSpec(source="mem", mask_prompt=True),
                                seq_len=seq_len)
    n_prompt = labels.count(-100)
    assert "why?" in tok.decode(ids[:n_prompt]).replace(" ", "") and set(tok.decode(ids[n_prompt:]).split()) == {"x"}
    # records that fit encode as they do uncut
    short = {"prompt": "ab", "completion": "xyz"}
    spec = DataSpec(source="mem", mask_prompt=True)
    assert encode_record(short, tok, spec, seq_len=seq_len) == encode_record(short, tok, spec)


def test_recipe_floats_in_exponent_notation(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("teacher: x\nkd:\n  lr: 3e-4\n  loss: {kl: 5e-1}\nalign:\n  lr: '1E-5'\n")
    r = load_recipe(str(path), overrides=["align.weight_decay=1e4"])
    assert (r.kd.lr, r.kd.loss, r.align.lr, r.align.weight_decay) == (3e-4, {"kl": 0.5}, 1e-5, 1e4)
    assert isinstance(r.kd.lr, float)
    assert load_recipe(str(path), overrides=["kd.lr=1e-4"]).kd.lr == 1e-4
    assert from_dict(DistillRecipe, {"kd": {"lr": "2e-3"}}).kd.lr == 2e-3
    for cls in (SFTArgs, RLArgs):  # the TRL stages load through the same code
        path.write_text("lr: 3e-4\n")
        assert load_recipe(str(path), cls=cls, overrides=["weight_decay=1e-2"] if cls is SFTArgs else []).lr == 3e-4
    path.write_text("lr: 1e-6\nreward_weights: [1, '5e-1']\n")
    assert load_recipe(str(path), cls=RLArgs).reward_weights == [1, 0.5]
    for bad in ("abc", "nan", "1e"):
        path.write_text(f"teacher: x\nkd:\n  lr: '{bad}'\n")
        with pytest.raises(ValueError, match=rf"r.yaml: kd.lr='{bad}' must be float"):
            load_recipe(str(path))


def test_prompt_longer_than_the_model_positions_is_an_error():
    teacher = tiny_teacher("llama", max_position_embeddings=64)
    hybrid = hybridize(teacher, [1, 3], chunk_size=16)
    for model in (teacher, hybrid):
        with pytest.raises(ValueError, match=r"prompt 1 has 60 tokens; with max_new_tokens=8 that is 68 positions, "
                                             r"beyond the model's max_position_embeddings=64"):
            generate(model, [[5, 6], [7] * 60], SamplingParams(max_new_tokens=8), eos_token_id=[])
        assert len(generate(model, [[7] * 56], SamplingParams(max_new_tokens=8), eos_token_id=[]).sequences[0]) == 8
    with pytest.raises(ValueError, match="max_position_embeddings=64"):  # the HF-shaped call routes to the engine
        hybrid.generate(torch.full((1, 60), 7), max_new_tokens=8, do_sample=False, pad_token_id=0)
