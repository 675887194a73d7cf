"""One training loop for every stage (align, KD, ...), on accelerate.

- The loss of an optimizer step is the token mean over the *global* batch: micro-batch losses come as (sum,
  count); counts are summed over accumulation steps and processes first, so 2 processes x accum 1 equals
  1 process x accum 2 on the same rows (tested).
- Clipping, linear warmup then cosine decay to `min_lr_ratio`; bf16 autocast on CUDA and on CPUs whose bf16 GEMMs
  measure faster than float32 ones (`resolve_precision`), float32 elsewhere; master weights and optimizer state
  stay float32.
- tqdm progress with loss and tokens/s; metrics to `metrics.jsonl` (and TensorBoard when installed).
- Checkpoints every `save_every` steps, written to a temporary folder and renamed, then named in `latest`:
  an interrupted write never replaces a good checkpoint. `resume=True` restores model, optimizer, scheduler, RNG
  and data position, so the loss curve continues exactly (tested).
- Checkpoints hold no pickle (loading one must not run code planted in it): module.safetensors (weights),
  trainer.safetensors (optimizer moments, torch RNG states) and trainer.json (everything else, tensors named by
  reference). An unreadable checkpoint raises CheckpointError naming the file; resume then falls back to the
  previous kept one (keep_checkpoints > 1) or refuses.
- Under FSDP2 the checkpoint holds the whole weights and optimizer state, gathered onto rank 0, laid out as one
  process's: a sharded run resumes from an unsharded run's checkpoint and vice versa (tested). ZeRO-3 runs are
  refused: their partitioned optimizer state is not gathered.
- A non-finite loss stops the run with an error naming the step; the last good checkpoint is kept.
- Ctrl-C saves the state after the last finished step before stopping.
"""
from __future__ import annotations

import json
import logging
import math
import os
import random
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from hybrid.prepack import cpu_flags, packed_training_linears

from .conversion.losses import target_mask
from .data import RowLoader

logger = logging.getLogger(__name__)
CHECKPOINT_FORMAT = "hybrid-distill-trainer/1"
_STEP_DIR = re.compile(r"step-\d+")


@dataclass
class TrainArgs:
    steps: int = 100
    batch_size: int = 4  # rows per micro-batch per process
    grad_accum: int = 1
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 10
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    eval_every: int = 0  # 0: only at the end
    save_every: int = 0  # 0: only at the end
    log_every: int = 10
    seed: int = 0
    mixed_precision: str = "auto"  # auto | no | bf16 | fp16 (auto: bf16 where its GEMMs beat float32's)
    keep_checkpoints: int = 1
    compile: bool = False  # torch.compile the module's forward (nn.Module.compile: parameter names unchanged)
    packed_linears: bool = False  # CPU float32: linears on packed weights (hybrid.prepack.packed_training_linears)
    activation_checkpointing: bool = False  # recompute each layer's activations in backward (transformers models:
    # the student of kd / onpolicy), trading compute for the memory of long rows
    max_seconds: float = 0.0  # > 0: stop once the optimizer steps have taken this long (evaluation and saving not
    # counted; kept across resumes), so that two methods can be compared at equal training time; the learning-rate
    # schedule still follows `steps`

    def __post_init__(self):
        for name in ("batch_size", "grad_accum", "log_every", "keep_checkpoints"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r} must be a positive integer")
        for name in ("steps", "eval_every", "save_every", "warmup_steps"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)!r} must be a non-negative integer")
        if not self.lr > 0:
            raise ValueError(f"lr={self.lr!r} must be positive")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio={self.min_lr_ratio!r} must lie in [0, 1]")
        if not isinstance(self.max_seconds, (int, float)) or not 0 <= self.max_seconds < float("inf"):
            raise ValueError(f"max_seconds={self.max_seconds!r} must be a non-negative number of seconds")
        if self.mixed_precision not in ("auto", "no", "bf16", "fp16"):
            raise ValueError(f"mixed_precision={self.mixed_precision!r} is not one of auto, no, bf16, fp16")


def _enable_activation_checkpointing(module: torch.nn.Module, name: str) -> None:
    """transformers' per-layer checkpointing (non-reentrant), for the model this trainer trains."""
    kwargs = {"use_reentrant": False}
    if hasattr(module, "activation_checkpointing_enable"):  # transformers 5.x
        module.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    elif hasattr(module, "gradient_checkpointing_enable"):
        module.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    else:
        raise ValueError(f"{name}: activation_checkpointing needs a transformers model; the trained module is a "
                         f"{type(module).__name__}")


def _disable_activation_checkpointing(module: torch.nn.Module) -> None:
    off = getattr(module, "activation_checkpointing_disable", None) or module.gradient_checkpointing_disable
    off()


class NonFiniteLoss(RuntimeError):
    pass


class StopRequested(Exception):
    """Raised by `stop_after` (tests simulate an interruption with it)."""


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, corrupt or not in the expected format."""


def lr_lambda(args: TrainArgs) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < args.warmup_steps:
            return (step + 1) / args.warmup_steps
        span = max(1, args.steps - args.warmup_steps)
        progress = min(1.0, (step - args.warmup_steps) / span)
        return args.min_lr_ratio + (1 - args.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return f


def _rng_state():
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state):
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---- checkpoint files: tensors in safetensors, everything else in JSON (no pickle, so reading runs no code) ----
def _own_storage(tensors: dict) -> dict:
    """CPU, contiguous tensors that share no storage (safetensors refuses tied weights and views)."""
    out, seen = {}, set()
    for k, v in tensors.items():
        v = v.detach().cpu().contiguous()
        ptr = v.untyped_storage().data_ptr()
        if ptr and ptr in seen:
            v = v.clone()
        seen.add(v.untyped_storage().data_ptr())
        out[k] = v
    return out


def _encode(obj, path: str, tensors: dict):
    """obj as JSON values; tensors go to `tensors` under their path, tuples and non-string-keyed dicts are tagged
    so that they come back as they were (optimizer state has int keys, Python's RNG state is nested tuples)."""
    if isinstance(obj, torch.Tensor):
        key = path if path not in tensors else f"{path}#{len(tensors)}"
        tensors[key] = obj
        return {"__tensor__": key}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, _join(path, i), tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, _join(path, i), tensors) for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _encode(v, _join(path, k), tensors) for k, v in obj.items()}
        return {"__dict__": [[_encode(k, path, {}), _encode(v, _join(path, k), tensors)] for k, v in obj.items()]}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"checkpoint state {path}: cannot store a {type(obj).__name__}")


def _join(path: str, key) -> str:
    return f"{path}/{key}" if path else str(key)


def _decode(obj, tensors: dict):
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if set(obj) == {"__tensor__"}:
        if obj["__tensor__"] not in tensors:
            raise KeyError(f"tensor {obj['__tensor__']!r} is missing")
        return tensors[obj["__tensor__"]]
    if set(obj) == {"__tuple__"}:
        return tuple(_decode(v, tensors) for v in obj["__tuple__"])
    if set(obj) == {"__dict__"}:
        return {_decode(k, tensors): _decode(v, tensors) for k, v in obj["__dict__"]}
    return {k: _decode(v, tensors) for k, v in obj.items()}


def _write_state(folder: str, name: str, state: dict) -> None:
    """state -> folder/name.safetensors (its tensors) + folder/name.json (the rest, which references them)."""
    from safetensors.torch import save_file
    tensors = {}
    plain = {"format": CHECKPOINT_FORMAT, **_encode(state, "", tensors)}
    save_file(_own_storage(tensors), os.path.join(folder, f"{name}.safetensors"))
    with open(os.path.join(folder, f"{name}.json"), "w") as f:
        json.dump(plain, f)


def _read_tensors(path: str) -> dict:
    from safetensors.torch import load_file
    try:
        return load_file(path, device="cpu")
    except Exception as e:  # noqa: BLE001 - safetensors parses without running code; any failure is a bad file
        raise CheckpointError(f"{path}: unreadable ({type(e).__name__}: {e})") from e


def _read_state(folder: str, name: str) -> dict:
    path = os.path.join(folder, f"{name}.json")
    try:
        with open(path, encoding="utf-8") as f:
            plain = json.load(f)
    except (OSError, ValueError, RecursionError) as e:
        raise CheckpointError(f"{path}: unreadable ({type(e).__name__}: {e})") from e
    if not isinstance(plain, dict) or plain.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a {CHECKPOINT_FORMAT} checkpoint")
    tensors = _read_tensors(os.path.join(folder, f"{name}.safetensors"))
    try:
        return _decode({k: v for k, v in plain.items() if k != "format"}, tensors)
    except (KeyError, TypeError, ValueError, RecursionError) as e:
        raise CheckpointError(f"{path}: {type(e).__name__}: {e}") from e


def _read_legacy(folder: str) -> tuple[dict, dict]:
    """module.pt + trainer.pt of earlier versions, through torch's restricted unpickler (tensors and plain types
    only: a planted payload is refused, never run)."""
    out = []
    for name in ("module.pt", "trainer.pt"):
        path = os.path.join(folder, name)
        try:
            out.append(torch.load(path, map_location="cpu", weights_only=True))
        except Exception as e:  # noqa: BLE001 - weights_only loading runs no code; any failure is a bad file
            raise CheckpointError(f"{path}: unreadable ({type(e).__name__}: {e})") from e
    return out[0], out[1]


def read_checkpoint(folder: str) -> tuple[dict, dict]:
    """(module state dict, trainer state) of a checkpoint folder, validated; CheckpointError names a bad file."""
    if not os.path.isfile(os.path.join(folder, "trainer.json")) and os.path.isfile(os.path.join(folder, "trainer.pt")):
        module_state, st = _read_legacy(folder)
    else:
        st = _read_state(folder, "trainer")
        module_state = _read_tensors(os.path.join(folder, "module.safetensors"))
    if not isinstance(module_state, dict) or not all(isinstance(v, torch.Tensor) for v in module_state.values()):
        raise CheckpointError(f"{folder}: the module weights are not a dict of tensors")
    _check_trainer_state(st, folder)
    return module_state, st


def _numbered(osd: dict) -> dict:
    """An optimizer state dict keyed by parameter name (torch.distributed.checkpoint's) -> keyed as
    Optimizer.state_dict keys it, each parameter numbered by its place in param_groups, so that a checkpoint of a
    sharded run reads like one of a single process."""
    ids = {name: i for i, name in enumerate(n for g in osd["param_groups"] for n in g["params"])}
    return {"state": {ids[name]: v for name, v in osd["state"].items()},
            "param_groups": [{**g, "params": [ids[n] for n in g["params"]]} for g in osd["param_groups"]]}


def _named(osd: dict, groups: list[list[str]]) -> dict:
    """The inverse of _numbered: `groups` names the parameters of each of this optimizer's param_groups."""
    sizes = [len(g["params"]) for g in osd["param_groups"]]
    if sizes != [len(g) for g in groups]:
        raise ValueError(f"parameter groups of sizes {sizes} do not fit this optimizer's {[len(g) for g in groups]}")
    names = [n for g in groups for n in g]
    return {"state": {names[i]: v for i, v in osd["state"].items()},
            "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in osd["param_groups"]]}


def _refuse_zero3(what: str) -> None:
    raise NotImplementedError(
        f"{what} under DeepSpeed ZeRO-3 is not supported: the checkpoint format holds a whole optimizer state, and "
        "ZeRO-3's partitioned one (fp32 master weights, moments, loss scaler) is not gathered into it; train sharded "
        "with recipes/accelerate/fsdp2.yaml instead (distill/README.md, Scaling out)")


def _check_trainer_state(st, where: str) -> None:
    expect = {"step": int, "position": int, "history": list, "optimizer": dict, "scheduler": dict, "rng": dict}
    if not isinstance(st, dict):
        raise CheckpointError(f"{where}: holds a {type(st).__name__}, not the trainer state")
    for key, kind in expect.items():
        if not isinstance(st.get(key), kind):
            raise CheckpointError(f"{where}: {key}={st.get(key)!r:.60} is not a {kind.__name__}")
    rng = st["rng"]
    if not isinstance(rng.get("python"), tuple) or not isinstance(rng.get("torch"), torch.Tensor):
        raise CheckpointError(f"{where}: rng state lacks the python tuple or the torch tensor")


def resolve_precision(mixed_precision: str) -> str:
    """accelerate's mixed_precision for a TrainArgs setting: `auto` is bf16 on CUDA, and on the CPU where
    oneDNN has bf16 kernels and a bf16 GEMM measures faster than a float32 one (distill.flops.gemm_peak), else
    no (float32)."""
    if mixed_precision != "auto":
        return mixed_precision
    if torch.cuda.is_available():
        return "bf16"
    return "bf16" if cpu_bf16_wins() else "no"


def cpu_bf16_wins() -> bool:
    """Whether bf16 GEMMs beat float32 ones on this CPU: oneDNN's bf16 support, then the CPU's native bf16
    instructions (avx512_bf16 or amx_bf16 in /proc/cpuinfo: bf16 GEMMs run ~2x float32 ones), else a measurement,
    once. The flags decide without timing where they are present, so a busy machine at start-up cannot flip the
    choice. HYBRID_CPU_BF16=0 says no without measuring (the test suite runs in float32 on every CPU)."""
    if os.environ.get("HYBRID_CPU_BF16", "") == "0":
        return False
    if not (torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()):
        return False
    if cpu_flags() & {"avx512_bf16", "amx_bf16"}:
        return True
    from .flops import gemm_peak
    return gemm_peak(torch.bfloat16) > 1.2 * gemm_peak(torch.float32)


def _release_precision(mixed_precision: str) -> None:
    """accelerate keeps one precision per process and refuses an Accelerator with another; a stage before this one
    (a TRL stage: transformers turns bf16 on where the CPU has it) may have set a different one. Stages run one
    after the other, so the finished stage's setting is dropped (the process group, PartialState, stays)."""
    from accelerate.state import AcceleratorState
    if AcceleratorState._shared_state and AcceleratorState().mixed_precision != mixed_precision:
        AcceleratorState._reset_state(reset_partial_state=False)


def process_state():
    """accelerate's process state; on a machine without CUDA it joins the CPU (gloo) group that `accelerate launch
    --multi_gpu` starts, which a bare PartialState() would not (each process would think it is alone)."""
    from accelerate import PartialState
    return PartialState(cpu=not torch.cuda.is_available())


def shard_on_cpu() -> bool:
    """Sharding on CPU processes (gloo), with the same accelerate code as on GPUs; returns whether the Accelerator
    must be built with cpu=False (DeepSpeed).

    Launched with recipes/accelerate/fsdp2.yaml (ACCELERATE_USE_FSDP), accelerate keeps its MULTI_CPU state on CPU
    processes and silently trains replicated (DDP); its FSDP2 path (fully_shard per decoder layer, DTensor-aware
    clipping, gathered state dicts) runs on gloo unchanged, so the process state is made to say FSDP, as accelerate's
    own does on GPUs. With zero3.yaml (ACCELERATE_USE_DEEPSPEED) accelerate takes DeepSpeed only from cpu=False:
    the gloo group is joined first, so that cpu=False finds it rather than looking for a GPU."""
    from accelerate import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
    if torch.cuda.is_available():
        return False
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        return process_state().distributed_type in (DistributedType.MULTI_CPU, DistributedType.DEEPSPEED)
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() != "true":
        return False
    if process_state().distributed_type != DistributedType.MULTI_CPU:
        return False  # one process, or switched already
    plugin = FullyShardedDataParallelPlugin()  # from the launch's FSDP_* environment, as accelerate builds it
    if plugin.fsdp_version != 2:
        raise ValueError(f"fsdp_version={plugin.fsdp_version}: only FSDP2 runs on CPU processes")
    # AcceleratorState copies PartialState's shared state whenever it is built: both keys survive every rebuild
    PartialState._shared_state.update(distributed_type=DistributedType.FSDP, fsdp_plugin=plugin)
    return False


class Trainer:
    """Trains the parameters of `module` that require grad.

    loss_step(module, batch) -> (loss summed over counted tokens, {name: detached part sums}).
    count_fn(batch) -> number of tokens that loss sums over (default: targets, labels[:, 1:] != -100).
    eval_fn(module) -> {metric: float}, run on every process (it may use collective ops) every eval_every steps.
    flops_per_token: model FLOPs of one step per input token (distill.flops); with it, each logged record carries
    `mfu`, the model FLOPs per second over this machine's measured GEMM peak for the step's dtype.
    prepare_fn(module, micro_batch) -> micro_batch: turns each drawn micro-batch into the rows the loss reads,
    before tokens are counted (on-policy distillation samples completions there, with the unwrapped module).
    """

    def __init__(self, module: torch.nn.Module, loss_step, train_rows, args: TrainArgs, out_dir: str,
                 eval_fn=None, name: str = "train", accelerator: Accelerator | None = None, count_fn=None,
                 flops_per_token: float | None = None, prepare_fn=None):
        self.args, self.out_dir, self.name = args, out_dir, name
        self.prepare_fn = prepare_fn
        mp = resolve_precision(args.mixed_precision)
        # bf16 needs no loss scaling: this trainer's own autocast runs it, so trainers of both precisions can live in
        # one process (accelerate keeps one process-wide precision); fp16 goes through accelerate's scaler.
        self.autocast_dtype = torch.bfloat16 if mp == "bf16" and accelerator is None else None
        self.precision = mp  # kept in checkpoints: a resumed run continues in the precision it started in
        if args.mixed_precision == "auto":
            print(f"{name}: mixed_precision auto -> {'float32' if mp == 'no' else mp}")
        if accelerator is None:
            _release_precision("no" if self.autocast_dtype else mp)
        self.acc = accelerator or Accelerator(mixed_precision="no" if self.autocast_dtype else mp,
                                              cpu=not torch.cuda.is_available() and not shard_on_cpu())
        self.deepspeed = self.acc.distributed_type == "DEEPSPEED"
        if self.deepspeed:  # no dataloader goes through prepare: DeepSpeed learns its batch settings from here
            self.acc.state.deepspeed_plugin.deepspeed_config.update(
                train_micro_batch_size_per_gpu=args.batch_size, gradient_accumulation_steps=args.grad_accum,
                gradient_clipping=args.max_grad_norm)
        self.flops_per_token = flops_per_token
        self.loss_step, self.eval_fn = loss_step, eval_fn
        self.count_fn = count_fn or count_targets
        params = [p for p in module.parameters() if p.requires_grad]
        if not params:
            raise ValueError(f"{name}: no trainable parameters")
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=args.lr)
        if args.activation_checkpointing:
            _enable_activation_checkpointing(module, name)
        if args.compile:
            module.compile()
        self.module, self.opt = self.acc.prepare(module, opt)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_lambda(args))
        self.loader = RowLoader(train_rows, args.batch_size, seed=args.seed, rank=self.acc.process_index,
                                world=self.acc.num_processes)
        self.step = 0
        self.seconds = 0.0  # wall time of the optimizer steps so far (args.max_seconds), kept in checkpoints
        self.history: list[dict] = []
        self.ckpt_root = os.path.join(out_dir, "checkpoints")
        self._tb = None

    # ---- checkpoints ----
    def latest_checkpoint(self) -> str | None:
        """The checkpoint named in `latest`; None when there is none (a pointer naming anything but a step folder
        of this root counts as none)."""
        pointer = os.path.join(self.ckpt_root, "latest")
        if not os.path.isfile(pointer):
            return None
        try:
            with open(pointer, encoding="utf-8") as f:
                name = f.read().strip()
        except (OSError, ValueError):
            return None
        path = os.path.join(self.ckpt_root, name)
        return path if _STEP_DIR.fullmatch(name) and os.path.isdir(path) else None

    def resume_candidates(self) -> list[str]:
        """Checkpoints to resume from, best first: the one named in `latest`, then the older kept ones (newest
        first), which a resume falls back to when a newer one is unreadable."""
        names = sorted((d for d in os.listdir(self.ckpt_root) if _STEP_DIR.fullmatch(d)), reverse=True) \
            if os.path.isdir(self.ckpt_root) else []
        latest = self.latest_checkpoint()
        if latest is not None:
            names = [d for d in names if d < os.path.basename(latest)]
            return [latest] + [os.path.join(self.ckpt_root, d) for d in names]
        return [os.path.join(self.ckpt_root, d) for d in names]

    def save(self) -> str:
        self.acc.wait_for_everyone()
        name = f"step-{self.step:07d}"
        final = os.path.join(self.ckpt_root, name)
        if self.deepspeed:
            _refuse_zero3("saving a checkpoint")
        # get_state_dict gathers FSDP2 shards (a collective: every rank calls it), and so does _optimizer_state
        state = self.acc.get_state_dict(self.module)
        optimizer = self._optimizer_state()
        if self.acc.is_main_process:
            from safetensors.torch import save_file
            tmp = final + ".tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            os.makedirs(tmp)
            save_file(_own_storage(state), os.path.join(tmp, "module.safetensors"))
            _write_state(tmp, "trainer", {
                "optimizer": optimizer, "scheduler": self.sched.state_dict(), "rng": _rng_state(),
                "step": self.step, "position": self.loader.position, "history": self.history, "seconds": self.seconds,
                "precision": self.precision, "args": asdict(self.args)})
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            with open(os.path.join(self.ckpt_root, "latest.tmp"), "w") as f:
                f.write(name)
            os.replace(os.path.join(self.ckpt_root, "latest.tmp"), os.path.join(self.ckpt_root, "latest"))
            kept = sorted(d for d in os.listdir(self.ckpt_root) if _STEP_DIR.fullmatch(d))
            for old in kept[:-self.args.keep_checkpoints]:
                shutil.rmtree(os.path.join(self.ckpt_root, old), ignore_errors=True)
        self.acc.wait_for_everyone()
        return final

    def load(self, path: str) -> None:
        """Restore the state saved in `path`; CheckpointError names the file when it cannot be read."""
        if self.deepspeed:
            _refuse_zero3("resuming from a checkpoint")
        module_state, st = read_checkpoint(path)
        module = self.acc.unwrap_model(self.module)
        try:
            if self.acc.is_fsdp2:
                self._load_sharded(module_state, st["optimizer"])
            else:
                module.load_state_dict(module_state)
                self.opt.load_state_dict(st["optimizer"])
            self.sched.load_state_dict(st["scheduler"])
            _set_rng_state(st["rng"])
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as e:
            raise CheckpointError(f"{path}: does not fit this model and optimizer ({type(e).__name__}: {e})") from e
        self.step, self.loader.position, self.history = st["step"], st["position"], st["history"]
        self.seconds = float(st.get("seconds", 0.0))  # checkpoints from before max_seconds: not counted
        self._keep_precision(st.get("precision"), path)

    def _keep_precision(self, stored: str | None, path: str) -> None:
        """Continue in the precision the checkpoint was trained in. On the CPU, bf16 is this trainer's own autocast,
        so a run whose `auto` resolves differently today (another machine) switches to the stored one; a precision
        accelerate holds (fp16, CUDA's bf16) cannot switch, and the resume says so. Checkpoints from before the
        precision was kept store none."""
        if stored is None or stored == self.precision:
            return
        own = self.acc.mixed_precision == "no" and {stored, self.precision} <= {"bf16", "no"}
        if own:
            self.autocast_dtype = torch.bfloat16 if stored == "bf16" else None
            print(f"{self.name}: {path} was trained with mixed_precision={stored}; continuing in it (this machine "
                  f"resolved {self.args.mixed_precision!r} to {self.precision})")
            self.precision = stored
        else:
            print(f"{self.name}: warning: {path} was trained with mixed_precision={stored}, this run uses "
                  f"{self.precision}; the loss trajectory will not continue exactly")

    def _optimizer_state(self) -> dict:
        """The optimizer's state dict, whole. Under FSDP2 its moments are DTensor shards: they are gathered onto
        rank 0 (a collective; the other ranks get {}) and numbered as an unsharded optimizer numbers its parameters,
        so that a checkpoint resumes under any number of processes."""
        if not self.acc.is_fsdp2:
            return self.opt.state_dict()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
        whole = get_optimizer_state_dict(self.module, self.opt.optimizer,
                                         options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return _numbered(whole) if whole else {}

    def _load_sharded(self, module_state: dict, optimizer: dict) -> None:
        """Whole weights and optimizer state (as every rank read them) into this rank's FSDP2 shards (collectives)."""
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_optimizer_state_dict,
                                                             set_model_state_dict, set_optimizer_state_dict)
        whole = StateDictOptions(full_state_dict=True)
        # set_model_state_dict keeps the current value of a weight the checkpoint lacks; the unsharded load refuses
        missing = sorted(self.module.state_dict().keys() - module_state.keys())
        if missing:
            raise KeyError(f"the checkpoint lacks {len(missing)} weights: {missing[:3]}")
        set_model_state_dict(self.module, module_state, options=whole)
        # the names torch.distributed.checkpoint gives this optimizer's parameters, in param_groups order (no gather)
        groups = [g["params"] for g in get_optimizer_state_dict(self.module, self.opt.optimizer)["param_groups"]]
        set_optimizer_state_dict(self.module, self.opt.optimizer, _named(optimizer, groups), options=whole)

    def resume(self) -> str | None:
        """Load the newest readable checkpoint; returns its path (None: nothing to resume). A bad newer one is
        skipped with a warning naming it; when none can be read, CheckpointError lists why."""
        errors, bad = [], []
        for path in self.resume_candidates():
            try:
                self.load(path)
            except CheckpointError as e:
                if self.acc.is_main_process:
                    logger.warning("%s: skipping an unreadable checkpoint: %s", self.name, e)
                errors.append(str(e))
                bad.append(path)
                continue
            if self.acc.is_main_process:
                for b in bad:  # out of the rotation's (and the next resume's) way, kept for inspection
                    shutil.rmtree(b + ".unreadable", ignore_errors=True)
                    os.replace(b, b + ".unreadable")
            return path
        if errors:
            raise CheckpointError(f"{self.name}: cannot resume, no readable checkpoint in {self.ckpt_root} "
                                  f"(keep_checkpoints={self.args.keep_checkpoints}): " + "; ".join(errors))
        return None

    # ---- logging ----
    def _log(self, record: dict) -> None:
        self.history.append(record)
        if not self.acc.is_main_process:
            return
        os.makedirs(self.out_dir, exist_ok=True)
        with open(os.path.join(self.out_dir, "metrics.jsonl"), "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self._tb = SummaryWriter(os.path.join(self.out_dir, "tb"))
            except Exception:  # noqa: BLE001 - tensorboard is optional
                self._tb = False
        if self._tb:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "step":
                    self._tb.add_scalar(f"{self.name}/{k}", v, record["step"])

    def evaluate(self) -> dict:
        if self.eval_fn is None:
            return {}
        module = self.acc.unwrap_model(self.module)
        was_training = module.training
        module.eval()
        with torch.no_grad():
            out = self.eval_fn(module)
        module.train(was_training)
        self._log({"step": self.step, "stage": self.name, **{f"eval_{k}": v for k, v in out.items()}})
        return out

    # ---- the loop ----
    def train_step(self) -> dict:
        a = self.args
        micro = self.loader.next_step(a.grad_accum)
        dev = self.acc.device
        micro = [{k: v.to(dev) for k, v in b.items()} for b in micro]
        if self.prepare_fn is not None:
            with torch.no_grad():
                micro = [self.prepare_fn(self.acc.unwrap_model(self.module), b) for b in micro]
        # The global token count is known before any forward (it depends on the batch alone), so every
        # micro-batch's summed loss is divided by it directly.
        counts = torch.tensor([float(self.count_fn(b)) for b in micro], device=dev)
        total = self.acc.reduce(counts.sum(), reduction="sum").clamp(min=1.0)
        scale = self.acc.num_processes / total  # DDP averages gradients over processes
        loss_sum, parts_sum = torch.zeros((), device=dev), {}
        for i, batch in enumerate(micro):
            ctx = self.acc.no_sync(self.module) if i < len(micro) - 1 else _null()
            with ctx, self._autocast():
                s, parts = self.loss_step(self.module, batch)
                if self.deepspeed:  # the engine steps inside backward, after the last micro-batch; the loss is
                    self.acc.sync_gradients = i == len(micro) - 1  # scaled already (no division by accumulation)
                    self.acc.backward(s * scale, scale_wrt_gas=False)
                else:
                    self.acc.backward(s * scale)
            loss_sum += s.detach().float()
            for k, v in parts.items():
                parts_sum[k] = parts_sum.get(k, 0.0) + v.float()
        loss = (self.acc.reduce(loss_sum, reduction="sum") / total).item()
        if not math.isfinite(loss):
            self.opt.zero_grad(set_to_none=True)
            raise NonFiniteLoss(
                f"{self.name}: non-finite loss {loss} at step {self.step + 1}; "
                f"last good checkpoint: {self.latest_checkpoint() or 'none (stage start)'}"
            )
        gnorm = self.acc.clip_grad_norm_(self.module.parameters(), a.max_grad_norm) if a.max_grad_norm else None
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        self.step += 1
        out = {"loss": loss, "tokens": total.item(), "lr": self.sched.get_last_lr()[0],
               "model_tokens": sum(b["input_ids"].numel() for b in micro) * self.acc.num_processes}
        if gnorm is not None:
            out["grad_norm"] = float(gnorm)
        for k, v in parts_sum.items():
            out[k] = (self.acc.reduce(v, reduction="sum") / total).item()
        return out

    def _autocast(self):
        if self.autocast_dtype is not None:
            return torch.autocast(self.acc.device.type, dtype=self.autocast_dtype)
        return self.acc.autocast()

    def step_dtype(self) -> torch.dtype:
        """The dtype the step's GEMMs run in: the autocast dtype, else the trained parameters'."""
        if self.autocast_dtype is not None:
            return self.autocast_dtype
        mp = self.acc.mixed_precision
        if mp in ("bf16", "fp16"):
            return torch.bfloat16 if mp == "bf16" else torch.float16
        return next(p for p in self.module.parameters() if p.requires_grad).dtype

    def mfu(self, model_tokens_per_s: float) -> float:
        """Model FLOPs utilisation at this input-token rate (all processes together, one device each)."""
        from .flops import gemm_peak
        peak = gemm_peak(self.step_dtype(), self.acc.device) * self.acc.num_processes
        return self.flops_per_token * model_tokens_per_s / peak

    def out_of_time(self) -> bool:
        return bool(self.args.max_seconds) and self.seconds >= self.args.max_seconds

    def run(self, resume: bool = False, stop_after: int | None = None) -> dict:
        """Train to args.steps, or until the steps have taken args.max_seconds (from the latest checkpoint if
        resume); returns the final evaluation with the steps done and their seconds. stop_after: raise
        StopRequested after that many steps of this call (a simulated interruption)."""
        if self.deepspeed:  # every run saves a checkpoint, at the end at least: refused before training, not after
            _refuse_zero3("a Trainer run (it saves checkpoints)")
        torch.manual_seed(self.args.seed)
        random.seed(self.args.seed)
        if resume:
            self.resume()
        self.module.train()
        done_now = 0
        bar = tqdm(total=self.args.steps, initial=self.step, desc=self.name, disable=not self.acc.is_main_process,
                   dynamic_ncols=True)
        t0, tokens, model_tokens = time.perf_counter(), 0.0, 0.0
        if self.args.activation_checkpointing:  # again: an earlier run() switched it off at its end
            _enable_activation_checkpointing(self.acc.unwrap_model(self.module), self.name)
        try:
            with packed_training_linears(self.module, enabled=self.args.packed_linears):
                return self._loop(bar, t0, tokens, model_tokens, done_now, stop_after)
        finally:
            if self.args.activation_checkpointing:  # the model leaves this stage as it came: the next may not want it
                _disable_activation_checkpointing(self.acc.unwrap_model(self.module))

    def _loop(self, bar, t0: float, tokens: float, model_tokens: float, done_now: int, stop_after) -> dict:
        while self.step < self.args.steps and not self.out_of_time():
            position, rng = self.loader.position, _rng_state()
            try:
                started = time.perf_counter()
                rec = self.train_step()
                self.seconds += time.perf_counter() - started
            except KeyboardInterrupt:
                # Ctrl-C: the step in flight is dropped (its gradients never applied, its data and random numbers
                # given back); the state after the last finished step is saved, so `resume` loses nothing.
                self.opt.zero_grad(set_to_none=True)
                self.loader.position = position
                _set_rng_state(rng)
                bar.close()
                if self.step and self.latest_checkpoint() != os.path.join(self.ckpt_root, f"step-{self.step:07d}"):
                    self.save()
                raise
            done_now += 1
            tokens += rec["tokens"]
            model_tokens += rec["model_tokens"]
            elapsed = max(1e-9, time.perf_counter() - t0)
            speed = {"tokens_per_s": tokens / elapsed, "model_tokens_per_s": model_tokens / elapsed}
            if self.flops_per_token:
                speed["mfu"] = self.mfu(model_tokens / elapsed)
            bar.update(1)
            bar.set_postfix(loss=f"{rec['loss']:.4f}", tok_s=f"{speed['tokens_per_s']:.0f}")
            if self.step % self.args.log_every == 0 or self.step == self.args.steps or self.out_of_time():
                self._log({"step": self.step, "stage": self.name, **rec, **speed})
            if self.args.eval_every and self.step % self.args.eval_every == 0 and self.step < self.args.steps:
                self.evaluate()
            if self.args.save_every and self.step % self.args.save_every == 0:
                self.save()
            if stop_after is not None and done_now >= stop_after:
                bar.close()
                raise StopRequested(f"stopped after step {self.step}")
        bar.close()
        final = self.evaluate()
        if not self.args.save_every or self.step % self.args.save_every:
            self.save()
        return {**final, "steps_done": self.step, "train_seconds": self.seconds}


def count_targets(batch) -> int:
    """The tokens a loss counts (losses.target_mask), so that the step's mean divides by exactly those."""
    return int(target_mask(batch["labels"]).sum())


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
