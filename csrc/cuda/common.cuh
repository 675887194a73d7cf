// Shared device helpers of the project's CUDA kernels: fp32 <-> storage-type conversions.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace hybrid_cuda {
__device__ inline float to_f(float v) { return v; }
__device__ inline float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ inline float to_f(__half v) { return __half2float(v); }
template <typename T> __device__ inline T from_f(float v);
template <> __device__ inline float from_f<float>(float v) { return v; }
template <> __device__ inline __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16(v); }
template <> __device__ inline __half from_f<__half>(float v) { return __float2half(v); }
}  // namespace hybrid_cuda

// dtype codes shared by the launchers and their torch wrappers: 0 = float32, 1 = bfloat16, 2 = float16.
#define HYBRID_DISPATCH(dtype, ...)                          \
  switch (dtype) {                                           \
    case 0: { using T = float; __VA_ARGS__; break; }          \
    case 1: { using T = __nv_bfloat16; __VA_ARGS__; break; }  \
    case 2: { using T = __half; __VA_ARGS__; break; }         \
    default: return static_cast<int>(cudaErrorInvalidValue); \
  }
