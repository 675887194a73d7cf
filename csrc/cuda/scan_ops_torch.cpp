// Torch wrappers of the CUDA prefill scan, conv1d and Mamba1 step launchers (built only when torch has CUDA).
// Shapes and dtypes follow the CPU twins in csrc/cpu/, whose checks these repeat.
#include <ATen/cuda/CUDAContext.h>
#include <torch/extension.h>

#include "../checks.h"

int ssd_scan_cuda_launch(int dtype, const void* x, const float* dt, const float* A, const void* B, const void* C,
                         const float* D, const float* init, const int64_t* seq, void* y, float* final_state,
                         int64_t batch, int64_t T_len, int64_t H, int64_t P, int64_t G, int64_t N,
                         cudaStream_t stream);
int causal_conv1d_cuda_launch(int dtype, const void* x, const float* w, const float* bias, const float* init,
                              const int64_t* seq, void* y, int64_t batch, int64_t T_len, int64_t C, int64_t K,
                              bool silu, cudaStream_t stream);
int mamba1_step_cuda_launch(int dtype, const void* x, void* conv_state, const void* w, const void* bias,
                            const float* delta, const float* A, const void* B, const void* C, const float* D,
                            float* ssm, void* y, int64_t batch, int64_t Di, int64_t K, int64_t N, int64_t GB,
                            int64_t GC, cudaStream_t stream);

namespace {
int dtype_code(const torch::Tensor& t) {
  const auto s = t.scalar_type();
  const int code = s == at::kFloat ? 0 : s == at::kBFloat16 ? 1 : s == at::kHalf ? 2 : -1;
  TORCH_CHECK(code >= 0, "dtype ", s, " is not float32, bfloat16 or float16");
  return code;
}
torch::Tensor f32(const torch::Tensor& t) { return t.to(at::kFloat).contiguous(); }
const float* ptr_or_null(const c10::optional<torch::Tensor>& t, torch::Tensor& keep) {
  if (!t.has_value()) return nullptr;
  keep = f32(*t);
  return keep.data_ptr<float>();
}
const int64_t* seq_ptr(const c10::optional<torch::Tensor>& t, torch::Tensor& keep, int64_t batch, int64_t T) {
  keep = hybrid_checks::seq_idx_long(t, batch, T);
  return hybrid_checks::ptr_or_null(keep);
}
}  // namespace

std::vector<torch::Tensor> ssd_scan_cuda(torch::Tensor x, torch::Tensor dt, torch::Tensor A, torch::Tensor B,
                                         torch::Tensor C, c10::optional<torch::Tensor> D,
                                         c10::optional<torch::Tensor> initial_state,
                                         c10::optional<torch::Tensor> seq_idx) {
  TORCH_CHECK(x.is_cuda() && B.is_cuda() && C.is_cuda() && dt.is_cuda(), "ssd_scan_cuda takes CUDA tensors");
  TORCH_CHECK(x.dim() == 4 && B.dim() == 4 && C.sizes() == B.sizes(), "x [b, T, H, P] and B, C [b, T, G, N] expected",
              ", got ", x.sizes(), ", ", B.sizes(), ", ", C.sizes());
  const int64_t batch = x.size(0), T = x.size(1), H = x.size(2), P = x.size(3), G = B.size(2), N = B.size(3);
  TORCH_CHECK(B.size(0) == batch && B.size(1) == T && H % G == 0, "B must be [", batch, ", ", T,
              ", groups dividing ", H, ", N], got ", B.sizes());
  TORCH_CHECK(dt.dim() == 3 && dt.size(0) == batch && dt.size(1) == T && dt.size(2) == H, "dt must be [", batch,
              ", ", T, ", ", H, "], got ", dt.sizes());
  TORCH_CHECK(N <= 256 && P <= 1024, "ssd_scan_cuda supports d_state <= 256 and head_dim <= 1024, got ", N, ", ", P);
  TORCH_CHECK(B.scalar_type() == x.scalar_type() && C.scalar_type() == x.scalar_type(),
              "x, B and C must share a dtype");
  TORCH_CHECK(x.is_contiguous() && B.is_contiguous() && C.is_contiguous(), "x, B and C must be contiguous");
  torch::Tensor keep_D, keep_init, keep_seq;
  if (initial_state.has_value()) {
    TORCH_CHECK(initial_state->dim() == 4 && initial_state->size(0) == batch && initial_state->size(1) == H &&
                    initial_state->size(2) == P && initial_state->size(3) == N,
                "initial_state must be [", batch, ", ", H, ", ", P, ", ", N, "], got ", initial_state->sizes());
  }
  auto dt_f = f32(dt), A_f = f32(A);
  auto y = torch::empty_like(x);
  auto final_state = torch::empty({batch, H, P, N}, x.options().dtype(at::kFloat));
  const int err = ssd_scan_cuda_launch(dtype_code(x), x.data_ptr(), dt_f.data_ptr<float>(), A_f.data_ptr<float>(),
                                       B.data_ptr(), C.data_ptr(), ptr_or_null(D, keep_D),
                                       ptr_or_null(initial_state, keep_init), seq_ptr(seq_idx, keep_seq, batch, T),
                                       y.data_ptr(), final_state.data_ptr<float>(), batch, T, H, P, G, N,
                                       at::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == 0, "ssd_scan_cuda launch failed with CUDA error ", err);
  return {y, final_state};
}

torch::Tensor causal_conv1d_cuda(torch::Tensor x, torch::Tensor weight, c10::optional<torch::Tensor> bias,
                                 c10::optional<torch::Tensor> initial_state, c10::optional<torch::Tensor> seq_idx,
                                 bool silu) {
  TORCH_CHECK(x.is_cuda() && x.dim() == 3 && x.is_contiguous(), "x must be a contiguous CUDA [b, T, C] tensor, got ",
              x.sizes());
  const int64_t batch = x.size(0), T = x.size(1), C = x.size(2);
  TORCH_CHECK(weight.dim() == 2 && weight.size(0) == C, "weight must be [", C, ", K], got ", weight.sizes());
  const int64_t K = weight.size(1);
  if (initial_state.has_value()) {
    TORCH_CHECK(initial_state->dim() == 3 && initial_state->size(0) == batch && initial_state->size(1) == C &&
                    initial_state->size(2) == K - 1,
                "initial_state must be [", batch, ", ", C, ", ", K - 1, "], got ", initial_state->sizes());
  }
  torch::Tensor keep_b, keep_init, keep_seq;
  auto w_f = f32(weight);
  auto y = torch::empty_like(x);
  const int err = causal_conv1d_cuda_launch(dtype_code(x), x.data_ptr(), w_f.data_ptr<float>(), ptr_or_null(bias, keep_b),
                                            ptr_or_null(initial_state, keep_init),
                                            seq_ptr(seq_idx, keep_seq, batch, T), y.data_ptr(), batch, T, C, K, silu,
                                            at::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == 0, "causal_conv1d_cuda launch failed with CUDA error ", err);
  return y;
}

std::vector<torch::Tensor> mamba1_step_cuda(torch::Tensor x, torch::Tensor conv_state, torch::Tensor conv_w,
                                            c10::optional<torch::Tensor> conv_b, torch::Tensor delta, torch::Tensor A,
                                            torch::Tensor B, torch::Tensor C, c10::optional<torch::Tensor> D,
                                            torch::Tensor ssm_state) {
  TORCH_CHECK(x.is_cuda() && conv_state.is_cuda() && ssm_state.is_cuda(), "mamba1_step_cuda takes CUDA tensors");
  TORCH_CHECK(x.dim() == 2 && conv_state.dim() == 3 && ssm_state.dim() == 3 && B.dim() == 3 && C.dim() == 3,
              "x [b, Di], conv_state [b, Di, K], ssm_state [b, Di, N], B and C [b, G, N] expected");
  const int64_t batch = x.size(0), Di = x.size(1), K = conv_state.size(2), N = ssm_state.size(2);
  TORCH_CHECK(ssm_state.scalar_type() == at::kFloat, "ssm_state must be float32, got ", ssm_state.scalar_type());
  TORCH_CHECK(conv_state.size(0) == batch && conv_state.size(1) == Di && ssm_state.size(1) == Di &&
                  conv_w.size(0) == Di && conv_w.size(1) == K && Di % B.size(1) == 0 && Di % C.size(1) == 0 &&
                  B.size(2) == N && C.size(2) == N,
              "inconsistent shapes: x ", x.sizes(), " conv_state ", conv_state.sizes(), " conv_w ", conv_w.sizes(),
              " B ", B.sizes(), " C ", C.sizes(), " ssm_state ", ssm_state.sizes());
  for (auto* t : {&x, &conv_state, &conv_w, &B, &C, &ssm_state}) {
    TORCH_CHECK(t->is_contiguous(), "all tensors must be contiguous (shape ", t->sizes(), ")");
  }
  torch::Tensor keep_D;
  auto delta_f = f32(delta), A_f = f32(A);
  auto y = torch::empty_like(x);
  const int err = mamba1_step_cuda_launch(dtype_code(x), x.data_ptr(), conv_state.data_ptr(), conv_w.data_ptr(),
                                          conv_b.has_value() ? conv_b->data_ptr() : nullptr, delta_f.data_ptr<float>(),
                                          A_f.data_ptr<float>(), B.data_ptr(), C.data_ptr(), ptr_or_null(D, keep_D),
                                          ssm_state.data_ptr<float>(), y.data_ptr(), batch, Di, K, N, B.size(1),
                                          C.size(1), at::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == 0, "mamba1_step_cuda launch failed with CUDA error ", err);
  return {y, ssm_state};
}
