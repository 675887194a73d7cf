"""Model FLOPs of training and inference, and this machine's measured GEMM peak: the two halves of MFU.

Model FLOPs count what the model needs, not what the kernels execute (recomputation and padding are not
counted), per token of a sequence of length T:

    forward       2 N + A + S       N: weights that enter a matrix product per token (every nn.Linear, the
                                    vocabulary head even when tied to the embedding, the short convolutions);
                                    the embedding lookup costs nothing
                                    A: attention, 4 heads * head_dim * (T + 1) / 2 per attention layer (QK^T and
                                    AV over the mean causal context)
                                    S: the mixers' recurrence, 5 d_inner * d_state per mixer layer (decay, input
                                    and output products of the state update)
    training      6 N + 3 (A + S) when every weight trains (the usual 6 N); with frozen weights the backward
                  still takes the input gradients (2 N, and both operands' gradients of the sequence products,
                  2 (A + S)) but weight gradients only for the trainable weights (2 N_trainable)

MFU = model FLOPs per second / the peak GEMM rate this machine measures for the dtype in use (`gemm_peak`): the
fraction of the machine's matrix-product speed that the model's own arithmetic reaches.
"""
from __future__ import annotations

import time

import torch
from torch import nn

_peaks: dict = {}


def _weights(model: nn.Module, trainable_only: bool = False) -> int:
    seen, n = set(), 0
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv1d)):
            w = m.weight
            key = (w.data_ptr(), id(m))  # a tied head is a second product with the same weight: counted
            if key in seen or (trainable_only and not w.requires_grad):
                continue
            seen.add(key)
            n += w.numel()
    return n


def _layer_kinds(config) -> list[str]:
    """'attention' or the mixer's name per layer, for a hybrid or a plain Transformer config."""
    kinds = getattr(config, "layer_types", None)
    if getattr(config, "teacher_config", None) is None or kinds is None:  # a plain Transformer
        return ["attention"] * config.num_hidden_layers
    return list(kinds)


def _head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def sequence_flops(config, seq_len: int) -> float:
    """A + S above: forward FLOPs per token of the attention scores and values and of the mixers' recurrence."""
    total = 0.0
    for kind in _layer_kinds(config):
        if kind == "attention":
            total += 4 * config.num_attention_heads * _head_dim(config) * (seq_len + 1) / 2
        elif kind == "mamba":
            total += 5 * config.d_inner_mamba * config.mamba_d_state
        else:
            total += 5 * config.d_inner * config.head_dim  # Mamba2: one head per query head, d_state = head_dim
    return total


def forward_flops(model: nn.Module, seq_len: int) -> float:
    """Forward FLOPs per token at sequence length seq_len."""
    return 2 * _weights(model) + sequence_flops(model.config, seq_len)


def train_flops(model: nn.Module, seq_len: int) -> float:
    """Forward and backward FLOPs per token with the weights that require grad training: 4 N + 2 N_trainable +
    3 (A + S) (6 N + 3 (A + S) when all do)."""
    seq = sequence_flops(model.config, seq_len)
    return 4 * _weights(model) + 3 * seq + 2 * _weights(model, trainable_only=True)


def gemm_peak(dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", seconds: float = 0.5) -> float:
    """FLOP/s of the fastest square matrix product in `dtype` on `device`, measured once per process for each
    (dtype, device, threads). On the CPU both of PyTorch's GEMM paths are tried, MKL (torch.mm) and oneDNN on a
    packed weight (hybrid.prepack), and the faster counts. The size grows from 256 while a product takes under
    50 ms, up to 2048 on the CPU and 8192 on a GPU, so a dtype without fast kernels costs seconds, not minutes."""
    device = torch.device(device)
    key = (dtype, device.type, torch.get_num_threads())
    if key not in _peaks:
        limit = 8192 if device.type == "cuda" else 2048
        size, best = 256, 0.0
        while True:
            rate, call = _best_rate(dtype, device, size, seconds / 4)
            best = max(best, rate)
            if size >= limit or call > 0.05:
                break
            size *= 2
        _peaks[key] = best
    return _peaks[key]


def _products(dtype: torch.dtype, device: torch.device, size: int):
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    yield lambda: torch.mm(a, b)
    if device.type == "cpu":
        from hybrid.prepack import dtype_supported, op_works, packed_linear
        if op_works() and dtype_supported(dtype):
            packed = b.to_mkldnn()
            yield lambda: packed_linear(a, packed, None)


def _best_rate(dtype, device, size: int, seconds: float) -> tuple[float, float]:
    """(FLOP/s of the fastest call over the products, seconds of the slowest product's best call)."""
    rate, slowest = 0.0, 0.0
    for product in _products(dtype, device, size):
        product()  # warm-up
        best, start = float("inf"), time.perf_counter()
        while best == float("inf") or time.perf_counter() - start < seconds:
            _sync(device)
            t0 = time.perf_counter()
            product()
            _sync(device)
            best = min(best, time.perf_counter() - t0)
        rate, slowest = max(rate, 2 * size ** 3 / best), max(slowest, best)
    return rate, slowest


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
