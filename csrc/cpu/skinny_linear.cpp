// Linear layers at decode shapes on the CPU: y[M, N] = x[M, K] W[N, K]^T (+ bias) for few rows M (a decode step's
// batch), with W packed once into blocks of 16 output columns.
//
// A decode step reads every weight once and multiplies it with a handful of rows, so its products are bound by how
// fast the weights stream in from memory. With weights too large for the caches, oneDNN's packed kernel and MKL's
// sgemm streamed them at 4-9 GB/s on this project's 2-core AMD EPYC, a fifth of the machine's read bandwidth
// (`hybrid-distill bench linear`). This kernel reads each packed block front to back exactly once (contiguous, with
// a software prefetch ahead) and keeps up to 16 rows' accumulators in registers, so every weight vector loaded feeds
// one FMA per row and no horizontal sums are needed:
//
//   float32  W -> [ceil(N/16), K, 16]          acc[r] += broadcast(x[r, k]) * W[block, k, 0:16]
//   bfloat16 W -> [ceil(N/16), ceil(K/2), 16, 2]  acc[r] += dpbf16(broadcast(x[r, k:k+2]), W[block, k/2, 0:16, 0:2])
//
// Accumulation is in float32 (bf16 pairs through AVX512-BF16's dot product, as oneDNN's bf16 GEMMs do); output in
// x's dtype. Needs AVX-512F (and AVX512-BF16 for bfloat16): `skinny_linear_supported` says which this build has;
// without them the Python side keeps oneDNN. Twin: F.linear (tests/csrc/test_skinny_linear.py).
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace {

constexpr int64_t kCols = 16;  // output columns per packed block: one 512-bit vector of float32 accumulators

#if defined(__AVX512F__)
// rows r of a tile: stored through a mask of the block's real columns (the last block may be partial)
inline void store_row(float* y, __m512 acc, __mmask16 mask, const float* bias) {
  if (bias) acc = _mm512_add_ps(acc, _mm512_maskz_loadu_ps(mask, bias));
  _mm512_mask_storeu_ps(y, mask, acc);
}

#if defined(__AVX512BF16__)
inline void store_row(at::BFloat16* y, __m512 acc, __mmask16 mask, const float* bias) {
  if (bias) acc = _mm512_add_ps(acc, _mm512_maskz_loadu_ps(mask, bias));
  __m256i h = (__m256i)_mm512_cvtneps_pbh(acc);  // round to nearest even, as at::BFloat16 does
  _mm256_mask_storeu_epi16(y, mask, h);
}
#endif

// One block of 16 columns times one tile of R rows. xt: the tile transposed, [K, R] (float32) or [K/2, R] pairs.
template <int R>
void tile(const float* wb, const float* xt, int64_t K, float* y, int64_t ldy, int64_t rows, __mmask16 mask,
          const float* bias) {
  __m512 acc[R];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; ++k) {
    _mm_prefetch(reinterpret_cast<const char*>(wb + (k + 16) * kCols), _MM_HINT_T0);
    const __m512 w = _mm512_loadu_ps(wb + k * kCols);
    const float* xk = xt + k * R;
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(xk[r]), w, acc[r]);
  }
  for (int64_t r = 0; r < rows; ++r) store_row(y + r * ldy, acc[r], mask, bias);
}

#if defined(__AVX512BF16__)
template <int R>
void tile(const uint32_t* wb, const uint32_t* xt, int64_t K2, at::BFloat16* y, int64_t ldy, int64_t rows,
          __mmask16 mask, const float* bias) {
  __m512 acc[R];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K2; ++k) {
    _mm_prefetch(reinterpret_cast<const char*>(wb + (k + 16) * kCols), _MM_HINT_T0);
    const __m512bh w = (__m512bh)_mm512_loadu_si512(wb + k * kCols);
    const uint32_t* xk = xt + k * R;
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) acc[r] = _mm512_dpbf16_ps(acc[r], (__m512bh)_mm512_set1_epi32((int)xk[r]), w);
  }
  for (int64_t r = 0; r < rows; ++r) store_row(y + r * ldy, acc[r], mask, bias);
}
#endif

// rows of a tile: 16 while 16 or more remain, else the smallest of 1, 2, 4, 8 that holds the rest
inline int tile_rows(int64_t remaining) {
  if (remaining >= 16) return 16;
  int r = 1;
  while (r < remaining) r *= 2;
  return r;
}

// Every block of 16 columns times every tile of rows, blocks split between threads. word_t: float (float32) or a
// bf16 pair (bfloat16); KK: words per column (K, or K/2 pairs); xt holds the tiles at `starts`.
template <typename word_t, typename out_t>
void run_blocks(const word_t* wp, const std::vector<word_t>& xt, const std::vector<int64_t>& starts, int64_t KK,
                int64_t M, int64_t N, int64_t NB, out_t* yp, const float* bp) {
  const int64_t tiles = (M + 15) / 16;
  at::parallel_for(0, NB, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t n0 = blk * kCols, nn = std::min<int64_t>(kCols, N - n0);
      const __mmask16 mask = (__mmask16)((1u << nn) - 1);
      const word_t* wb = wp + blk * KK * kCols;
      const float* bb = bp ? bp + n0 : nullptr;
      for (int64_t t = 0; t < tiles; ++t) {
        const int64_t rows = std::min<int64_t>(16, M - 16 * t);
        out_t* yt = yp + 16 * t * N + n0;
        const word_t* xtile = xt.data() + starts[t];
        switch (tile_rows(M - 16 * t)) {
          case 16: tile<16>(wb, xtile, KK, yt, N, rows, mask, bb); break;
          case 8: tile<8>(wb, xtile, KK, yt, N, rows, mask, bb); break;
          case 4: tile<4>(wb, xtile, KK, yt, N, rows, mask, bb); break;
          case 2: tile<2>(wb, xtile, KK, yt, N, rows, mask, bb); break;
          default: tile<1>(wb, xtile, KK, yt, N, rows, mask, bb); break;
        }
      }
    }
  });
}
#endif

}  // namespace

bool skinny_linear_supported(bool bf16) {
#if defined(__AVX512F__) && defined(__AVX512BF16__)
  return true;
#elif defined(__AVX512F__)
  return !bf16;
#else
  (void)bf16;
  return false;
#endif
}

torch::Tensor skinny_pack_cpu(torch::Tensor w) {
  TORCH_CHECK(w.device().is_cpu() && w.dim() == 2, "skinny_pack: weight must be a 2-D CPU tensor, got ", w.sizes());
  const bool bf16 = w.scalar_type() == at::kBFloat16;
  TORCH_CHECK(bf16 || w.scalar_type() == at::kFloat, "skinny_pack: weight must be float32 or bfloat16, got ",
              w.scalar_type());
  TORCH_CHECK(skinny_linear_supported(bf16), "skinny_pack: this build has no kernel for ", w.scalar_type());
  const int64_t N = w.size(0), K = w.size(1), NB = (N + kCols - 1) / kCols;
  auto wc = w.contiguous();
  if (!bf16) {
    auto p = torch::zeros({NB, K, kCols}, w.options());
    const float* src = wc.data_ptr<float>();
    float* dst = p.data_ptr<float>();
    at::parallel_for(0, NB, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b)
        for (int64_t k = 0; k < K; ++k)  // writes in order; the reads are 16 row streams
          for (int64_t j = 0; j < std::min<int64_t>(kCols, N - b * kCols); ++j)
            dst[(b * K + k) * kCols + j] = src[(b * kCols + j) * K + k];
    });
    return p;
  }
  const int64_t K2 = (K + 1) / 2;
  auto p = torch::zeros({NB, K2, kCols, 2}, w.options());
  const at::BFloat16* src = wc.data_ptr<at::BFloat16>();
  at::BFloat16* dst = p.data_ptr<at::BFloat16>();
  at::parallel_for(0, NB, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b)
      for (int64_t k = 0; k < K; ++k)
        for (int64_t j = 0; j < std::min<int64_t>(kCols, N - b * kCols); ++j)
          dst[((b * K2 + k / 2) * kCols + j) * 2 + k % 2] = src[(b * kCols + j) * K + k];
  });
  return p;
}

torch::Tensor skinny_linear_cpu(torch::Tensor x, torch::Tensor packed, c10::optional<torch::Tensor> bias,
                                int64_t N) {
  TORCH_CHECK(x.device().is_cpu() && packed.device().is_cpu(), "skinny_linear: CPU tensors only");
  TORCH_CHECK(x.scalar_type() == packed.scalar_type(), "skinny_linear: x is ", x.scalar_type(),
              " but the packed weight is ", packed.scalar_type());
  const bool bf16 = x.scalar_type() == at::kBFloat16;
  TORCH_CHECK(skinny_linear_supported(bf16), "skinny_linear: this build has no kernel for ", x.scalar_type());
  TORCH_CHECK(packed.dim() == (bf16 ? 4 : 3) && packed.size(bf16 ? 2 : 2) == kCols,
              "skinny_linear: not a weight packed by skinny_pack: ", packed.sizes());
  const int64_t NB = packed.size(0);
  TORCH_CHECK(N > (NB - 1) * kCols && N <= NB * kCols, "skinny_linear: N=", N, " does not match ", NB, " blocks");
  const int64_t K = x.size(-1);
  TORCH_CHECK(bf16 ? (K + 1) / 2 == packed.size(1) : K == packed.size(1), "skinny_linear: x has ", K,
              " features, the packed weight ", bf16 ? 2 * packed.size(1) : packed.size(1));
  torch::Tensor b;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == N, "skinny_linear: bias must be [", N, "], got ", bias->sizes());
    b = bias->to(at::kFloat).contiguous();
  }
  auto out_sizes = x.sizes().vec();
  out_sizes.back() = N;
  auto x2 = x.reshape({-1, K}).contiguous();
  const int64_t M = x2.size(0);
  auto y = torch::empty({M, N}, x.options());
  if (M == 0 || N == 0) return y.reshape(out_sizes);
#if defined(__AVX512F__)
  const float* bp = b.defined() ? b.data_ptr<float>() : nullptr;
  // x transposed tile by tile: tile t holds rows [16 t, 16 t + R) as [K', R], zero-padded to R rows
  const int64_t KK = bf16 ? packed.size(1) : K;  // K, or K/2 pairs
  const int64_t tiles = (M + 15) / 16;
  std::vector<int64_t> starts(tiles + 1, 0);
  for (int64_t t = 0; t < tiles; ++t) starts[t + 1] = starts[t] + KK * tile_rows(M - 16 * t);
  if (!bf16) {
    std::vector<float> xt(starts[tiles], 0.0f);
    const float* xs = x2.data_ptr<float>();
    for (int64_t t = 0; t < tiles; ++t) {
      const int R = tile_rows(M - 16 * t);
      for (int64_t r = 0; r < std::min<int64_t>(16, M - 16 * t); ++r)
        for (int64_t k = 0; k < K; ++k) xt[starts[t] + k * R + r] = xs[(16 * t + r) * K + k];
    }
    run_blocks(packed.data_ptr<float>(), xt, starts, K, M, N, NB, y.data_ptr<float>(), bp);
    return y.reshape(out_sizes);
  }
#if defined(__AVX512BF16__)
  std::vector<uint32_t> xt(starts[tiles], 0u);  // pairs (x[r, 2k], x[r, 2k+1]) as one 32-bit word, zero-padded
  const uint16_t* xs = reinterpret_cast<const uint16_t*>(x2.data_ptr<at::BFloat16>());
  for (int64_t t = 0; t < tiles; ++t) {
    const int R = tile_rows(M - 16 * t);
    for (int64_t r = 0; r < std::min<int64_t>(16, M - 16 * t); ++r)
      for (int64_t k = 0; k < K; ++k) {
        uint32_t& word = xt[starts[t] + (k / 2) * R + r];
        word |= static_cast<uint32_t>(xs[(16 * t + r) * K + k]) << (16 * (k % 2));
      }
  }
  run_blocks(reinterpret_cast<const uint32_t*>(packed.data_ptr<at::BFloat16>()), xt, starts, KK, M, N, NB,
             y.data_ptr<at::BFloat16>(), bp);
  return y.reshape(out_sizes);
#endif
#endif
  TORCH_CHECK(false, "skinny_linear: unreachable without AVX-512");
}
