// Causal depthwise conv1d forward on the CPU, with optional initial state, packed documents and silu.
//
//   y[b, t, c] = act(bias[c] + sum_k w[c, k] * v(b, t - (K-1) + k, c))
//   v(b, s, c) = x[b, s, c] if s >= 0, else initial_state[b, c, K-1+s] (zero without one); a tap from another
//   document (seq_idx[b, s] != seq_idx[b, t]; the initial state belongs to seq_idx[b, 0]) counts as zero.
// x is [b, T, C] channel-last, so the inner loop runs over contiguous channels (vectorised); rows x time blocks
// run in parallel. Twin: hybrid/ops/conv1d.py (causal_conv1d_ref is the definition).
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include "../checks.h"

#include <cmath>
#include <vector>

namespace {

template <typename scalar_t>
void conv_kernel(const scalar_t* x, const float* wT, const float* bias, const float* init, const int64_t* seq,
                 scalar_t* y, int64_t batch, int64_t T, int64_t C, int64_t K, bool silu) {
  const int64_t block = 16;
  const int64_t nblocks = (T + block - 1) / block;
  at::parallel_for(0, batch * nblocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> acc(C), tap(C);
    for (int64_t i = begin; i < end; ++i) {
      const int64_t b = i / nblocks, t0 = (i % nblocks) * block, t1 = std::min(T, t0 + block);
      for (int64_t t = t0; t < t1; ++t) {
        for (int64_t c = 0; c < C; ++c) acc[c] = bias ? bias[c] : 0.0f;
        const int64_t doc = seq ? seq[b * T + t] : 0;
        for (int64_t k = 0; k < K; ++k) {
          const int64_t s = t - (K - 1) + k;
          const float* w = wT + k * C;
          if (s >= 0) {
            if (seq && seq[b * T + s] != doc) continue;
            const scalar_t* xs = x + (b * T + s) * C;
#pragma omp simd
            for (int64_t c = 0; c < C; ++c) acc[c] += w[c] * static_cast<float>(xs[c]);
          } else if (init) {
            if (seq && seq[b * T] != doc) continue;
            const float* st = init + b * C * (K - 1) + (K - 1 + s);  // [b, C, K-1]: stride K-1 over channels
            for (int64_t c = 0; c < C; ++c) acc[c] += w[c] * st[c * (K - 1)];
          }
        }
        scalar_t* yt = y + (b * T + t) * C;
        if (silu) {
          for (int64_t c = 0; c < C; ++c) yt[c] = static_cast<scalar_t>(acc[c] / (1.0f + std::exp(-acc[c])));
        } else {
          for (int64_t c = 0; c < C; ++c) yt[c] = static_cast<scalar_t>(acc[c]);
        }
      }
    }
  });
}

}  // namespace

torch::Tensor causal_conv1d_cpu(torch::Tensor x, torch::Tensor weight, c10::optional<torch::Tensor> bias,
                                c10::optional<torch::Tensor> initial_state, c10::optional<torch::Tensor> seq_idx,
                                bool silu) {
  TORCH_CHECK(x.dim() == 3, "x must be [batch, T, channels], got ", x.sizes());
  const int64_t batch = x.size(0), T = x.size(1), C = x.size(2);
  TORCH_CHECK(weight.dim() == 2 && weight.size(0) == C && weight.size(1) >= 1, "weight must be [", C,
              ", K], got ", weight.sizes());
  const int64_t K = weight.size(1);
  TORCH_CHECK(x.is_contiguous(), "x must be contiguous (channel-last [b, T, C]), got strides ", x.strides());
  TORCH_CHECK(x.device().is_cpu() && weight.device().is_cpu(), "causal_conv1d_cpu takes CPU tensors");
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), "x must be floating point, got ", x.scalar_type());
  torch::Tensor b_f, init_f, seq_l;
  if (bias.has_value()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == C, "bias must be [", C, "], got ", bias->sizes());
    b_f = bias->to(at::kFloat).contiguous();
  }
  if (initial_state.has_value()) {
    TORCH_CHECK(initial_state->dim() == 3 && initial_state->size(0) == batch && initial_state->size(1) == C &&
                    initial_state->size(2) == K - 1,
                "initial_state must be [", batch, ", ", C, ", ", K - 1, "], got ", initial_state->sizes());
    init_f = initial_state->to(at::kFloat).contiguous();
  }
  seq_l = hybrid_checks::seq_idx_long(seq_idx, batch, T);
  auto wT = weight.to(at::kFloat).t().contiguous();  // [K, C]: tap-major, channels contiguous
  auto y = torch::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "causal_conv1d_cpu", [&] {
    conv_kernel<scalar_t>(x.data_ptr<scalar_t>(), wT.data_ptr<float>(), bias.has_value() ? b_f.data_ptr<float>() : nullptr,
                          initial_state.has_value() ? init_f.data_ptr<float>() : nullptr,
                          hybrid_checks::ptr_or_null(seq_l), y.data_ptr<scalar_t>(), batch,
                          T, C, K, silu);
  });
  return y;
}
