"""Which attention layers a hybrid keeps, as registered strategies chosen by name in a recipe.

A strategy returns a *replacement order* over all layers: order[0] is replaced first, the last layers are kept
longest. The attention layers kept at keep-ratio r are the last round(r * n) of the order, so the layers kept at
a smaller ratio are always a subset of those kept at a larger one, which an incremental schedule needs.

    explicit       the listed layers are kept (the others replaced first, in uniform order)
    uniform        evenly spaced; reproduces the released MambaInLlama choices (50 % odd layers, 25 % 3, 7, 11,
                   ..., 12.5 % 7, 15, 23, 31 on 32 layers): layers are replaced in increasing 2-adic valuation
                   of (index + 1)
    leave-one-out  replace one layer at a time by its transferred, briefly aligned mixer; the held-out KL to the
                   teacher ranks the layers; the least harmful is replaced first
    kl-guided      from an all-mixer student, restore one attention layer at a time, run a short KD, and rank
                   by how much held-out KL drops; the layers that help least are replaced first

    hybrid-distill select --teacher smollm2-135m --strategy leave-one-out --out runs/select-loo
"""
from __future__ import annotations

import contextlib
import copy
import inspect
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from hybrid.modeling import MIXER_CLASSES, MixerDecoderLayer, packed_seq_idx

from .align import teacher_io
from .heldout import HeldOut
from .transfer import TRANSFERS, hybridize
from ..data import model_inputs
from .losses import alignment_l2, combined_loss, target_mask


@dataclass
class Selection:
    strategy: str
    order: list[int]  # replacement order: first replaced first
    scores: dict[int, float] = field(default_factory=dict)
    score_name: str = ""

    def kept(self, ratio: float) -> list[int]:
        return kept_layers(self.order, ratio)


def kept_layers(order: list[int], ratio: float) -> list[int]:
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"keep ratio={ratio} must lie in [0, 1]")
    k = round(ratio * len(order))
    return sorted(order[len(order) - k:]) if k else []


def _two_adic(i: int) -> int:
    v = 0
    while i % 2 == 0:
        i //= 2
        v += 1
    return v


def uniform_order(num_layers: int) -> list[int]:
    return sorted(range(num_layers), key=lambda i: (_two_adic(i + 1), i))


def uniform_attention_layers(num_layers: int, ratio: float) -> list[int]:
    """Attention layers kept by the uniform strategy at `ratio` (0 keeps none, 1 keeps all)."""
    return kept_layers(uniform_order(num_layers), ratio)


@dataclass
class SelectContext:
    teacher: torch.nn.Module
    mixer: str = "mamba2"
    train_rows: dict | None = None
    eval_rows: dict | None = None
    batch_size: int = 4
    heldout: HeldOut | None = None  # shares cached teacher logits with the caller

    def evaluate(self, model) -> float:
        if self.heldout is None:
            self.heldout = HeldOut(self.teacher, self.eval_rows, self.batch_size)
        return self.heldout(model)["kl"]


STRATEGIES: dict[str, Callable[..., Selection]] = {}


def register(name: str):
    def deco(fn):
        STRATEGIES[name] = fn
        return fn
    return deco


def get_strategy(name: str) -> Callable[..., Selection]:
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ValueError(f"unknown selection strategy {name!r}; registered: {sorted(STRATEGIES)}") from None


def select(name: str, ctx: SelectContext, **params) -> Selection:
    fn = get_strategy(name)
    accepted = [p for p in inspect.signature(fn).parameters if p != "ctx"]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(f"strategy {name!r} has no parameter(s) {unknown}; it takes {accepted}")
    return fn(ctx, **params)


@register("uniform")
def _uniform(ctx: SelectContext) -> Selection:
    n = ctx.teacher.config.num_hidden_layers
    order = uniform_order(n)
    return Selection("uniform", order, {i: float(_two_adic(i + 1)) for i in range(n)}, "2-adic valuation of i+1")


@register("explicit")
def _explicit(ctx: SelectContext, layers=()) -> Selection:
    n = ctx.teacher.config.num_hidden_layers
    keep = sorted(set(int(i) for i in layers))
    bad = [i for i in keep if not 0 <= i < n]
    if bad:
        raise ValueError(f"explicit layers {bad} out of range for a {n}-layer teacher")
    order = [i for i in uniform_order(n) if i not in keep] + keep
    return Selection("explicit", order, {i: float(i in keep) for i in range(n)}, "listed")


def _batches(rows, batch_size, steps, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = rows["input_ids"].shape[0]
    for _ in range(steps):
        idx = torch.randperm(n, generator=g)[:batch_size]
        yield {k: v[idx] for k, v in rows.items()}


@contextlib.contextmanager
def swapped_to_mixer(model, i: int, mixer: str, teacher_layer):
    """Temporarily run layer i of an all-attention hybrid `model` as a mixer transferred from `teacher_layer`."""
    original, kind = model.model.layers[i], model.config.layer_types[i]
    ref = next(original.parameters())
    mix = MIXER_CLASSES[mixer](model.config, i).to(device=ref.device, dtype=ref.dtype)
    mix.reset_parameters()
    TRANSFERS[mixer](teacher_layer.self_attn, mix)
    model.model.layers[i] = MixerDecoderLayer(original, mix)
    model.config.layer_types[i] = mixer
    try:
        yield mix
    finally:
        model.model.layers[i] = original
        model.config.layer_types[i] = kind


@contextlib.contextmanager
def swapped_to_attention(model, i: int, teacher_layer):
    """Temporarily run layer i of a hybrid `model` as the teacher's attention layer."""
    original, kind = model.model.layers[i], model.config.layer_types[i]
    model.model.layers[i] = teacher_layer
    model.config.layer_types[i] = "attention"
    try:
        yield
    finally:
        model.model.layers[i] = original
        model.config.layer_types[i] = kind


def _teacher_io_batches(teacher, layers, rows, batch_size, n_batches, seed=0):
    """Teacher attention inputs/outputs of `layers` on a few training batches, computed once and reused."""
    return [(teacher_io(teacher, layers, b), packed_seq_idx(b["position_ids"]))
            for b in _batches(rows, batch_size, n_batches, seed)]


def _adam_steps(params, steps, lr: float) -> None:
    """Plain Adam at a constant rate, one step per item of `steps`: an iterable of losses whose sum is that step's
    loss, each computed on demand with gradients on and back-propagated before the next is computed (a step's rows
    a few at a time: the same gradient as the whole batch at once, up to summation order, in the memory of a few
    rows). The strategies only rank layers by a short training: no schedule, clipping, checkpoints or reseeding
    (the Trainer's), which would change the scores and the random numbers later layers draw."""
    opt = torch.optim.Adam(params, lr=lr)
    with torch.enable_grad():
        for parts in steps:
            opt.zero_grad()
            for loss in parts:
                loss.backward()
            opt.step()


def _check_rows(**rows) -> None:
    for name, v in rows.items():
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ValueError(f"{name}={v!r} must be a positive number of rows")


def _micro(n: int, rows: int) -> list[slice]:
    return [slice(r, r + rows) for r in range(0, n, rows)]


def _align_losses(io_batches, layers, mixers: dict, steps, micro_rows: int = 1):
    """Per step, `micro_rows` rows at a time: the summed mean squared error of the mixers of `layers` against their
    attention outputs, a mean over the step's tokens."""
    for step in range(steps):
        io, seq_idx = io_batches[step % len(io_batches)]
        x = io[layers[0]][0]
        tokens = x.shape[:2].numel()
        yield (sum(alignment_l2(mixers[i](io[i][0][part], seq_idx=None if seq_idx is None else seq_idx[part]),
                                io[i][1][part])[0] for i in layers) / tokens
               for part in _micro(x.shape[0], micro_rows))


def _align_steps(io_batches, layers, mixers: dict, steps, lr, micro_rows: int = 1):
    params = [p for m in mixers.values() for p in m.parameters()]
    _adam_steps(params, _align_losses(io_batches, list(layers), mixers, steps, micro_rows), lr)


CHUNK = 512  # token rows whose [rows x vocab] float32 softmax exists at once in the KD loss


def _kd_losses(student, teacher, batches, micro_rows: int = 1):
    """Per batch, `micro_rows` rows at a time: forward KL of `student` against the teacher's logits, a mean over
    the batch's target tokens (computed CHUNK logit rows at a time)."""
    loss = combined_loss({"kl": 1.0}, chunk=CHUNK)
    for batch in batches:
        count = max(int(target_mask(batch["labels"]).sum()), 1)

        def parts(batch=batch, count=count):
            for part in _micro(batch["input_ids"].shape[0], micro_rows):
                kw = model_inputs({k: v[part] for k, v in batch.items()})
                with torch.no_grad():
                    t = teacher(**kw).logits
                s, _, _ = loss(student(**kw).logits, t, batch["labels"][part])
                yield s / count
        yield parts()


def _need_rows(ctx: SelectContext, name: str):
    if ctx.train_rows is None or ctx.eval_rows is None:
        raise ValueError(f"strategy {name!r} needs training and held-out rows")


@register("leave-one-out")
def _leave_one_out(ctx: SelectContext, align_steps: int = 20, lr: float = 1e-3, align_batches: int = 4,
                   micro_rows: int = 1) -> Selection:
    _need_rows(ctx, "leave-one-out")
    _check_rows(micro_rows=micro_rows)
    teacher = ctx.teacher
    n = teacher.config.num_hidden_layers
    base = hybridize(teacher, range(n), mixer=ctx.mixer)
    io_batches = _teacher_io_batches(teacher, range(n), ctx.train_rows, ctx.batch_size, align_batches)
    scores = {}
    for i in tqdm(range(n), desc="leave-one-out"):
        with swapped_to_mixer(base, i, ctx.mixer, teacher.model.layers[i]) as mix:
            _align_steps(io_batches, [i], {i: mix}, align_steps, lr, micro_rows)
            scores[i] = ctx.evaluate(base)
    order = sorted(range(n), key=lambda i: (scores[i], i))
    return Selection("leave-one-out", order, scores, "held-out KL with only this layer replaced")


@register("kl-guided")
def _kl_guided(ctx: SelectContext, align_steps: int = 20, kd_steps: int = 10, lr: float = 1e-3,
               align_batches: int = 4, kd_rows: int | None = None, micro_rows: int = 1) -> Selection:
    """kd_rows: rows a KD step (default: the context's batch size); micro_rows: rows whose activations exist at
    once in a training step (the step's gradient is the same, up to summation order)."""
    _need_rows(ctx, "kl-guided")
    _check_rows(kd_rows=kd_rows, micro_rows=micro_rows)
    teacher = ctx.teacher
    n = teacher.config.num_hidden_layers
    student = hybridize(teacher, [], mixer=ctx.mixer)
    mixers = {i: student.model.layers[i].mamba for i in range(n)}
    io_batches = _teacher_io_batches(teacher, range(n), ctx.train_rows, ctx.batch_size, align_batches)
    _align_steps(io_batches, list(range(n)), mixers, align_steps, lr, micro_rows)
    del io_batches
    snapshot = copy.deepcopy(student.state_dict())
    base_kl = ctx.evaluate(student)
    scores = {}
    for i in tqdm(range(n), desc="kl-guided"):
        with swapped_to_attention(student, i, teacher.model.layers[i]):
            params = [p for j, m in mixers.items() if j != i for p in m.parameters()]
            batches = _batches(ctx.train_rows, kd_rows or ctx.batch_size, kd_steps, seed=i)
            _adam_steps(params, _kd_losses(student, teacher, batches, micro_rows), lr)
            scores[i] = base_kl - ctx.evaluate(student)
        student.load_state_dict(snapshot)
    order = sorted(range(n), key=lambda i: (scores[i], i))
    return Selection("kl-guided", order, scores, "held-out KL drop when this layer is attention")


def save_selection(sel: Selection, out_dir: str, keep_ratio: float | None = None) -> None:
    """select.json (order, scores) and select.png (scores per layer, kept layers highlighted)."""
    os.makedirs(out_dir, exist_ok=True)
    kept = sel.kept(keep_ratio) if keep_ratio is not None else []
    with open(os.path.join(out_dir, "select.json"), "w") as f:
        json.dump({"strategy": sel.strategy, "order": sel.order, "score_name": sel.score_name,
                   "scores": {str(k): v for k, v in sel.scores.items()}, "keep_ratio": keep_ratio,
                   "kept": kept}, f, indent=1)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    n = len(sel.order)
    fig, ax = plt.subplots(figsize=(max(6, n * 0.3), 3.2))
    vals = [sel.scores.get(i, 0.0) for i in range(n)]
    ax.bar(range(n), vals, color=["tab:orange" if i in kept else "tab:blue" for i in range(n)])
    ax.set_xlabel("layer")
    ax.set_ylabel(sel.score_name or "score")
    title = f"layer selection: {sel.strategy}"
    if kept:
        title += f" (orange: attention kept at ratio {keep_ratio})"
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "select.png"), dpi=110)
    plt.close(fig)
