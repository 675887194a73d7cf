// Argument checks shared by the kernels' torch bindings (CPU and CUDA).
#pragma once
#include <torch/extension.h>

namespace hybrid_checks {

// seq_idx [batch, T] of an integer type, as a contiguous int64 tensor (undefined when absent).
inline torch::Tensor seq_idx_long(const c10::optional<torch::Tensor>& seq_idx, int64_t batch, int64_t T) {
  if (!seq_idx.has_value()) return torch::Tensor();
  TORCH_CHECK(seq_idx->dim() == 2 && seq_idx->size(0) == batch && seq_idx->size(1) == T, "seq_idx must be [", batch,
              ", ", T, "], got ", seq_idx->sizes());
  TORCH_CHECK(!at::isFloatingType(seq_idx->scalar_type()), "seq_idx must be an integer tensor, got ",
              seq_idx->scalar_type());
  return seq_idx->to(at::kLong).contiguous();
}

inline const int64_t* ptr_or_null(const torch::Tensor& t) { return t.defined() ? t.data_ptr<int64_t>() : nullptr; }

}  // namespace hybrid_checks
