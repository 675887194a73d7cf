// Mamba2 scan forward (prefill) on the CPU: the sequential recurrence, parallel over (row, head).
//
// For each (b, h), g = h / (H / G), and t = 0 .. T-1:
//   if seq_idx[b, t] != seq_idx[b, t-1]: S <- 0                 (a new packed document starts)
//   S <- exp(dt[b, t, h] * A[h]) * S + dt[b, t, h] * x[b, t, h, :] B[b, t, g, :]^T        S: [P, N], fp32
//   y[b, t, h, :] = S C[b, t, g, :] + D[h] x[b, t, h, :]
// S starts from initial_state[b, h] (or zeros); the final S is returned in fp32. On a CPU the state of one head
// (P x N floats, 16 KiB at 64 x 64) stays in L1, so one pass over T does the minimum work: 2 P N multiply-adds per
// step, no chunk matrices. Twin: hybrid/ops/ssd.py (ssd_ref is the definition; ssd_chunked the torch path).
// Forward only: training runs the differentiable torch path.
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include "../checks.h"

#include <cmath>
#include <vector>

namespace {

template <typename scalar_t>
void scan_kernel(const scalar_t* x, const float* dt, const float* A, const scalar_t* B, const scalar_t* C,
                 const float* D, const float* init, const int64_t* seq, scalar_t* y, float* final_state,
                 int64_t batch, int64_t T, int64_t H, int64_t P, int64_t G, int64_t N) {
  const int64_t r = H / G;
  at::parallel_for(0, batch * H, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> Bf(N), Cf(N), xf(P);
    for (int64_t i = begin; i < end; ++i) {
      const int64_t b = i / H, h = i % H, g = h / r;
      float* S = final_state + i * P * N;  // the running state lives in the output buffer
      if (init) {
        std::copy(init + i * P * N, init + (i + 1) * P * N, S);
      } else {
        std::fill(S, S + P * N, 0.0f);
      }
      const float a = A[h], d = D ? D[h] : 0.0f;
      for (int64_t t = 0; t < T; ++t) {
        const int64_t bt = b * T + t;
        if (seq && t > 0 && seq[bt] != seq[bt - 1]) std::fill(S, S + P * N, 0.0f);
        const float dtv = dt[bt * H + h];
        const float decay = std::exp(dtv * a);
        const scalar_t* Bp = B + (bt * G + g) * N;
        const scalar_t* Cp = C + (bt * G + g) * N;
        const scalar_t* xp = x + (bt * H + h) * P;
        for (int64_t n = 0; n < N; ++n) {
          Bf[n] = static_cast<float>(Bp[n]);
          Cf[n] = static_cast<float>(Cp[n]);
        }
        for (int64_t p = 0; p < P; ++p) xf[p] = static_cast<float>(xp[p]);
        scalar_t* yp = y + (bt * H + h) * P;
        for (int64_t p = 0; p < P; ++p) {
          const float u = dtv * xf[p];
          float* row = S + p * N;
          float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
          for (int64_t n = 0; n < N; ++n) {
            const float s = row[n] * decay + u * Bf[n];
            row[n] = s;
            acc += s * Cf[n];
          }
          yp[p] = static_cast<scalar_t>(acc + d * xf[p]);
        }
      }
    }
  });
}

}  // namespace

std::vector<torch::Tensor> ssd_scan_cpu(torch::Tensor x, torch::Tensor dt, torch::Tensor A, torch::Tensor B,
                                        torch::Tensor C, c10::optional<torch::Tensor> D,
                                        c10::optional<torch::Tensor> initial_state,
                                        c10::optional<torch::Tensor> seq_idx) {
  TORCH_CHECK(x.dim() == 4, "x must be [batch, T, heads, head_dim], got ", x.sizes());
  const int64_t batch = x.size(0), T = x.size(1), H = x.size(2), P = x.size(3);
  TORCH_CHECK(dt.dim() == 3 && dt.size(0) == batch && dt.size(1) == T && dt.size(2) == H, "dt must be [", batch,
              ", ", T, ", ", H, "], got ", dt.sizes());
  TORCH_CHECK(A.dim() == 1 && A.size(0) == H, "A must be [", H, "], got ", A.sizes());
  TORCH_CHECK(B.dim() == 4 && B.size(0) == batch && B.size(1) == T, "B must be [", batch, ", ", T,
              ", groups, d_state], got ", B.sizes());
  TORCH_CHECK(C.sizes() == B.sizes(), "C must have B's shape ", B.sizes(), ", got ", C.sizes());
  const int64_t G = B.size(2), N = B.size(3);
  TORCH_CHECK(G >= 1 && H % G == 0, "heads (", H, ") must be a multiple of groups (", G, ")");
  for (auto* t : {&B, &C}) {
    TORCH_CHECK(t->scalar_type() == x.scalar_type(), "x, B and C must share a dtype; got ", x.scalar_type(),
                " and ", t->scalar_type());
  }
  TORCH_CHECK(at::isFloatingType(x.scalar_type()) && at::isFloatingType(dt.scalar_type()),
              "x and dt must be floating point, got ", x.scalar_type(), " and ", dt.scalar_type());
  for (auto* t : {&x, &B, &C}) {
    TORCH_CHECK(t->is_contiguous(), "x, B and C must be contiguous (got a non-contiguous one of shape ",
                t->sizes(), ")");
    TORCH_CHECK(t->device().is_cpu(), "ssd_scan_cpu takes CPU tensors");
  }
  if (D.has_value()) TORCH_CHECK(D->dim() == 1 && D->size(0) == H, "D must be [", H, "], got ", D->sizes());
  torch::Tensor init_f, seq_l;
  if (initial_state.has_value()) {
    TORCH_CHECK(initial_state->dim() == 4 && initial_state->size(0) == batch && initial_state->size(1) == H &&
                    initial_state->size(2) == P && initial_state->size(3) == N,
                "initial_state must be [", batch, ", ", H, ", ", P, ", ", N, "], got ", initial_state->sizes());
    init_f = initial_state->to(at::kFloat).contiguous();
  }
  seq_l = hybrid_checks::seq_idx_long(seq_idx, batch, T);
  TORCH_CHECK(dt.device().is_cpu(), "ssd_scan_cpu takes CPU tensors");
  auto dt_f = dt.to(at::kFloat).contiguous();
  auto A_f = A.to(at::kFloat).contiguous();
  torch::Tensor D_f = D.has_value() ? D->to(at::kFloat).contiguous() : torch::Tensor();
  auto y = torch::empty_like(x);
  auto final_state = torch::empty({batch, H, P, N}, x.options().dtype(at::kFloat));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "ssd_scan_cpu", [&] {
    scan_kernel<scalar_t>(x.data_ptr<scalar_t>(), dt_f.data_ptr<float>(), A_f.data_ptr<float>(),
                          B.data_ptr<scalar_t>(), C.data_ptr<scalar_t>(),
                          D.has_value() ? D_f.data_ptr<float>() : nullptr,
                          initial_state.has_value() ? init_f.data_ptr<float>() : nullptr,
                          hybrid_checks::ptr_or_null(seq_l), y.data_ptr<scalar_t>(),
                          final_state.data_ptr<float>(), batch, T, H, P, G, N);
  });
  return {y, final_state};
}
