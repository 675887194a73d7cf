"""hybrid: load, run and save attention/Mamba hybrids built from a Transformer teacher."""
from .checkpoints import load_pretrained
from .config import HybridConfig, layer_types_from_attention
from .modeling import HybridForCausalLM, HybridModel

__all__ = ["HybridConfig", "HybridForCausalLM", "HybridModel", "layer_types_from_attention", "load_pretrained"]
