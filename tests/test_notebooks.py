"""The benchmark notebooks execute on the committed example results (so they never rot)."""
import os

import pytest

nbformat = pytest.importorskip("nbformat", reason="notebook tests need the dev extra: pip install -e '.[dev]'")
nbclient = pytest.importorskip("nbclient", reason="notebook tests need the dev extra: pip install -e '.[dev]'")

NB_DIR = os.path.join(os.path.dirname(__file__), "..", "notebooks")


@pytest.mark.parametrize("name", ["throughput.ipynb", "time_budget.ipynb"])
def test_notebook_executes(name, tmp_path, monkeypatch):
    nb = nbformat.read(os.path.join(NB_DIR, name), as_version=4)
    for var, file in (("BENCH_JSON", "bench.json"), ("TIME_BUDGET_JSON", "time_budget.json")):
        monkeypatch.setenv(var, os.path.abspath(os.path.join(NB_DIR, "examples", file)))
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    assert any(f.endswith(".png") for f in os.listdir(tmp_path))
