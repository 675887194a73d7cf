"""`hybrid-distill bench train`: speed of one optimizer step of a training stage, variants side by side.

    hybrid-distill bench train --model smollm2-135m@attn=0.5 --stage kd --batch 8 --seq-len 512 \\
        --variants fp32 bf16 fp32+chunked+teacher-packed --out runs/bench-train

Each variant trains its own copy of the same student from the same start on the same rows, through the stages'
own Trainer and loss step; the variants take turns, one optimizer step each, so drift of the machine's speed
lands on all alike (where all their training states fit in memory together; otherwise one after the other, and
the result says `order: sequential`). Reported per variant: input tokens/s (median over the timed steps), MFU
(model FLOPs per second, distill.flops, over the GEMM peak this run measures for the variant's dtype), the
memory a step takes above what stays resident, the resident training state (weights, gradients, optimizer moments),
the page faults a step takes and the share of its CPU time spent in the kernel (fresh pages of large buffers: the
C allocator in use is named), and the loss at every step (so `--steps 50` shows whether a variant learns like
float32). Results: bench_train.json, .csv, .png.

A variant is levers joined by "+":
    fp32 | bf16        the student's step in float32, or under bf16 autocast (float32 weights and optimizer)
    teacher-bf16       KD: the frozen teacher's forward on a bf16 copy
    teacher-packed     KD: the frozen teacher's linears on oneDNN-packed weights, packed once (hybrid.prepack)
    chunked            the vocabulary loss a chunk of rows at a time (losses.VocabLoss)
    packed             the student's linears on oneDNN-packed weights inside autograd (float32 on the CPU:
                       hybrid.prepack.packed_training_linears), repacked after each optimizer step
    compile            torch.compile of the student's forward

Stages: kd (student vs frozen teacher, forward KL), sft (cross-entropy on the rows: the model work of TRL's SFT
step), grpo (the update: the policy's cross-entropy-shaped loss on rollout-length rows, and the rollouts
themselves, timed through the engine at the same batch and length as one more row).
"""
from __future__ import annotations

import contextlib
import copy
import csv
import json
import os
import resource
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field

import torch

from hybrid.prepack import packed_training_linears

from ..data import model_inputs, pack
from ..flops import forward_flops, gemm_peak, train_flops
from ..loading import load_model
from ..train import Trainer, TrainArgs

LEVERS = ("fp32", "bf16", "teacher-bf16", "teacher-packed", "chunked", "packed", "compile")
STAGES = ("kd", "sft", "grpo")


@dataclass
class TrainBenchSettings:
    """What one `bench train` run measures (the CLI builds one)."""
    model: str
    out: str | None = None
    teacher: str | None = None  # kd: default the model spec without its @attn= option
    stage: str = "kd"
    batch: int = 8
    seq_len: int = 512
    steps: int = 3  # timed steps per variant
    warmup: int = 1  # untimed first steps per variant (compilation, allocator warm-up)
    variants: list[str] = field(default_factory=lambda: ["fp32"])
    train: str = "all"  # kd: which parameters train (conversion.kd.TRAINABLE)
    lr: float = 1e-4
    loss_chunk: int = 1024
    seed: int = 0

    def __post_init__(self):
        if self.stage not in STAGES:
            raise ValueError(f"stage={self.stage!r} is not one of {STAGES}")
        for v in self.variants:
            levers(v)
        for name in ("batch", "seq_len", "steps", "loss_chunk"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if self.warmup < 0:
            raise ValueError(f"warmup={self.warmup} must be >= 0")


def levers(variant: str) -> set[str]:
    """The levers a variant name joins with '+' (ValueError naming an unknown one)."""
    parts = set(variant.split("+"))
    bad = parts - set(LEVERS)
    if bad or not parts or {"fp32", "bf16"} <= parts:
        raise ValueError(f"variant {variant!r}: levers are {', '.join(LEVERS)} joined by '+' (fp32 or bf16, not both)")
    return parts


def bench_rows(tok, vocab: int, batch: int, seq_len: int, n_rows: int, seed: int) -> dict[str, torch.Tensor]:
    """Rows of real text where there is a tokenizer (the synthetic tasks' problems and worked solutions, packed),
    else random tokens."""
    from .tasks import load_tasks
    if tok is not None:
        docs, k = [], 0
        while True:
            for p in load_tasks("synthetic:train", n=256, seed=seed + k):
                ids = tok(p.problem + "\n" + p.solution + (tok.eos_token or ""))["input_ids"]
                docs.append((ids, list(ids)))
            rows = pack(docs, seq_len, tok.pad_token_id if tok.pad_token_id is not None else 0)
            if rows["input_ids"].shape[0] >= n_rows:
                return {key: v[:n_rows] for key, v in rows.items()}
            k += 1
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (n_rows, seq_len), generator=g)
    return {"input_ids": ids, "labels": ids.clone(), "position_ids": torch.arange(seq_len).expand(n_rows, -1).clone()}


def _teacher_spec(s: TrainBenchSettings) -> str:
    return s.teacher or s.model.partition("@")[0]


class _Variant:
    """One variant's trainer: its own student copy, loss step and (KD) teacher forward."""

    def __init__(self, name: str, student, teacher, rows, s: TrainBenchSettings, folder: str):
        from ..conversion.kd import FrozenTeacher, kd_loss_step, set_trainable
        from ..conversion.losses import combined_loss
        on = levers(name)
        self.name, self.student = name, copy.deepcopy(student).train()
        if s.stage == "kd" and s.train != "all":
            set_trainable(self.student, s.train)
        else:
            self.student.requires_grad_(True)
        chunk = s.loss_chunk if "chunked" in on else None
        self.teacher = None
        if s.stage == "kd":
            self.teacher = FrozenTeacher(teacher, self.student, dtype=torch.bfloat16 if "teacher-bf16" in on else None,
                                         packed="teacher-packed" in on)
            self.teacher.__enter__()
            loss_step = kd_loss_step(self.teacher, {"kl": 1.0}, chunk=chunk)
        else:
            ce = combined_loss({"ce": 1.0}, chunk=chunk)

            def loss_step(model, batch):
                total, _, parts = ce(model(**model_inputs(batch)).logits, None, batch["labels"])
                return total, parts
        args = TrainArgs(steps=10 ** 6, batch_size=s.batch, lr=s.lr, warmup_steps=0, seed=s.seed, max_grad_norm=1.0,
                         mixed_precision="bf16" if "bf16" in on else "no", compile="compile" in on,
                         packed_linears="packed" in on)
        per_token = train_flops(self.student, s.seq_len) + (forward_flops(teacher, s.seq_len) if teacher else 0.0)
        self.trainer = Trainer(self.student, loss_step, rows, args, os.path.join(folder, name.replace("+", "_")),
                               flops_per_token=per_token, name=name)
        self.trainer.module.train()
        self._packed = packed_training_linears(self.trainer.module, enabled=args.packed_linears)
        self._packed.__enter__()  # Trainer.run holds it for a stage; here steps are driven one by one
        self.flops_per_token = per_token
        self.times, self.losses, self.step_memory, self.faults, self.sys_share = [], [], [], [], []

    def state_bytes(self) -> int:
        params = [p for p in self.student.parameters()]
        n = sum(p.numel() * p.element_size() for p in params)
        n += sum(p.numel() * p.element_size() for p in params if p.requires_grad)  # gradients
        for st in self.trainer.opt.state.values():
            n += sum(v.numel() * v.element_size() for v in st.values() if torch.is_tensor(v))
        return n

    def step(self, timed: bool) -> None:
        device = self.trainer.acc.device
        before = _reset_peak(device)
        _sync(device)
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        rec = self.trainer.train_step()
        _sync(device)
        dt = time.perf_counter() - t0
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        self.losses.append(rec["loss"])
        if timed:
            self.times.append(dt)
            self.step_memory.append(_peak(device) - before)
            self.faults.append(r1.ru_minflt - r0.ru_minflt)
            cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
            self.sys_share.append((r1.ru_stime - r0.ru_stime) / cpu if cpu > 0 else 0.0)

    def close(self) -> None:
        self._packed.__exit__(None, None, None)
        if self.teacher is not None:
            self.teacher.__exit__(None, None, None)

    def row(self, s: TrainBenchSettings) -> dict:
        tokens = s.batch * s.seq_len
        tps = tokens / statistics.median(self.times)
        dtype = self.trainer.step_dtype()
        peak = gemm_peak(dtype, self.trainer.acc.device)
        return {"variant": self.name, "stage": s.stage, "tokens_per_s": tps, "step_s": statistics.median(self.times),
                "mfu": self.flops_per_token * tps / peak, "gemm_dtype": str(dtype).removeprefix("torch."),
                "flops_per_token": self.flops_per_token, "step_memory_GB": max(self.step_memory) / 1e9,
                "state_GB": self.state_bytes() / 1e9, "loss_first": self.losses[0], "loss_last": self.losses[-1],
                "page_faults_per_step": statistics.median(self.faults),
                "kernel_cpu_share": statistics.median(self.sys_share), "losses": self.losses}


def _reset_peak(device) -> int:
    """Zero the peak-memory counter; returns the memory in use now (bytes)."""
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    with contextlib.suppress(OSError):
        with open("/proc/self/clear_refs", "w") as f:  # resets VmHWM, the resident high-water mark
            f.write("5")
    return _status("VmRSS")


def _peak(device) -> int:
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return _status("VmHWM")


def _status(key: str) -> int:
    with contextlib.suppress(OSError):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    return 0


def malloc_in_use() -> str:
    """The C allocator this process runs on: "jemalloc" or "tcmalloc" where one is mapped (LD_PRELOAD),
    else "glibc". Large CPU tensors come from it; glibc maps each one above its mmap threshold afresh, and the
    page faults of touching those pages show in the step's kernel CPU time."""
    with contextlib.suppress(OSError):
        with open("/proc/self/maps") as f:
            maps = f.read()
        for name in ("jemalloc", "tcmalloc"):
            if f"lib{name}" in maps:
                return name
    return "glibc"


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def rollout_row(model, s: TrainBenchSettings) -> dict:
    """GRPO's other half: sampling s.batch completions of s.seq_len tokens with the engine, timed."""
    from hybrid.generation import SamplingParams, generate
    vocab = model.config.vocab_size
    prompts = torch.randint(100 if vocab > 200 else 3, min(vocab, 30000), (s.batch, 64),
                            generator=torch.Generator().manual_seed(s.seed)).tolist()
    params = SamplingParams(max_new_tokens=s.seq_len, temperature=1.0, seed=s.seed)
    model.eval()
    generate(model, prompts, SamplingParams(max_new_tokens=4), eos_token_id=[])  # warm-up
    t0 = time.perf_counter()
    out = generate(model, prompts, params, eos_token_id=[])
    dt = time.perf_counter() - t0
    tps = out.generated_tokens / dt
    dtype = next(model.parameters()).dtype
    return {"variant": "rollout (engine)", "stage": "grpo", "tokens_per_s": tps, "step_s": dt,
            "mfu": forward_flops(model, s.seq_len // 2 + 64) * tps / gemm_peak(dtype, next(model.parameters()).device),
            "gemm_dtype": str(dtype).removeprefix("torch.")}


def fits_together(student, n_variants: int) -> bool:
    """Whether every variant's training state (weights, gradients, two AdamW moments: 16 bytes a float32
    parameter) fits in a quarter of the memory available, leaving the rest to one step's activations and logits."""
    from hybrid.prepack import available_memory
    avail = available_memory()
    need = n_variants * 16 * sum(p.numel() for p in student.parameters())
    return avail is None or need < avail / 4


def _interleaved(student, teacher, rows, s: TrainBenchSettings, folder: str) -> list[dict]:
    """Every variant alive at once, one optimizer step each in turn: drift of the machine lands on all alike."""
    variants = [_Variant(v, student, teacher, rows, s, folder) for v in s.variants]
    try:
        for i in range(s.warmup + s.steps):
            for v in variants:
                v.step(timed=i >= s.warmup)
    finally:
        for v in variants:
            v.close()
    return [v.row(s) for v in variants]


def _one_variant(name: str, student, teacher, rows, s: TrainBenchSettings, folder: str) -> dict:
    """One variant alone (where all of them would not fit in memory together), freed before the next."""
    v = _Variant(name, student, teacher, rows, s, folder)
    try:
        for i in range(s.warmup + s.steps):
            v.step(timed=i >= s.warmup)
    finally:
        v.close()
    row = v.row(s)
    del v
    import gc
    gc.collect()
    return row


def run_train_bench(s: TrainBenchSettings) -> dict:
    """Measure every variant (see the module docstring); writes the results to s.out when given."""
    student, tok, _ = load_model(s.model)  # the tokenizer where the spec has one (real-text rows), else None
    student.requires_grad_(True)
    teacher = None
    if s.stage == "kd":
        teacher, _, _ = load_model(_teacher_spec(s))
        teacher.eval().requires_grad_(False)
    rows = bench_rows(tok, student.config.vocab_size, s.batch, s.seq_len, s.batch * (s.warmup + s.steps),
                      s.seed)
    env = {"torch": torch.__version__, "threads": torch.get_num_threads(), "allocator": malloc_in_use(),
           "gemm_peak_GFLOPs": {str(d).removeprefix("torch."): gemm_peak(d) / 1e9
                                for d in (torch.float32, torch.bfloat16)}}
    together = fits_together(student, len(s.variants))
    env["order"] = "interleaved" if together else "sequential"
    with tempfile.TemporaryDirectory() as folder:
        table = _interleaved(student, teacher, rows, s, folder) if together else \
            [_one_variant(v, student, teacher, rows, s, folder) for v in s.variants]
    if s.stage == "grpo":
        table.append(rollout_row(student, s))
    result = {"settings": asdict(s), "environment": env, "rows": table}
    if s.out:
        write_train_bench(result, s.out)
    return result


def train_table(result: dict) -> str:
    """Markdown: one line per variant, speed relative to the first."""
    rows = result["rows"]
    base = rows[0]["tokens_per_s"]
    lines = ["| variant | tokens/s | vs first | MFU | GEMM dtype | step memory GB | state GB | page faults / step "
             "| kernel CPU | loss first -> last |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        loss = f"{r['loss_first']:.4f} -> {r['loss_last']:.4f}" if "loss_first" in r else ""
        mem = f"{r['step_memory_GB']:.2f}" if "step_memory_GB" in r else ""
        state = f"{r['state_GB']:.2f}" if "state_GB" in r else ""
        faults = f"{r['page_faults_per_step'] / 1e3:.0f}k" if "page_faults_per_step" in r else ""
        kernel = f"{100 * r['kernel_cpu_share']:.0f}%" if "kernel_cpu_share" in r else ""
        lines.append(f"| {r['variant']} | {r['tokens_per_s']:.0f} | {r['tokens_per_s'] / base:.2f}x | "
                     f"{100 * r['mfu']:.1f}% | {r['gemm_dtype']} | {mem} | {state} | {faults} | {kernel} | {loss} |")
    peaks = result["environment"]["gemm_peak_GFLOPs"]
    lines.append("")
    lines.append("GEMM peak measured here: " + ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in peaks.items()) +
                 f" ({result['environment']['threads']} threads; C allocator: "
                 f"{result['environment'].get('allocator', 'glibc')})")
    return "\n".join(lines)


def write_train_bench(result: dict, out: str) -> None:
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "bench_train.json"), "w") as f:
        json.dump(result, f, indent=1)
    keys = ["variant", "stage", "tokens_per_s", "step_s", "mfu", "gemm_dtype", "step_memory_GB", "state_GB",
            "page_faults_per_step", "kernel_cpu_share", "loss_first", "loss_last"]
    with open(os.path.join(out, "bench_train.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, keys, extrasaction="ignore")
        w.writeheader()
        w.writerows(result["rows"])
    with open(os.path.join(out, "bench_train.md"), "w") as f:
        f.write(train_table(result) + "\n")
    plot_train_bench(result, os.path.join(out, "bench_train.png"))


def plot_train_bench(result: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [r for r in result["rows"] if "losses" in r]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for r in rows:
        axes[0].plot(range(1, len(r["losses"]) + 1), r["losses"], label=r["variant"])
    axes[0].set(xlabel="optimizer step", ylabel="loss", title="loss from the same start")
    axes[0].legend(fontsize=8)
    names = [r["variant"] for r in result["rows"]]
    axes[1].barh(names, [r["tokens_per_s"] for r in result["rows"]])
    axes[1].set(xlabel="input tokens/s", title=f"{result['settings']['stage']}: "
                f"batch {result['settings']['batch']} x {result['settings']['seq_len']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
