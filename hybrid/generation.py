"""A batched decode engine for hybrids and plain transformers alike.

What it does that `GenerationMixin.generate` spends time on otherwise:
- a preallocated cache: attention layers write K/V in place into [b, kv_heads, max_len, head_dim] buffers and
  attend to the filled prefix only (hybrid.cache.PreallocatedLayer), instead of concatenating a growing tensor
  every step (DynamicLayer) or attending to the whole buffer (StaticLayer); mixer layers keep their fixed-size
  conv and SSM states; the attention mask is one preallocated buffer, sliced;
- prefill computes logits for the last position only;
- one short Python loop per token: sample, append, check stops; no logits-processor or stopping-criteria objects;
- on the CPU, linear layers run on weights packed for the length of the call (hybrid.prepack): for the csrc
  few-rows kernel where it builds (decode steps; 1.3-1.6x oneDNN's packed kernel on a whole SmolLM2-135M step at
  batch 16 on the AMD machine this was measured on), oneDNN for prefill; oneDNN alone elsewhere.

Prompts of different lengths are left-padded (position ids count real tokens only; pads never touch a mixer's
state: see HybridModel). Sampling: temperature, top-k, top-p, from a seeded torch.Generator, so a seed gives the
same samples. Each row stops at its own EOS (or stop string) and then only emits padding.

Decode step modes (`decode=`):
- "eager": the step above, shapes growing with the filled prefix;
- "static": a fixed-shape step (StaticDecodeStep): tokens, positions and an additive [b, 1, 1, max_len] mask live
  in preallocated buffers, attention layers read their whole KV buffer (transformers' StaticLayer, written at a
  tensor position) under that mask, mixer states advance in place. Same tokens as "eager", every step the same
  kernels on the same addresses;
- "graph": the static step captured once per generate() call into a CUDA graph and replayed (CUDA only), which
  removes the per-kernel launch cost that dominates small-batch GPU decode;
- "compiled": the static step's forward, with the greedy argmax, through torch.compile (inductor, dynamic=False;
  C++ kernels on the CPU, Triton on CUDA, default mode there: no CUDA graphs, see `compiled_decode_step`).
  Compiled once per (model, batch, cache length) and reused by later generate() calls of that shape (the cache
  length is rounded up to a multiple of COMPILE_LEN_BUCKET so that prompts of nearby lengths share one
  compilation); the compilation is timed apart (GenerationOutput.compile_seconds), not as decode time. Inside
  the compiled region the csrc kernels that are torch.library custom ops (the decode attention, the Mamba2 step)
  still run, and the rest of the mixers run their PyTorch decode step, fused by inductor (pybind kernels are
  opaque to dynamo and would split the graph at every mixer layer; hybrid.ops.backends.traceable). Linear layers
  are not packed by hybrid.prepack (dynamo cannot trace oneDNN's packed op), so prepack is off; on the CPU inductor
  freezes the weights into the graph and packs them itself (`compiled_decode_step`), and a model whose weights
  changed since is compiled again.
  Tokens equal "static" up to float rounding (another summation order);
- "auto" (default): "graph" on CUDA where the static step applies and the parameters are not sharded (FSDP2,
  ZeRO-3 gather them inside forward); on the CPU "compiled" for a generation of at least
  AUTO_COMPILE_MIN_NEW_TOKENS new tokens by a model with no trainable parameter (evaluation, time budgets, corpus
  sampling: the compilation costs tens of seconds once per model and shape, and a SmolLM2-135M step at batch 16
  ran 1.5-1.6x faster compiled than static in bfloat16), else "eager". A capture or compilation that fails falls
  back to the uncaptured static step with one warning.
The static step needs full attention layers (sliding-window layers keep a rolling buffer) and the sdpa or eager
attention implementation; `static_decode_unsupported` names what is in the way ("compiled" has the same needs).
Sampling stays outside the CUDA graph; the compiled step takes the greedy argmax inside its compiled region, and
a temperature > 0 draws with the eager sampler from the compiled logits (the draw reads a seeded torch.Generator,
which dynamo does not trace, and the same eager code keeps a seed's samples those of the other modes given equal
logits).

On a CPU the decode step of a small model is bound by its weight GEMMs (most of a SmolLM2-135M batch-16 step is
aten::mm with F.linear, by torch.profiler), which is why packing the weights is the engine's largest gain over HF
generate there (`bench throughput --prepack off onednn csrc`).

`HybridForCausalLM.generate()` routes here when it is called with nothing but inputs, lengths, sampling
settings and token ids (`generate_like_hf`); anything else (streamers, logits processors, beams, output_* flags)
goes to transformers' generate.
"""
from __future__ import annotations

import functools
import itertools
import types
import weakref
from dataclasses import dataclass, field

import torch
from transformers.cache_utils import Cache, StaticLayer

from .attention import NAME as DOCS_ATTENTION
from .cache import LayeredCache, cache_layers, teacher_attention_kinds
from .ops import backends
from .prepack import prepack_default, prepacked_linears

DECODE_MODES = ("auto", "eager", "static", "graph", "compiled")
# "compiled" rounds the cache length up to a multiple of this, so generate() calls whose prompt plus max_new_tokens
# land in the same bucket reuse one compilation (the extra slots stay masked: they cost attention reads, not tokens)
COMPILE_LEN_BUCKET = 64
# frozen compiled steps kept per model (each holds its own copy of the weights), the oldest dropped first
MAX_FROZEN_STEPS = 4
# decode="auto" on the CPU compiles the step of an untrained model's generations of at least this many new tokens
AUTO_COMPILE_MIN_NEW_TOKENS = 1024
_warned: set[str] = set()


@dataclass
class SamplingParams:
    max_new_tokens: int = 128
    temperature: float = 0.0  # 0: greedy
    top_k: int = 0  # 0: off
    top_p: float = 1.0
    seed: int | None = None
    stop_strings: list[str] = field(default_factory=list)

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={self.max_new_tokens} must be >= 1")
        if self.temperature < 0:
            raise ValueError(f"temperature={self.temperature} must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p={self.top_p} must lie in (0, 1]")
        if self.top_k < 0:
            raise ValueError(f"top_k={self.top_k} must be >= 0")


def static_cache(model, max_len: int, full_buffer: bool = False) -> Cache:
    """A preallocated cache for `model` (hybrid or plain transformers causal LM), max_len tokens per row;
    full_buffer: attention reads the whole buffer under a mask (the fixed-shape step), see cache_layers."""
    return LayeredCache(layers=cache_layers(model.config, max_len, full_buffer=full_buffer))


def static_decode_unsupported(model) -> str | None:
    """None when the fixed-shape decode step (and so a CUDA graph) applies to `model`, else why it does not."""
    cfg = model.config
    hybrid = getattr(cfg, "model_type", None) == "hybrid"
    teacher = cfg.teacher_config if hybrid else cfg
    types = cfg.layer_types if hybrid else ["attention"] * cfg.num_hidden_layers
    kinds = teacher_attention_kinds(teacher)
    sliding = [i for i, t in enumerate(types) if t == "attention" and kinds[i] == "sliding_attention"]
    if sliding:
        return f"layers {sliding} use sliding-window attention (a rolling KV buffer)"
    impl = getattr(cfg, "_attn_implementation", None) or "eager"
    if impl not in ("sdpa", "eager", DOCS_ATTENTION):  # sdpa_docs is sdpa under the step's mask
        return f"attention implementation {impl!r} takes no additive mask (the static step needs sdpa or eager)"
    return None


def cache_tensors(cache: Cache, kv_buffers: bool = True) -> list[torch.Tensor]:
    """Every tensor a cache holds (KV buffers, write positions, conv and SSM states), for snapshot and restore.
    kv_buffers=False leaves out the full-buffer attention layers' K/V: a step run ahead writes them only at and
    after the write position, which stays masked until the real step writes there again."""
    out: list[torch.Tensor] = []

    def visit(v):
        if isinstance(v, torch.Tensor):
            out.append(v)
        elif isinstance(v, (list, tuple)):
            for x in v:
                visit(x)
        elif isinstance(v, dict):
            for x in v.values():
                visit(x)

    for layer in cache.layers:
        if not kv_buffers and isinstance(layer, StaticLayer):
            visit(layer.cumulative_length)
        else:
            visit(vars(layer))
    return out


def _decode_step(model, ids, pos, mask, cache):
    """The fixed-shape decode step and its greedy token: what "compiled" hands to torch.compile."""
    logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, cache=cache, use_cache=True).logits[:, -1]
    return logits, logits.argmax(-1)


# model -> {(b, max_len, dtype, dev, frozen[, weights_version]): the compiled step}
_compiled_steps: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_compile_ids = itertools.count()


def weights_version(model) -> int:
    """A number that changes whenever a parameter of `model` is written in place (an optimizer step, a
    load_state_dict, a copy_): the sum of the parameters' autograd version counters."""
    return sum(p._version for p in model.parameters())


def compiled_decode_step(model, batch: int, max_len: int, frozen: bool | None = None):
    """`_decode_step` compiled for `model` at (batch, max_len), made once and kept for as long as the model lives.

    torch.compile(dynamic=False), default mode on every device: inductor's C++ kernels on the CPU, Triton on CUDA,
    no CUDA graphs (mode="reduce-overhead" would re-record its graphs for every generate() call, whose cache is
    new each time; decode="graph" is the launch-overhead remover on CUDA). Each key gets a code object of its own,
    because dynamo keeps compiled graphs, guards and its recompile limit per code object: models and shapes then
    never evict each other, and a step of a known shape hits its one graph.

    `frozen` (default: on the CPU) compiles with inductor's freezing: the weights become constants of the graph,
    folded and packed once, at compilation (bfloat16 linears run as oneDNN's packed linear). Freezing folds every
    static graph input, so the cache's tensors must not be marked static (`unmark_static`; StaticDecodeStep does
    it). A frozen step is keyed by `weights_version` as well, so a model whose weights changed since (a training
    step between two generate() calls) is compiled again, never run on stale weights; the stale step, which holds
    its own copy of the old weights, is dropped. Unfrozen, the parameters are graph inputs, read at each call."""
    p = next(model.parameters())
    if frozen is None:
        frozen = p.device.type == "cpu"
    shape = (batch, max_len, p.dtype, p.device, frozen)
    key = shape + ((weights_version(model),) if frozen else ())
    steps = _compiled_steps.setdefault(model, {})
    if key not in steps:
        _register_decode_sdpa()
        for old in [k for k in steps if k[:len(shape)] == shape]:
            del steps[old]
        while frozen and sum(k[4] for k in steps) >= MAX_FROZEN_STEPS:  # each holds a copy of the weights
            del steps[next(k for k in steps if k[4])]  # the oldest
        name = f"_decode_step_{next(_compile_ids)}"
        code = _decode_step.__code__.replace(co_name=name, co_qualname=name)
        fn = torch.compile(types.FunctionType(code, _decode_step.__globals__, name), dynamic=False)
        steps[key] = functools.partial(_frozen_call, fn) if frozen else fn
    return steps[key]


def _decode_sdpa(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
    """transformers' "sdpa" attention, except for a one-token query (a decode step):

    - on the CPU, csrc's decode attention where it applies (`hybrid.ops.backends.decode_attention`: the cache is
      streamed once, query heads grouped per key/value head, masked slots skipped; inside a compiled step as well);
    - otherwise a grouped-query layer's query is folded onto the key/value heads ([b, heads, 1, d] -> [b, kv heads,
      groups, d]) under torch.compile as well. transformers does that fold only outside dynamo and under it repeats
      K and V per query head, a copy of the whole cache per layer and step: the compiled decode step's time then
      grew with the context like no other mode's. Same arithmetic."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from .ops import backends
    plain = kwargs.get("position_bias") is None and kwargs.get("softcap") is None and kwargs.get("s_aux") is None
    if query.shape[2] == 1 and plain and not dropout:
        out = backends.decode_attention(query, key, value, attention_mask, scaling)
        if out is not None:
            return out, None
    groups = getattr(module, "num_key_value_groups", 1)
    if (torch.compiler.is_compiling() and query.shape[2] == 1 and groups > 1 and plain
            and (attention_mask is None or attention_mask.shape[1] == 1)):
        b, h, _, d = query.shape
        out = torch.nn.functional.scaled_dot_product_attention(
            query.reshape(b, h // groups, groups, d), key, value, attn_mask=attention_mask, dropout_p=dropout,
            scale=scaling)
        return out.reshape(b, h, 1, value.shape[-1]).transpose(1, 2).contiguous(), None
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                  is_causal=is_causal, **kwargs)


def _register_decode_sdpa() -> None:
    from transformers import AttentionInterface

    from .ops import backends
    if backends.kernel_choice() in ("auto", "csrc"):
        backends.csrc_available()  # builds or loads csrc now: a compiled step cannot do it inside its graph
    AttentionInterface.register("sdpa", _decode_sdpa)  # transformers' documented override of an implementation


def unmark_static(tensors) -> None:
    """Undo torch._dynamo.mark_static_address on `tensors` (transformers marks its static KV buffers so that CUDA
    graphs can keep their addresses). Inductor's freezing takes every static input for a constant and folds it
    into the graph: a frozen step would then read the cache as it was at compilation."""
    for t in tensors:
        if hasattr(t, "_dynamo_static_input_type"):
            del t._dynamo_static_input_type


def _frozen_call(fn, *args):
    # inductor reads `freezing` from its global config when it compiles (at a first call), not from
    # torch.compile(options=...); patched for the call only, so other compilations are unaffected
    with torch._inductor.config.patch(freezing=True):
        return fn(*args)


class StaticDecodeStep:
    """The decode step with fixed shapes and fixed tensor addresses, run eagerly, replayed from a CUDA graph or
    through torch.compile (`compiled_decode_step`).

    Inputs live in buffers: token ids [b, 1], positions [b, 1], and an additive mask [b, 1, 1, max_len] (0 where a
    cache slot holds a real token, the dtype's minimum elsewhere); the cache must come from
    `static_cache(model, max_len, full_buffer=True)` after the prefill. Each call writes the new token at cache
    index `slot` (the same for every row: prompts are left-padded) and returns logits [b, V] (a buffer that the
    next call overwrites). The compiled step also leaves the greedy next tokens [b] in `tokens` (None otherwise).
    A compiled step is compiled (or found compiled) and warmed up on construction; `compile_seconds` says how long
    that took.
    """

    def __init__(self, model, cache: Cache, prompt_mask: torch.Tensor, max_len: int, graph: bool = False,
                 compiled: bool = False):
        import time
        if graph and compiled:
            raise ValueError("a decode step is either captured in a CUDA graph or compiled, not both")
        _register_decode_sdpa()
        dev = prompt_mask.device
        b = prompt_mask.shape[0]
        dtype = next(model.parameters()).dtype
        self.model, self.cache = model, cache
        self.ids = torch.zeros((b, 1), dtype=torch.long, device=dev)
        self.pos = torch.zeros((b, 1), dtype=torch.long, device=dev)
        self.mask = torch.full((b, 1, 1, max_len), torch.finfo(dtype).min, dtype=dtype, device=dev)
        self.mask[:, 0, 0, :prompt_mask.shape[1]].masked_fill_(prompt_mask.bool(), 0)
        self.graph = None
        self.logits = None
        self.tokens = None
        self.compiled = None
        if compiled:
            frozen = dev.type == "cpu"
            if frozen:  # the cache is state, not a weight (compiled_decode_step)
                unmark_static(cache_tensors(cache))
            self.compiled = compiled_decode_step(model, b, max_len, frozen=frozen)
        self.compile_seconds = 0.0
        if graph:
            self._capture()
        if compiled:
            t0 = time.perf_counter()
            self.warm_up(1)  # compiles on the first step of this shape; a cache hit costs one step
            self.compile_seconds = time.perf_counter() - t0

    def _forward(self) -> torch.Tensor:
        if self.compiled is not None:
            with backends.traceable():  # the mixers' traceable decode step (module docstring)
                logits, self.tokens = self.compiled(self.model, self.ids, self.pos, self.mask, self.cache)
            return logits
        return self.model(input_ids=self.ids, attention_mask=self.mask, position_ids=self.pos, cache=self.cache,
                          use_cache=True).logits[:, -1]

    def warm_up(self, runs: int = 2) -> None:
        """Run the step `runs` times (on a side stream on CUDA, as graph capture requires), then restore every
        cache tensor: kernels get tuned and lazy buffers allocated, and the generation state is as before."""
        saved = [(t, t.clone()) for t in cache_tensors(self.cache, kv_buffers=False)]
        try:
            if self.ids.device.type == "cuda":
                side = torch.cuda.Stream(self.ids.device)
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    for _ in range(runs):
                        self._forward()
                torch.cuda.current_stream().wait_stream(side)
            else:
                for _ in range(runs):
                    self._forward()
        finally:
            for t, copy in saved:
                t.copy_(copy)

    def _capture(self) -> None:
        if self.ids.device.type != "cuda":
            raise ValueError(f"decode='graph' needs a CUDA model, this one is on {self.ids.device}")
        self.warm_up()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):  # recorded, not executed: the cache is untouched
            self.logits = self._forward()
        self.graph = graph

    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor, slot: int) -> torch.Tensor:
        self.ids.copy_(tokens.view(-1, 1))
        self.pos.copy_(positions.view(-1, 1))
        self.mask[:, 0, 0, slot] = 0
        if self.graph is None:
            return self._forward()
        self.graph.replay()
        return self.logits


def resolve_decode(model, decode: str, dev: torch.device, max_new_tokens: int | None = None) -> str:
    """The decode step `generate` runs for `decode` on this model and device; ValueError (with the reason) where the
    one asked for does not apply. `max_new_tokens`: the call's, for "auto" on the CPU (module docstring)."""
    if decode not in DECODE_MODES:
        raise ValueError(f"decode={decode!r} is not one of {DECODE_MODES}")
    why = static_decode_unsupported(model)
    if decode == "auto":
        # sharded parameters (FSDP2 DTensors, ZeRO-3 partitions) gather inside forward: keep collectives out of graphs
        p = next(model.parameters())
        sharded = type(p).__name__ == "DTensor" or hasattr(p, "ds_id")
        if why is not None or sharded:
            return "eager"
        if dev.type == "cuda":
            return "graph"
        # a long generation of a model nobody trains: the compilation (tens of seconds, once per model and shape)
        # pays for itself; a trained model's frozen step would be compiled again after every optimizer step
        frozen = not any(q.requires_grad for q in model.parameters())
        long = max_new_tokens is not None and max_new_tokens >= AUTO_COMPILE_MIN_NEW_TOKENS
        return "compiled" if dev.type == "cpu" and frozen and long else "eager"
    if decode in ("static", "graph", "compiled") and why is not None:
        raise ValueError(f"decode={decode!r} does not apply to this model: {why}")
    if decode == "graph" and dev.type != "cuda":
        raise ValueError(f"decode='graph' needs a CUDA model, this one is on {dev}")
    return decode


def decode_prepack(mode: str, prepack: bool | str | None) -> bool | str | None:
    """The prepack setting (hybrid.prepack) the decode steps of a call with decode step `mode` (resolved) run with:
    unchanged, except that the compiled step traces F.linear (dynamo cannot trace oneDNN's packed op; on the CPU
    inductor packs the frozen weights itself), so it packs nothing; there `prepack` decides the prefill's packing
    (generate)."""
    return False if mode == "compiled" else prepack


def sample_candidates(logits: torch.Tensor, p: SamplingParams) -> tuple[torch.Tensor, torch.Tensor]:
    """The distribution a sampled token is drawn from, as (probs [b, k], token ids [b, k]): softmax(logits / T),
    cut to the top_k largest (ties with the k-th kept) and to the nucleus (tokens whose more probable predecessors
    hold at most top_p of the mass), renormalised by the draw. Probabilities in descending order.

    The nucleus is searched among the 64 most probable tokens first, then 1024, then the sorted vocabulary, each
    time a row's nucleus may reach beyond the last: a peaked distribution costs a top-k, not a sort."""
    probs = torch.softmax(logits.float() / p.temperature, -1)  # [b, V]
    V = probs.shape[-1]
    if p.top_k and p.top_k < V:
        kth = torch.topk(probs, p.top_k, dim=-1).values[:, -1:]
        probs = probs.masked_fill(probs < kth, 0)
        probs = probs / probs.sum(-1, keepdim=True)  # the nucleus is a share of the top-k distribution
    if p.top_p >= 1.0:
        return probs, torch.arange(V, device=probs.device).expand_as(probs)
    for k in (64, 1024, V):
        k = min(k, V)
        # sorted, descending; a flat distribution ends in a sort of the vocabulary (cheaper than its top-V)
        vals, idx = torch.sort(probs, descending=True, dim=-1) if k == V else torch.topk(probs, k, dim=-1)
        before = vals.cumsum(-1) - vals  # mass of the more probable tokens
        # all of a row's nucleus lies in its top k once the first token left out has more than top_p before it
        if k == V or bool((before[:, -1] + vals[:, -1] > p.top_p).all()):
            return vals.masked_fill(before > p.top_p, 0), idx


def _draw(probs: torch.Tensor, ids: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
    """One token per row from unnormalised probs [b, k] over ids [b, k], by inverse CDF: one uniform number per
    row (torch.multinomial draws from the generator per vocabulary entry; `hybrid-distill bench sampler` times
    both)."""
    cdf = probs.double().cumsum(-1)
    u = torch.rand((probs.shape[0], 1), generator=gen, device=probs.device, dtype=torch.float64) * cdf[:, -1:]
    # first index whose CDF exceeds u: a token of zero probability spans an empty interval and is never hit
    at = torch.searchsorted(cdf, u, right=True).clamp_(max=probs.shape[-1] - 1)
    return ids.gather(-1, at)[:, 0]


def sample(logits: torch.Tensor, p: SamplingParams, gen: torch.Generator | None) -> torch.Tensor:
    """[b, V] -> [b] next tokens."""
    if p.temperature == 0:
        return logits.argmax(-1)
    return _draw(*sample_candidates(logits, p), gen)


def reference_probs(logits: torch.Tensor, p: SamplingParams) -> torch.Tensor:
    """The sampling distribution by its definition: softmax(logits / T) over the top_k logits, then the nucleus
    (tokens with at most top_p of the mass before them) from a full sort, renormalised. [b, V] -> [b, V]."""
    z = logits.float() / p.temperature
    if p.top_k:
        z = z.masked_fill(z < torch.topk(z, min(p.top_k, z.shape[-1]), dim=-1).values[:, -1:], float("-inf"))
    probs = torch.softmax(z, -1)
    if p.top_p < 1.0:
        sp, si = torch.sort(probs, descending=True, dim=-1)
        sp = sp.masked_fill(sp.cumsum(-1) - sp > p.top_p, 0)
        probs = torch.zeros_like(probs).scatter(-1, si, sp)
    return probs / probs.sum(-1, keepdim=True)


def reference_sample(logits: torch.Tensor, p: SamplingParams, gen: torch.Generator | None) -> torch.Tensor:
    """`reference_probs` drawn by torch.multinomial (the engine's sampler before its top-k nucleus and inverse-CDF
    draw). [b, V] -> [b]."""
    return torch.multinomial(reference_probs(logits, p), 1, generator=gen)[:, 0]


@dataclass
class GenerationOutput:
    sequences: list[list[int]]  # generated tokens per row (prompt excluded, stop token included)
    prompt_tokens: int
    generated_tokens: int
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    decode_mode: str = "eager"  # the decode step that ran: eager, static, graph or compiled
    linear: str = "aten"  # the CPU linear layers: "aten" (F.linear), "csrc-skinny" or "onednn-packed" (hybrid.prepack)
    compile_seconds: float = 0.0  # "compiled": compiling (or finding compiled) and warming up the step, not in decode


def check_length(model, prompts: list[list[int]], max_new_tokens: int) -> None:
    """ValueError where the longest prompt plus max_new_tokens needs more positions than the model's config has
    (max_position_embeddings; no limit where the config has none). Positions count a row's real tokens only, so
    padding does not count. Beyond the limit, RoPE attention meets positions it never saw in training and degrades
    without any error of its own."""
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    i = max(range(len(prompts)), key=lambda k: len(prompts[k]))
    if limit and len(prompts[i]) + max_new_tokens > limit:
        raise ValueError(f"prompt {i} has {len(prompts[i])} tokens; with max_new_tokens={max_new_tokens} that is "
                         f"{len(prompts[i]) + max_new_tokens} positions, beyond the model's "
                         f"max_position_embeddings={limit} (shorten the prompt or lower max_new_tokens)")


@torch.no_grad()
def generate(model, prompts: list[list[int]], params: SamplingParams | None = None, eos_token_id=None,
             pad_token_id: int = 0, tokenizer=None, timer=None, on_step=None, decode: str = "auto",
             prepack: bool | str | None = None) -> GenerationOutput:
    """Generate for a batch of token-id prompts. eos_token_id: an id or list of ids (default: the model's).

    decode: the decode step, "auto" | "eager" | "static" | "graph" | "compiled" (module docstring).
    prepack: run the CPU linear layers on oneDNN-packed weights for this call (hybrid.prepack; packing time is
    counted in prefill_seconds); None: on the CPU unless HYBRID_PREPACK=0. "csrc" / "onednn": that packing
    (hybrid.prepack.packing_kind). With decode="compiled" it decides the prefill's packing only (oneDNN): the
    compiled steps run inductor's own GEMMs (decode_prepack).

    timer: optional callable returning seconds (e.g. a synchronizing clock) for prefill / decode timing.
    on_step: optional callable(tokens [b] list[int], active [b] list[bool]) called after every sampled token
    (streaming); `active[i]` is False for rows that had already stopped before this step.

    A prompt whose length plus max_new_tokens exceeds the model's `config.max_position_embeddings` is a ValueError
    (check_length), never a silent run past the positions the model was trained on; no prompt is truncated, since
    which tokens to drop is the caller's choice.
    """
    import time
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    params = params or SamplingParams()
    check_length(model, prompts, params.max_new_tokens)
    clock = timer or time.perf_counter
    t0 = clock()
    _register_decode_sdpa()  # one-token attention on csrc's decode kernel where it applies (_decode_sdpa)
    dev = next(model.parameters()).device
    mode = resolve_decode(model, decode, dev, params.max_new_tokens)
    # the compiled step traces plain F.linear, but the prefill before it runs eagerly: packed as any prefill is
    pack_prefill = mode == "compiled" and (prepack_default(dev) if prepack is None else bool(prepack))
    prepack = decode_prepack(mode, prepack)
    with prepacked_linears(model, prepack) as packed:
        out = _generate(model, prompts, params, eos_token_id, pad_token_id, tokenizer, clock, t0, on_step, decode,
                        pack_prefill)
    out.linear = packed.label
    return out


def _fixed_step(model, cache, prompt_mask, total: int, mode: str, decode: str):
    """(the fixed-shape step for `mode`, or None for eager; the mode that runs). A CUDA graph capture or a
    compilation that fails under decode='auto' falls back to the static step with one warning: it must not cost the
    user the generation."""
    if mode == "eager":
        return None, mode
    try:
        return StaticDecodeStep(model, cache, prompt_mask, total, graph=mode == "graph",
                                compiled=mode == "compiled"), mode
    except Exception as e:  # noqa: BLE001 - see above
        if decode != "auto":
            raise
        what = "CUDA graph capture" if mode == "graph" else "compilation"  # e.g. no C++ compiler for inductor
        if what not in _warned:
            _warned.add(what)
            import warnings
            warnings.warn(f"{what} of the decode step failed ({type(e).__name__}: {e}); "
                          "decoding eagerly on the full-buffer cache", stacklevel=3)
        return StaticDecodeStep(model, cache, prompt_mask, total, graph=False), "static"


def _generate(model, prompts, params, eos_token_id, pad_token_id, tokenizer, clock, t0, on_step, decode,
              pack_prefill=False):
    """generate's body; t0: the clock at entry (prefill_seconds counts from it, packing included). pack_prefill:
    the prefill alone runs on oneDNN-packed linears, unpacked again before any decode step."""
    params = params or SamplingParams()
    dev = next(model.parameters()).device
    if eos_token_id is None:
        eos_token_id = getattr(model.generation_config, "eos_token_id", None)
    eos = set([eos_token_id] if isinstance(eos_token_id, int) else (eos_token_id or []))
    if params.stop_strings and tokenizer is None:
        raise ValueError("stop_strings need the tokenizer to decode with")
    b, L = len(prompts), max(len(p) for p in prompts)
    total = L + params.max_new_tokens
    mode = resolve_decode(model, decode, dev, params.max_new_tokens)
    if mode == "compiled" and params.max_new_tokens > 1:  # one compilation serves a bucket of lengths
        total = -(-total // COMPILE_LEN_BUCKET) * COMPILE_LEN_BUCKET
    ids = torch.full((b, L), pad_token_id, dtype=torch.long, device=dev)
    mask = torch.zeros((b, total), dtype=torch.long, device=dev)
    for i, p in enumerate(prompts):
        ids[i, L - len(p):] = torch.tensor(p, device=dev)
        mask[i, L - len(p):L] = 1
    positions = (mask[:, :L].cumsum(-1) - 1).clamp(min=0)
    cache = static_cache(model, total, full_buffer=mode != "eager")
    gen = None
    if params.temperature > 0:
        gen = torch.Generator(device=dev)
        # without an explicit seed, draw one from the global generator, so torch.manual_seed reproduces a run
        seed = params.seed if params.seed is not None else int(torch.randint(0, 2**62, (1,)))
        gen.manual_seed(seed)

    with prepacked_linears(model, "onednn" if pack_prefill else False):  # oneDNN: the prefill's packing
        logits = model(input_ids=ids, attention_mask=mask[:, :L], position_ids=positions, cache=cache,
                       use_cache=True, logits_to_keep=1).logits[:, -1]
    t1 = clock()
    out = torch.full((b, params.max_new_tokens), pad_token_id, dtype=torch.long, device=dev)
    done = torch.zeros(b, dtype=torch.bool, device=dev)
    eos_t = torch.tensor(sorted(eos), device=dev) if eos else None
    pos = positions[:, -1:]
    lengths = torch.full((b,), params.max_new_tokens, dtype=torch.long, device=dev)
    c0 = clock()
    step, mode = _fixed_step(model, cache, mask[:, :L], total, mode, decode) if params.max_new_tokens > 1 \
        else (None, mode)
    compile_seconds = clock() - c0 if mode == "compiled" and step is not None else 0.0
    # greedy with the compiled step: its own argmax of the logits it returned (the prefill's are sampled here)
    argmax_inside = params.temperature == 0 and mode == "compiled" and step is not None
    for t in range(params.max_new_tokens):
        nxt = step.tokens if argmax_inside and t > 0 else sample(logits, params, gen)
        nxt = torch.where(done, torch.full_like(nxt, pad_token_id), nxt)
        out[:, t] = nxt
        was_done = done.clone()
        if eos_t is not None:
            done |= torch.isin(nxt, eos_t)
        if params.stop_strings:
            for i in range(b):
                if not done[i]:
                    text = tokenizer.decode(out[i, max(0, t - 16):t + 1])
                    done[i] = any(s in text for s in params.stop_strings)
        lengths = torch.where(done & ~was_done, torch.full_like(lengths, t + 1), lengths)
        if on_step is not None:
            on_step(nxt.tolist(), (~was_done).tolist())
        if bool(done.all()) or t == params.max_new_tokens - 1:
            break
        mask[:, L + t] = 1
        pos = pos + 1
        if step is not None:
            logits = step(nxt, pos, L + t)
        else:
            logits = model(input_ids=nxt[:, None], attention_mask=mask[:, :L + t + 1], position_ids=pos, cache=cache,
                           use_cache=True).logits[:, -1]
    t2 = clock()
    seqs = [out[i, :int(lengths[i])].tolist() for i in range(b)]
    return GenerationOutput(seqs, prompt_tokens=sum(len(p) for p in prompts),
                            generated_tokens=sum(len(s) for s in seqs), prefill_seconds=t1 - t0,
                            decode_seconds=t2 - t1 - compile_seconds, decode_mode=mode if step is not None else "eager",
                            compile_seconds=compile_seconds)


def stream_text(model, tokenizer, prompt_ids: list[int], params: SamplingParams | None, write, eos_token_id=None,
                pad_token_id: int = 0) -> str:
    """Generate for one prompt (token ids) and call `write(piece)` with each new piece of text as it completes.

    Every step decodes the whole text so far (skip_special_tokens=True) and writes what it adds, except while the
    text ends in "\ufffd": a character that takes several tokens (a byte-level tokenizer's multi-byte UTF-8) is
    written once its last token arrives, never as replacement characters. Returns the decoded text of all the
    tokens generated, which is the written pieces joined unless generation stopped inside a character."""
    tokens: list[int] = []
    shown = ""

    def on_step(step, active):
        nonlocal shown
        if not active[0]:
            return
        tokens.append(step[0])
        text = tokenizer.decode(tokens, skip_special_tokens=True)
        if not text.endswith("\ufffd"):
            if len(text) > len(shown):
                write(text[len(shown):])
            shown = text

    out = generate(model, [prompt_ids], params, eos_token_id=eos_token_id, pad_token_id=pad_token_id, on_step=on_step)
    return tokenizer.decode(out.sequences[0], skip_special_tokens=True)


ENGINE_KWARGS = {"attention_mask", "max_new_tokens", "do_sample", "temperature", "top_k", "top_p", "eos_token_id",
                 "pad_token_id"}
# GenerationConfig fields the engine honours or that do not change the tokens drawn (a config setting anything
# else, e.g. beams, repetition penalty, min_p, goes to transformers' generate).
_CONFIG_FIELDS_OK = ENGINE_KWARGS | {"bos_token_id", "disable_compile", "use_cache", "transformers_version",
                                     "_from_model_config"}


# Fields that change nothing at these values (TRL's GRPO sets repetition_penalty=1.0 explicitly).
_NEUTRAL = {"repetition_penalty": 1.0, "num_beams": 1, "num_return_sequences": 1, "typical_p": 1.0,
            "min_p": 0.0, "no_repeat_ngram_size": 0, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0}


def engine_kwargs_from_config(gc) -> dict | None:
    """The engine kwargs equivalent to GenerationConfig `gc`, or None when it asks for more than the engine does
    (trainers such as TRL's GRPO pass their sampling settings this way)."""
    diff = {k: v for k, v in gc.to_diff_dict().items() if not (k in _NEUTRAL and v in (None, _NEUTRAL[k]))}
    if set(diff) - _CONFIG_FIELDS_OK or gc.max_new_tokens is None or getattr(gc, "cache_implementation", None):
        return None
    keys = ("max_new_tokens", "do_sample", "temperature", "top_k", "top_p", "eos_token_id", "pad_token_id")
    return {k: getattr(gc, k) for k in keys if getattr(gc, k, None) is not None}


@torch.no_grad()
def generate_like_hf(model, input_ids: torch.Tensor, **kwargs) -> torch.Tensor:
    """The engine behind a `generate()`-shaped call: [b, L] (left-padded) -> [b, L + new], padding after EOS."""
    gc = model.generation_config
    get = lambda k: kwargs[k] if kwargs.get(k) is not None else getattr(gc, k, None)  # noqa: E731
    max_new = get("max_new_tokens")
    if max_new is None:
        max_new = (gc.max_length or 20) - input_ids.shape[1]
    do_sample = bool(get("do_sample"))
    params = SamplingParams(max_new_tokens=max_new, temperature=(get("temperature") or 1.0) if do_sample else 0.0,
                            top_k=(get("top_k") or 0) if do_sample else 0,
                            top_p=(get("top_p") or 1.0) if do_sample else 1.0)
    mask = kwargs.get("attention_mask")
    if mask is None:
        mask = torch.ones_like(input_ids)
    prompts = [row[m.bool()].tolist() for row, m in zip(input_ids, mask)]
    pad = get("pad_token_id")
    eos = get("eos_token_id")
    pad = pad if pad is not None else (eos if isinstance(eos, int) else (eos or [0])[0])
    out = generate(model, prompts, params, eos_token_id=eos, pad_token_id=pad)
    new = torch.full((input_ids.shape[0], max(len(s) for s in out.sequences)), pad, dtype=input_ids.dtype,
                     device=input_ids.device)
    for i, s in enumerate(out.sequences):
        new[i, :len(s)] = torch.tensor(s, dtype=input_ids.dtype)
    return torch.cat([input_ids, new], dim=1)
