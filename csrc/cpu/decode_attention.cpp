// Attention of a one-token query over a KV cache on the CPU (a decode step), grouped-query heads folded:
//
//   out[b, h, g, :] = softmax_t(scale * q[b, h, g, :] . k[b, h, t, :] + mask[b, t]) @ v[b, h, t, :]
//
// for q [B, H, G, D] (G query heads share the key/value head h), k and v [B, H, T, D] (a static cache's buffers,
// any strides with D contiguous) and an additive mask [B, T] (0 where a slot holds a token). A slot whose mask is
// below -1e30 (the dtype's lowest value or -inf, what transformers' and this project's masks put on padding and
// on the cache's empty tail) is skipped: its weight exp(mask - max) is 0 in float32 anyway, so the result is the
// same, and the unwritten tail of a static cache is never read. A row with no slot left gets zeros.
//
// A decode step's attention is bound by how fast the cache streams in: every key and value is read once and used
// G times. torch's CPU kernel (flash attention, built for blocks of queries) read bfloat16 caches from memory at
// ~10 GB/s on this project's 2-core Xeon, 40 % of a copy's bandwidth (`hybrid-distill bench ops`). Here each
// (b, h) pair is one task: scores for all G queries in one pass over k (bfloat16 pairs through AVX512-BF16's dot
// product, or float32 FMAs; 16 keys' sums by one transpose-and-add tree), a vectorised float32 softmax, and one
// pass over v with G accumulators in registers; rows are prefetched ahead. Accumulation in float32 (torch's CPU
// kernels accumulate bfloat16 attention in float32 too); output in q's dtype. 15-17 GB/s in bfloat16, 19-21 GB/s
// in float32 from memory, there.
// Twin: the definition above in float64 (tests/csrc/test_decode_attention.py).
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "fast_math.h"

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace {

constexpr float kSkip = -1e30f;  // mask values below this exclude the slot
constexpr int64_t kAhead = 16;  // rows prefetched ahead (a row of 64 bf16 is 2 cache lines)

inline float to_float(float x) { return x; }
inline float to_float(at::BFloat16 x) { return static_cast<float>(x); }

#if defined(__AVX512F__)
inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 load16(const at::BFloat16* p) {  // bfloat16 -> float32 is a 16-bit left shift of the bits
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

template <typename scalar_t>
inline void prefetch_row(const scalar_t* p, int64_t D) {  // every cache line of a row
  const char* c = reinterpret_cast<const char*>(p);
  for (int64_t off = 0; off < D * static_cast<int64_t>(sizeof(scalar_t)); off += 64) _mm_prefetch(c + off, _MM_HINT_T0);
}

// fast_exp (fast_math.h) on 16 lanes: 2^round(x log2 e) * 2^f by scalef, f in [-0.5, 0.5] by the same polynomial
inline __m512 exp16(__m512 x) {
  x = _mm512_max_ps(_mm512_set1_ps(-87.0f), x);  // this operand order keeps a NaN in x (max_ps returns its second)
  const __m512 t = _mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f));
  const __m512 fi = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(t, fi);
  __m512 p = _mm512_set1_ps(1.535336188319500e-4f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.339887440266574e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.618437357674640e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.550332471162809e-2f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.402264791363012e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.931472028550421e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, fi);
}

// lane j of the result = the sum of a[j]'s 16 lanes (a transpose-and-add tree: 45 shuffles and adds for 16
// vectors, where 16 separate horizontal sums take about three times as many)
inline __m512 sum16(const __m512* a) {
  __m512 b[8], c[4], d[2];
  for (int i = 0; i < 8; ++i)  // per 128-bit lane: [x0+x2, y0+y2, x1+x3, y1+y3] of x = a[2i], y = a[2i+1]
    b[i] = _mm512_add_ps(_mm512_unpacklo_ps(a[2 * i], a[2 * i + 1]), _mm512_unpackhi_ps(a[2 * i], a[2 * i + 1]));
  for (int i = 0; i < 4; ++i) {  // per 128-bit lane: that lane's sum of a[4i], ..., a[4i+3]
    const __m512d lo = _mm512_unpacklo_pd(_mm512_castps_pd(b[2 * i]), _mm512_castps_pd(b[2 * i + 1]));
    const __m512d hi = _mm512_unpackhi_pd(_mm512_castps_pd(b[2 * i]), _mm512_castps_pd(b[2 * i + 1]));
    c[i] = _mm512_add_ps(_mm512_castpd_ps(lo), _mm512_castpd_ps(hi));
  }
  for (int i = 0; i < 2; ++i)  // lanes [c0.0 + c0.1, c0.2 + c0.3, c1.0 + c1.1, c1.2 + c1.3] of c0 = c[2i], c1 = c[2i+1]
    d[i] = _mm512_add_ps(_mm512_shuffle_f32x4(c[2 * i], c[2 * i + 1], 0x88),
                         _mm512_shuffle_f32x4(c[2 * i], c[2 * i + 1], 0xDD));
  return _mm512_add_ps(_mm512_shuffle_f32x4(d[0], d[1], 0x88), _mm512_shuffle_f32x4(d[0], d[1], 0xDD));
}

// 16 lanes of partial products of q[g] and one key row (D = 16 NC): float32 FMAs of the key converted in registers
template <int NC, typename scalar_t>
inline __m512 dot_row(const float* qg, const scalar_t* kr) {
  __m512 acc = _mm512_mul_ps(_mm512_loadu_ps(qg), load16(kr));
#pragma GCC unroll 8
  for (int c = 1; c < NC; ++c) acc = _mm512_fmadd_ps(_mm512_loadu_ps(qg + 16 * c), load16(kr + 16 * c), acc);
  return acc;
}

#if defined(__AVX512BF16__)
// bfloat16 keys with AVX512-BF16: pairs of products summed in float32 by one instruction, no conversion (NC even)
template <int NC>
inline __m512 dot_row(const __m512bh* qg, const at::BFloat16* kr) {
  __m512 acc = _mm512_setzero_ps();
#pragma GCC unroll 4
  for (int c = 0; c < NC / 2; ++c) acc = _mm512_dpbf16_ps(acc, qg[c], (__m512bh)_mm512_loadu_si512(kr + 32 * c));
  return acc;
}
#endif

// scores s[g * n + i] = scale * q[g] . k[idx[i]] + m[i] for D = 16 NC, 16 keys at a time (their rows stay in L1
// while the G queries pass over them); q_t: float32 rows of D, or bfloat16 pairs (NC / 2 vectors a row)
template <int NC, typename scalar_t, typename q_t>
void scores_avx512(const q_t* q, int64_t qrow, int64_t G, const scalar_t* k, int64_t st, const int64_t* idx,
                   const float* m, int64_t n, float scale, float* s) {
  const __m512 sc = _mm512_set1_ps(scale);
  for (int64_t i0 = 0; i0 < n; i0 += 16) {
    const int64_t nb = std::min<int64_t>(16, n - i0);
    const __mmask16 live = (__mmask16)((1u << nb) - 1);
    for (int64_t j = 0; j < nb && i0 + j + kAhead < n; ++j) prefetch_row(k + idx[i0 + j + kAhead] * st, 16 * NC);
    const __m512 mv = _mm512_maskz_loadu_ps(live, m + i0);
    for (int64_t g = 0; g < G; ++g) {
      __m512 part[16];
      for (int64_t j = 0; j < 16; ++j)
        part[j] = j < nb ? dot_row<NC>(q + g * qrow, k + idx[i0 + j] * st) : _mm512_setzero_ps();
      _mm512_mask_storeu_ps(s + g * n + i0, live, _mm512_fmadd_ps(sum16(part), sc, mv));
    }
  }
}

// acc[g] = sum_i p[g * n + i] v[idx[i]] for D = 16 NC, G at most 4 per pass (accumulators in registers)
template <int NC, typename scalar_t>
void values_avx512(const float* p, int64_t G, const scalar_t* v, int64_t st, const int64_t* idx, int64_t n,
                   float* out) {
  for (int64_t g0 = 0; g0 < G; g0 += 4) {
    const int64_t gn = std::min<int64_t>(4, G - g0);
    __m512 acc[4][NC];
#pragma GCC unroll 32
    for (int g = 0; g < 4; ++g)
#pragma GCC unroll 8
      for (int c = 0; c < NC; ++c) acc[g][c] = _mm512_setzero_ps();
    for (int64_t i = 0; i < n; ++i) {
      const scalar_t* vr = v + idx[i] * st;
      if (i + kAhead < n) prefetch_row(v + idx[i + kAhead] * st, 16 * NC);
      __m512 vv[NC];
#pragma GCC unroll 8
      for (int c = 0; c < NC; ++c) vv[c] = load16(vr + 16 * c);
#pragma GCC unroll 4
      for (int g = 0; g < 4; ++g) {
        if (g >= gn) break;
        const __m512 w = _mm512_set1_ps(p[(g0 + g) * n + i]);
#pragma GCC unroll 8
        for (int c = 0; c < NC; ++c) acc[g][c] = _mm512_fmadd_ps(w, vv[c], acc[g][c]);
      }
    }
    for (int64_t g = 0; g < gn; ++g)
      for (int c = 0; c < NC; ++c) _mm512_storeu_ps(out + (g0 + g) * 16 * NC + 16 * c, acc[g][c]);
  }
}

// The vectorised scores from float32 queries qf [G, D] for head dims 16, 32, 64, 128 (false: use scores_generic)
template <typename scalar_t>
bool score_keys_f32(const float* qf, int64_t G, int64_t D, const scalar_t* k, int64_t st, const int64_t* idx,
                    const float* m, int64_t n, float scale, float* s) {
  switch (D) {
    case 16: scores_avx512<1>(qf, D, G, k, st, idx, m, n, scale, s); return true;
    case 32: scores_avx512<2>(qf, D, G, k, st, idx, m, n, scale, s); return true;
    case 64: scores_avx512<4>(qf, D, G, k, st, idx, m, n, scale, s); return true;
    case 128: scores_avx512<8>(qf, D, G, k, st, idx, m, n, scale, s); return true;
    default: return false;
  }
}

inline bool score_keys(const float* /*q*/, int64_t /*qg*/, const float* qf, int64_t G, int64_t D, const float* k,
                       int64_t st, const int64_t* idx, const float* m, int64_t n, float scale, float* s) {
  return score_keys_f32(qf, G, D, k, st, idx, m, n, scale, s);
}

// bfloat16: q's rows (row stride qg) as bfloat16 vectors, read as they are, where AVX512-BF16 is there
inline bool score_keys(const at::BFloat16* q, int64_t qg, const float* qf, int64_t G, int64_t D,
                       const at::BFloat16* k, int64_t st, const int64_t* idx, const float* m, int64_t n, float scale,
                       float* s) {
#if defined(__AVX512BF16__)
  if (D == 32 || D == 64 || D == 128) {
    const int64_t nc = D / 32;
    std::vector<__m512bh> qb(G * nc);
    for (int64_t g = 0; g < G; ++g)
      for (int64_t c = 0; c < nc; ++c) qb[g * nc + c] = (__m512bh)_mm512_loadu_si512(q + g * qg + 32 * c);
    switch (D) {
      case 32: scores_avx512<2>(qb.data(), nc, G, k, st, idx, m, n, scale, s); return true;
      case 64: scores_avx512<4>(qb.data(), nc, G, k, st, idx, m, n, scale, s); return true;
      default: scores_avx512<8>(qb.data(), nc, G, k, st, idx, m, n, scale, s); return true;
    }
  }
#else
  (void)q;
  (void)qg;
#endif
  return score_keys_f32(qf, G, D, k, st, idx, m, n, scale, s);
}
#endif

template <typename scalar_t>
void scores_generic(const float* q, int64_t G, int64_t D, const scalar_t* k, int64_t st, const int64_t* idx,
                    const float* m, int64_t n, float scale, float* s) {
  for (int64_t i = 0; i < n; ++i) {
    const scalar_t* kr = k + idx[i] * st;
    for (int64_t g = 0; g < G; ++g) {
      float acc = 0.0f;
      for (int64_t d = 0; d < D; ++d) acc += q[g * D + d] * to_float(kr[d]);
      s[g * n + i] = scale * acc + m[i];
    }
  }
}

template <typename scalar_t>
void values_generic(const float* p, int64_t G, int64_t D, const scalar_t* v, int64_t st, const int64_t* idx,
                    int64_t n, float* out) {
  std::fill(out, out + G * D, 0.0f);
  for (int64_t i = 0; i < n; ++i) {
    const scalar_t* vr = v + idx[i] * st;
    for (int64_t g = 0; g < G; ++g) {
      const float w = p[g * n + i];
      for (int64_t d = 0; d < D; ++d) out[g * D + d] += w * to_float(vr[d]);
    }
  }
}

// p = softmax(s) in place, float32 (exp as in fast_math.h: clamped below at -87, where exp is 1.6e-38)
inline void softmax_row(float* s, int64_t n) {
#if defined(__AVX512F__)
  __m512 mx = _mm512_set1_ps(-INFINITY);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) mx = _mm512_max_ps(mx, _mm512_loadu_ps(s + i));
  if (i < n) {
    const __mmask16 live = (__mmask16)((1u << (n - i)) - 1);
    mx = _mm512_mask_max_ps(mx, live, mx, _mm512_maskz_loadu_ps(live, s + i));
  }
  const __m512 m = _mm512_set1_ps(_mm512_reduce_max_ps(mx));
  __m512 sum = _mm512_setzero_ps();
  for (i = 0; i < n; i += 16) {
    const __mmask16 live = n - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - i)) - 1);
    const __m512 e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(live, s + i), m));
    sum = _mm512_mask_add_ps(sum, live, sum, e);
    _mm512_mask_storeu_ps(s + i, live, e);
  }
  const __m512 inv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(sum));
  for (i = 0; i + 16 <= n; i += 16) _mm512_storeu_ps(s + i, _mm512_mul_ps(_mm512_loadu_ps(s + i), inv));
  for (; i < n; ++i) s[i] *= inv[0];
#else
  float mx = s[0];
  for (int64_t i = 1; i < n; ++i) mx = s[i] > mx ? s[i] : mx;
  float sum = 0.0f;
  for (int64_t i = 0; i < n; ++i) {
    s[i] = hybrid_cpu::fast_exp(s[i] - mx);
    sum += s[i];
  }
  const float inv = 1.0f / sum;
  for (int64_t i = 0; i < n; ++i) s[i] *= inv;
#endif
}

template <typename scalar_t>
void run(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, const std::vector<int64_t>& idx,
         const std::vector<int64_t>& starts, const std::vector<float>& mvals, float scale, torch::Tensor& out) {
  const int64_t B = q.size(0), H = q.size(1), G = q.size(2), D = q.size(3);
  const scalar_t* qp = q.data_ptr<scalar_t>();
  const scalar_t* kp = k.data_ptr<scalar_t>();
  const scalar_t* vp = v.data_ptr<scalar_t>();
  scalar_t* op = out.data_ptr<scalar_t>();
  const int64_t qsb = q.stride(0), qsh = q.stride(1), qsg = q.stride(2);
  const int64_t ksb = k.stride(0), ksh = k.stride(1), kst = k.stride(2);
  const int64_t vsb = v.stride(0), vsh = v.stride(1), vst = v.stride(2);
  at::parallel_for(0, B * H, 1, [&](int64_t w0, int64_t w1) {
    std::vector<float> qf(G * D), s, acc(G * D);
    for (int64_t w = w0; w < w1; ++w) {
      const int64_t b = w / H, h = w % H;
      const int64_t n = starts[b + 1] - starts[b];
      const int64_t* ib = idx.data() + starts[b];
      const float* mb = mvals.data() + starts[b];
      scalar_t* ob = op + (b * H + h) * G * D;
      if (n == 0) {
        std::fill(ob, ob + G * D, scalar_t(0.0f));
        continue;
      }
      for (int64_t g = 0; g < G; ++g)
        for (int64_t d = 0; d < D; ++d) qf[g * D + d] = to_float(qp[b * qsb + h * qsh + g * qsg + d]);
      s.resize(G * n);
      const scalar_t* kb = kp + b * ksb + h * ksh;
      const scalar_t* vb = vp + b * vsb + h * vsh;
      bool done = false;
#if defined(__AVX512F__)
      done = score_keys(qp + b * qsb + h * qsh, qsg, qf.data(), G, D, kb, kst, ib, mb, n, scale, s.data());
#endif
      if (!done) scores_generic(qf.data(), G, D, kb, kst, ib, mb, n, scale, s.data());
      for (int64_t g = 0; g < G; ++g) softmax_row(s.data() + g * n, n);
      done = false;
#if defined(__AVX512F__)
      done = true;
      switch (D) {
        case 16: values_avx512<1>(s.data(), G, vb, vst, ib, n, acc.data()); break;
        case 32: values_avx512<2>(s.data(), G, vb, vst, ib, n, acc.data()); break;
        case 64: values_avx512<4>(s.data(), G, vb, vst, ib, n, acc.data()); break;
        case 128: values_avx512<8>(s.data(), G, vb, vst, ib, n, acc.data()); break;
        default: done = false;
      }
#endif
      if (!done) values_generic(s.data(), G, D, vb, vst, ib, n, acc.data());
      for (int64_t j = 0; j < G * D; ++j) ob[j] = static_cast<scalar_t>(acc[j]);
    }
  });
}

}  // namespace

torch::Tensor decode_attention_cpu(torch::Tensor q, torch::Tensor k, torch::Tensor v, c10::optional<torch::Tensor> mask,
                                   double scale) {
  TORCH_CHECK(q.device().is_cpu() && k.device().is_cpu() && v.device().is_cpu(), "decode_attention: CPU tensors only");
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, "decode_attention: q must be [B, H, G, D] and k, v ",
              "[B, H, T, D]; got ", q.sizes(), ", ", k.sizes(), ", ", v.sizes());
  const int64_t B = q.size(0), H = q.size(1), G = q.size(2), D = q.size(3), T = k.size(2);
  TORCH_CHECK(k.size(0) == B && k.size(1) == H && k.size(3) == D && v.sizes() == k.sizes(), "decode_attention: q ",
              q.sizes(), " does not match k ", k.sizes(), " and v ", v.sizes());
  TORCH_CHECK(q.scalar_type() == k.scalar_type() && k.scalar_type() == v.scalar_type(),
              "decode_attention: q, k, v must share a dtype, got ", q.scalar_type(), ", ", k.scalar_type(), ", ",
              v.scalar_type());
  TORCH_CHECK(q.scalar_type() == at::kFloat || q.scalar_type() == at::kBFloat16,
              "decode_attention: float32 or bfloat16 only, got ", q.scalar_type());
  TORCH_CHECK(q.stride(3) == 1 && k.stride(3) == 1 && v.stride(3) == 1,
              "decode_attention: the head dimension must be contiguous");
  // the slots each row attends to (shared by its heads), with their mask values in float32
  std::vector<int64_t> idx, starts(B + 1, 0);
  std::vector<float> mvals;
  idx.reserve(B * T);
  mvals.reserve(B * T);
  if (mask.has_value() && mask->defined()) {
    TORCH_CHECK(mask->dim() == 2 && mask->size(0) == B && mask->size(1) == T, "decode_attention: mask must be [", B,
                ", ", T, "], got ", mask->sizes());
    TORCH_CHECK(at::isFloatingType(mask->scalar_type()), "decode_attention: the mask is additive (floating point), ",
                "got ", mask->scalar_type());
    auto m = mask->to(at::kFloat).contiguous();
    const float* mp = m.data_ptr<float>();
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t t = 0; t < T; ++t)
        if (!(mp[b * T + t] < kSkip)) {  // NaN is kept, as in the definition
          idx.push_back(t);
          mvals.push_back(mp[b * T + t]);
        }
      starts[b + 1] = static_cast<int64_t>(idx.size());
    }
  } else {
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t t = 0; t < T; ++t) {
        idx.push_back(t);
        mvals.push_back(0.0f);
      }
      starts[b + 1] = static_cast<int64_t>(idx.size());
    }
  }
  auto out = torch::empty({B, H, G, D}, q.options());
  if (out.numel() == 0) return out;
  if (q.scalar_type() == at::kFloat)
    run<float>(q, k, v, idx, starts, mvals, static_cast<float>(scale), out);
  else
    run<at::BFloat16>(q, k, v, idx, starts, mvals, static_cast<float>(scale), out);
  return out;
}
