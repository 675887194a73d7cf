// Mamba2 scan forward (prefill) on CUDA: the sequential recurrence of csrc/cpu/ssd_scan.cpp (see there).
// One block per (row, head); thread p owns row p of the head's state (N floats in registers, N <= 256 in steps of
// 32); B and C of each step are staged in shared memory. Sequential in T: for the long-prompt prefill of large
// models the chunked (tensor-core) form of mamba_ssm is faster; this kernel needs no Triton and is exact.
#include "common.cuh"

namespace {
using namespace hybrid_cuda;

template <typename T, int NMAX>
__global__ void scan_kernel(const T* __restrict__ x, const float* __restrict__ dt, const float* __restrict__ A,
                            const T* __restrict__ B, const T* __restrict__ C, const float* __restrict__ D,
                            const float* __restrict__ init, const int64_t* __restrict__ seq, T* __restrict__ y,
                            float* __restrict__ final_state, int64_t T_len, int64_t H, int64_t P, int64_t G,
                            int64_t N) {
  extern __shared__ float smem[];  // [2 N]: B then C of the current step
  const int64_t b = blockIdx.x, h = blockIdx.y, g = h / (H / G), p = threadIdx.x;
  const int64_t bh = b * H + h;
  float S[NMAX];
#pragma unroll
  for (int n = 0; n < NMAX; ++n) S[n] = (p < P && n < N && init) ? init[(bh * P + p) * N + n] : 0.0f;
  const float a = A[h], d = D ? D[h] : 0.0f;
  for (int64_t t = 0; t < T_len; ++t) {
    const int64_t bt = b * T_len + t;
    __syncthreads();
    for (int64_t n = threadIdx.x; n < N; n += blockDim.x) {
      smem[n] = to_f(B[(bt * G + g) * N + n]);
      smem[N + n] = to_f(C[(bt * G + g) * N + n]);
    }
    __syncthreads();
    const bool reset = seq && t > 0 && seq[bt] != seq[bt - 1];
    if (p >= P) continue;
    const float dtv = dt[bt * H + h];
    const float decay = reset ? 0.0f : __expf(dtv * a);
    const float xv = to_f(x[(bt * H + h) * P + p]);
    const float u = dtv * xv;
    float acc = 0.0f;
#pragma unroll
    for (int n = 0; n < NMAX; ++n) {
      if (n < N) {
        S[n] = S[n] * decay + u * smem[n];
        acc += S[n] * smem[N + n];
      }
    }
    y[(bt * H + h) * P + p] = from_f<T>(acc + d * xv);
  }
  if (p < P) {
#pragma unroll
    for (int n = 0; n < NMAX; ++n) {
      if (n < N) final_state[(bh * P + p) * N + n] = S[n];
    }
  }
}

template <typename T, int NMAX>
void launch(const void* x, const float* dt, const float* A, const void* B, const void* C, const float* D,
            const float* init, const int64_t* seq, void* y, float* final_state, int64_t batch, int64_t T_len,
            int64_t H, int64_t P, int64_t G, int64_t N, cudaStream_t stream) {
  const int threads = static_cast<int>(((P + 31) / 32) * 32);
  scan_kernel<T, NMAX><<<dim3(static_cast<unsigned>(batch), static_cast<unsigned>(H)), threads,
                         2 * N * sizeof(float), stream>>>(
      static_cast<const T*>(x), dt, A, static_cast<const T*>(B), static_cast<const T*>(C), D, init, seq,
      static_cast<T*>(y), final_state, T_len, H, P, G, N);
}

}  // namespace

// Returns the CUDA error code of the launch (0 on success); cudaErrorInvalidValue for N > 256 or P > 1024.
int ssd_scan_cuda_launch(int dtype, const void* x, const float* dt, const float* A, const void* B, const void* C,
                         const float* D, const float* init, const int64_t* seq, void* y, float* final_state,
                         int64_t batch, int64_t T_len, int64_t H, int64_t P, int64_t G, int64_t N,
                         cudaStream_t stream) {
  if (N > 256 || P > 1024) return static_cast<int>(cudaErrorInvalidValue);
  HYBRID_DISPATCH(dtype,
    if (N <= 64) launch<T, 64>(x, dt, A, B, C, D, init, seq, y, final_state, batch, T_len, H, P, G, N, stream);
    else if (N <= 128) launch<T, 128>(x, dt, A, B, C, D, init, seq, y, final_state, batch, T_len, H, P, G, N, stream);
    else launch<T, 256>(x, dt, A, B, C, D, init, seq, y, final_state, batch, T_len, H, P, G, N, stream))
  return static_cast<int>(cudaGetLastError());
}
