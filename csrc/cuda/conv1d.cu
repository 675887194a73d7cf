// Causal depthwise conv1d forward on CUDA: the computation of csrc/cpu/conv1d.cpp (see there).
// One thread per (row, time, channel); channel-last x, so neighbouring threads read neighbouring channels.
#include "common.cuh"

namespace {
using namespace hybrid_cuda;

template <typename T>
__global__ void conv_kernel(const T* __restrict__ x, const float* __restrict__ w, const float* __restrict__ bias,
                            const float* __restrict__ init, const int64_t* __restrict__ seq, T* __restrict__ y,
                            int64_t batch, int64_t T_len, int64_t C, int64_t K, bool silu) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= batch * T_len * C) return;
  const int64_t c = i % C, t = (i / C) % T_len, b = i / (C * T_len);
  const int64_t doc = seq ? seq[b * T_len + t] : 0;
  float acc = bias ? bias[c] : 0.0f;
  for (int64_t k = 0; k < K; ++k) {
    const int64_t s = t - (K - 1) + k;
    if (s >= 0) {
      if (!seq || seq[b * T_len + s] == doc) acc += w[c * K + k] * to_f(x[(b * T_len + s) * C + c]);
    } else if (init && (!seq || seq[b * T_len] == doc)) {
      acc += w[c * K + k] * init[(b * C + c) * (K - 1) + (K - 1 + s)];
    }
  }
  y[i] = from_f<T>(silu ? acc / (1.0f + __expf(-acc)) : acc);
}

}  // namespace

// w [C, K], bias [C], init [b, C, K-1] in fp32 (or null). Returns the CUDA error code of the launch.
int causal_conv1d_cuda_launch(int dtype, const void* x, const float* w, const float* bias, const float* init,
                              const int64_t* seq, void* y, int64_t batch, int64_t T_len, int64_t C, int64_t K,
                              bool silu, cudaStream_t stream) {
  const int64_t total = batch * T_len * C;
  if (total == 0) return 0;
  HYBRID_DISPATCH(dtype,
    conv_kernel<T><<<static_cast<unsigned>((total + 255) / 256), 256, 0, stream>>>(
        static_cast<const T*>(x), w, bias, init, seq, static_cast<T*>(y), batch, T_len, C, K, silu))
  return static_cast<int>(cudaGetLastError());
}
