// Python bindings of the project's kernels (module hybrid._C, compiled on first use: hybrid/ops/csrc.py).
#include <torch/extension.h>

#include <vector>

using OptT = c10::optional<torch::Tensor>;

torch::Tensor mamba2_step_cpu(torch::Tensor xBC, torch::Tensor conv_state, torch::Tensor conv_w, OptT conv_b,
                              torch::Tensor dt_raw, torch::Tensor dt_bias, torch::Tensor A, torch::Tensor D,
                              torch::Tensor ssm_state, int64_t n_kv, int64_t d_xb);
std::vector<torch::Tensor> ssd_scan_cpu(torch::Tensor x, torch::Tensor dt, torch::Tensor A, torch::Tensor B,
                                        torch::Tensor C, OptT D, OptT initial_state, OptT seq_idx);
torch::Tensor causal_conv1d_cpu(torch::Tensor x, torch::Tensor weight, OptT bias, OptT initial_state, OptT seq_idx,
                                bool silu);
std::vector<torch::Tensor> mamba1_step_cpu(torch::Tensor x, torch::Tensor conv_state, torch::Tensor conv_w,
                                           OptT conv_b, torch::Tensor delta, torch::Tensor A, torch::Tensor B,
                                           torch::Tensor C, OptT D, torch::Tensor ssm_state);
bool skinny_linear_supported(bool bf16);
torch::Tensor skinny_pack_cpu(torch::Tensor w);
torch::Tensor skinny_linear_cpu(torch::Tensor x, torch::Tensor packed, OptT bias, int64_t N);
torch::Tensor decode_attention_cpu(torch::Tensor q, torch::Tensor k, torch::Tensor v, OptT mask, double scale);

#ifdef WITH_CUDA
torch::Tensor mamba2_step_cuda(torch::Tensor xBC, torch::Tensor conv_state, torch::Tensor conv_w, OptT conv_b,
                               torch::Tensor dt_raw, torch::Tensor dt_bias, torch::Tensor A, torch::Tensor D,
                               torch::Tensor ssm_state, int64_t n_kv, int64_t d_xb);
std::vector<torch::Tensor> ssd_scan_cuda(torch::Tensor x, torch::Tensor dt, torch::Tensor A, torch::Tensor B,
                                         torch::Tensor C, OptT D, OptT initial_state, OptT seq_idx);
torch::Tensor causal_conv1d_cuda(torch::Tensor x, torch::Tensor weight, OptT bias, OptT initial_state, OptT seq_idx,
                                 bool silu);
std::vector<torch::Tensor> mamba1_step_cuda(torch::Tensor x, torch::Tensor conv_state, torch::Tensor conv_w,
                                            OptT conv_b, torch::Tensor delta, torch::Tensor A, torch::Tensor B,
                                            torch::Tensor C, OptT D, torch::Tensor ssm_state);
#endif

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("mamba2_step_cpu", &mamba2_step_cpu,
        "fused Mamba2 decode step: conv-state update + conv + silu + SSM state update + D skip (in place)");
  m.def("ssd_scan_cpu", &ssd_scan_cpu, "Mamba2 scan forward (prefill) with initial state, final state and seq_idx");
  m.def("causal_conv1d_cpu", &causal_conv1d_cpu, "causal depthwise conv1d forward with initial state and seq_idx");
  m.def("mamba1_step_cpu", &mamba1_step_cpu, "fused Mamba1 decode step (conv + selective state update, in place)");
  m.def("skinny_linear_supported", &skinny_linear_supported,
        "whether this build has the few-rows linear kernel for bfloat16 (true) or float32 (false)");
  m.def("skinny_pack_cpu", &skinny_pack_cpu, "pack a linear weight [N, K] into blocks of 16 output columns");
  m.def("skinny_linear_cpu", &skinny_linear_cpu, "y = x W^T + b for few rows of x, W packed by skinny_pack_cpu");
  m.def("decode_attention_cpu", &decode_attention_cpu,
        "one-token attention over a KV cache, query heads grouped per KV head; masked slots skipped");
#ifdef WITH_CUDA
  m.def("mamba2_step_cuda", &mamba2_step_cuda, "the same step on CUDA tensors");
  m.def("ssd_scan_cuda", &ssd_scan_cuda, "the same scan on CUDA tensors");
  m.def("causal_conv1d_cuda", &causal_conv1d_cuda, "the same conv on CUDA tensors");
  m.def("mamba1_step_cuda", &mamba1_step_cuda, "the same step on CUDA tensors");
#endif
}
