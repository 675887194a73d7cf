"""What a recipe costs before it runs: parameters, memory per GPU, tokens and GPU-hours of every training stage
of `hybrid-distill run`, and whether each stage fits a GPU.

    hybrid-distill plan recipes/llama3.2-3b --gpus 8 --strategy fsdp2 --gpu-memory 80GB

Every model is built on the meta device from the recipe folder's teacher_config.json: nothing is allocated and
nothing is downloaded. The hybrid of each schedule step keeps the attention layers the recipe's selection keeps;
strategies that rank layers with the teacher's weights (leave-one-out, kl-guided) are planned as uniform (the same
counts, possibly other layers). Stages, as distill.pipeline runs them: per schedule step align, kd and onpolicy
(where it has steps); then SFT and GRPO of the teacher (the baseline) and of the final hybrid, where the folder has
sft.yaml / rl.yaml.

Batch: `batch_size` is rows per micro-batch per process in the distill trainer (distill/train.py: RowLoader splits
rows by rank) and in TRL (per_device_train_batch_size; GRPO: completions), so one optimizer step sees
batch_size x grad_accum x GPUs rows, and tokens = steps x batch_size x grad_accum x GPUs x row length (row length:
data.seq_len for distill, SFT's max_length (packed rows are full), GRPO's prompt + max_completion_length, an upper
bound). More GPUs train on more tokens: each is data parallel under all three strategies.

Memory per GPU (GB = 2**30 bytes), what each strategy does with the module the trainer prepares (the student in
kd, the new mixers in align, the whole model in SFT/GRPO), w = bytes per weight of the recipe dtype:

    per trained parameter   weights     gradients              AdamW state
    ddp                     w           w (+ w: DDP's buckets)  2 w: torch keeps both moments in the weight's dtype
                                                                and no master copy (bf16 recipes train in bf16)
    fsdp2                   4 / N       4 / N                   8 / N: accelerate upcasts trained weights to fp32
                                                                masters under mixed precision
    zero3                   w / N       w / N                   (8 + 4 if w < 4) / N: fp32 moments + fp32 master

  Frozen parameters of the prepared module cost w (ddp) or w / N (fsdp2, zero3). fsdp2 and zero3 also hold some
  weights gathered whole in the compute dtype: the root module (embeddings, head, final norm) and two decoder
  layers (the current and the prefetched one); align's mixers form one unit, gathered together. The frozen
  teacher is outside the prepared module in this code base (Trainer prepares only the student;
  recipes/accelerate/zero3.yaml says so), so it is replicated under every strategy, as are the student's frozen
  weights during align. GRPO's reference model (beta > 0) is prepared, so sharded.

Activations (bytes kept for backward per token; a = 2 under bf16 autocast, else w), after Korthikanti et al. 2022,
"Reducing Activation Recomputation in Large Transformer Models", sec. 4.1, eq. 1: a GPT layer keeps
sbh (34 + 5 n s / h) bytes for s tokens, b rows, width h, n heads, 16-bit activations. With SDPA's flash /
memory-efficient kernels the 5 n s / h term of the attention scores is not stored, and without dropout's two masks
32 sbh remain. The same
accounting for the teacher's layers (GQA: d_inner = heads x head_dim, d_xb = kv_heads x head_dim; SwiGLU MLP of
width I):
    two RMSNorm inputs                       2 a h
    attention                                a (h + 2 d_inner + 2 d_xb) + 4 heads   (q/k/v input, q, k, v, output;
                                             fp32 logsumexp)
    SwiGLU MLP                               a (h + 4 I)    (input, gate, up, silu(gate), their product)
    Mamba2 mixer (our estimate, what the     a (h + 2 d_inner + 2 d_xb + heads + 2 conv + 4 d_inner)
    fused-kernel path keeps)                 + 4 (heads + 5 d_inner), conv = d_inner + 2 d_xb: in_proj input and
                                             output, conv output before and after SiLU, x and B repeated to the
                                             heads, scan output, out_proj input; fp32 dt and the gated norm's five
                                             fp32 intermediates (hybrid/mixers/mamba2.py computes it in fp32)
    Mamba1 mixer (our estimate)              a (h + 2 d_xb + 7 d + r) + 16 d  (d = mixer width, r = dt rank)
plus 3 a h per token (embedding output, final norm). With activation checkpointing at decoder-layer granularity
(HF gradient checkpointing, FSDP's activation checkpointing) each layer keeps its input (a h) and one layer's full
set is recomputed at a time. Logits per token: KD (2 a + teacher bytes) V (student logits, their gradient, the
teacher's logits; losses.VocabLoss adds five fp32 [loss_chunk, V] buffers, or 16 V per token unchunked); SFT
(a + 8) V (transformers' loss upcasts to fp32 and keeps the log-softmax); GRPO 3 a V per completion token (logits, the
temperature-scaled copy, log-softmax). GRPO's rollout holds the KV cache of the attention layers and the mixers'
states for batch_size x grad_accum sequences; the peak is the larger of rollout and update. A reserve of
RESERVE_GB per GPU covers the CUDA context, NCCL buffers and allocator fragmentation.

Time: tokens / (tokens/s per GPU) = GPU-hours. The default rate assumes ASSUMED_MFU of an H100's 989 TFLOP/s dense
bf16 peak over the stage's model FLOPs per token (distill.flops: 6 N when every weight trains, 4 N for frozen ones,
plus attention / scan terms; KD adds the teacher's forward, align the teacher's forward and 6 x the new mixers,
GRPO the rollout's forward, which in practice runs far below that MFU: a lower bound on its time).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass

import torch
from torch import nn

GB = 2 ** 30
STRATEGIES = ("ddp", "fsdp2", "zero3")
H100_BF16_FLOPS = 989e12  # dense bf16 peak of an H100 SXM
ASSUMED_MFU = 0.40
RESERVE_GB = 2.0
RL_PROMPT_TOKENS = 256  # GRPO rows are prompt + completion; TRL does not truncate prompts, ours are short
ONPOLICY_PROMPT_TOKENS = 256  # on-policy rows likewise (long-reasoning prompts hold ~100-300 tokens)
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
WEIGHT_FREE_SELECTIONS = ("uniform", "explicit")
CHECKPOINTING_HOW = {
    "kd": "activation checkpointing (kd.activation_checkpointing: true; fsdp2: also fsdp_activation_checkpointing: "
          "true in the accelerate config)",
    "sft": "activation checkpointing (sft.yaml extra: {gradient_checkpointing: true})",
    "rl": "activation checkpointing (rl.yaml extra: {gradient_checkpointing: true})",
}
CHECKPOINTING_HOW["onpolicy"] = CHECKPOINTING_HOW["kd"].replace("kd.", "onpolicy.")  # the same distill trainer


@dataclass
class Stage:
    """One training stage as the recipe asks for it, whatever GPUs it runs on. Sizes in parameters or bytes."""
    name: str  # stage0-align, stage0-kd, stage0-onpolicy, sft-teacher, sft-hybrid, rl-teacher, rl-hybrid
    kind: str  # align | kd | onpolicy | sft | rl
    model: str  # what the stage trains, in words
    params: int  # of the trained model
    trainable: int
    engine_frozen: int  # frozen parameters inside the prepared module (sharded by fsdp2 / zero3)
    gathered: int  # parameters fsdp2 / zero3 hold whole at once
    outside_bytes: float  # frozen weights outside the prepared module (teacher ...): replicated everywhere
    teacher_params: int  # of the frozen teacher in memory (0: none)
    weight_bytes: int  # w: bytes per weight as loaded
    compute_bytes: int  # a: bytes per activation
    rows: int  # micro-batch rows per GPU
    row_tokens: int
    grad_accum: int
    steps: int
    act_row: float  # activation bytes per row, no checkpointing
    act_row_ckpt: float  # per row, with activation checkpointing
    act_fixed: float = 0.0  # activation bytes that do not grow with rows (loss chunk buffers)
    rollout_bytes: float = 0.0  # GRPO: KV cache and mixer states of one rollout (constant under micro-batching)
    flops_per_token: float = 0.0
    checkpointing: bool = False  # the recipe's own setting
    row_multiple: int = 1  # micro-batches must stay multiples of this (GRPO: num_generations)


# ---------------- activations ----------------
def mixer_activation_bytes(cfg, kind: str, a: int) -> float:
    """Bytes the sequence mixer of one layer ("attention", "mamba2", "mamba") keeps for backward per token (module
    docstring: the terms and their source). cfg: a HybridConfig (an all-attention one for the teacher)."""
    h, d_in, d_xb, heads = cfg.hidden_size, cfg.d_inner, cfg.d_xb, cfg.num_attention_heads
    if kind == "attention":
        return a * (h + 2 * d_in + 2 * d_xb) + 4 * heads
    if kind == "mamba2":
        conv = d_in + 2 * d_xb
        return a * (h + 2 * d_in + 2 * d_xb + heads + 2 * conv + 4 * d_in) + 4 * (heads + 5 * d_in)
    d, r = cfg.d_inner_mamba, cfg.dt_rank_mamba
    return a * (h + 2 * d_xb + 7 * d + r) + 16 * d


def layer_activation_bytes(cfg, kind: str, a: int) -> float:
    """One decoder layer per token: its mixer, the two RMSNorms' inputs and the SwiGLU MLP."""
    h = cfg.hidden_size
    return mixer_activation_bytes(cfg, kind, a) + 2 * a * h + a * (h + 4 * cfg.teacher_config.intermediate_size)


def activation_bytes_per_token(cfg, a: int, checkpointing: bool) -> float:
    """Bytes the whole model keeps for backward per token: every layer (with checkpointing, every layer's input
    and one layer recomputed at a time), the embedding output and the final norm."""
    per = [layer_activation_bytes(cfg, k, a) for k in cfg.layer_types]
    edges = 3 * a * cfg.hidden_size
    if checkpointing:
        return edges + a * cfg.hidden_size * len(per) + max(per)
    return edges + sum(per)


def rollout_bytes_per_row(cfg, a: int, tokens: int) -> float:
    """GRPO's rollout cache per sequence: K and V of every attention layer for `tokens`, each mixer's conv state
    (a bytes) and SSM state (fp32, conservative)."""
    total = 0.0
    for kind in cfg.layer_types:
        if kind == "attention":
            total += 2 * cfg.d_xb * a * tokens
        elif kind == "mamba2":
            total += (cfg.d_inner + 2 * cfg.d_xb) * cfg.d_conv * a + 4 * cfg.d_inner * cfg.head_dim
        else:
            total += cfg.d_inner_mamba * (cfg.d_conv * a + 4 * cfg.mamba_d_state)
    return total


# ---------------- models on the meta device ----------------
def teacher_config(folder: str):
    """The teacher's transformers config from the recipe folder's teacher_config.json (no hub access)."""
    from transformers import AutoConfig
    path = os.path.join(folder, "teacher_config.json")
    if not os.path.isfile(path):
        raise ValueError(f"{folder} has no teacher_config.json: the plan builds the teacher from it, offline")
    with open(path) as f:
        cfg = json.load(f)
    return AutoConfig.for_model(cfg.pop("model_type"), **cfg)


def meta_teacher(config):
    from transformers import AutoModelForCausalLM
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def meta_hybrid(config, attn_layers, mixer: str, chunk_size: int = 128):
    """The hybrid keeping attention at `attn_layers`, on the meta device (the shapes `hybridize` gives)."""
    from hybrid.config import HybridConfig, layer_types_from_attention
    from hybrid.modeling import HybridForCausalLM
    types = layer_types_from_attention(config.num_hidden_layers, attn_layers, mixer)
    cfg = HybridConfig(teacher_config=config.to_dict(), layer_types=types, chunk_size=chunk_size)
    with torch.device("meta"):
        return HybridForCausalLM(cfg)


def hybrid_config_of(model):
    """The HybridConfig of a hybrid, or the teacher's as an all-attention HybridConfig (for the same dims)."""
    from hybrid.config import HybridConfig
    cfg = model.config
    return cfg if isinstance(cfg, HybridConfig) else HybridConfig(teacher_config=cfg.to_dict())


def count(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def gathered_params(model) -> int:
    """Parameters fsdp2 / zero3 hold whole at once: the root module's own (embeddings, head, final norm) and the
    two largest decoder layers."""
    layers = sorted((count(layer) for layer in model.model.layers), reverse=True)
    return count(model) - sum(layers) + sum(layers[:2])


def matmul_weights(module: nn.Module) -> int:
    """Weights that enter a matrix product per token (distill.flops counts the same)."""
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, (nn.Linear, nn.Conv1d)))


# ---------------- the stages of a recipe ----------------
def _bytes(dtype: str, what: str) -> int:
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"{what}={dtype!r} is not one of {', '.join(DTYPE_BYTES)}")
    return DTYPE_BYTES[dtype]


def _compute_bytes(mixed_precision: str, w: int) -> int:
    """Activation bytes: `auto` is bf16 on CUDA (distill.train.resolve_precision), as are bf16 and fp16."""
    return 2 if mixed_precision in ("auto", "bf16", "fp16") else w


def _selection(recipe, teacher, notes: list):
    from .conversion.select import SelectContext, select
    name = recipe.select.strategy
    if name in WEIGHT_FREE_SELECTIONS:
        return select(name, SelectContext(teacher, recipe.mixer), **recipe.select.params)
    notes.append(f"selection {name!r} ranks layers with the teacher's weights: planned as uniform (same layer "
                 "counts, possibly other layers)")
    return select("uniform", SelectContext(teacher, recipe.mixer))


def _trains(model, label: str) -> str:
    cfg = hybrid_config_of(model)
    n_attn = len(cfg.attention_layers)
    return label if n_attn == cfg.num_hidden_layers else f"{label} ({n_attn}/{cfg.num_hidden_layers} attention)"


def distill_stages(recipe, config, teacher, notes: list) -> tuple[list[Stage], object]:
    """align and kd of every schedule step (as distill.conversion.schedule runs them) with the (meta) `teacher`;
    also returns the final hybrid (meta)."""
    from .conversion.kd import set_trainable
    from .flops import forward_flops, train_flops
    sel = _selection(recipe, teacher, notes)
    w, T, n_teacher = _bytes(recipe.dtype, "dtype"), recipe.data.seq_len, count(teacher)
    stages, prev, student = [], list(range(config.num_hidden_layers)), teacher
    for k, ratio in enumerate(recipe.schedule):
        kept = sel.kept(ratio)
        new = [i for i in prev if i not in kept]
        student = meta_hybrid(config, kept, recipe.mixer, recipe.chunk_size)
        if recipe.align.steps and new:
            stages.append(_align_stage(recipe, k, student, teacher, new, w, T))
        if recipe.kd.steps:
            set_trainable(student, recipe.kd.train)
            a = _compute_bytes(recipe.kd.mixed_precision, w)
            stages.append(_kd_stage(recipe, k, student, n_teacher, w, a, T,
                                    train_flops(student, T) + forward_flops(teacher, T)))
        if recipe.onpolicy.steps:
            set_trainable(student, recipe.onpolicy.train)
            a = _compute_bytes(recipe.onpolicy.mixed_precision, w)
            stages.append(_onpolicy_stage(recipe, k, student, teacher, w, a))
        prev = kept
    if recipe.onpolicy.steps:
        notes.append(f"onpolicy rows: {ONPOLICY_PROMPT_TOKENS} prompt tokens (assumed) + onpolicy.max_new_tokens, "
                     "every sample at full length (an upper bound)")
    return stages, student


def _align_stage(recipe, k: int, student, teacher, new: list[int], w: int, T: int) -> Stage:
    """Only the new mixers train (MixerStack, the prepared module) on the teacher's attention inputs; the rest of
    the student and the teacher stay outside the engine. Per token and new layer the teacher's captured attention
    input and output (2 a h) are kept, plus one teacher layer's transient forward."""
    from .flops import forward_flops
    s = recipe.align
    cfg, a = student.config, _compute_bytes(s.mixed_precision, w)
    mixers = [student.model.layers[i].mamba for i in new]
    trainable, total = sum(count(m) for m in mixers), count(student)
    per_token = sum(mixer_activation_bytes(cfg, cfg.layer_types[i], a) + 2 * a * cfg.hidden_size for i in new)
    per_token += layer_activation_bytes(hybrid_config_of(teacher), "attention", a)
    return Stage(
        name=f"stage{k}-align", kind="align", model=f"{len(new)} new mixers of the hybrid", params=total,
        trainable=trainable, engine_frozen=0, gathered=trainable,
        outside_bytes=(total - trainable + count(teacher)) * w, teacher_params=count(teacher), weight_bytes=w,
        compute_bytes=a, rows=s.batch_size, row_tokens=T, grad_accum=s.grad_accum, steps=s.steps,
        act_row=T * per_token, act_row_ckpt=T * per_token,
        flops_per_token=forward_flops(teacher, T) + 6 * sum(matmul_weights(m) for m in mixers))


def _kd_stage(recipe, k: int, student, n_teacher: int, w: int, a: int, T: int, flops: float, s=None) -> Stage:
    """The student (prepared, its frozen part included) learns the frozen teacher's logits; kd.teacher_dtype
    adds a copy of the teacher in that dtype (kd.FrozenTeacher) where it differs from the recipe's. s: the phase's
    settings (default recipe.kd; the onpolicy phase trains the same way)."""
    s, cfg, V = s or recipe.kd, student.config, student.config.vocab_size
    t_bytes = _bytes(s.teacher_dtype, "kd.teacher_dtype") if s.teacher_dtype else a
    outside = n_teacher * w + (n_teacher * t_bytes if s.teacher_dtype and t_bytes != w else 0)
    logits = (2 * a + t_bytes) * V + (0 if s.loss_chunk else 16 * V)
    fixed = 20 * s.loss_chunk * V if s.loss_chunk else 0.0
    trainable = count(student, trainable_only=True)
    return Stage(
        name=f"stage{k}-kd", kind="kd", model=_trains(student, f"hybrid, kd.train={s.train}"),
        params=count(student), trainable=trainable, engine_frozen=count(student) - trainable,
        gathered=gathered_params(student), outside_bytes=outside, teacher_params=n_teacher, weight_bytes=w,
        compute_bytes=a, rows=s.batch_size, row_tokens=T, grad_accum=s.grad_accum, steps=s.steps,
        act_row=T * (activation_bytes_per_token(cfg, a, False) + logits),
        act_row_ckpt=T * (activation_bytes_per_token(cfg, a, True) + logits), act_fixed=fixed,
        flops_per_token=flops, checkpointing=bool(s.activation_checkpointing))


def _onpolicy_stage(recipe, k: int, student, teacher, w: int, a: int) -> Stage:
    """On-policy distillation (distill.conversion.onpolicy): per micro-batch the student samples batch_size
    completions with the decode engine (its cache: rollout_bytes, freed before the update), then learns the frozen
    teacher's distribution on prompt + sample as kd does (the same weights, logits and loss-chunk buffers). Rows:
    ONPOLICY_PROMPT_TOKENS + max_new_tokens, every sample at full length."""
    from .flops import forward_flops, train_flops
    s, cfg, n_teacher = recipe.onpolicy, student.config, count(teacher)
    T = ONPOLICY_PROMPT_TOKENS + s.max_new_tokens
    flops = train_flops(student, T) + forward_flops(teacher, T) + forward_flops(student, T)  # update + sampling
    stage = _kd_stage(recipe, k, student, n_teacher, w, a, T, flops, s)
    return dataclasses.replace(stage, name=f"stage{k}-onpolicy", kind="onpolicy",
                               model=_trains(student, f"hybrid, onpolicy.train={s.train}"),
                               rollout_bytes=s.batch_size * rollout_bytes_per_row(cfg, a, T))


def sft_stage(sft, model, who: str, w: int, n_teacher: int) -> Stage:
    """SFT of `model` (everything trains) through TRL on packed rows of max_length; sft.teacher (distillation
    SFT) adds a frozen teacher outside the engine, planned with the recipe's teacher."""
    from .flops import train_flops
    model.requires_grad_(True)
    cfg, V, T = hybrid_config_of(model), model.config.vocab_size, sft.max_length
    a = 2 if sft.extra.get("bf16") or sft.extra.get("fp16") else w
    teacher = n_teacher if sft.teacher else 0
    logits = (a + 8) * V + (a * V if teacher else 0)
    flops = train_flops(model, T) + (2 * teacher if teacher else 0)
    return Stage(
        name=f"sft-{who}", kind="sft", model=_trains(model, who), params=count(model), trainable=count(model),
        engine_frozen=0, gathered=gathered_params(model), outside_bytes=teacher * w, teacher_params=teacher,
        weight_bytes=w, compute_bytes=a, rows=sft.batch_size, row_tokens=T, grad_accum=sft.grad_accum,
        steps=sft.max_steps, act_row=T * (activation_bytes_per_token(cfg, a, False) + logits),
        act_row_ckpt=T * (activation_bytes_per_token(cfg, a, True) + logits), flops_per_token=flops,
        checkpointing=bool(sft.extra.get("gradient_checkpointing")))


def rl_stage(rl, model, who: str, w: int) -> Stage:
    """GRPO of `model` (everything trains; bf16 on CUDA, distill.posttrain.rl.grpo_config): rollouts of
    batch_size x grad_accum completions per GPU, then the update in micro-batches of batch_size rows; beta > 0
    adds the reference model, which TRL prepares (sharded by fsdp2 / zero3)."""
    from .flops import forward_flops, train_flops
    model.requires_grad_(True)
    cfg, V, a = hybrid_config_of(model), model.config.vocab_size, 2
    C = rl.max_completion_length
    T = RL_PROMPT_TOKENS + C
    logits = 3 * a * V * C / T  # per token of the row: logits only over the completion
    ref = count(model) if rl.beta > 0 else 0
    return Stage(
        name=f"rl-{who}", kind="rl", model=_trains(model, who), params=count(model), trainable=count(model),
        engine_frozen=ref, gathered=gathered_params(model), outside_bytes=0.0, teacher_params=0, weight_bytes=w,
        compute_bytes=a, rows=rl.batch_size, row_tokens=T, grad_accum=rl.grad_accum, steps=rl.max_steps,
        act_row=T * (activation_bytes_per_token(cfg, a, False) + logits),
        act_row_ckpt=T * (activation_bytes_per_token(cfg, a, True) + logits),
        rollout_bytes=rl.batch_size * rl.grad_accum * rollout_bytes_per_row(cfg, a, T),
        flops_per_token=train_flops(model, T) + forward_flops(model, T) + (2 * ref if ref else 0),
        checkpointing=bool(rl.extra.get("gradient_checkpointing")), row_multiple=rl.num_generations)


def recipe_stages(pipe, config) -> tuple[list[Stage], list[str]]:
    """Every training stage of a loaded pipeline recipe (distill.pipeline.PipelineRecipe), in run order, and notes
    on what the plan had to assume."""
    notes: list[str] = []
    teacher = meta_teacher(config).requires_grad_(False)
    stages, final = distill_stages(pipe.distill, config, teacher, notes)
    w, n_teacher = _bytes(pipe.distill.dtype, "dtype"), count(teacher)
    models = {"teacher": teacher, "hybrid": final}  # SFT and GRPO train each whole (they set requires_grad)
    if pipe.sft is not None:
        stages += [sft_stage(pipe.sft, model, who, w, n_teacher) for who, model in models.items()]
    if pipe.rl is not None:
        stages += [rl_stage(pipe.rl, model, who, w) for who, model in models.items()]
        notes.append(f"GRPO rows: {RL_PROMPT_TOKENS} prompt tokens (assumed) + max_completion_length, every "
                     "completion at full length (an upper bound)")
    if pipe.sft is not None or pipe.rl is not None:
        notes.append(f"SFT / GRPO load their models as stored: planned in the distill recipe's dtype "
                     f"({pipe.distill.dtype})")
    return stages, notes


# ---------------- memory, fit and time ----------------
def memory(stage: Stage, strategy: str, gpus: int, rows: int | None = None,
           checkpointing: bool | None = None) -> dict[str, float]:
    """Bytes per GPU by part (module docstring: the rules per strategy) at `rows` per micro-batch (default: the
    recipe's) with or without activation checkpointing (default: the recipe's setting)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy={strategy!r} is not one of {', '.join(STRATEGIES)}")
    if not isinstance(gpus, int) or gpus < 1:
        raise ValueError(f"gpus={gpus!r} must be a positive integer")
    rows = stage.rows if rows is None else rows
    ckpt = stage.checkpointing if checkpointing is None else checkpointing
    w, shards = stage.weight_bytes, 1 if strategy == "ddp" else gpus
    weight_b, grad_b, opt_b = {"ddp": (w, w * (2 if gpus > 1 else 1), 2 * w), "fsdp2": (4, 4, 8),
                               "zero3": (w, w, 8 + (4 if w < 4 else 0))}[strategy]
    gathered = 0 if strategy == "ddp" else stage.gathered * stage.compute_bytes
    train = rows * (stage.act_row_ckpt if ckpt else stage.act_row) + stage.act_fixed
    return {"weights": (stage.trainable * weight_b + stage.engine_frozen * w) / shards + gathered,
            "gradients": stage.trainable * grad_b / shards,
            "optimizer": stage.trainable * opt_b / shards,
            "activations": max(train, stage.rollout_bytes),
            "frozen_outside": stage.outside_bytes,
            "reserve": RESERVE_GB * GB}


def sharded_bytes(stage: Stage, strategy: str, gpus: int) -> float:
    """The part of `memory` that shards over GPUs (0 under ddp)."""
    if strategy == "ddp":
        return 0.0
    m = memory(stage, strategy, gpus)
    return (m["weights"] - stage.gathered * stage.compute_bytes + m["gradients"] + m["optimizer"]) * gpus


def total_gb(stage: Stage, strategy: str, gpus: int, **kw) -> float:
    return sum(memory(stage, strategy, gpus, **kw).values()) / GB


def smallest_gpus(stage: Stage, strategy: str, gpu_memory_gb: float, checkpointing: bool | None = None,
                  rows: int | None = None) -> int | None:
    """The fewest GPUs on which the stage fits `gpu_memory_gb` each under `strategy` (None: no number does, as
    under ddp when one GPU is too small, or when what is not sharded alone is too large)."""
    kw = {"checkpointing": checkpointing, "rows": rows}
    if total_gb(stage, strategy, 1, **kw) <= gpu_memory_gb:
        return 1
    if strategy == "ddp":
        return None
    sharded = sharded_bytes(stage, strategy, 1)
    room = gpu_memory_gb * GB - (sum(memory(stage, strategy, 1, **kw).values()) - sharded)
    if room <= 0:
        return None
    n = max(1, math.ceil(sharded / room))
    while total_gb(stage, strategy, n, **kw) > gpu_memory_gb:  # exact but for floating-point rounding
        n += 1
    return n


def micro_batches(stage: Stage) -> list[tuple[int, int]]:
    """(rows, grad_accum) that keep the rows per optimizer step, smaller than the recipe's, largest first."""
    per_step = stage.rows * stage.grad_accum
    return [(r, per_step // r) for r in range(stage.rows - 1, 0, -1)
            if per_step % r == 0 and r % stage.row_multiple == 0]


def assess(stage: Stage, strategy: str, gpus: int, gpu_memory_gb: float) -> dict:
    """Whether the stage fits as the recipe runs it; if not, single changes that make it fit: activation
    checkpointing, more GPUs (fsdp2 / zero3; from ddp: fsdp2), a smaller micro-batch (same rows per step)."""
    fits = total_gb(stage, strategy, gpus) <= gpu_memory_gb
    if fits:
        return {"fits": True, "options": []}
    options, ckpt_how = [], CHECKPOINTING_HOW.get(stage.kind)
    if ckpt_how and not stage.checkpointing and total_gb(stage, strategy, gpus, checkpointing=True) <= gpu_memory_gb:
        options.append(ckpt_how)
    sharded = "fsdp2" if strategy == "ddp" else strategy  # more GPUs help only where states shard
    n = smallest_gpus(stage, sharded, gpu_memory_gb)
    if n is not None:
        options.append(f"{sharded} on {_gpus(max(n, gpus))}")
    for rows, accum in micro_batches(stage):
        if total_gb(stage, strategy, gpus, rows=rows) <= gpu_memory_gb:
            options.append(f"micro-batch {rows} (grad_accum {accum})")
            break
    if not options:
        options.append(_combined(stage, strategy, gpus, gpu_memory_gb, ckpt_how))
    return {"fits": False, "options": options}


def _combined(stage: Stage, strategy: str, gpus: int, gpu_memory_gb: float, ckpt_how: str | None) -> str:
    """When no single change is enough: checkpointing, the smallest micro-batch and, if needed, more GPUs (or
    fsdp2 instead of ddp) together."""
    rows = (micro_batches(stage) or [(stage.rows, stage.grad_accum)])[-1]
    ckpt = bool(ckpt_how) or stage.checkpointing
    parts = (["activation checkpointing"] if ckpt and not stage.checkpointing else []) + \
        ([f"micro-batch {rows[0]} (grad_accum {rows[1]})"] if rows[0] != stage.rows else [])
    if total_gb(stage, strategy, gpus, checkpointing=ckpt, rows=rows[0]) > gpu_memory_gb:
        sharded = "fsdp2" if strategy == "ddp" else strategy
        n = smallest_gpus(stage, sharded, gpu_memory_gb, checkpointing=ckpt, rows=rows[0])
        if n is None:
            return "nothing listed here fits: shorter rows (seq_len / max_length) or larger GPUs"
        parts.append(f"{sharded} on {_gpus(max(n, gpus))}")
    return " + ".join(parts)


def default_rate(stage: Stage) -> float:
    """Tokens/s per GPU at ASSUMED_MFU of H100_BF16_FLOPS over the stage's model FLOPs per token."""
    return ASSUMED_MFU * H100_BF16_FLOPS / stage.flops_per_token


def tokens(stage: Stage, gpus: int) -> int:
    """steps x micro-batch rows x grad_accum x data-parallel ranks x row length (batch_size is per GPU)."""
    return stage.steps * stage.rows * stage.grad_accum * gpus * stage.row_tokens


# ---------------- the plan ----------------
def plan_recipe(folder: str, gpus: int = 1, strategy: str = "ddp", gpu_memory_gb: float = 80.0,
                tokens_per_s_per_gpu: float | None = None, profile: str | None = None, overrides=()) -> dict:
    """The plan of every training stage of the recipe folder on `gpus` GPUs of `gpu_memory_gb` each (a dict that
    `plan_markdown` prints and plan.json stores)."""
    from .pipeline import load_pipeline
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy={strategy!r} is not one of {', '.join(STRATEGIES)}")
    if not isinstance(gpus, int) or gpus < 1:
        raise ValueError(f"gpus={gpus!r} must be a positive integer")
    if not 0 < gpu_memory_gb < float("inf"):
        raise ValueError(f"gpu_memory_gb={gpu_memory_gb!r} must be a positive number")
    if tokens_per_s_per_gpu is not None and not 0 < tokens_per_s_per_gpu < float("inf"):
        raise ValueError(f"tokens_per_s_per_gpu={tokens_per_s_per_gpu!r} must be a positive number")
    pipe = load_pipeline(folder, profile=profile, overrides=overrides)
    stages, notes = recipe_stages(pipe, teacher_config(folder))
    rows = [_stage_row(s, strategy, gpus, gpu_memory_gb, tokens_per_s_per_gpu) for s in stages]
    return {"recipe": folder, "profile": profile, "overrides": list(overrides), "gpus": gpus, "strategy": strategy,
            "gpu_memory_gb": gpu_memory_gb, "tokens_per_s_per_gpu": tokens_per_s_per_gpu,
            "assumptions": _assumptions(tokens_per_s_per_gpu) + notes, "stages": rows,
            "gpu_hours": sum(r["gpu_hours"] for r in rows)}


def _stage_row(stage: Stage, strategy: str, gpus: int, gpu_memory_gb: float, rate: float | None) -> dict:
    """One stage's line of the plan: the stage, its memory by part, tokens, GPU-hours and verdict."""
    rate = rate or default_rate(stage)
    n_tokens = tokens(stage, gpus)
    act = {c: memory(stage, strategy, gpus, checkpointing=c)["activations"] / GB for c in (False, True)}
    total = {c: total_gb(stage, strategy, gpus, checkpointing=c) for c in (False, True)}
    return {**dataclasses.asdict(stage),
            "memory_gb": {k: v / GB for k, v in memory(stage, strategy, gpus).items()},
            "activations_gb": {"none": act[False], "checkpointed": act[True]},
            "total_gb": {"none": total[False], "checkpointed": total[True]},
            "tokens": n_tokens, "tokens_per_s_per_gpu": rate, "gpu_hours": n_tokens / rate / 3600,
            **assess(stage, strategy, gpus, gpu_memory_gb)}


def _assumptions(rate: float | None) -> list[str]:
    speed = (f"{rate:,.0f} tokens/s per GPU (given)" if rate else
             f"tokens/s per GPU = {ASSUMED_MFU:.0%} MFU x {H100_BF16_FLOPS / 1e12:.0f} TFLOP/s (H100 dense bf16) / "
             "the stage's model FLOPs per token (6N when all weights train; see distill/plan.py)")
    return ["GB = 2^30 bytes; totals include a reserve of "
            f"{RESERVE_GB:g} GB per GPU (CUDA context, NCCL, fragmentation); fits?: the recipe as it stands (its "
            "own checkpointing setting)",
            "batch_size is per GPU: tokens = steps x batch_size x grad_accum x GPUs x row length", speed,
            "activations: Korthikanti et al. 2022 eq. 1 without the attention-score term (flash / memory-efficient "
            "SDPA), adapted to GQA + SwiGLU; Mamba layers: our estimate (distill/plan.py)",
            "frozen, replicated: the teacher (outside the prepared module in this code base, so on every GPU under "
            "every strategy) and, in align, the student's untrained weights"]


def _hours(x: float) -> str:
    return f"{x:.1f}" if x >= 1 else f"{x:.2g}"


def _gpus(n: int) -> str:
    return f"{n} GPU" + ("s" if n != 1 else "")


def _n(x: float) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if x >= div:
            return f"{x / div:.2f}{unit}"
    return f"{x:.0f}"


def plan_markdown(plan: dict) -> str:
    """The plan as one markdown table (GB per GPU) with its assumptions underneath."""
    head = (f"plan of `{plan['recipe']}`{' --profile ' + plan['profile'] if plan['profile'] else ''}: "
            f"{plan['gpus']} x {plan['gpu_memory_gb']:g} GB, {plan['strategy']}")
    lines = [head, "",
             "| stage | trains | params (trainable) | weights | grads | AdamW | activations (no ckpt / ckpt) | "
             "frozen, replicated | total GB (no ckpt / ckpt) | tokens | tok/s/GPU | GPU-h | fits? |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in plan["stages"]:
        m, ckpt = r["memory_gb"], " (recipe: ckpt)" if r["checkpointing"] else ""
        verdict = "yes" if r["fits"] else "no: " + "; or ".join(r["options"])
        lines.append(
            f"| {r['name']} | {r['model']} | {_n(r['params'])} ({_n(r['trainable'])}) | {m['weights']:.1f} | "
            f"{m['gradients']:.1f} | {m['optimizer']:.1f} | {r['activations_gb']['none']:.1f} / "
            f"{r['activations_gb']['checkpointed']:.1f} | {m['frozen_outside']:.1f} | {r['total_gb']['none']:.1f} / "
            f"{r['total_gb']['checkpointed']:.1f}{ckpt} | {_n(r['tokens'])} | {r['tokens_per_s_per_gpu']:,.0f} | "
            f"{_hours(r['gpu_hours'])} | {verdict} |")
    lines += ["", f"Total: {_hours(plan['gpu_hours'])} GPU-hours ({_hours(plan['gpu_hours'] / plan['gpus'])} h on "
              f"{_gpus(plan['gpus'])})."]
    lines += [""] + [f"- {a}" for a in plan["assumptions"]]
    return "\n".join(lines)


def write_plan(plan: dict, out: str) -> None:
    """out/plan.json and out/plan.md."""
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "plan.json"), "w") as f:
        json.dump(plan, f, indent=1)
    with open(os.path.join(out, "plan.md"), "w") as f:
        f.write(plan_markdown(plan) + "\n")
