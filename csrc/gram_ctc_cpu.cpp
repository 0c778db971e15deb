// Gram-CTC on the CPU: lattice builder, forward (alpha) and backward (beta + posteriors),
// parallel over the batch with at::parallel_for. See gram_ctc.h for the lattice layout.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/util/irange.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#include "gram_ctc.h"

namespace speechlab {

// ------------------------------------------------------------------------------ checks
void check_lattice_args(const at::Tensor& targets, const at::Tensor& target_lengths,
                        const at::Tensor& gram_keys, const at::Tensor& gram_ids,
                        int64_t num_chars, int64_t max_gram_len) {
  TORCH_CHECK(targets.dim() == 2, "gram_ctc: targets must be 2-D (N, S), got ", targets.sizes());
  TORCH_CHECK(targets.scalar_type() == at::kLong, "gram_ctc: targets must be int64");
  TORCH_CHECK(target_lengths.dim() == 1 && target_lengths.size(0) == targets.size(0),
              "gram_ctc: target_lengths must have shape (N,) with N = ", targets.size(0));
  TORCH_CHECK(target_lengths.scalar_type() == at::kLong, "gram_ctc: target_lengths must be int64");
  TORCH_CHECK(gram_keys.dim() == 1 && gram_keys.scalar_type() == at::kLong,
              "gram_ctc: gram_keys must be a 1-D int64 tensor");
  TORCH_CHECK(gram_ids.dim() == 1 && gram_ids.scalar_type() == at::kInt &&
                  gram_ids.size(0) == gram_keys.size(0),
              "gram_ctc: gram_ids must be a 1-D int32 tensor as long as gram_keys");
  TORCH_CHECK(max_gram_len >= 1 && max_gram_len <= 30, "gram_ctc: max_gram_len must be in [1, 30]");
  TORCH_CHECK(num_chars >= 1, "gram_ctc: num_chars must be >= 1");
  for (const at::Tensor* t : {&target_lengths, &gram_keys, &gram_ids}) {
    TORCH_CHECK(t->device() == targets.device(), "gram_ctc: all tensors must be on ",
                targets.device());
  }
}

void check_forward_args(const at::Tensor& log_probs, const at::Tensor& targets,
                        const at::Tensor& input_lengths, const at::Tensor& target_lengths,
                        const at::Tensor& gram_keys, const at::Tensor& gram_ids,
                        int64_t num_chars, int64_t max_gram_len) {
  check_lattice_args(targets, target_lengths, gram_keys, gram_ids, num_chars, max_gram_len);
  TORCH_CHECK(log_probs.dim() == 3, "gram_ctc: log_probs must be 3-D (T, N, V), got ",
              log_probs.sizes());
  TORCH_CHECK(at::isFloatingType(log_probs.scalar_type()),
              "gram_ctc: log_probs must be floating point, got ", log_probs.scalar_type());
  const int64_t B = log_probs.size(1);
  TORCH_CHECK(targets.size(0) == B, "gram_ctc: targets must have N = ", B, " rows");
  TORCH_CHECK(input_lengths.dim() == 1 && input_lengths.size(0) == B &&
                  input_lengths.scalar_type() == at::kLong,
              "gram_ctc: input_lengths must be int64 (N,)");
  TORCH_CHECK(targets.device() == log_probs.device() && input_lengths.device() == log_probs.device(),
              "gram_ctc: all tensors must be on ", log_probs.device());
}

void check_lattice_input(const at::Tensor& log_probs, const at::Tensor& lattice,
                         const at::Tensor& input_lengths, int64_t max_target_len,
                         int64_t max_gram_len) {
  TORCH_CHECK(log_probs.dim() == 3, "gram_ctc: log_probs must be 3-D (T, N, V), got ",
              log_probs.sizes());
  TORCH_CHECK(at::isFloatingType(log_probs.scalar_type()),
              "gram_ctc: log_probs must be floating point, got ", log_probs.scalar_type());
  const int64_t B = log_probs.size(1);
  const LatticeLayout L(max_target_len, max_gram_len);
  TORCH_CHECK(lattice.dim() == 2 && lattice.size(0) == B && lattice.size(1) == L.width &&
                  lattice.scalar_type() == at::kInt,
              "gram_ctc: lattice must be int32 (N, ", L.width, "), got ", lattice.sizes());
  TORCH_CHECK(input_lengths.dim() == 1 && input_lengths.size(0) == B &&
                  input_lengths.scalar_type() == at::kLong,
              "gram_ctc: input_lengths must be int64 (N,)");
  TORCH_CHECK(lattice.device() == log_probs.device() && input_lengths.device() == log_probs.device(),
              "gram_ctc: all tensors must be on ", log_probs.device());
}

void check_backward_args(const at::Tensor& grad, const at::Tensor& log_probs,
                         const at::Tensor& lattice, const at::Tensor& input_lengths,
                         const at::Tensor& nll, const at::Tensor& log_alpha,
                         const at::Tensor& beta, int64_t max_target_len, int64_t max_gram_len) {
  check_lattice_input(log_probs, lattice, input_lengths, max_target_len, max_gram_len);
  const int64_t T = log_probs.size(0), B = log_probs.size(1);
  const LatticeLayout L(max_target_len, max_gram_len);
  TORCH_CHECK(grad.dim() == 1 && grad.size(0) == B, "gram_ctc: grad must have shape (N,)");
  TORCH_CHECK(nll.dim() == 1 && nll.size(0) == B, "gram_ctc: neg_log_likelihood must be (N,)");
  TORCH_CHECK(log_alpha.dim() == 3 && log_alpha.size(0) == B && log_alpha.size(1) == T &&
                  log_alpha.size(2) == L.S_bound,
              "gram_ctc: log_alpha must be (N, T, ", L.S_bound, "), got ", log_alpha.sizes());
  TORCH_CHECK(beta.numel() == 0 || beta.sizes() == log_alpha.sizes(),
              "gram_ctc: beta must be empty or shaped like log_alpha, got ", beta.sizes());
  TORCH_CHECK(beta.numel() == 0 || (beta.scalar_type() == log_alpha.scalar_type() &&
                                    beta.device() == log_alpha.device()),
              "gram_ctc: beta must match log_alpha's dtype and device");
  TORCH_CHECK(grad.device() == log_probs.device() && nll.device() == log_probs.device() &&
                  log_alpha.device() == log_probs.device(),
              "gram_ctc: all tensors must be on ", log_probs.device());
}

namespace {

template <typename acc_t>
constexpr acc_t neg_inf() {
  return -std::numeric_limits<acc_t>::infinity();
}

// log(sum_j exp(buf[idx[j]])) over P entries; -inf when all are -inf.
template <typename acc_t, int P>
inline acc_t lse_gather(const acc_t* buf, const int32_t* idx, int p_runtime) {
  const int np = P > 0 ? P : p_runtime;
  acc_t v[P > 0 ? P : 32];
  acc_t m = neg_inf<acc_t>();
  for (int j = 0; j < np; ++j) {
    v[j] = buf[idx[j]];
    m = v[j] > m ? v[j] : m;
  }
  if (m == neg_inf<acc_t>()) return m;
  acc_t s = 0;
  for (int j = 0; j < np; ++j) s += std::exp(v[j] - m);
  return m + std::log(s);
}

// ------------------------------------------------------------------ fp32 vector helpers
// Per frame, the recursion gathers each state's P neighbours into P contiguous rows and then
// runs a branch-free loop with polynomial exp/log (Cephes, about 1 ulp) that the compiler
// vectorizes; with GCC on x86-64 the loops are also cloned for AVX2 and picked at run time.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define SL_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define SL_CLONES
#endif

// exp(x) for x <= ~0 (also -inf): 0 below -87.
__attribute__((always_inline)) inline float exp_f32(float x) {
  const float xc = x < -87.0f ? -87.0f : x;
  const float y = xc * 1.44269504088896341f + 0.5f;
  const int32_t ki = static_cast<int32_t>(y + 128.0f) - 128;  // floor(y) for y > -128
  const float k = static_cast<float>(ki);
  float r = xc - k * 0.693359375f;
  r = r - k * -2.12194440e-4f;
  float q = 1.9875691500e-4f;
  q = q * r + 1.3981999507e-3f;
  q = q * r + 8.3334519073e-3f;
  q = q * r + 4.1665795894e-2f;
  q = q * r + 1.6666665459e-1f;
  q = q * r + 5.0000001201e-1f;
  q = q * r * r + r + 1.0f;
  const float scale = __builtin_bit_cast(float, (ki + 127) << 23);
  return x < -87.0f ? 0.0f : q * scale;
}

// log(x) for normal x > 0.
__attribute__((always_inline)) inline float log_f32(float x) {
  const int32_t bits = __builtin_bit_cast(int32_t, x);
  int32_t e = (bits >> 23) - 127;
  float m = __builtin_bit_cast(float, (bits & 0x007fffff) | 0x3f800000);  // [1, 2)
  const bool big = m > 1.41421356f;
  m = big ? m * 0.5f : m;
  e = big ? e + 1 : e;
  const float f = m - 1.0f;  // [-0.293, 0.414]
  const float z = f * f;
  float y = 7.0376836292e-2f;
  y = y * f + -1.1514610310e-1f;
  y = y * f + 1.1676998740e-1f;
  y = y * f + -1.2420140846e-1f;
  y = y * f + 1.4249322787e-1f;
  y = y * f + -1.6668057665e-1f;
  y = y * f + 2.0000714765e-1f;
  y = y * f + -2.4999993993e-1f;
  y = y * f + 3.3333331174e-1f;
  y = y * f * z;
  const float ef = static_cast<float>(e);
  y += ef * -2.12194440e-4f;
  y += -0.5f * z;
  return f + y + ef * 0.693359375f;
}

// res[s] = log sum_j exp(g[j * S + s]) for s < S (-inf when all terms are -inf).
template <int P>
__attribute__((always_inline)) inline void lse_rows_impl(const float* __restrict__ g, int S,
                                                         float* __restrict__ res) {
  for (int s = 0; s < S; ++s) {
    float m = g[s];
    for (int j = 1; j < P; ++j) m = g[j * S + s] > m ? g[j * S + s] : m;
    const bool none = m == -std::numeric_limits<float>::infinity();
    const float ms = none ? 0.0f : m;
    float sum = 0.0f;
    for (int j = 0; j < P; ++j) sum += exp_f32(g[j * S + s] - ms);
    res[s] = none ? -std::numeric_limits<float>::infinity() : ms + log_f32(sum);
  }
}

SL_CLONES void lse_rows3(const float* g, int S, float* res) { lse_rows_impl<3>(g, S, res); }
SL_CLONES void lse_rows4(const float* g, int S, float* res) { lse_rows_impl<4>(g, S, res); }

// y[s] = exp(x[s]).
SL_CLONES void exp_rows(const float* x, int S, float* y) {  // may run in place
  for (int s = 0; s < S; ++s) y[s] = exp_f32(x[s]);
}

// Per-thread scratch of the sweeps.
template <typename acc_t>
struct Work {
  std::vector<acc_t> buf, g, res, x;
};

// res[s] = log sum_j exp(buf[idx[s * p + j]]) for s < S.
template <typename acc_t, int P>
inline void lse_frame(const acc_t* buf, const int32_t* idx, int p, int S, acc_t* res,
                      Work<acc_t>& w) {
  if constexpr (std::is_same_v<acc_t, float> && (P == 3 || P == 4)) {
    w.g.resize(static_cast<size_t>(P) * S);
    float* g = w.g.data();
    for (int s = 0; s < S; ++s)
      for (int j = 0; j < P; ++j) g[j * S + s] = buf[idx[s * P + j]];
    if constexpr (P == 3) lse_rows3(g, S, res); else lse_rows4(g, S, res);
  } else {
    for (int s = 0; s < S; ++s) res[s] = lse_gather<acc_t, P>(buf, idx + static_cast<int64_t>(s) * p, p);
  }
}

template <typename acc_t>
inline void exp_frame(const acc_t* x, int S, acc_t* y) {
  if constexpr (std::is_same_v<acc_t, float>) {
    exp_rows(x, S, y);
  } else {
    for (int s = 0; s < S; ++s) y[s] = std::exp(x[s]);
  }
}

// Builds one lattice row (see gram_ctc.h) for target y[0:U].
void build_row(const int64_t* y, int64_t U, int64_t Tn, int64_t T, const LatticeLayout& L,
               int64_t num_chars, const int64_t* keys, const int32_t* ids, int64_t num_keys,
               int32_t* row) {
  const int N = static_cast<int>(L.max_n), P = static_cast<int>(L.P);
  const int32_t pad = static_cast<int32_t>(L.S_bound);
  int32_t* bidx = row + L.bidx;
  int32_t* mask = row + L.mask;
  int32_t* gid = row + L.gid;
  int32_t* label = row + L.label;
  int32_t* pred = row + L.pred;
  int32_t* succ = row + L.succ;
  int32_t* perm = row + L.perm;
  int32_t* seglen = row + L.seglen;
  std::fill(row, row + L.width, 0);
  std::fill(gid, gid + (L.max_u + 1) * N, -1);
  std::fill(pred, pred + L.S_bound * P, pad);
  std::fill(succ, succ + L.S_bound * P, pad);

  int err = 0;
  if (U < 0 || U > L.max_u) {
    err |= kErrTargetLength;
    U = 0;
  }
  for (int64_t j = 0; j < U; ++j)
    if (y[j] < 1 || y[j] > num_chars) err |= kErrTargetId;
  if (Tn < 0 || Tn > T) err |= kErrInputLength;
  row[kHdrError] = err;
  if (err) U = 0;  // an empty lattice; the forward returns NaN for this utterance
  const int64_t base = num_chars + 1;
  for (int k = 1; k <= U; ++k) {
    int32_t m = 0;
    for (int n = 1; n <= N && n <= k; ++n) {
      const int32_t g = n == 1 ? static_cast<int32_t>(y[k - 1])
                               : lookup_gram(y, k, n, base, keys, ids, num_keys);
      gid[k * N + n - 1] = g;
      if (g >= 0) m |= 1 << (n - 1);
    }
    mask[k] = m;
  }
  bidx[0] = 0;
  for (int k = 1; k <= U; ++k) bidx[k] = bidx[k - 1] + popcount32(mask[k]) + 1;
  const int S = bidx[U] + 1;
  row[kHdrStates] = S;
  row[kHdrU] = static_cast<int32_t>(U);
  row[kHdrFinal] = bidx[U];
  row[kHdrGrams] = S - static_cast<int32_t>(U) - 1;

  for (int k = 0; k <= U; ++k) {
    // blank b_k
    {
      const int s = bidx[k];
      label[s] = 0;
      int32_t* pr = pred + static_cast<int64_t>(s) * P;
      int32_t* su = succ + static_cast<int64_t>(s) * P;
      int np = 0, ns = 0;
      pr[np++] = s;
      if (k >= 1)
        for (int q = bidx[k - 1] + 1; q < bidx[k]; ++q) pr[np++] = q;
      su[ns++] = s;
      for (int n = 1; n <= N && k + n <= U; ++n)
        if (mask[k + n] & (1 << (n - 1))) su[ns++] = gram_state_index(bidx, mask, k, n);
    }
    // gram states ending at k, by increasing n
    for (int n = 1; n <= N && n <= k; ++n) {
      if (!(mask[k] & (1 << (n - 1)))) continue;
      const int s = gram_state_index(bidx, mask, k - n, n);
      const int32_t g = gid[k * N + n - 1];
      const int i = k - n;
      label[s] = g;
      int32_t* pr = pred + static_cast<int64_t>(s) * P;
      int32_t* su = succ + static_cast<int64_t>(s) * P;
      int np = 0, ns = 0;
      pr[np++] = s;
      pr[np++] = bidx[i];
      if (i >= 1)
        for (int q = bidx[i - 1] + 1; q < bidx[i]; ++q)
          if (label[q] != g) pr[np++] = q;  // states before s are labelled already
      su[ns++] = s;
      su[ns++] = bidx[k];
      for (int n2 = 1; n2 <= N && k + n2 <= U; ++n2)
        if ((mask[k + n2] & (1 << (n2 - 1))) && gid[(k + n2) * N + n2 - 1] != g)
          su[ns++] = gram_state_index(bidx, mask, k, n2);
    }
  }
  // gram states sorted by (label, index); seglen at the first state of each label
  std::vector<std::pair<int32_t, int32_t>> order;
  order.reserve(S);
  for (int s = 0; s < S; ++s)
    if (label[s] != 0) order.emplace_back(label[s], s);
  std::sort(order.begin(), order.end());
  const int G = static_cast<int>(order.size());
  for (int j = 0; j < G; ++j) {
    perm[j] = order[j].second;
    if (j == 0 || order[j].first != order[j - 1].first) {
      int e = j;
      while (e < G && order[e].first == order[j].first) ++e;
      seglen[j] = e - j;
    }
  }
}

template <typename scalar_t, typename acc_t, int P>
void forward_utterance(const scalar_t* lp, int64_t lp_t_stride, int64_t Tn, int64_t T,
                       const int32_t* row, const LatticeLayout& L, acc_t* alpha_out,
                       acc_t* nll_out, Work<acc_t>& w) {
  const int64_t Sb = L.S_bound;
  const int p = static_cast<int>(L.P);
  const int S = row[kHdrStates];
  const int32_t* label = row + L.label;
  const int32_t* pred = row + L.pred;
  w.buf.assign(2 * (Sb + 1), neg_inf<acc_t>());
  w.res.resize(Sb);
  acc_t* prev = w.buf.data();
  acc_t* cur = prev + (Sb + 1);
  acc_t* res = w.res.data();
  prev[0] = 0;  // virtual frame t = -1: only b_0
  for (int64_t t = 0; t < Tn; ++t) {
    const scalar_t* lpt = lp + t * lp_t_stride;
    acc_t* out = alpha_out + t * Sb;
    lse_frame<acc_t, P>(prev, pred, p, S, res, w);
    for (int s = 0; s < S; ++s) {
      const acc_t a = res[s] + static_cast<acc_t>(lpt[label[s]]);
      cur[s] = a;
      out[s] = a;
    }
    std::fill(out + S, out + Sb, neg_inf<acc_t>());
    std::swap(prev, cur);
  }
  std::fill(alpha_out + Tn * Sb, alpha_out + T * Sb, neg_inf<acc_t>());
  // log p: the final states are exactly the predecessors of b_U
  const int fin = row[kHdrFinal];
  const acc_t logp = lse_gather<acc_t, P>(prev, pred + static_cast<int64_t>(fin) * p, p);
  *nll_out = row[kHdrError] ? std::numeric_limits<acc_t>::quiet_NaN() : -logp;
}

// Fills the rows t < Tn of a non-finite utterance (NaN, or 0 with zero_infinity); true if so.
template <typename scalar_t, typename acc_t>
bool fill_nonfinite(acc_t nll, bool zero_infinity, int64_t Tn, int64_t V, int64_t stride,
                    scalar_t* grad_out) {
  if (!(std::isinf(nll) || std::isnan(nll))) return false;
  const scalar_t fill =
      zero_infinity && std::isinf(nll) ? scalar_t(0) : std::numeric_limits<scalar_t>::quiet_NaN();
  for (int64_t t = 0; t < Tn; ++t) std::fill(grad_out + t * stride, grad_out + t * stride + V, fill);
  return true;
}

// Adds -g * q[s] to the row's labels and writes the row.
template <typename scalar_t, typename acc_t>
inline void write_row(const int32_t* label, int S, const acc_t* q, acc_t g, int64_t V,
                      std::vector<acc_t>& acc_row, scalar_t* gt) {
  for (int s = 0; s < S; ++s) acc_row[label[s]] -= g * q[s];
  for (int64_t c = 0; c < V; ++c) {
    gt[c] = static_cast<scalar_t>(acc_row[c]);
    acc_row[c] = 0;
  }
}

template <typename scalar_t, typename acc_t, int P>
void backward_utterance(const scalar_t* lp, int64_t lp_t_stride, int64_t Tn, int64_t V,
                        const int32_t* row, const LatticeLayout& L, const acc_t* alpha,
                        acc_t nll, acc_t g, bool zero_infinity, scalar_t* grad_out,
                        Work<acc_t>& w, std::vector<acc_t>& acc_row) {
  if (fill_nonfinite(nll, zero_infinity, Tn, V, lp_t_stride, grad_out)) return;
  const int64_t Sb = L.S_bound;
  const int p = static_cast<int>(L.P);
  const int S = row[kHdrStates];
  const int32_t* label = row + L.label;
  const int32_t* succ = row + L.succ;
  w.buf.assign(2 * (Sb + 1), neg_inf<acc_t>());
  w.res.resize(Sb);
  w.x.resize(Sb);
  acc_row.assign(V, acc_t(0));
  acc_t* next = w.buf.data();
  acc_t* cur = next + (Sb + 1);
  acc_t* bex = w.res.data();
  acc_t* x = w.x.data();
  next[row[kHdrFinal]] = 0;  // virtual frame t = Tn: only b_U
  for (int64_t t = Tn - 1; t >= 0; --t) {
    const scalar_t* lpt = lp + t * lp_t_stride;
    const acc_t* at = alpha + t * Sb;
    lse_frame<acc_t, P>(next, succ, p, S, bex, w);  // beta without this frame's emission
    for (int s = 0; s < S; ++s) {
      cur[s] = bex[s] + static_cast<acc_t>(lpt[label[s]]);
      x[s] = at[s] + bex[s] + nll;  // log posterior: alpha carries the emission once
    }
    exp_frame(x, S, x);
    write_row(label, S, x, g, V, acc_row, grad_out + t * lp_t_stride);
    std::swap(next, cur);
  }
}

// beta~ (beta without the frame's emission) of one utterance, -inf outside the lattice.
template <typename scalar_t, typename acc_t, int P>
void beta_utterance(const scalar_t* lp, int64_t lp_t_stride, int64_t Tn, int64_t T,
                    const int32_t* row, const LatticeLayout& L, acc_t* beta_out,
                    Work<acc_t>& w) {
  const int64_t Sb = L.S_bound;
  const int p = static_cast<int>(L.P);
  const int S = row[kHdrStates];
  const int32_t* label = row + L.label;
  const int32_t* succ = row + L.succ;
  std::fill(beta_out, beta_out + T * Sb, neg_inf<acc_t>());
  w.buf.assign(2 * (Sb + 1), neg_inf<acc_t>());
  acc_t* next = w.buf.data();
  acc_t* cur = next + (Sb + 1);
  next[row[kHdrFinal]] = 0;
  for (int64_t t = Tn - 1; t >= 0; --t) {
    const scalar_t* lpt = lp + t * lp_t_stride;
    acc_t* out = beta_out + t * Sb;
    lse_frame<acc_t, P>(next, succ, p, S, out, w);
    for (int s = 0; s < S; ++s) cur[s] = out[s] + static_cast<acc_t>(lpt[label[s]]);
    std::swap(next, cur);
  }
}

// Gradient rows of one utterance from alpha and a given beta~.
template <typename scalar_t, typename acc_t>
void grad_from_beta(int64_t lp_t_stride, int64_t Tn, int64_t V, const int32_t* row,
                    const LatticeLayout& L, const acc_t* alpha, const acc_t* beta, acc_t nll,
                    acc_t g, bool zero_infinity, scalar_t* grad_out, Work<acc_t>& w,
                    std::vector<acc_t>& acc_row) {
  if (fill_nonfinite(nll, zero_infinity, Tn, V, lp_t_stride, grad_out)) return;
  const int64_t Sb = L.S_bound;
  const int S = row[kHdrStates];
  const int32_t* label = row + L.label;
  w.x.resize(Sb);
  acc_t* x = w.x.data();
  acc_row.assign(V, acc_t(0));
  for (int64_t t = 0; t < Tn; ++t) {
    const acc_t* at = alpha + t * Sb;
    const acc_t* bt = beta + t * Sb;
    for (int s = 0; s < S; ++s) x[s] = at[s] + bt[s] + nll;
    exp_frame(x, S, x);
    write_row(label, S, x, g, V, acc_row, grad_out + t * lp_t_stride);
  }
}

template <typename F>
void dispatch_P(int64_t P, F&& f) {
  switch (P) {
    case 3: f(std::integral_constant<int, 3>{}); break;
    case 4: f(std::integral_constant<int, 4>{}); break;
    default: f(std::integral_constant<int, 0>{}); break;
  }
}

}  // namespace

// ------------------------------------------------------------------------------ ops
namespace {

// Lattice rows of a batch; input_lengths may be undefined (no input-length check).
at::Tensor build_lattice(const at::Tensor& targets, const at::Tensor& target_lengths,
                         const at::Tensor& input_lengths, int64_t T, const at::Tensor& gram_keys,
                         const at::Tensor& gram_ids, int64_t num_chars, int64_t max_gram_len) {
  const at::Tensor y = targets.contiguous();
  const at::Tensor tl = target_lengths.contiguous();
  const at::Tensor il = input_lengths.defined() ? input_lengths.contiguous() : at::Tensor();
  const at::Tensor keys = gram_keys.contiguous();
  const at::Tensor ids = gram_ids.contiguous();
  const int64_t B = y.size(0), max_u = y.size(1);
  const LatticeLayout L(max_u, max_gram_len);
  at::Tensor lattice = at::empty({B, L.width}, y.options().dtype(at::kInt));
  const int64_t* y_p = y.data_ptr<int64_t>();
  const int64_t* tl_p = tl.data_ptr<int64_t>();
  const int64_t* il_p = il.defined() ? il.data_ptr<int64_t>() : nullptr;
  int32_t* lat = lattice.data_ptr<int32_t>();
  at::parallel_for(0, B, 32, [&](int64_t b0, int64_t b1) {  // cheap: parallel for big batches
    for (int64_t b = b0; b < b1; ++b)
      build_row(y_p + b * max_u, tl_p[b], il_p ? il_p[b] : 0, T, L, num_chars,
                keys.data_ptr<int64_t>(), ids.data_ptr<int32_t>(), keys.size(0),
                lat + b * L.width);
  });
  return lattice;
}

}  // namespace

at::Tensor gram_ctc_lattice_cpu(const at::Tensor& targets, const at::Tensor& target_lengths,
                                const at::Tensor& gram_keys, const at::Tensor& gram_ids,
                                int64_t num_chars, int64_t max_gram_len) {
  check_lattice_args(targets, target_lengths, gram_keys, gram_ids, num_chars, max_gram_len);
  return build_lattice(targets, target_lengths, at::Tensor(), 0, gram_keys, gram_ids, num_chars,
                       max_gram_len);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> gram_ctc_forward_cpu(
    const at::Tensor& log_probs, const at::Tensor& targets, const at::Tensor& input_lengths,
    const at::Tensor& target_lengths, const at::Tensor& gram_keys, const at::Tensor& gram_ids,
    int64_t num_chars, int64_t max_gram_len, bool zero_infinity, bool need_beta) {
  (void)zero_infinity;  // used by the backward; the raw nll is returned
  check_forward_args(log_probs, targets, input_lengths, target_lengths, gram_keys, gram_ids,
                     num_chars, max_gram_len);
  const at::Tensor lp = log_probs.contiguous();
  const at::Tensor il = input_lengths.contiguous();
  const int64_t T = lp.size(0), B = lp.size(1), V = lp.size(2);
  const at::Tensor lat = build_lattice(targets, target_lengths, il, T, gram_keys, gram_ids,
                                       num_chars, max_gram_len);
  const LatticeLayout L(targets.size(1), max_gram_len);
  const int64_t* il_p = il.data_ptr<int64_t>();
  const at::ScalarType acc_type = lp.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor nll = at::empty({B}, lp.options().dtype(acc_type));
  at::Tensor log_alpha = at::empty({B, T, L.S_bound}, lp.options().dtype(acc_type));
  at::Tensor beta = need_beta ? at::empty({B, T, L.S_bound}, lp.options().dtype(acc_type))
                              : at::empty({0}, lp.options().dtype(acc_type));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, lp.scalar_type(), "gram_ctc_forward_cpu", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    const scalar_t* lp_p = lp.data_ptr<scalar_t>();
    const int32_t* lat_p = lat.data_ptr<int32_t>();
    acc_t* alpha_p = log_alpha.data_ptr<acc_t>();
    acc_t* nll_p = nll.data_ptr<acc_t>();
    dispatch_P(L.P, [&](auto PC) {
      constexpr int P = decltype(PC)::value;
      at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
        Work<acc_t> buf;
        for (int64_t b = b0; b < b1; ++b) {
          const int64_t Tn = std::min<int64_t>(std::max<int64_t>(il_p[b], 0), T);
          forward_utterance<scalar_t, acc_t, P>(lp_p + b * V, B * V, Tn, T,
                                                lat_p + b * L.width, L,
                                                alpha_p + b * T * L.S_bound, nll_p + b, buf);
          if (need_beta)
            beta_utterance<scalar_t, acc_t, P>(lp_p + b * V, B * V, Tn, T, lat_p + b * L.width,
                                               L, beta.data_ptr<acc_t>() + b * T * L.S_bound,
                                               buf);
        }
      });
    });
  });
  return {nll, log_alpha, beta, lat};
}

at::Tensor gram_ctc_backward_cpu(const at::Tensor& grad, const at::Tensor& log_probs,
                                 const at::Tensor& lattice, const at::Tensor& input_lengths,
                                 const at::Tensor& nll, const at::Tensor& log_alpha,
                                 const at::Tensor& beta, int64_t max_target_len,
                                 int64_t max_gram_len, bool zero_infinity) {
  check_backward_args(grad, log_probs, lattice, input_lengths, nll, log_alpha, beta,
                      max_target_len, max_gram_len);
  const at::Tensor be = beta.numel() > 0 ? beta.contiguous() : beta;
  const at::Tensor lp = log_probs.contiguous();
  const at::Tensor lat = lattice.contiguous();
  const at::Tensor il = input_lengths.contiguous();
  const at::Tensor la = log_alpha.contiguous();
  const int64_t T = lp.size(0), B = lp.size(1), V = lp.size(2);
  const LatticeLayout L(max_target_len, max_gram_len);
  const at::ScalarType acc_type = la.scalar_type();
  const at::Tensor g = grad.to(acc_type).contiguous();
  const at::Tensor nl = nll.to(acc_type).contiguous();
  at::Tensor grad_lp = at::zeros_like(lp);
  const int64_t* il_p = il.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, lp.scalar_type(), "gram_ctc_backward_cpu", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    TORCH_CHECK(la.scalar_type() == c10::CppTypeToScalarType<acc_t>::value,
                "gram_ctc: log_alpha has the wrong dtype ", la.scalar_type());
    const scalar_t* lp_p = lp.data_ptr<scalar_t>();
    const int32_t* lat_p = lat.data_ptr<int32_t>();
    const acc_t* alpha_p = la.data_ptr<acc_t>();
    const acc_t* nll_p = nl.data_ptr<acc_t>();
    const acc_t* g_p = g.data_ptr<acc_t>();
    scalar_t* out_p = grad_lp.data_ptr<scalar_t>();
    dispatch_P(L.P, [&](auto PC) {
      constexpr int P = decltype(PC)::value;
      at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
        Work<acc_t> buf;
        std::vector<acc_t> acc_row;
        for (int64_t b = b0; b < b1; ++b) {
          const int64_t Tn = std::min<int64_t>(std::max<int64_t>(il_p[b], 0), T);
          if (be.numel() > 0) {
            grad_from_beta<scalar_t, acc_t>(B * V, Tn, V, lat_p + b * L.width, L,
                                            alpha_p + b * T * L.S_bound,
                                            be.data_ptr<acc_t>() + b * T * L.S_bound, nll_p[b],
                                            g_p[b], zero_infinity, out_p + b * V, buf, acc_row);
            continue;
          }
          backward_utterance<scalar_t, acc_t, P>(
              lp_p + b * V, B * V, Tn, V, lat_p + b * L.width, L, alpha_p + b * T * L.S_bound,
              nll_p[b], g_p[b], zero_infinity, out_p + b * V, buf, acc_row);
        }
      });
    });
  });
  return grad_lp;
}

}  // namespace speechlab
