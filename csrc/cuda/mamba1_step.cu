// Fused Mamba1 decode step on CUDA: the computation of csrc/cpu/mamba1_step.cpp (see there).
// One thread per (row, channel): conv-state shift + conv + silu, then the channel's N-wide state update.
#include "common.cuh"

namespace {
using namespace hybrid_cuda;

template <typename T>
__global__ void step_kernel(const T* __restrict__ x, T* __restrict__ conv_state, const T* __restrict__ w,
                            const T* __restrict__ bias, const float* __restrict__ delta, const float* __restrict__ A,
                            const T* __restrict__ B, const T* __restrict__ C, const float* __restrict__ D,
                            float* __restrict__ ssm, T* __restrict__ y, int64_t batch, int64_t Di, int64_t K,
                            int64_t N, int64_t GB, int64_t GC) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= batch * Di) return;
  const int64_t b = i / Di, d = i % Di;
  T* st = conv_state + i * K;
  float acc = bias ? to_f(bias[d]) : 0.0f;
  for (int64_t k = 0; k + 1 < K; ++k) {
    const T v = st[k + 1];
    st[k] = v;
    acc += to_f(w[d * K + k]) * to_f(v);
  }
  st[K - 1] = x[i];
  acc += to_f(w[d * K + K - 1]) * to_f(x[i]);
  const float u = acc / (1.0f + __expf(-acc));
  const float dl = delta[i];
  const T* Bv = B + (b * GB + d / (Di / GB)) * N;
  const T* Cv = C + (b * GC + d / (Di / GC)) * N;
  float* h = ssm + i * N;
  float out = 0.0f;
  for (int64_t n = 0; n < N; ++n) {
    const float s = __expf(dl * A[d * N + n]) * h[n] + dl * u * to_f(Bv[n]);
    h[n] = s;
    out += s * to_f(Cv[n]);
  }
  y[i] = from_f<T>(out + (D ? D[d] * u : 0.0f));
}

}  // namespace

// delta [b, Di], A [Di, N], D [Di] in fp32 (D may be null). Returns the CUDA error code of the launch.
int mamba1_step_cuda_launch(int dtype, const void* x, void* conv_state, const void* w, const void* bias,
                            const float* delta, const float* A, const void* B, const void* C, const float* D,
                            float* ssm, void* y, int64_t batch, int64_t Di, int64_t K, int64_t N, int64_t GB,
                            int64_t GC, cudaStream_t stream) {
  const int64_t total = batch * Di;
  HYBRID_DISPATCH(dtype,
    step_kernel<T><<<static_cast<unsigned>((total + 255) / 256), 256, 0, stream>>>(
        static_cast<const T*>(x), static_cast<T*>(conv_state), static_cast<const T*>(w), static_cast<const T*>(bias),
        delta, A, static_cast<const T*>(B), static_cast<const T*>(C), D, ssm, static_cast<T*>(y), batch, Di, K, N,
        GB, GC))
  return static_cast<int>(cudaGetLastError());
}
