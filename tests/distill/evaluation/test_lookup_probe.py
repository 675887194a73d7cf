"""recipes/smollm2-135m/lookup_probe.py: the role of each trace character and token, the teacher-forced scoring's
alignment (an oracle that reads the next token scores 1.0; one that errs only on operations scores 0 there), and
the engine check agreeing with the full forward on a Mamba2 hybrid."""
import importlib.util
import os

import torch

from distill.evaluation.tasks import load_tasks
from helpers import tiny_hybrid, tiny_tokenizer

_PATH = os.path.join(os.path.dirname(__file__), "..", "..", "..", "recipes", "smollm2-135m", "lookup_probe.py")
_spec = importlib.util.spec_from_file_location("lookup_probe", _PATH)
probe = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(probe)

TRACE = "<think>\nStart: 4\n1. 4 * 8 = 32 -> 2\n12. 2 - 9 = -7 -> 3\n</think>\nThe answer is \\boxed{3}."


def test_char_roles_mark_each_part_of_a_line():
    roles = probe.char_roles(TRACE)
    assert len(roles) == len(TRACE)
    text = lambda role: "".join(c for c, r in zip(TRACE, roles) if r == role)  # noqa: E731
    assert text("operation") == "* 8- 9"
    assert text("number") == "1412" + "2"
    assert text("result") == "32 -> 2-7 -> 3"
    assert "Start" in text("other") and "boxed" in text("other")


class _Oracle(torch.nn.Module):
    """Logits whose argmax at position t is the input's token t + 1 (wrong, where `miss` says, at those targets)."""

    def __init__(self, vocab: int, miss=None):
        super().__init__()
        self.vocab, self.miss = vocab, miss

    def forward(self, input_ids):
        nxt = torch.roll(input_ids, -1, dims=1)
        if self.miss is not None:
            nxt = torch.where(self.miss(input_ids), (nxt + 1) % self.vocab, nxt)
        return type("Out", (), {"logits": torch.nn.functional.one_hot(nxt, self.vocab).float()})()


def test_teacher_forced_scores_the_next_token_at_every_role():
    tok = tiny_tokenizer()
    problems = load_tasks("long:test:tokens=100:mod=10", 2)
    perfect = probe.teacher_forced(_Oracle(len(tok)), tok, problems)
    assert all(perfect[r]["accuracy"] == 1.0 for r in probe.ROLES)
    assert perfect["operation"]["tokens"] > 0 and perfect["result"]["tokens"] > 0
    # wrong exactly where the target is an operation token: found through the roles the probe computes itself
    targets = [(probe.prompt_ids(tok, probe.prompt_of(p)), probe.token_roles(tok, p.solution)[1]) for p in problems]

    def miss(input_ids):
        prompt, roles = next(t for t in targets if input_ids[0, :len(t[0])].tolist() == t[0])
        out = torch.zeros_like(input_ids, dtype=torch.bool)
        for j, r in enumerate(roles):
            out[0, len(prompt) + j - 1] = r == "operation"
        return out

    scored = probe.teacher_forced(_Oracle(len(tok), miss), tok, problems)
    assert scored["operation"]["accuracy"] == 0.0
    assert all(scored[r]["accuracy"] == 1.0 for r in ("number", "result", "other"))


def test_engine_agrees_with_the_full_forward_on_a_mamba2_hybrid():
    tok = tiny_tokenizer()
    model = tiny_hybrid("llama", mixer="mamba2").eval()
    problems = load_tasks("long:test:tokens=100:mod=10", 2)
    row = probe.engine_vs_forward(model, tok, problems, max_new_tokens=12, eos_token_id=[])
    assert row["tokens"] == 24 and row["agree"] == 1.0
