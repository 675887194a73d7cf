// Torch wrapper of the CUDA fused Mamba2 decode step (built only when torch has CUDA; see hybrid/ops/csrc.py).
#include <ATen/cuda/CUDAContext.h>
#include <torch/extension.h>

int mamba2_step_cuda_launch(int dtype, const void* xBC, void* conv_state, const void* w, const void* bias,
                            const void* dt_raw, const float* dt_bias, const float* A, const float* D, float* ssm,
                            void* y, float* act, int64_t batch, int64_t channels, int64_t K, int64_t H, int64_t kv,
                            int64_t P, int64_t N, int64_t d_xb, cudaStream_t stream);

torch::Tensor mamba2_step_cuda(torch::Tensor xBC, torch::Tensor conv_state, torch::Tensor conv_w,
                               c10::optional<torch::Tensor> conv_b, torch::Tensor dt_raw, torch::Tensor dt_bias,
                               torch::Tensor A, torch::Tensor D, torch::Tensor ssm_state, int64_t n_kv, int64_t d_xb) {
  TORCH_CHECK(xBC.is_cuda() && conv_state.is_cuda() && ssm_state.is_cuda(), "mamba2_step_cuda takes CUDA tensors");
  TORCH_CHECK(xBC.dim() == 2 && conv_state.dim() == 3 && ssm_state.dim() == 4, "xBC [b, C], conv_state [b, C, K], ",
              "ssm_state [b, H, P, N] expected, got ", xBC.sizes(), ", ", conv_state.sizes(), ", ", ssm_state.sizes());
  TORCH_CHECK(ssm_state.scalar_type() == at::kFloat, "ssm_state must be float32, got ", ssm_state.scalar_type());
  const int64_t batch = xBC.size(0), channels = xBC.size(1), K = conv_state.size(2);
  const int64_t H = ssm_state.size(1), P = ssm_state.size(2), N = ssm_state.size(3);
  TORCH_CHECK(conv_state.size(0) == batch && conv_state.size(1) == channels, "conv_state must be [", batch, ", ",
              channels, ", K], got ", conv_state.sizes());
  TORCH_CHECK(conv_w.size(0) == channels && conv_w.size(1) == K, "conv_w must be [", channels, ", ", K, "], got ",
              conv_w.sizes());
  TORCH_CHECK(H % n_kv == 0 && d_xb == n_kv * P && d_xb == n_kv * N && channels == 2 * d_xb + H * N,
              "inconsistent dims: H=", H, " n_kv=", n_kv, " P=", P, " N=", N, " d_xb=", d_xb, " C=", channels);
  TORCH_CHECK(dt_raw.size(0) == batch && dt_raw.size(1) == H, "dt must be [", batch, ", ", H, "], got ",
              dt_raw.sizes());
  for (auto* t : {&xBC, &conv_state, &conv_w, &dt_raw, &ssm_state}) {
    TORCH_CHECK(t->is_contiguous(), "all tensors must be contiguous (shape ", t->sizes(), ")");
  }
  int dtype = xBC.scalar_type() == at::kFloat ? 0 : xBC.scalar_type() == at::kBFloat16 ? 1
              : xBC.scalar_type() == at::kHalf ? 2 : -1;
  TORCH_CHECK(dtype >= 0, "xBC dtype ", xBC.scalar_type(), " is not float32, bfloat16 or float16");
  auto f = [](const torch::Tensor& t) { return t.to(at::kFloat).contiguous(); };
  auto bias_f = f(dt_bias), A_f = f(A), D_f = f(D);
  auto act = torch::empty({batch, channels}, xBC.options().dtype(at::kFloat));
  auto y = torch::empty({batch, H, P}, xBC.options());
  const int err = mamba2_step_cuda_launch(
      dtype, xBC.data_ptr(), conv_state.data_ptr(), conv_w.data_ptr(), conv_b.has_value() ? conv_b->data_ptr() : nullptr,
      dt_raw.data_ptr(), bias_f.data_ptr<float>(), A_f.data_ptr<float>(), D_f.data_ptr<float>(),
      ssm_state.data_ptr<float>(), y.data_ptr(), act.data_ptr<float>(), batch, channels, K, H, n_kv, P, N, d_xb,
      at::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == 0, "mamba2_step_cuda launch failed with CUDA error ", err);
  return y;
}
