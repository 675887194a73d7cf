"""Which attention layers a hybrid keeps. Strategies are registered by name and chosen in recipes."""
from __future__ import annotations


def uniform_attention_layers(num_layers: int, ratio: float) -> list[int]:
    """Keep round(ratio * n) attention layers, evenly spaced and ending at the last layer.

    This reproduces the released MambaInLlama choices: 50 % -> 1, 3, 5, ...; 25 % -> 3, 7, 11, ...;
    12.5 % -> 7, 15, 23, 31 (for 32 layers). ratio 0 keeps none (an all-mixer model).
    """
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"attention ratio={ratio} must lie in [0, 1]")
    k = round(ratio * num_layers)
    return [round((j + 1) * num_layers / k) - 1 for j in range(k)]
