"""The hybrid's cache layers (hybrid.cache)."""
import pytest
import torch


def test_preallocated_kv_layer_writes_in_place_and_refuses_overflow():
    from hybrid.cache import PreallocatedLayer
    layer = PreallocatedLayer(max_cache_len=5)
    k, v = torch.randn(2, 3, 4, 8), torch.randn(2, 3, 4, 8)
    keys, values = layer.update(k, v)
    assert keys.shape[-2] == 4 and layer.get_seq_length() == 4 and torch.equal(keys, k)
    buf = layer._k.data_ptr()
    keys, _ = layer.update(k[:, :, :1] + 1, v[:, :, :1])
    assert layer._k.data_ptr() == buf and torch.equal(keys[:, :, :4], k) and torch.equal(keys[:, :, 4:], k[:, :, :1] + 1)
    with pytest.raises(ValueError, match="5 tokens"):
        layer.update(k[:, :, :1], v[:, :, :1])
