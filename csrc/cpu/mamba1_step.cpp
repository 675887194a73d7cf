// Fused Mamba1 decode step on the CPU (MambaInLlama layout: B read per group in place, no materialized repeat).
//
// For each row b and channel d (Di channels):
//   window <- [conv_state[b, d, 1:], x[b, d]];  u = silu(sum_k w[d, k] window[k] + bias[d])
//   gB = d / (Di / GB), gC = d / (Di / GC)
//   h[b, d, n] <- exp(delta[b, d] A[d, n]) h[b, d, n] + delta[b, d] u B[b, gB, n]
//   y[b, d] = sum_n C[b, gC, n] h[b, d, n] + D[d] u
// conv_state [b, Di, K] and ssm_state [b, Di, N] (fp32) advance in place. Twin: hybrid/ops
// (causal_conv1d_update then selective_state_step, as MambaMixer.forward composes them).
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <cmath>
#include <vector>

#include "fast_math.h"

namespace {

// The N-wide state update of one channel; NC > 0 fixes N at compile time (no loop prologue, one vector at N = 16
// with AVX-512), NC = 0 handles any N.
template <int NC>
inline float channel_update(float* __restrict__ h, const float* __restrict__ a, const float* __restrict__ Bv,
                            const float* __restrict__ Cv, float dl, float du, int64_t N_rt) {
  const int64_t N = NC > 0 ? NC : N_rt;
  float out = 0.0f;
#pragma omp simd reduction(+ : out)
  for (int64_t n = 0; n < N; ++n) {
    const float s = hybrid_cpu::fast_exp(dl * a[n]) * h[n] + du * Bv[n];
    h[n] = s;
    out += s * Cv[n];
  }
  return out;
}

template <typename scalar_t, int NC>
void step_kernel(const scalar_t* x, scalar_t* conv_state, const scalar_t* conv_w, const scalar_t* conv_b,
                 const float* delta, const float* A, const scalar_t* B, const scalar_t* C, const float* D, float* ssm,
                 scalar_t* y, int64_t batch, int64_t Di, int64_t K, int64_t N, int64_t GB, int64_t GC) {
  const int64_t rB = Di / GB, rC = Di / GC;
  // Work items: (row, C group); channels of one item share a C row, and B rows are converted to fp32 once.
  at::parallel_for(0, batch * GC, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> Cf(N), Bf(N);
    int64_t cached_gb = -1;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / GC, gc = item % GC;
      for (int64_t n = 0; n < N; ++n) Cf[n] = static_cast<float>(C[(b * GC + gc) * N + n]);
      cached_gb = -1;
      for (int64_t d = gc * rC; d < (gc + 1) * rC; ++d) {
        const int64_t i = b * Di + d;
        scalar_t* st = conv_state + i * K;
        float acc = conv_b ? static_cast<float>(conv_b[d]) : 0.0f;
        for (int64_t k = 0; k + 1 < K; ++k) {
          st[k] = st[k + 1];
          acc += static_cast<float>(conv_w[d * K + k]) * static_cast<float>(st[k]);
        }
        st[K - 1] = x[i];
        acc += static_cast<float>(conv_w[d * K + K - 1]) * static_cast<float>(x[i]);
        const float u = acc / (1.0f + hybrid_cpu::fast_exp(-acc));
        const int64_t gb = d / rB;
        if (gb != cached_gb) {
          for (int64_t n = 0; n < N; ++n) Bf[n] = static_cast<float>(B[(b * GB + gb) * N + n]);
          cached_gb = gb;
        }
        const float dl = delta[i];
        const float out = channel_update<NC>(ssm + i * N, A + d * N, Bf.data(), Cf.data(), dl, dl * u, N);
        y[i] = static_cast<scalar_t>(out + (D ? D[d] * u : 0.0f));
      }
    }
  });
}

}  // namespace

std::vector<torch::Tensor> mamba1_step_cpu(torch::Tensor x, torch::Tensor conv_state, torch::Tensor conv_w,
                                           c10::optional<torch::Tensor> conv_b, torch::Tensor delta, torch::Tensor A,
                                           torch::Tensor B, torch::Tensor C, c10::optional<torch::Tensor> D,
                                           torch::Tensor ssm_state) {
  TORCH_CHECK(x.dim() == 2, "x must be [batch, channels], got ", x.sizes());
  const int64_t batch = x.size(0), Di = x.size(1);
  TORCH_CHECK(conv_state.dim() == 3 && conv_state.size(0) == batch && conv_state.size(1) == Di,
              "conv_state must be [", batch, ", ", Di, ", K], got ", conv_state.sizes());
  const int64_t K = conv_state.size(2);
  TORCH_CHECK(conv_w.dim() == 2 && conv_w.size(0) == Di && conv_w.size(1) == K, "conv_w must be [", Di, ", ", K,
              "], got ", conv_w.sizes());
  TORCH_CHECK(ssm_state.dim() == 3 && ssm_state.size(0) == batch && ssm_state.size(1) == Di, "ssm_state must be [",
              batch, ", ", Di, ", N], got ", ssm_state.sizes());
  TORCH_CHECK(ssm_state.scalar_type() == at::kFloat, "ssm_state must be float32, got ", ssm_state.scalar_type());
  const int64_t N = ssm_state.size(2);
  TORCH_CHECK(delta.dim() == 2 && delta.size(0) == batch && delta.size(1) == Di, "delta must be [", batch, ", ", Di,
              "], got ", delta.sizes());
  TORCH_CHECK(A.dim() == 2 && A.size(0) == Di && A.size(1) == N, "A must be [", Di, ", ", N, "], got ", A.sizes());
  TORCH_CHECK(B.dim() == 3 && B.size(0) == batch && B.size(2) == N && B.size(1) >= 1 && Di % B.size(1) == 0,
              "B must be [", batch, ", groups dividing ", Di, ", ", N, "], got ", B.sizes());
  TORCH_CHECK(C.dim() == 3 && C.size(0) == batch && C.size(2) == N && C.size(1) >= 1 && Di % C.size(1) == 0,
              "C must be [", batch, ", groups dividing ", Di, ", ", N, "], got ", C.sizes());
  for (auto* t : {&conv_state, &conv_w, &B, &C}) {
    TORCH_CHECK(t->scalar_type() == x.scalar_type(), "x, conv_state, conv_w, B and C must share a dtype; got ",
                x.scalar_type(), " and ", t->scalar_type());
  }
  for (auto* t : {&x, &conv_state, &conv_w, &B, &C, &ssm_state}) {
    TORCH_CHECK(t->is_contiguous(), "all tensors must be contiguous (got a non-contiguous one of shape ", t->sizes(),
                ")");
    TORCH_CHECK(t->device().is_cpu(), "mamba1_step_cpu takes CPU tensors");
  }
  if (conv_b.has_value()) {
    TORCH_CHECK(conv_b->numel() == Di && conv_b->is_contiguous() && conv_b->scalar_type() == x.scalar_type(),
                "conv_b must be a contiguous [", Di, "] tensor of the input dtype");
  }
  if (D.has_value()) TORCH_CHECK(D->dim() == 1 && D->size(0) == Di, "D must be [", Di, "], got ", D->sizes());
  auto delta_f = delta.to(at::kFloat).contiguous();
  auto A_f = A.to(at::kFloat).contiguous();
  torch::Tensor D_f = D.has_value() ? D->to(at::kFloat).contiguous() : torch::Tensor();
  auto y = torch::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "mamba1_step_cpu", [&] {
    auto run = N == 16 ? step_kernel<scalar_t, 16> : N == 64 ? step_kernel<scalar_t, 64> : step_kernel<scalar_t, 0>;
    run(x.data_ptr<scalar_t>(), conv_state.data_ptr<scalar_t>(), conv_w.data_ptr<scalar_t>(),
        conv_b.has_value() ? conv_b->data_ptr<scalar_t>() : nullptr, delta_f.data_ptr<float>(), A_f.data_ptr<float>(),
        B.data_ptr<scalar_t>(), C.data_ptr<scalar_t>(), D.has_value() ? D_f.data_ptr<float>() : nullptr,
        ssm_state.data_ptr<float>(), y.data_ptr<scalar_t>(), batch, Di, K, N, B.size(1), C.size(1));
  });
  return {y, ssm_state};
}
