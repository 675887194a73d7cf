"""vLLM model class for this project's hybrids (importable only where vLLM is installed; registered by
`hybrid.vllm_plugin.register`). Written against vLLM's model interface (0.33): a model takes `vllm_config` and
`prefix`, layers keep their state in vLLM's paged caches, `load_weights` consumes the checkpoint's tensors.

- attention layers are vLLM's own decoder layers for the teacher family (llama, mistral, qwen2, qwen3), built from
  the teacher config stored in ours, so q/k norms, biases, RoPE scaling and sliding windows are whatever vLLM does
  for that teacher;
- Mamba2 layers are vLLM's MambaMixer2 with n_groups = n_heads; GQA-grouped x and B are expanded on load exactly as
  the GraniteMoeHybrid export does (`hybrid.export.expand_mamba2`); the gated-norm eps is the hybrid's own;
- decode steps use vLLM's Triton `selective_state_update` directly (the multi-head form with per-channel decays that
  the Mamba1 layout needs), so `--mamba-backend` does not apply to Mamba1 layers; the model is not wrapped for
  torch.compile (no piecewise CUDA graphs), and pipeline parallelism is not declared; vLLM's default max_model_len
  is the teacher's max_position_embeddings, unscaled by RoPE scaling (pass --max-model-len for longer);
- Mamba1 layers (MambaInLlama / M1 layout: x, z, B, C, dt projected from the layer input, B and C per group of N
  channels) are `GroupedMamba1Mixer` below, on vLLM's causal-conv1d and selective-scan kernels (see
  `hybrid.vllm_plugin` for the layout);
- the MLP is vLLM's LlamaMLP (gate/up/down, as every supported teacher).

Limits, refused at construction with the reason: Mamba1 and Mamba2 layers in one model (vLLM sizes one recurrent
state per model), Mamba1 layers with tensor parallelism, teachers of other families.
"""
from __future__ import annotations

import copy
from collections.abc import Iterable
from itertools import islice

import torch
from torch import nn

from vllm.config import VllmConfig, get_current_vllm_config
from vllm.distributed import get_tensor_model_parallel_world_size
from vllm.distributed.parallel_state import get_pp_group
from vllm.forward_context import get_forward_context
from vllm.model_executor.layers.layernorm import RMSNorm
from vllm.model_executor.layers.logits_processor import LogitsProcessor
from vllm.model_executor.layers.mamba import mamba_mixer as _vllm_mamba_mixer  # noqa: F401  (registers the op)
from vllm.model_executor.layers.mamba.abstract import MambaBase
from vllm.model_executor.layers.mamba.mamba_mixer2 import MambaMixer2
from vllm.model_executor.layers.mamba.mamba_utils import (
    MambaStateCopyFuncCalculator,
    MambaStateDtypeCalculator,
    MambaStateShapeCalculator,
    is_conv_state_dim_first,
)
from vllm.model_executor.layers.mamba.ops.causal_conv1d import causal_conv1d_fn, causal_conv1d_update
from vllm.model_executor.layers.mamba.ops.mamba_ssm import selective_scan_fn, selective_state_update
from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead, VocabParallelEmbedding
from vllm.model_executor.model_loader.weight_utils import default_weight_loader
from vllm.model_executor.models.interfaces import HasInnerState, IsHybrid
from vllm.model_executor.models.llama import LlamaMLP
from vllm.model_executor.models.utils import (
    is_pp_missing_parameter,
    make_empty_intermediate_tensors_factory,
    make_layers,
    maybe_prefix,
)
from vllm.sequence import IntermediateTensors
from vllm.utils.torch_utils import _encode_layer_name
from vllm.v1.attention.backends.registry import MambaAttentionBackendEnum

from .cache import teacher_attention_kinds
from .export import MAMBA2_TENSORS, expand_mamba2
from .vllm_plugin import mamba1_inputs, mamba1_scan_args, mamba1_step_args

def mixer_kind(config) -> str:
    """The one recurrent mixer of a hybrid config ("mamba2" or "mamba"); ValueError if none or both."""
    kinds = sorted(set(config.layer_types) - {"attention"})
    if len(kinds) != 1:
        raise ValueError(f"vLLM serves hybrids with exactly one recurrent mixer kind; layer_types has {kinds or 'none'}"
                         " (an all-attention model is the teacher: serve the teacher)")
    return kinds[0]


def attention_decoder_layer(vllm_config: VllmConfig, teacher, prefix: str) -> nn.Module:
    """vLLM's decoder layer of the teacher's family, built from the teacher config, with the teacher's sliding
    window on the layers that slide (vLLM only reads windows from the top-level config, which has none)."""
    kind = teacher.model_type
    i = int(prefix.rsplit(".", 1)[1])
    sliding = teacher_attention_kinds(teacher)[i] == "sliding_attention"
    if kind in ("llama", "mistral"):
        if kind == "llama":
            from vllm.model_executor.models.llama import LlamaDecoderLayer as Layer
        else:
            from vllm.model_executor.models.mistral import MistralDecoderLayer as Layer
        config = copy.copy(teacher)  # LlamaAttention takes its window from layer_types[layer index]
        config.layer_types = teacher_attention_kinds(teacher)
        return Layer(vllm_config=vllm_config, prefix=prefix, config=config)
    if kind == "qwen2":
        if sliding:
            raise ValueError(f"attention layer {i} of the qwen2 teacher uses a sliding window, which vLLM's Qwen2 "
                             "layer cannot be given per layer")
        from vllm.model_executor.models.qwen2 import Qwen2DecoderLayer
        return Qwen2DecoderLayer(config=teacher, cache_config=vllm_config.cache_config,
                                 quant_config=vllm_config.quant_config, prefix=prefix)
    if kind == "qwen3":
        from vllm.model_executor.models.qwen3 import Qwen3DecoderLayer
        return Qwen3DecoderLayer(config=teacher, cache_config=vllm_config.cache_config,
                                 quant_config=vllm_config.quant_config, prefix=prefix,
                                 per_layer_sliding_window=teacher.sliding_window if sliding else None)
    raise ValueError(f"teacher model_type={kind!r}: the vLLM plugin serves llama, mistral, qwen2 and qwen3 teachers")


class GroupedMamba1Mixer(MambaBase, nn.Module):
    """A MambaInLlama Mamba1 mixer on vLLM's kernels; parameter names as in `hybrid.mixers.mamba.MambaMixer`."""

    def __init__(self, config, model_config=None, cache_config=None, prefix: str = ""):
        nn.Module.__init__(self)
        tp = get_tensor_model_parallel_world_size()
        if tp != 1:
            raise ValueError(f"Mamba1 layers are served without tensor parallelism (tensor_parallel_size={tp})")
        d, di, dxb = config.hidden_size, config.d_inner_mamba, config.d_xb
        self.d_inner, self.d_state, self.d_conv = di, config.mamba_d_state, config.d_conv
        self.in_proj_x = nn.Linear(d, dxb, bias=False)
        self.in_proj_z = nn.Linear(d, di, bias=False)
        self.B_proj = nn.Linear(d, dxb, bias=False)
        self.C_proj = nn.Linear(d, di, bias=False)
        self.dt_proj_down = nn.Linear(d, config.dt_rank_mamba, bias=False)
        self.dt_proj = nn.Linear(config.dt_rank_mamba, di, bias=True)
        self.conv1d = nn.Conv1d(di, di, config.d_conv, groups=di, bias=config.conv_bias)
        self.A_log = nn.Parameter(torch.empty(di, self.d_state, dtype=torch.float32))  # decays stay fp32
        self.D = nn.Parameter(torch.empty(di))
        self.out_proj = nn.Linear(di, d, bias=False)
        context = get_current_vllm_config().compilation_config.static_forward_context
        if prefix in context:
            raise ValueError(f"duplicate layer name {prefix}")
        context[prefix] = self
        self.kv_cache = (torch.tensor([]), torch.tensor([]))
        self.model_config, self.cache_config, self.prefix = model_config, cache_config, prefix

    def forward(self, hidden_states: torch.Tensor, output: torch.Tensor) -> None:
        torch.ops.vllm.mamba_mixer(hidden_states, output, _encode_layer_name(self.prefix))

    def forward_impl(self, hidden_states: torch.Tensor, output: torch.Tensor) -> None:
        metadata = get_forward_context().attn_metadata
        metadata = metadata.get(self.prefix) if isinstance(metadata, dict) else None
        if metadata is None:  # vLLM's profiling run: no state, nothing to write
            return
        x, z, B, C, dt = mamba1_inputs(self, hidden_states)
        conv_state = self.kv_cache[0] if is_conv_state_dim_first() else self.kv_cache[0].transpose(-1, -2)
        ssm_state = self.kv_cache[1]
        weight = self.conv1d.weight.view(self.d_inner, self.d_conv)
        bias = self.conv1d.bias
        A, D, dt_bias = -torch.exp(self.A_log.float()), self.D.float(), self.dt_proj.bias.float()
        nd, npf = metadata.num_decode_tokens, metadata.num_prefill_tokens  # decode tokens come first
        ys = []
        if nd > 0:
            idx = metadata.state_indices_tensor_d
            u = causal_conv1d_update(x[:nd], conv_state, weight, bias, "silu", conv_state_indices=idx)
            y = torch.empty_like(u)
            args = mamba1_step_args(ssm_state, u, dt[:nd], A, B[:nd], C[:nd], D, z[:nd], dt_bias)
            selective_state_update(args["state"], args["x"], args["dt"], args["A"], args["B"], args["C"], args["D"],
                                   args["dt_bias"], z=args["z"], dt_softplus=True, state_batch_indices=idx,
                                   dst_state_batch_indices=idx, out=y.unflatten(-1, args["x"].shape[-2:]))
            ys.append(y)
        if npf > 0:
            sl = slice(nd, nd + npf)
            u = causal_conv1d_fn(x[sl].transpose(0, 1), weight, bias, activation="silu", conv_states=conv_state,
                                 has_initial_state=metadata.has_initial_states_p,
                                 cache_indices=metadata.state_indices_tensor_p,
                                 query_start_loc=metadata.query_start_loc_p, metadata=metadata)
            a = mamba1_scan_args(u, dt[sl], B[sl], C[sl], z[sl])
            y = selective_scan_fn(a["u"], ssm_state, a["delta"], A, a["B"], a["C"], D, a["z"], dt_bias,
                                  delta_softplus=True, cache_indices=metadata.state_indices_tensor_p,
                                  has_initial_state=metadata.has_initial_states_p,
                                  query_start_loc=metadata.query_start_loc_p,
                                  cu_chunk_seqlen=metadata.cu_chunk_seqlen_p,
                                  last_chunk_indices=metadata.last_chunk_indices_p)
            ys.append(y.transpose(0, 1))
        y = ys[0] if len(ys) == 1 else torch.cat(ys, 0)
        output[: nd + npf] = self.out_proj(y.to(hidden_states.dtype))

    def get_state_dtype(self) -> tuple[torch.dtype, ...]:
        return MambaStateDtypeCalculator.mamba1_state_dtype(
            self.model_config.dtype, self.cache_config.mamba_cache_dtype, self.cache_config.mamba_ssm_cache_dtype)

    def get_state_shape(self):
        return MambaStateShapeCalculator.mamba1_state_shape(
            tp_world_size=1, intermediate_size=self.d_inner, state_size=self.d_state, conv_kernel=self.d_conv)

    @property
    def mamba_type(self) -> MambaAttentionBackendEnum:
        return MambaAttentionBackendEnum.MAMBA1


class MixerDecoderLayer(nn.Module):
    """norm -> Mamba mixer -> residual -> norm -> MLP, with vLLM's fused residual RMSNorm."""

    def __init__(self, config, kind: str, vllm_config: VllmConfig, prefix: str):
        super().__init__()
        t = config.teacher_config
        self.kind = kind
        if kind == "mamba2":
            self.mamba = MambaMixer2(
                hidden_size=config.hidden_size, ssm_state_size=config.head_dim, conv_kernel_size=config.d_conv,
                intermediate_size=config.d_inner, use_conv_bias=config.conv_bias, use_bias=False,
                n_groups=config.num_attention_heads, num_heads=config.num_attention_heads, head_dim=config.head_dim,
                rms_norm_eps=config.gated_norm_eps, activation="silu", model_config=vllm_config.model_config,
                cache_config=vllm_config.cache_config, quant_config=vllm_config.quant_config, prefix=f"{prefix}.mamba")
        else:
            self.mamba = GroupedMamba1Mixer(config, vllm_config.model_config, vllm_config.cache_config,
                                            prefix=f"{prefix}.mamba")
        self.mlp = LlamaMLP(config.hidden_size, t.intermediate_size, t.hidden_act, quant_config=vllm_config.quant_config,
                            bias=bool(getattr(t, "mlp_bias", False)), prefix=f"{prefix}.mlp")
        self.input_layernorm = RMSNorm(config.hidden_size, eps=t.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps=t.rms_norm_eps)

    def forward(self, positions: torch.Tensor, hidden_states: torch.Tensor, residual: torch.Tensor | None):
        if residual is None:
            residual = hidden_states
            hidden_states = self.input_layernorm(hidden_states)
        else:
            hidden_states, residual = self.input_layernorm(hidden_states, residual)
        if self.kind == "mamba2":
            out = self.mamba(hidden_states)
        else:
            out = torch.empty_like(hidden_states)
            self.mamba(hidden_states, out)
        hidden_states, residual = self.post_attention_layernorm(out, residual)
        return self.mlp(hidden_states), residual


class HybridVLLMModel(nn.Module):
    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        super().__init__()
        config = vllm_config.model_config.hf_config
        self.config = config
        kind = mixer_kind(config)
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size)

        def layer(prefix: str) -> nn.Module:
            i = int(prefix.rsplit(".", 1)[1])
            if config.layer_types[i] == "attention":
                return attention_decoder_layer(vllm_config, config.teacher_config, prefix)
            return MixerDecoderLayer(config, kind, vllm_config, prefix)

        self.start_layer, self.end_layer, self.layers = make_layers(config.num_hidden_layers, layer,
                                                                    prefix=f"{prefix}.layers")
        self.norm = RMSNorm(config.hidden_size, eps=config.teacher_config.rms_norm_eps)
        self.make_empty_intermediate_tensors = make_empty_intermediate_tensors_factory(
            ["hidden_states", "residual"], config.hidden_size)

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embed_tokens(input_ids)

    def forward(self, input_ids, positions, intermediate_tensors=None, inputs_embeds=None):
        if get_pp_group().is_first_rank:
            hidden_states = inputs_embeds if inputs_embeds is not None else self.embed_input_ids(input_ids)
            residual = None
        else:
            hidden_states, residual = intermediate_tensors["hidden_states"], intermediate_tensors["residual"]
        for layer in islice(self.layers, self.start_layer, self.end_layer):
            hidden_states, residual = layer(positions, hidden_states, residual)
        if not get_pp_group().is_last_rank:
            return IntermediateTensors({"hidden_states": hidden_states, "residual": residual})
        hidden_states, _ = self.norm(hidden_states, residual)
        return hidden_states


class HybridVLLMForCausalLM(nn.Module, HasInnerState, IsHybrid):
    STACKED = ((".self_attn.qkv_proj", ".self_attn.q_proj", "q"), (".self_attn.qkv_proj", ".self_attn.k_proj", "k"),
               (".self_attn.qkv_proj", ".self_attn.v_proj", "v"), (".mlp.gate_up_proj", ".mlp.gate_proj", 0),
               (".mlp.gate_up_proj", ".mlp.up_proj", 1))

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        super().__init__()
        config = vllm_config.model_config.hf_config
        self.config = config
        self.model = HybridVLLMModel(vllm_config=vllm_config, prefix=maybe_prefix(prefix, "model"))
        self.lm_head = ParallelLMHead(config.vocab_size, config.hidden_size, prefix=maybe_prefix(prefix, "lm_head"))
        if config.tie_word_embeddings:
            self.lm_head = self.lm_head.tie_weights(self.model.embed_tokens)
        self.logits_processor = LogitsProcessor(config.vocab_size)
        self.make_empty_intermediate_tensors = self.model.make_empty_intermediate_tensors

    # ---- recurrent-state sizing (vLLM asks the class before building the model) ----
    @classmethod
    def get_mamba_state_dtype_from_config(cls, vllm_config: VllmConfig):
        calc = (MambaStateDtypeCalculator.mamba2_state_dtype
                if mixer_kind(vllm_config.model_config.hf_config) == "mamba2"
                else MambaStateDtypeCalculator.mamba1_state_dtype)
        c = vllm_config.cache_config
        return calc(vllm_config.model_config.dtype, c.mamba_cache_dtype, c.mamba_ssm_cache_dtype)

    @classmethod
    def get_mamba_state_shape_from_config(cls, vllm_config: VllmConfig):
        cfg = vllm_config.model_config.hf_config
        tp = vllm_config.parallel_config.tensor_parallel_size
        if mixer_kind(cfg) == "mamba2":
            return MambaStateShapeCalculator.mamba2_state_shape(
                tp_world_size=tp, intermediate_size=cfg.d_inner, n_groups=cfg.num_attention_heads,
                num_heads=cfg.num_attention_heads, head_dim=cfg.head_dim, state_size=cfg.head_dim,
                conv_kernel=cfg.d_conv, num_spec=vllm_config.num_speculative_tokens)
        return MambaStateShapeCalculator.mamba1_state_shape(
            tp_world_size=tp, intermediate_size=cfg.d_inner_mamba, state_size=cfg.mamba_d_state, conv_kernel=cfg.d_conv)

    @classmethod
    def get_mamba_state_copy_func(cls):
        return MambaStateCopyFuncCalculator.mamba2_state_copy_func()  # the same (conv, temporal) specs as Mamba1

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.embed_input_ids(input_ids)

    def forward(self, input_ids, positions, intermediate_tensors=None, inputs_embeds=None, **kwargs):
        return self.model(input_ids, positions, intermediate_tensors, inputs_embeds)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        return self.logits_processor(self.lm_head, hidden_states)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Our checkpoint's tensors -> vLLM parameters: q/k/v and gate/up stacked, Mamba2 x/B expanded per head,
        A_log -> A. Every tensor must land somewhere; ValueError lists the ones that did not."""
        cfg = self.config
        params = dict(self.named_parameters())
        loaded: set[str] = set()
        pending: dict[int, dict[str, torch.Tensor]] = {}  # Mamba2 layer -> its tensors until all have arrived
        unused = []

        def put(name: str, w: torch.Tensor, shard=None) -> None:
            if is_pp_missing_parameter(name, self):
                return
            if name not in params:
                unused.append(name)
                return
            p = params[name]
            if shard is None:
                getattr(p, "weight_loader", default_weight_loader)(p, w)
            else:
                p.weight_loader(p, w, shard)
            loaded.add(name)

        for name, w in weights:
            if "rotary_emb.inv_freq" in name or (name == "lm_head.weight" and cfg.tie_word_embeddings):
                continue
            if ".mamba." in name and name.startswith("model.layers."):
                i = int(name.split(".")[2])
                if cfg.layer_types[i] == "mamba2":
                    head, tail = name.split(".mamba.", 1)
                    layer = pending.setdefault(i, {})
                    layer[tail] = w
                    if all(n in layer for n in MAMBA2_TENSORS) and (not cfg.conv_bias or "conv1d.bias" in layer):
                        for n, t in expand_mamba2(cfg, pending.pop(i)).items():
                            put(f"{head}.mamba.{'A' if n == 'A_log' else n}", t)
                    continue
            for target, source, shard in self.STACKED:
                if source in name:
                    put(name.replace(source, target), w, shard)
                    break
            else:
                put(name, w)
        if pending or unused:
            raise ValueError(f"checkpoint tensors not loaded: unused {unused}, incomplete Mamba2 layers "
                             f"{ {i: sorted(t) for i, t in pending.items()} }")
        return loaded
