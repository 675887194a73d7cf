"""`hybrid-distill lm-eval`: lm-evaluation-harness runs on our model object, with a local task."""
import json

import pytest
import torch
from helpers import tiny_teacher, tiny_tokenizer

from distill import hybridize

pytest.importorskip("lm_eval", reason="lm-eval tests need the eval extra: pip install -e '.[eval]'")

QUESTIONS = [("ab", ["cd", "xy"], 0), ("ef", ["gh", "gq", "zz"], 2), ("ij", ["kl", "mn"], 1), ("op", ["qr", "st"], 0),
             ("uv", ["wx", "yz", "ab"], 1), ("k1", ["34", "56"], 0)]


def _task(tmp_path):
    tmp_path.mkdir(exist_ok=True)
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"question": q, "choices": c, "label": y}) + "\n" for q, c, y in QUESTIONS))
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "tiny_mc.yaml").write_text(f"""task: tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
target_delimiter: ""
metric_list:
  - metric: acc
""")
    return str(tmp_path / "tasks")


def _our_loglikelihoods(model, tok):
    """Independent reference: per question, the sum of log-probs of each choice's tokens after the question."""
    out = []
    for q, choices, y in QUESTIONS:
        scores = []
        for c in choices:
            ctx, cont = tok(q)["input_ids"], tok(c)["input_ids"]
            ids = torch.tensor([ctx + cont])
            with torch.no_grad():
                logp = model(ids).logits.float().log_softmax(-1)[0]
            scores.append(sum(logp[len(ctx) - 1 + i, t].item() for i, t in enumerate(cont)))
        out.append(scores)
    return out


def test_lm_eval_runs_our_hybrid_on_a_local_task(tmp_path, capsys):
    from distill.cli import main
    tok = tiny_tokenizer()
    model = hybridize(tiny_teacher("llama"), [1, 3], chunk_size=16).eval()
    model.save_pretrained(tmp_path / "h")
    tok.save_pretrained(tmp_path / "h")
    assert main(["lm-eval", "--model", str(tmp_path / "h"), "--tasks", "tiny_mc", "--include-path", _task(tmp_path),
                 "--batch-size", "2", "--out", str(tmp_path / "out")]) == 0
    res = json.loads((tmp_path / "out" / "lm_eval.json").read_text())["results"]["tiny_mc"]
    ours = _our_loglikelihoods(model, tok)
    acc = sum(max(range(len(s)), key=s.__getitem__) == y for s, (_, _, y) in zip(ours, QUESTIONS)) / len(QUESTIONS)
    assert res["acc,none"] == pytest.approx(acc)
    assert "tiny_mc" in capsys.readouterr().out
    from distill.evaluation.lm_eval_bridge import run_lm_eval
    _, samples = run_lm_eval(model, tok, ["tiny_mc"], include_path=_task(tmp_path / "again"), samples=True)
    theirs = {s["doc"]["question"]: [r[0][0] for r in s["resps"]] for s in samples["tiny_mc"]}
    for (q, _, _), mine in zip(QUESTIONS, ours):  # every choice's log-likelihood, not only the accuracy
        assert theirs[q] == pytest.approx(mine, abs=1e-4)


def test_lm_eval_unknown_task_is_named(tmp_path):
    from distill.evaluation.lm_eval_bridge import run_lm_eval
    model = hybridize(tiny_teacher("llama"), [1]).eval()
    with pytest.raises(ValueError, match="no_such_task"):
        run_lm_eval(model, tiny_tokenizer(), ["no_such_task"], include_path=_task(tmp_path))
