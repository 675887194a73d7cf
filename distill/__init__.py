"""distill: the pipeline that makes a hybrid from a teacher and judges it."""
from .conversion.transfer import attention_to_mamba, attention_to_mamba2, hybridize

__all__ = ["attention_to_mamba", "attention_to_mamba2", "hybridize"]
