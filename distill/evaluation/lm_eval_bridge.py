"""Hand a loaded model object (hybrid or plain) to lm-evaluation-harness, so users keep their usual benchmarks.

lm-evaluation-harness is an optional extra (`pip install -e ".[eval]"`). Its HF wrapper (HFLM) accepts a
`PreTrainedModel` instance: our hybrid is one, so loglikelihood tasks run its full forward and generation tasks
run its `generate()` (with the hybrid cache). Nothing is loaded from the hub: the model comes from
`hybrid.load_pretrained` (hybrid dirs, released MambaInLlama/M1 dirs, HF dirs, .gguf, alias smollm2-135m), and
task YAMLs may be read from local folders (`include_path`) with local data files.
"""
from __future__ import annotations

import json
import os


def _require_lm_eval():
    try:
        import lm_eval  # noqa: F401
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise ValueError("lm-eval needs lm-evaluation-harness: pip install -e '.[eval]'") from e


def run_lm_eval(model, tokenizer, tasks: list[str], include_path: str | None = None, limit: float | None = None,
                num_fewshot: int | None = None, batch_size: int = 8, apply_chat_template: bool = False,
                seed: int = 0, samples: bool = False):
    """Evaluate `model` on lm-eval `tasks`; returns lm-eval's results dict (per task: metric -> value), and with
    samples=True also its per-document records (task -> list of {doc, resps, ...})."""
    _require_lm_eval()
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    if not tasks:
        raise ValueError("lm-eval needs at least one task name")
    manager = TaskManager(include_path=include_path)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        where = f" (searched lm-eval's tasks and {include_path})" if include_path else ""
        raise ValueError(f"unknown lm-eval task(s) {unknown}{where}")
    lm = HFLM(pretrained=model, backend="causal", tokenizer=tokenizer, batch_size=batch_size,
              device=str(next(model.parameters()).device))
    out = simple_evaluate(model=lm, tasks=list(tasks), task_manager=manager, limit=limit, num_fewshot=num_fewshot,
                          apply_chat_template=apply_chat_template, log_samples=samples, random_seed=seed,
                          numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed,
                          bootstrap_iters=0)
    return (out["results"], out["samples"]) if samples else out["results"]


def save_results(results: dict, out: str, label: str) -> str:
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "lm_eval.json")
    with open(path, "w") as f:
        json.dump({"model": label, "results": results}, f, indent=1, default=str)
    return path
