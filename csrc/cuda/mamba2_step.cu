// Fused Mamba2 decode step on CUDA: the same computation as csrc/cpu/mamba2_step.cpp (see there).
// Plain CUDA C++ with a pointer-level launcher, so that it compiles with nvcc alone (CI compiles it on machines
// without a GPU); the torch binding that calls the launcher is built only when torch has CUDA.
#include "common.cuh"

namespace {
using namespace hybrid_cuda;

// One thread per (row, channel): advance the conv state in place, write silu(conv) to act (fp32).
template <typename T>
__global__ void conv_kernel(const T* __restrict__ xBC, T* __restrict__ conv_state, const T* __restrict__ w,
                            const T* __restrict__ bias, float* __restrict__ act, int64_t total, int64_t channels,
                            int64_t K) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= total) return;
  const int64_t c = i % channels;
  T* st = conv_state + i * K;
  float acc = bias ? to_f(bias[c]) : 0.0f;
  for (int64_t k = 0; k + 1 < K; ++k) {
    const T v = st[k + 1];
    st[k] = v;
    acc += to_f(w[c * K + k]) * to_f(v);
  }
  st[K - 1] = xBC[i];
  acc += to_f(w[c * K + K - 1]) * to_f(xBC[i]);
  act[i] = acc / (1.0f + __expf(-acc));
}

// One block per (row, head), one thread per head-dim index p.
template <typename T>
__global__ void ssm_kernel(const float* __restrict__ act, const T* __restrict__ dt_raw, const float* __restrict__ dt_bias,
                           const float* __restrict__ A, const float* __restrict__ D, float* __restrict__ ssm,
                           T* __restrict__ y, int64_t H, int64_t kv, int64_t P, int64_t N, int64_t channels,
                           int64_t d_xb) {
  const int64_t b = blockIdx.x, h = blockIdx.y, g = h / (H / kv);
  const float* a = act + b * channels;
  const float* x = a + g * P;
  const float* Bv = a + d_xb + g * N;
  const float* Cv = a + 2 * d_xb + h * N;
  const float raw = to_f(dt_raw[b * H + h]) + dt_bias[h];
  const float dt = raw > 20.0f ? raw : log1pf(__expf(raw));
  const float decay = __expf(dt * A[h]);
  for (int64_t p = threadIdx.x; p < P; p += blockDim.x) {
    float* row = ssm + ((b * H + h) * P + p) * N;
    const float xp = dt * x[p];
    float acc = 0.0f;
    for (int64_t n = 0; n < N; ++n) {
      const float s = row[n] * decay + xp * Bv[n];
      row[n] = s;
      acc += s * Cv[n];
    }
    y[(b * H + h) * P + p] = from_f<T>(acc + D[h] * x[p]);
  }
}

template <typename T>
void launch(const void* xBC, void* conv_state, const void* w, const void* bias, const void* dt_raw,
            const float* dt_bias, const float* A, const float* D, float* ssm, void* y, float* act, int64_t batch,
            int64_t channels, int64_t K, int64_t H, int64_t kv, int64_t P, int64_t N, int64_t d_xb,
            cudaStream_t stream) {
  const int64_t total = batch * channels;
  conv_kernel<T><<<(total + 255) / 256, 256, 0, stream>>>(
      static_cast<const T*>(xBC), static_cast<T*>(conv_state), static_cast<const T*>(w), static_cast<const T*>(bias),
      act, total, channels, K);
  const int threads = P < 128 ? static_cast<int>(P) : 128;
  ssm_kernel<T><<<dim3(static_cast<unsigned>(batch), static_cast<unsigned>(H)), threads, 0, stream>>>(
      act, static_cast<const T*>(dt_raw), dt_bias, A, D, ssm, static_cast<T*>(y), H, kv, P, N, channels, d_xb);
}

}  // namespace

// dtype: 0 = float32, 1 = bfloat16, 2 = float16. act: a [batch, channels] fp32 scratch buffer. Returns the CUDA
// error code of the launches (0 on success).
int mamba2_step_cuda_launch(int dtype, const void* xBC, void* conv_state, const void* w, const void* bias,
                            const void* dt_raw, const float* dt_bias, const float* A, const float* D, float* ssm,
                            void* y, float* act, int64_t batch, int64_t channels, int64_t K, int64_t H, int64_t kv,
                            int64_t P, int64_t N, int64_t d_xb, cudaStream_t stream) {
  HYBRID_DISPATCH(dtype, launch<T>(xBC, conv_state, w, bias, dt_raw, dt_bias, A, D, ssm, y, act, batch, channels, K,
                                    H, kv, P, N, d_xb, stream))
  return static_cast<int>(cudaGetLastError());
}
