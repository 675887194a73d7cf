// Fused Mamba2 decode step on the CPU (head-aligned MambaInLlama layout, GQA-grouped x/B read in place).
//
// For each row b:   window <- [conv_state[b, :, 1:], xBC[b]];  a = silu(sum_k w[c, k] window[c, k] + bias[c])
// For each (b, h):  x = a[x_off + (h / r) * P : ...], B = a[B_off + (h / r) * N : ...], C = a[C_off + h * N : ...]
//                   dt = softplus(dt_raw[b, h] + dt_bias[h]);  S = exp(dt * A[h]) * S + dt * x B^T
//                   y[b, h, :] = S C + D[h] x
// conv_state [b, C, K] and ssm_state [b, H, P, N] (fp32) are updated in place. Twin: hybrid/ops (ssd_step and
// causal_conv1d_update composed as in Mamba2Mixer.forward).
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <cmath>
#include <vector>

namespace {

inline float silu(float v) { return v / (1.0f + std::exp(-v)); }
inline float softplus(float v) { return v > 20.0f ? v : std::log1p(std::exp(v)); }

template <typename scalar_t>
void step_kernel(const scalar_t* xBC, scalar_t* conv_state, const scalar_t* conv_w,
                 const scalar_t* conv_b, const scalar_t* dt_raw, const float* dt_bias, const float* A,
                 const float* D, float* ssm, scalar_t* y, int64_t batch, int64_t channels, int64_t K, int64_t H,
                 int64_t kv, int64_t P, int64_t N, int64_t d_xb) {
  std::vector<float> act(batch * channels);
  // 1. conv state update + depthwise conv + silu, parallel over (row, channel)
  at::parallel_for(0, batch * channels, 256, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t c = i % channels;
      scalar_t* st = conv_state + i * K;
      for (int64_t k = 0; k + 1 < K; ++k) st[k] = st[k + 1];
      st[K - 1] = xBC[i];
      float acc = conv_b ? static_cast<float>(conv_b[c]) : 0.0f;
      const scalar_t* w = conv_w + c * K;
      for (int64_t k = 0; k < K; ++k) acc += static_cast<float>(w[k]) * static_cast<float>(st[k]);
      act[i] = silu(acc);
    }
  });
  // 2. SSM state update and output, parallel over (row, head)
  const int64_t r = H / kv;
  const int64_t x_off = 0, B_off = d_xb, C_off = 2 * d_xb;
  at::parallel_for(0, batch * H, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t b = i / H, h = i % H, g = h / r;
      const float* a = act.data() + b * channels;
      const float* x = a + x_off + g * P;
      const float* Bv = a + B_off + g * N;
      const float* Cv = a + C_off + h * N;
      const float dt = softplus(static_cast<float>(dt_raw[i]) + dt_bias[h]);
      const float decay = std::exp(dt * A[h]);
      float* S = ssm + i * P * N;
      scalar_t* out = y + i * P;
      for (int64_t p = 0; p < P; ++p) {
        const float xp = dt * x[p];
        float* row = S + p * N;
        float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
        for (int64_t n = 0; n < N; ++n) {
          const float s = row[n] * decay + xp * Bv[n];
          row[n] = s;
          acc += s * Cv[n];
        }
        out[p] = static_cast<scalar_t>(acc + D[h] * x[p]);
      }
    }
  });
}

}  // namespace

torch::Tensor mamba2_step_cpu(torch::Tensor xBC, torch::Tensor conv_state, torch::Tensor conv_w,
                              c10::optional<torch::Tensor> conv_b, torch::Tensor dt_raw, torch::Tensor dt_bias,
                              torch::Tensor A, torch::Tensor D, torch::Tensor ssm_state, int64_t n_kv, int64_t d_xb) {
  TORCH_CHECK(xBC.dim() == 2, "xBC must be [batch, channels], got ", xBC.sizes());
  const int64_t batch = xBC.size(0), channels = xBC.size(1);
  TORCH_CHECK(conv_state.dim() == 3 && conv_state.size(0) == batch && conv_state.size(1) == channels,
              "conv_state must be [", batch, ", ", channels, ", K], got ", conv_state.sizes());
  const int64_t K = conv_state.size(2);
  TORCH_CHECK(conv_w.dim() == 2 && conv_w.size(0) == channels && conv_w.size(1) == K, "conv_w must be [", channels,
              ", ", K, "], got ", conv_w.sizes());
  TORCH_CHECK(ssm_state.dim() == 4 && ssm_state.size(0) == batch, "ssm_state must be [", batch,
              ", H, P, N], got ", ssm_state.sizes());
  TORCH_CHECK(ssm_state.scalar_type() == at::kFloat, "ssm_state must be float32, got ", ssm_state.scalar_type());
  const int64_t H = ssm_state.size(1), P = ssm_state.size(2), N = ssm_state.size(3);
  TORCH_CHECK(n_kv >= 1 && H % n_kv == 0, "heads (", H, ") must be a multiple of n_kv (", n_kv, ")");
  TORCH_CHECK(d_xb == n_kv * P && d_xb == n_kv * N, "d_xb (", d_xb, ") must equal n_kv * head_dim (", n_kv * P,
              ") and n_kv * d_state (", n_kv * N, ")");
  TORCH_CHECK(channels == 2 * d_xb + H * N, "channels (", channels, ") must be 2 * d_xb + heads * d_state (",
              2 * d_xb + H * N, ")");
  TORCH_CHECK(dt_raw.dim() == 2 && dt_raw.size(0) == batch && dt_raw.size(1) == H, "dt must be [", batch, ", ", H,
              "], got ", dt_raw.sizes());
  for (auto* t : {&dt_bias, &A, &D}) {
    TORCH_CHECK(t->dim() == 1 && t->size(0) == H, "dt_bias, A and D must be [", H, "], got ", t->sizes());
  }
  TORCH_CHECK(conv_state.scalar_type() == xBC.scalar_type() && conv_w.scalar_type() == xBC.scalar_type() &&
                  dt_raw.scalar_type() == xBC.scalar_type(),
              "xBC, conv_state, conv_w and dt must share a dtype; got ", xBC.scalar_type(), ", ",
              conv_state.scalar_type(), ", ", conv_w.scalar_type(), ", ", dt_raw.scalar_type());
  for (auto* t : {&xBC, &conv_state, &conv_w, &dt_raw, &ssm_state}) {
    TORCH_CHECK(t->is_contiguous(), "all tensors must be contiguous (got a non-contiguous one of shape ", t->sizes(),
                ")");
    TORCH_CHECK(t->device().is_cpu(), "mamba2_step_cpu takes CPU tensors");
  }
  if (conv_b.has_value()) {
    TORCH_CHECK(conv_b->numel() == channels && conv_b->is_contiguous() && conv_b->scalar_type() == xBC.scalar_type(),
                "conv_b must be a contiguous [", channels, "] tensor of the input dtype");
  }
  auto bias_f = dt_bias.to(at::kFloat).contiguous();
  auto A_f = A.to(at::kFloat).contiguous();
  auto D_f = D.to(at::kFloat).contiguous();
  auto y = torch::empty({batch, H, P}, xBC.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, xBC.scalar_type(), "mamba2_step_cpu", [&] {
    step_kernel<scalar_t>(xBC.data_ptr<scalar_t>(), conv_state.data_ptr<scalar_t>(),
                          conv_w.data_ptr<scalar_t>(), conv_b.has_value() ? conv_b->data_ptr<scalar_t>() : nullptr,
                          dt_raw.data_ptr<scalar_t>(), bias_f.data_ptr<float>(), A_f.data_ptr<float>(),
                          D_f.data_ptr<float>(), ssm_state.data_ptr<float>(), y.data_ptr<scalar_t>(), batch, channels,
                          K, H, n_kv, P, N, d_xb);
  });
  return y;
}
