"""The command line on whole checkpoints: `import` of a released checkpoint, `export` to GraniteMoeHybrid, and
`generate` streaming the engine's greedy text, `summary` over distill runs."""
import json
import os

import torch
from helpers import assert_close, tiny_teacher, tiny_tokenizer, write_released
from transformers import GenerationMixin

from distill import hybridize
from distill.cli import main
from hybrid import load_pretrained
from hybrid.generation import SamplingParams, generate


def test_import_then_load_ours_gives_identical_logits(tmp_path):
    source = hybridize(tiny_teacher("llama"), [1, 3], mixer="mamba")
    write_released(tmp_path / "rel", source, "mamba1-fused")
    assert main(["import", "--from", str(tmp_path / "rel"), "--out", str(tmp_path / "ours")]) == 0
    assert not os.path.exists(tmp_path / "ours" / "mamba_config.json")
    ours, _ = load_pretrained(str(tmp_path / "ours"))
    rel, _ = load_pretrained(str(tmp_path / "rel"))
    ids = torch.randint(3, 97, (2, 10))
    with torch.no_grad():
        assert_close(ours(ids).logits, rel(ids).logits, atol=0, rtol=0)


def test_export_cli(tmp_path):
    model = hybridize(tiny_teacher("llama"), [1, 3])
    model.save_pretrained(tmp_path / "h")
    assert main(["export", "--model", str(tmp_path / "h"), "--to", "granitemoehybrid", "--out", str(tmp_path / "g")]) == 0
    assert (tmp_path / "g" / "config.json").read_text().count("granitemoehybrid") >= 1


def test_cli_generate_streams_the_engines_greedy_text(tmp_path, capsys):
    from distill.cli import main
    tok = tiny_tokenizer()
    model = hybridize(tiny_teacher("llama"), [1, 3], chunk_size=16)
    model.generation_config.eos_token_id = None  # the CLI falls back to the tokenizer's EOS
    model.save_pretrained(tmp_path / "h")
    tok.save_pretrained(tmp_path / "h")
    assert main(["generate", "--model", str(tmp_path / "h"), "--prompt", "hi", "--max-new-tokens", "15"]) == 0
    printed = capsys.readouterr().out
    ids = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                  return_dict=True)["input_ids"]
    ref = GenerationMixin.generate(model, torch.tensor([ids]), max_new_tokens=15, do_sample=False, pad_token_id=0,
                                   eos_token_id=tok.eos_token_id)
    expected = tok.decode(ref[0, len(ids):], skip_special_tokens=True)
    assert printed == expected + "\n"
    seen = []
    generate(model, [ids], SamplingParams(max_new_tokens=15), eos_token_id=tok.eos_token_id,
             on_step=lambda t, a: seen.append(t))
    assert seen == [[x] for x in ref[0, len(ids):].tolist()][:len(seen)] and seen[-1] == [tok.eos_token_id]


def test_cli_summary_names_each_run_when_several_share_a_selection(tmp_path, capsys):
    """Two distill runs of the same selection (offline KD against on-policy) are told apart by a first column with
    each run folder's name; one run keeps the plain table; a folder without summary.json is refused by name."""
    def phase(name, kl):
        return {"stage": 0, "phase": name, "attention_layers": [0, 2], "keep_ratio": 0.5, "kl": kl, "ppl_ratio": 1.5,
                "seconds": 10.0, "cpu_seconds": 19.6}
    for run, last, kl in (("offline-kd", "kd", 0.0127), ("onpolicy", "onpolicy", 1.2441)):
        (tmp_path / run).mkdir()
        (tmp_path / run / "summary.json").write_text(json.dumps(
            {"teacher": "T", "selection": "explicit", "phases": [phase("align", 0.95), phase(last, kl),
                                                                 {"phase": "kd", "skipped": True}]}))
    assert main(["summary", str(tmp_path / "offline-kd"), str(tmp_path / "onpolicy") + "/",
                 "--out", str(tmp_path / "s.md")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].startswith("| run | selection | stage | phase |") and lines[3] == "|---" * 10 + "|"
    assert [line.split(" | ")[:4] for line in lines[4:]] == [
        ["| offline-kd", "explicit", "0", "align"], ["| offline-kd", "explicit", "0", "kd"],
        ["| onpolicy", "explicit", "0", "align"], ["| onpolicy", "explicit", "0", "onpolicy"]]
    assert "| 1.2441 |" in lines[-1] and (tmp_path / "s.md").read_text().splitlines() == lines
    assert main(["summary", str(tmp_path / "onpolicy")]) == 0
    assert capsys.readouterr().out.splitlines()[2].startswith("| selection | stage |")
    assert main(["summary", str(tmp_path / "offline-kd"), str(tmp_path / "nowhere")]) == 2
    assert "nowhere has no summary.json" in capsys.readouterr().err
