// Python bindings of the project's kernels (module hybrid._C, compiled on first use: hybrid/ops/csrc.py).
#include <torch/extension.h>

torch::Tensor mamba2_step_cpu(torch::Tensor xBC, torch::Tensor conv_state, torch::Tensor conv_w,
                              c10::optional<torch::Tensor> conv_b, torch::Tensor dt_raw, torch::Tensor dt_bias,
                              torch::Tensor A, torch::Tensor D, torch::Tensor ssm_state, int64_t n_kv, int64_t d_xb);

#ifdef WITH_CUDA
torch::Tensor mamba2_step_cuda(torch::Tensor xBC, torch::Tensor conv_state, torch::Tensor conv_w,
                               c10::optional<torch::Tensor> conv_b, torch::Tensor dt_raw, torch::Tensor dt_bias,
                               torch::Tensor A, torch::Tensor D, torch::Tensor ssm_state, int64_t n_kv, int64_t d_xb);
#endif

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("mamba2_step_cpu", &mamba2_step_cpu,
        "fused Mamba2 decode step: conv-state update + conv + silu + SSM state update + D skip (in place)");
#ifdef WITH_CUDA
  m.def("mamba2_step_cuda", &mamba2_step_cuda, "the same step on CUDA tensors");
#endif
}
