// Gram-CTC on CUDA. Lattice layout and transitions: gram_ctc.h.
//
// Kernels, in launch order:
//   lattice_kernel   one block per utterance: input checks (error bits), gram lookups (binary
//                    search in the sorted gram keys), a block scan for the state offsets,
//                    predecessor/successor tables, and the label-sorted list of gram states
//                    used by grad_kernel. Small tables are staged in shared memory.
//   sweep_kernel     one block per utterance and direction, R lattice states per thread:
//                    alpha (and, when a backward will follow, beta without the frame's
//                    emission, in blocks of their own running beside the alpha blocks: the
//                    two sweeps are independent). Double-buffered in shared memory, one
//                    barrier per frame, emissions of the next kPrefetch frames prefetched
//                    into registers; no atomics, nothing but the sweep in the loop.
//   grad_kernel      one block per (t, utterance), fully parallel: state posteriors
//                    exp(alpha + beta~ - log p) summed per label in a fixed order (label-sorted
//                    state lists, a fixed reduction tree for the blank), written as the dense
//                    |V| row. The gradient is bitwise repeatable.
//   *_generic        the same sweeps for lattices of more than kMaxFastStates states (or more
//                    than 12-character grams): any number of states per thread, alpha/beta in
//                    shared memory when they fit, else in a global scratch buffer.
// Accumulation is fp32 for fp32/fp16/bf16 inputs and fp64 for fp64 inputs.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cmath>
#include <limits>

#include "gram_ctc.h"

namespace speechlab {
namespace {

constexpr int kPrefetch = 4;          // frames of emissions prefetched (must be even)
constexpr int kMaxThreads = 1024;
constexpr int kMaxFastStates = 2048;  // R = 2 states per thread at most on the fast path

template <typename T>
__device__ __forceinline__ T neg_inf() {
  return -std::numeric_limits<T>::infinity();
}

__device__ __forceinline__ float fast_exp(float x) { return __expf(x); }
__device__ __forceinline__ double fast_exp(double x) { return exp(x); }
__device__ __forceinline__ float fast_log(float x) { return __logf(x); }
__device__ __forceinline__ double fast_log(double x) { return log(x); }

__device__ __forceinline__ int clamp_len(int64_t v, int T) {
  return v < 0 ? 0 : (v > T ? T : static_cast<int>(v));
}

// The fast sweeps keep fp32 alpha/beta in base-2 logarithms (value * log2(e)), so that the
// per-frame dependency chain is max, ex2, add, lg2 with no extra multiplies; emissions are
// scaled when prefetched and results when stored (off the chain). fp64 stays natural.
template <typename acc_t>
struct LogBase;
template <>
struct LogBase<float> {
  static constexpr float in = 1.4426950408889634f;   // log2(e)
  static constexpr float out = 0.6931471805599453f;  // ln(2)
  static __device__ __forceinline__ float exp(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
  }
  static __device__ __forceinline__ float log(float x) {
    float y;
    asm("lg2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
  }
};
template <>
struct LogBase<double> {
  static constexpr double in = 1.0, out = 1.0;
  static __device__ __forceinline__ double exp(double x) { return ::exp(x); }
  static __device__ __forceinline__ double log(double x) { return ::log(x); }
};

// log-sum-exp (in LogBase units) of buf[idx[0..P)], -inf when all are -inf.
template <typename acc_t, int P>
__device__ __forceinline__ acc_t lse_fixed(const acc_t* buf, const int (&idx)[P]) {
  acc_t v[P];
  acc_t m = neg_inf<acc_t>();
#pragma unroll
  for (int j = 0; j < P; ++j) {
    v[j] = buf[idx[j]];
    m = v[j] > m ? v[j] : m;
  }
  const acc_t ms = m == neg_inf<acc_t>() ? acc_t(0) : m;
  acc_t s = 0;
#pragma unroll
  for (int j = 0; j < P; ++j) s += LogBase<acc_t>::exp(v[j] - ms);
  return ms + LogBase<acc_t>::log(s);
}

template <typename acc_t>
__device__ __forceinline__ acc_t lse_runtime(const acc_t* buf, const int32_t* idx, int P) {
  acc_t m = neg_inf<acc_t>();
  for (int j = 0; j < P; ++j) {
    const acc_t v = buf[idx[j]];
    m = v > m ? v : m;
  }
  const acc_t ms = m == neg_inf<acc_t>() ? acc_t(0) : m;
  acc_t s = 0;
  for (int j = 0; j < P; ++j) s += fast_exp(buf[idx[j]] - ms);
  return ms + fast_log(s);
}

template <typename acc_t>
__device__ __forceinline__ acc_t lse_base(const acc_t* buf, const int32_t* idx, int P) {
  acc_t m = neg_inf<acc_t>();
  for (int j = 0; j < P; ++j) m = buf[idx[j]] > m ? buf[idx[j]] : m;
  const acc_t ms = m == neg_inf<acc_t>() ? acc_t(0) : m;
  acc_t s = 0;
  for (int j = 0; j < P; ++j) s += LogBase<acc_t>::exp(buf[idx[j]] - ms);
  return ms + LogBase<acc_t>::log(s);
}

// Deterministic block-wide sum (fixed reduction tree); every thread must call it.
template <typename acc_t>
__device__ acc_t block_sum(acc_t v, acc_t* scratch) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  acc_t total = 0;
  if (threadIdx.x == 0) {
    const int nw = (blockDim.x + 31) >> 5;
    for (int w = 0; w < nw; ++w) total += scratch[w];
  }
  return total;  // valid in thread 0
}

// ------------------------------------------------------------------------- lattice
// The small tables (bidx, mask, gid, label) are staged in shared memory when they fit
// (use_smem), else built in place in the lattice row; pred/succ/perm/seglen go to the row.
// Every int of the row is written exactly once, with the values the CPU builder writes.
__global__ void lattice_kernel(const int64_t* __restrict__ targets,
                               const int64_t* __restrict__ target_lengths,
                               const int64_t* __restrict__ input_lengths, int64_t T,
                               const int64_t* __restrict__ keys, const int32_t* __restrict__ ids,
                               int64_t num_keys, int64_t num_chars, LatticeLayout L, bool use_smem,
                               int32_t* __restrict__ lattice) {
  extern __shared__ int32_t sm_tables[];
  __shared__ int32_t warp_tot[32];
  __shared__ int32_t s_err;
  const int b = blockIdx.x;
  const int N = static_cast<int>(L.max_n), P = static_cast<int>(L.P);
  const int Sb = static_cast<int>(L.S_bound), max_u = static_cast<int>(L.max_u);
  int32_t* row = lattice + b * L.width;
  int32_t *bidx, *mask, *gid, *label;
  if (use_smem) {
    bidx = sm_tables;
    mask = bidx + (max_u + 1);
    gid = mask + (max_u + 1);
    label = gid + (max_u + 1) * N;
  } else {
    bidx = row + L.bidx;
    mask = row + L.mask;
    gid = row + L.gid;
    label = row + L.label;
  }
  int32_t* pred = row + L.pred;
  int32_t* succ = row + L.succ;
  int32_t* perm = row + L.perm;
  int32_t* seglen = row + L.seglen;
  const int64_t* y = targets + b * L.max_u;
  const int64_t u64 = target_lengths[b];

  // phase 0: checks (error bits), defaults of the small tables
  int err = 0;
  int U = static_cast<int>(u64);
  if (u64 < 0 || u64 > L.max_u) {
    err |= kErrTargetLength;
    U = 0;
  }
  for (int j = threadIdx.x; j < U; j += blockDim.x)
    if (y[j] < 1 || y[j] > num_chars) err |= kErrTargetId;
  if (threadIdx.x == 0) {
    s_err = 0;
    if (input_lengths != nullptr && (input_lengths[b] < 0 || input_lengths[b] > T))
      err |= kErrInputLength;
  }
  for (int i = threadIdx.x; i < (max_u + 1) * N; i += blockDim.x) gid[i] = -1;
  for (int i = threadIdx.x; i <= max_u; i += blockDim.x) {
    mask[i] = 0;
    bidx[i] = 0;
  }
  __syncthreads();
  if (err) atomicOr(&s_err, err);
  __syncthreads();
  err = s_err;
  if (err) U = 0;
  // phase A: gram ids of every substring y[k-n:k], n <= N
  const int64_t base = num_chars + 1;
  for (int w = threadIdx.x; w < U * N; w += blockDim.x) {
    const int k = w / N + 1, n = w % N + 1;
    if (n <= k)
      gid[k * N + n - 1] =
          n == 1 ? static_cast<int32_t>(y[k - 1]) : lookup_gram(y, k, n, base, keys, ids, num_keys);
  }
  __syncthreads();
  for (int k = threadIdx.x + 1; k <= U; k += blockDim.x) {
    int32_t m = 0;
    for (int n = 1; n <= N && n <= k; ++n)
      if (gid[k * N + n - 1] >= 0) m |= 1 << (n - 1);
    mask[k] = m;
  }
  __syncthreads();
  // phase B: bidx[k] = k + sum_{k' <= k} popcount(mask[k']), a chunked block scan
  {
    const int per = (U + blockDim.x) / blockDim.x;  // positions 0..U
    const int k0 = threadIdx.x * per, k1 = min(k0 + per, U + 1);
    int local = 0;
    for (int k = k0; k < k1; ++k) local += (k > 0 ? popcount32(mask[k]) + 1 : 0);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int incl = local;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const int v = __shfl_up_sync(0xffffffffu, incl, o);
      if (lane >= o) incl += v;
    }
    if (lane == 31) warp_tot[warp] = incl;
    __syncthreads();
    if (threadIdx.x == 0) {
      int acc = 0;
      for (int w = 0; w < static_cast<int>(blockDim.x >> 5); ++w) {
        const int v = warp_tot[w];
        warp_tot[w] = acc;
        acc += v;
      }
    }
    __syncthreads();
    int run = warp_tot[warp] + incl - local;
    for (int k = k0; k < k1; ++k) {
      run += (k > 0 ? popcount32(mask[k]) + 1 : 0);
      bidx[k] = run;
    }
  }
  __syncthreads();
  const int S = bidx[U] + 1;
  if (threadIdx.x < kHeader) {
    const int h = threadIdx.x;
    row[h] = h == kHdrStates  ? S
             : h == kHdrU     ? U
             : h == kHdrFinal ? bidx[U]
             : h == kHdrGrams ? S - U - 1
             : h == kHdrError ? err
                              : 0;
  }
  // phase C: states ending at k (entries in the CPU builder's order), padding up to P
  for (int k = threadIdx.x; k <= U; k += blockDim.x) {
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
      while (np < P) pr[np++] = Sb;
      while (ns < P) su[ns++] = Sb;
    }
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
      for (int n2 = 1; n2 <= N && n2 <= i; ++n2)
        if ((mask[i] & (1 << (n2 - 1))) && gid[i * N + n2 - 1] != g)
          pr[np++] = gram_state_index(bidx, mask, i - n2, n2);
      su[ns++] = s;
      su[ns++] = bidx[k];
      for (int n2 = 1; n2 <= N && k + n2 <= U; ++n2)
        if ((mask[k + n2] & (1 << (n2 - 1))) && gid[(k + n2) * N + n2 - 1] != g)
          su[ns++] = gram_state_index(bidx, mask, k, n2);
      while (np < P) pr[np++] = Sb;
      while (ns < P) su[ns++] = Sb;
    }
  }
  for (int s = S + threadIdx.x; s < Sb; s += blockDim.x) {  // unused states
    label[s] = 0;
    for (int j = 0; j < P; ++j) {
      pred[static_cast<int64_t>(s) * P + j] = Sb;
      succ[static_cast<int64_t>(s) * P + j] = Sb;
    }
  }
  __syncthreads();
  // phase D: gram states sorted by (label, index), by counting ranks
  const int G = S - U - 1;
  for (int s = threadIdx.x; s < S; s += blockDim.x) {
    const int32_t l = label[s];
    if (l == 0) continue;
    int pos = 0, before = 0, same = 0;
    for (int s2 = 0; s2 < S; ++s2) {
      const int32_t l2 = label[s2];
      const bool eq = l2 == l;
      pos += (l2 != 0) & ((l2 < l) | (eq & (s2 < s)));
      before += eq & (s2 < s);
      same += eq;
    }
    perm[pos] = s;
    seglen[pos] = before == 0 ? same : 0;
  }
  for (int j = G + threadIdx.x; j < Sb; j += blockDim.x) {
    perm[j] = 0;
    seglen[j] = 0;
  }
  if (use_smem) {  // copy the staged tables out (label is final since the last barrier)
    for (int i = threadIdx.x; i <= max_u; i += blockDim.x) {
      row[L.bidx + i] = bidx[i];
      row[L.mask + i] = mask[i];
    }
    for (int i = threadIdx.x; i < (max_u + 1) * N; i += blockDim.x) row[L.gid + i] = gid[i];
    for (int i = threadIdx.x; i < Sb; i += blockDim.x) row[L.label + i] = label[i];
  }
}

// ------------------------------------------------------------------------- fast sweeps
// R states per thread (s = threadIdx.x + r * blockDim.x), their table entries in registers.
template <typename scalar_t, typename acc_t, int P, int R>
__device__ __forceinline__ void alpha_sweep(acc_t* buf0, const scalar_t* __restrict__ lp,
                                            const int32_t* __restrict__ lattice,
                                            const int64_t* __restrict__ input_lengths,
                                            const LatticeLayout& L, int T, int B, int V,
                                            acc_t* __restrict__ log_alpha,
                                            acc_t* __restrict__ nll, int b) {
  const int Sb = static_cast<int>(L.S_bound), Lp = static_cast<int>(L.P);  // Lp <= P
  acc_t* buf1 = buf0 + (Sb + 1);
  const int32_t* row = lattice + b * L.width;
  const int Tn = clamp_len(input_lengths[b], T);
  const int64_t lp_stride = static_cast<int64_t>(B) * V;
  const scalar_t* lpb = lp + static_cast<int64_t>(b) * V;
  acc_t* ab = log_alpha + static_cast<int64_t>(b) * T * Sb;
  constexpr acc_t kIn = LogBase<acc_t>::in, kOut = LogBase<acc_t>::out;

  int st[R], lab[R], pr[R][P];
  bool on[R];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    st[r] = threadIdx.x + r * blockDim.x;
    on[r] = st[r] < Sb;
    lab[r] = on[r] ? row[L.label + st[r]] : 0;
#pragma unroll
    for (int j = 0; j < P; ++j) pr[r][j] = (on[r] && j < Lp) ? row[L.pred + st[r] * Lp + j] : Sb;
    if (on[r]) {
      buf0[st[r]] = st[r] == 0 ? acc_t(0) : neg_inf<acc_t>();  // virtual frame t = -1
    }
  }
  if (threadIdx.x == 0) {
    buf0[Sb] = neg_inf<acc_t>();
    buf1[Sb] = neg_inf<acc_t>();
  }
  // raw emissions of the next kPrefetch frames: converted and scaled only where they are used
  // (an FFMA on the chain), so the loads stay in flight for kPrefetch frames
  scalar_t e[kPrefetch][R];
#pragma unroll
  for (int d = 0; d < kPrefetch; ++d)
#pragma unroll
    for (int r = 0; r < R; ++r) e[d][r] = d < Tn ? lpb[d * lp_stride + lab[r]] : scalar_t(0);
  __syncthreads();

#pragma unroll 1
  for (int t0 = 0; t0 < Tn; t0 += kPrefetch) {
#pragma unroll
    for (int d = 0; d < kPrefetch; ++d) {
      const int t = t0 + d;
      if (t < Tn) {
        const acc_t* prev = (d & 1) ? buf1 : buf0;
        acc_t* cur = (d & 1) ? buf0 : buf1;
#pragma unroll
        for (int r = 0; r < R; ++r) {
          if (on[r]) {
            const acc_t a = lse_fixed<acc_t, P>(prev, pr[r]) + kIn * static_cast<acc_t>(e[d][r]);
            cur[st[r]] = a;
            ab[static_cast<int64_t>(t) * Sb + st[r]] = a * kOut;
          }
          const int tn = t + kPrefetch;
          if (tn < Tn) e[d][r] = lpb[tn * lp_stride + lab[r]];
        }
        __syncthreads();
      }
    }
  }
  // padded frames
  for (int t = Tn; t < T; ++t)
#pragma unroll
    for (int r = 0; r < R; ++r)
      if (on[r]) ab[static_cast<int64_t>(t) * Sb + st[r]] = neg_inf<acc_t>();
  if (threadIdx.x == 0) {
    const acc_t* last = (Tn & 1) ? buf1 : buf0;
    const int fin = row[kHdrFinal];
    const acc_t logp = kOut * lse_base(last, row + L.pred + fin * Lp, Lp);
    nll[b] = row[kHdrError] ? std::numeric_limits<acc_t>::quiet_NaN() : -logp;
  }
}

// beta~ (beta without the frame's emission); independent of alpha, so it can run beside it.
template <typename scalar_t, typename acc_t, int P, int R>
__device__ __forceinline__ void beta_sweep(acc_t* buf0, const scalar_t* __restrict__ lp,
                                           const int32_t* __restrict__ lattice,
                                           const int64_t* __restrict__ input_lengths,
                                           const LatticeLayout& L, int T, int B, int V,
                                           acc_t* __restrict__ beta_ex, int b) {
  const int Sb = static_cast<int>(L.S_bound), Lp = static_cast<int>(L.P);  // Lp <= P
  acc_t* buf1 = buf0 + (Sb + 1);
  const int32_t* row = lattice + b * L.width;
  const int Tn = clamp_len(input_lengths[b], T);
  const int64_t lp_stride = static_cast<int64_t>(B) * V;
  const scalar_t* lpb = lp + static_cast<int64_t>(b) * V;
  acc_t* bb = beta_ex + static_cast<int64_t>(b) * T * Sb;
  const int fin = row[kHdrFinal];
  constexpr acc_t kIn = LogBase<acc_t>::in, kOut = LogBase<acc_t>::out;

  int st[R], lab[R], su[R][P];
  bool on[R];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    st[r] = threadIdx.x + r * blockDim.x;
    on[r] = st[r] < Sb;
    lab[r] = on[r] ? row[L.label + st[r]] : 0;
#pragma unroll
    for (int j = 0; j < P; ++j) su[r][j] = (on[r] && j < Lp) ? row[L.succ + st[r] * Lp + j] : Sb;
    if (on[r]) buf0[st[r]] = st[r] == fin ? acc_t(0) : neg_inf<acc_t>();  // virtual t = Tn
  }
  if (threadIdx.x == 0) {
    buf0[Sb] = neg_inf<acc_t>();
    buf1[Sb] = neg_inf<acc_t>();
  }
  scalar_t e[kPrefetch][R];  // raw, as in alpha_sweep
#pragma unroll
  for (int d = 0; d < kPrefetch; ++d)
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const int t = Tn - 1 - d;
      e[d][r] = t >= 0 ? lpb[t * lp_stride + lab[r]] : scalar_t(0);
    }
  __syncthreads();

#pragma unroll 1
  for (int t0 = 0; t0 < Tn; t0 += kPrefetch) {
#pragma unroll
    for (int d = 0; d < kPrefetch; ++d) {
      const int t = Tn - 1 - (t0 + d);
      if (t >= 0) {
        const acc_t* next = (d & 1) ? buf1 : buf0;
        acc_t* cur = (d & 1) ? buf0 : buf1;
#pragma unroll
        for (int r = 0; r < R; ++r) {
          if (on[r]) {
            const acc_t bex = lse_fixed<acc_t, P>(next, su[r]);  // beta without emission
            cur[st[r]] = bex + kIn * static_cast<acc_t>(e[d][r]);
            bb[static_cast<int64_t>(t) * Sb + st[r]] = bex * kOut;
          }
          const int tn = t - kPrefetch;
          if (tn >= 0) e[d][r] = lpb[tn * lp_stride + lab[r]];
        }
        __syncthreads();
      }
    }
  }
  for (int t = Tn; t < T; ++t)  // padded frames
#pragma unroll
    for (int r = 0; r < R; ++r)
      if (on[r]) bb[static_cast<int64_t>(t) * Sb + st[r]] = neg_inf<acc_t>();
}

// mode 0: alpha for blocks [0, B); mode 1: alpha for [0, B) and beta~ for [B, 2B), side by
// side; mode 2: beta~ for [0, B).
template <typename scalar_t, typename acc_t, int P, int R>
__global__ void __launch_bounds__(kMaxThreads)
    sweep_kernel(const scalar_t* __restrict__ lp, const int32_t* __restrict__ lattice,
                 const int64_t* __restrict__ input_lengths, LatticeLayout L, int T, int B, int V,
                 acc_t* __restrict__ log_alpha, acc_t* __restrict__ nll,
                 acc_t* __restrict__ beta_ex, int mode) {
  extern __shared__ unsigned char smem_raw[];
  acc_t* buf0 = reinterpret_cast<acc_t*>(smem_raw);
  const bool beta = mode == 2 || (mode == 1 && static_cast<int>(blockIdx.x) >= B);
  const int b = (mode == 1 && beta) ? blockIdx.x - B : blockIdx.x;
  if (beta)
    beta_sweep<scalar_t, acc_t, P, R>(buf0, lp, lattice, input_lengths, L, T, B, V, beta_ex, b);
  else
    alpha_sweep<scalar_t, acc_t, P, R>(buf0, lp, lattice, input_lengths, L, T, B, V, log_alpha,
                                       nll, b);
}

// ------------------------------------------------------------------------- generic sweeps
// Any number of states: tables read from the lattice each frame; the two alpha/beta buffers
// live in shared memory (gbuf == nullptr) or in a global scratch of 2 * (Sb + 1) per block.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kMaxThreads)
    alpha_kernel_generic(const scalar_t* __restrict__ lp, const int32_t* __restrict__ lattice,
                         const int64_t* __restrict__ input_lengths, LatticeLayout L, int T, int B,
                         int V, acc_t* __restrict__ log_alpha, acc_t* __restrict__ nll,
                         acc_t* gbuf) {
  extern __shared__ unsigned char smem_raw[];
  const int Sb = static_cast<int>(L.S_bound), P = static_cast<int>(L.P);
  const int b = blockIdx.x;
  acc_t* buf0 = gbuf ? gbuf + static_cast<int64_t>(b) * 2 * (Sb + 1) : reinterpret_cast<acc_t*>(smem_raw);
  acc_t* buf1 = buf0 + (Sb + 1);
  const int32_t* row = lattice + b * L.width;
  const int32_t* label = row + L.label;
  const int32_t* pred = row + L.pred;
  const int Tn = clamp_len(input_lengths[b], T);
  const int64_t lp_stride = static_cast<int64_t>(B) * V;
  const scalar_t* lpb = lp + static_cast<int64_t>(b) * V;
  acc_t* ab = log_alpha + static_cast<int64_t>(b) * T * Sb;
  for (int s = threadIdx.x; s <= Sb; s += blockDim.x) {
    buf0[s] = s == 0 ? acc_t(0) : neg_inf<acc_t>();
    buf1[s] = neg_inf<acc_t>();
  }
  __syncthreads();
  for (int t = 0; t < Tn; ++t) {
    const acc_t* prev = (t & 1) ? buf1 : buf0;
    acc_t* cur = (t & 1) ? buf0 : buf1;
    for (int s = threadIdx.x; s < Sb; s += blockDim.x) {
      const acc_t a = lse_runtime<acc_t>(prev, pred + static_cast<int64_t>(s) * P, P) +
                      static_cast<acc_t>(lpb[t * lp_stride + label[s]]);
      cur[s] = a;
      ab[static_cast<int64_t>(t) * Sb + s] = a;
    }
    __syncthreads();
  }
  for (int t = Tn; t < T; ++t)
    for (int s = threadIdx.x; s < Sb; s += blockDim.x) ab[static_cast<int64_t>(t) * Sb + s] = neg_inf<acc_t>();
  if (threadIdx.x == 0) {
    const acc_t* last = (Tn & 1) ? buf1 : buf0;
    const acc_t logp = lse_runtime<acc_t>(last, pred + static_cast<int64_t>(row[kHdrFinal]) * P, P);
    nll[b] = row[kHdrError] ? std::numeric_limits<acc_t>::quiet_NaN() : -logp;
  }
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kMaxThreads)
    beta_kernel_generic(const scalar_t* __restrict__ lp, const int32_t* __restrict__ lattice,
                        const int64_t* __restrict__ input_lengths, LatticeLayout L, int T, int B,
                        int V, acc_t* __restrict__ beta_ex, acc_t* gbuf) {
  extern __shared__ unsigned char smem_raw[];
  const int Sb = static_cast<int>(L.S_bound), P = static_cast<int>(L.P);
  const int b = blockIdx.x;
  acc_t* buf0 = gbuf ? gbuf + static_cast<int64_t>(b) * 2 * (Sb + 1) : reinterpret_cast<acc_t*>(smem_raw);
  acc_t* buf1 = buf0 + (Sb + 1);
  const int32_t* row = lattice + b * L.width;
  const int32_t* label = row + L.label;
  const int32_t* succ = row + L.succ;
  const int Tn = clamp_len(input_lengths[b], T);
  const int64_t lp_stride = static_cast<int64_t>(B) * V;
  const scalar_t* lpb = lp + static_cast<int64_t>(b) * V;
  acc_t* bb = beta_ex + static_cast<int64_t>(b) * T * Sb;
  const int fin = row[kHdrFinal];
  for (int s = threadIdx.x; s <= Sb; s += blockDim.x) {
    buf0[s] = s == fin ? acc_t(0) : neg_inf<acc_t>();
    buf1[s] = neg_inf<acc_t>();
  }
  __syncthreads();
  for (int i = 0; i < Tn; ++i) {
    const int t = Tn - 1 - i;
    const acc_t* next = (i & 1) ? buf1 : buf0;
    acc_t* cur = (i & 1) ? buf0 : buf1;
    for (int s = threadIdx.x; s < Sb; s += blockDim.x) {
      const acc_t bex = lse_runtime<acc_t>(next, succ + static_cast<int64_t>(s) * P, P);
      cur[s] = bex + static_cast<acc_t>(lpb[t * lp_stride + label[s]]);
      bb[static_cast<int64_t>(t) * Sb + s] = bex;
    }
    __syncthreads();
  }
  for (int t = Tn; t < T; ++t)
    for (int s = threadIdx.x; s < Sb; s += blockDim.x) bb[static_cast<int64_t>(t) * Sb + s] = neg_inf<acc_t>();
}

// ------------------------------------------------------------------------- gradient rows
// Row (t, b) of the gradient: -g * sum over the states s of each label of
// exp(alpha_t(s) + beta~_t(s) + nll), where beta~ excludes the frame's emission.
template <typename scalar_t, typename acc_t>
__global__ void grad_kernel(const int32_t* __restrict__ lattice,
                            const int64_t* __restrict__ input_lengths, LatticeLayout L, int T,
                            int B, int V, const acc_t* __restrict__ nll,
                            const acc_t* __restrict__ grad, const acc_t* __restrict__ log_alpha,
                            const acc_t* __restrict__ beta_ex, bool zero_infinity,
                            scalar_t* __restrict__ grad_lp) {
  __shared__ acc_t scratch[32];
  const int t = blockIdx.x, b = blockIdx.y;
  const int Sb = static_cast<int>(L.S_bound);
  scalar_t* out = grad_lp + (static_cast<int64_t>(t) * B + b) * V;
  const int Tn = clamp_len(input_lengths[b], T);
  const acc_t nl = nll[b];
  if (t >= Tn || !isfinite(nl)) {
    const scalar_t fill = (t >= Tn || (zero_infinity && isinf(nl)))
                              ? scalar_t(0)
                              : scalar_t(std::numeric_limits<float>::quiet_NaN());
    for (int c = threadIdx.x; c < V; c += blockDim.x) out[c] = fill;
    return;
  }
  const acc_t ng = -grad[b];
  const int32_t* row = lattice + b * L.width;
  const int64_t off = (static_cast<int64_t>(b) * T + t) * Sb;
  const acc_t* a = log_alpha + off;
  const acc_t* be = beta_ex + off;
  for (int c = threadIdx.x; c < V; c += blockDim.x) out[c] = scalar_t(0);
  __syncthreads();  // the zeros above land before the sums below
  const int G = row[kHdrGrams];
  const int32_t* perm = row + L.perm;
  const int32_t* seglen = row + L.seglen;
  const int32_t* label = row + L.label;
  for (int j = threadIdx.x; j < G; j += blockDim.x) {
    const int len = seglen[j];
    if (len == 0) continue;
    acc_t s = 0;
    for (int i = 0; i < len; ++i) {
      const int st = perm[j + i];
      s += fast_exp(a[st] + be[st] + nl);
    }
    out[label[perm[j]]] = static_cast<scalar_t>(ng * s);
  }
  // blank: the U + 1 blank states, summed by a fixed tree
  const int U = row[kHdrU];
  const int32_t* bidx = row + L.bidx;
  acc_t s = 0;
  for (int k = threadIdx.x; k <= U; k += blockDim.x) {
    const int st = bidx[k];
    s += fast_exp(a[st] + be[st] + nl);
  }
  s = block_sum(s, scratch);
  if (threadIdx.x == 0) out[0] = static_cast<scalar_t>(ng * s);
}

// ------------------------------------------------------------------------- dispatch helpers
template <typename F>
void dispatch_P(int64_t P, F&& f) {
  switch (P) {
    case 3: f(std::integral_constant<int, 3>{}); break;
    case 4: f(std::integral_constant<int, 4>{}); break;
    case 5: case 6: f(std::integral_constant<int, 6>{}); break;
    default: f(std::integral_constant<int, 14>{}); break;  // callers ensure P <= 14
  }
}

// The fast kernels take a template P >= the lattice's P (extra slots are padding).
// Fast path: R = 1 or 2 states per thread. Returns false when the lattice needs the generic one.
bool fast_config(int64_t S_bound, int* R, int* threads) {
  if (S_bound > kMaxFastStates) return false;
  *R = S_bound > kMaxThreads ? 2 : 1;
  const int64_t per = (S_bound + *R - 1) / *R;
  *threads = static_cast<int>(std::max<int64_t>(32, (per + 31) / 32 * 32));
  return true;
}

int64_t max_dynamic_smem(int device) {
  int v = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  return v;
}

}  // namespace

// ------------------------------------------------------------------------- ops
namespace {

at::Tensor launch_lattice(const at::Tensor& targets, const at::Tensor& target_lengths,
                          const at::Tensor& input_lengths, int64_t T, const at::Tensor& gram_keys,
                          const at::Tensor& gram_ids, int64_t num_chars, int64_t max_gram_len) {
  const at::Tensor y = targets.contiguous();
  const at::Tensor tl = target_lengths.contiguous();
  const at::Tensor keys = gram_keys.contiguous();
  const at::Tensor ids = gram_ids.contiguous();
  const int64_t B = y.size(0);
  const LatticeLayout L(y.size(1), max_gram_len);
  at::Tensor lattice = at::empty({B, L.width}, y.options().dtype(at::kInt));
  if (B == 0) return lattice;
  const int64_t smem = ((L.max_u + 1) * (2 + L.max_n) + L.S_bound) * sizeof(int32_t);
  const bool use_smem = smem <= 48 * 1024;
  lattice_kernel<<<B, 256, use_smem ? smem : 0, at::cuda::getCurrentCUDAStream()>>>(
      y.data_ptr<int64_t>(), tl.data_ptr<int64_t>(),
      input_lengths.defined() ? input_lengths.data_ptr<int64_t>() : nullptr, T,
      keys.data_ptr<int64_t>(), ids.data_ptr<int32_t>(), keys.size(0), num_chars, L, use_smem,
      lattice.data_ptr<int32_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return lattice;
}

}  // namespace

at::Tensor gram_ctc_lattice_cuda(const at::Tensor& targets, const at::Tensor& target_lengths,
                                 const at::Tensor& gram_keys, const at::Tensor& gram_ids,
                                 int64_t num_chars, int64_t max_gram_len) {
  check_lattice_args(targets, target_lengths, gram_keys, gram_ids, num_chars, max_gram_len);
  const c10::cuda::CUDAGuard guard(targets.device());
  return launch_lattice(targets, target_lengths, at::Tensor(), 0, gram_keys, gram_ids, num_chars,
                        max_gram_len);
}

namespace {

// alpha (mode 0), alpha and beta~ side by side (mode 1), or beta~ (mode 2).
template <typename scalar_t, typename acc_t>
void launch_sweeps(const at::Tensor& lp, const at::Tensor& lat, const at::Tensor& il,
                   const LatticeLayout& L, int64_t T, int64_t B, int64_t V, acc_t* log_alpha,
                   acc_t* nll, acc_t* beta_ex, int mode) {
  auto stream = at::cuda::getCurrentCUDAStream();
  const int64_t smem = 2 * (L.S_bound + 1) * sizeof(acc_t);
  int R = 0, threads = 0;
  if (L.P <= 14 && fast_config(L.S_bound, &R, &threads)) {
    dispatch_P(L.P, [&](auto PC) {
      constexpr int P = decltype(PC)::value;
      auto kernel = R == 1 ? sweep_kernel<scalar_t, acc_t, P, 1> : sweep_kernel<scalar_t, acc_t, P, 2>;
      kernel<<<mode == 1 ? 2 * B : B, threads, smem, stream>>>(
          lp.data_ptr<scalar_t>(), lat.data_ptr<int32_t>(), il.data_ptr<int64_t>(), L, T, B, V,
          log_alpha, nll, beta_ex, mode);
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return;
  }
  const bool in_smem = smem <= max_dynamic_smem(lp.get_device());
  at::Tensor scratch;
  if (in_smem) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(alpha_kernel_generic<scalar_t, acc_t>,
                                        cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(smem)));
    C10_CUDA_CHECK(cudaFuncSetAttribute(beta_kernel_generic<scalar_t, acc_t>,
                                        cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(smem)));
  } else {
    scratch = at::empty({B, 2 * (L.S_bound + 1)},
                        lp.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
  }
  acc_t* gbuf = in_smem ? nullptr : scratch.data_ptr<acc_t>();
  const int64_t dyn = in_smem ? smem : 0;
  if (mode != 2) {
    alpha_kernel_generic<scalar_t, acc_t><<<B, kMaxThreads, dyn, stream>>>(
        lp.data_ptr<scalar_t>(), lat.data_ptr<int32_t>(), il.data_ptr<int64_t>(), L, T, B, V,
        log_alpha, nll, gbuf);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  if (mode != 0) {
    beta_kernel_generic<scalar_t, acc_t><<<B, kMaxThreads, dyn, stream>>>(
        lp.data_ptr<scalar_t>(), lat.data_ptr<int32_t>(), il.data_ptr<int64_t>(), L, T, B, V,
        beta_ex, gbuf);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> gram_ctc_forward_cuda(
    const at::Tensor& log_probs, const at::Tensor& targets, const at::Tensor& input_lengths,
    const at::Tensor& target_lengths, const at::Tensor& gram_keys, const at::Tensor& gram_ids,
    int64_t num_chars, int64_t max_gram_len, bool zero_infinity, bool need_beta) {
  (void)zero_infinity;
  check_forward_args(log_probs, targets, input_lengths, target_lengths, gram_keys, gram_ids,
                     num_chars, max_gram_len);
  const c10::cuda::CUDAGuard guard(log_probs.device());
  const at::Tensor lp = log_probs.contiguous();
  const at::Tensor il = input_lengths.contiguous();
  const int64_t T = lp.size(0), B = lp.size(1), V = lp.size(2);
  const at::Tensor lat = launch_lattice(targets, target_lengths, il, T, gram_keys, gram_ids,
                                        num_chars, max_gram_len);
  const LatticeLayout L(targets.size(1), max_gram_len);
  const at::ScalarType acc_type = lp.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const auto opts = lp.options().dtype(acc_type);
  at::Tensor nll = at::empty({B}, opts);
  at::Tensor log_alpha = at::empty({B, T, L.S_bound}, opts);
  at::Tensor beta_ex = need_beta ? at::empty({B, T, L.S_bound}, opts) : at::empty({0}, opts);
  if (B == 0) return {nll, log_alpha, beta_ex, lat};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, lp.scalar_type(), "gram_ctc_forward_cuda", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    launch_sweeps<scalar_t, acc_t>(lp, lat, il, L, T, B, V, log_alpha.data_ptr<acc_t>(),
                                   nll.data_ptr<acc_t>(),
                                   need_beta ? beta_ex.data_ptr<acc_t>() : nullptr,
                                   need_beta ? 1 : 0);
  });
  return {nll, log_alpha, beta_ex, lat};
}

at::Tensor gram_ctc_backward_cuda(const at::Tensor& grad, const at::Tensor& log_probs,
                                  const at::Tensor& lattice, const at::Tensor& input_lengths,
                                  const at::Tensor& nll, const at::Tensor& log_alpha,
                                  const at::Tensor& beta, int64_t max_target_len,
                                  int64_t max_gram_len, bool zero_infinity) {
  check_backward_args(grad, log_probs, lattice, input_lengths, nll, log_alpha, beta,
                      max_target_len, max_gram_len);
  const c10::cuda::CUDAGuard guard(log_probs.device());
  const at::Tensor lp = log_probs.contiguous();
  const at::Tensor lat = lattice.contiguous();
  const at::Tensor il = input_lengths.contiguous();
  const at::Tensor la = log_alpha.contiguous();
  const int64_t T = lp.size(0), B = lp.size(1), V = lp.size(2);
  const LatticeLayout L(max_target_len, max_gram_len);
  const at::ScalarType acc_type = la.scalar_type();
  const at::Tensor g = grad.scalar_type() == acc_type ? grad.contiguous() : grad.to(acc_type).contiguous();
  const at::Tensor nl = nll.scalar_type() == acc_type ? nll.contiguous() : nll.to(acc_type).contiguous();
  at::Tensor grad_lp = at::empty_like(lp);
  if (B == 0 || T == 0) return grad_lp.zero_();
  const bool have_beta = beta.numel() > 0;
  at::Tensor beta_ex = have_beta ? beta.contiguous() : at::empty({B, T, L.S_bound}, la.options());
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, lp.scalar_type(), "gram_ctc_backward_cuda", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    TORCH_CHECK(la.scalar_type() == c10::CppTypeToScalarType<acc_t>::value,
                "gram_ctc: log_alpha has the wrong dtype ", la.scalar_type());
    if (!have_beta)
      launch_sweeps<scalar_t, acc_t>(lp, lat, il, L, T, B, V, nullptr, nullptr,
                                     beta_ex.data_ptr<acc_t>(), 2);
    const int gthreads = V >= 256 ? 256 : 128;
    grad_kernel<scalar_t, acc_t><<<dim3(T, B), gthreads, 0, stream>>>(
        lat.data_ptr<int32_t>(), il.data_ptr<int64_t>(), L, T, B, V, nl.data_ptr<acc_t>(),
        g.data_ptr<acc_t>(), la.data_ptr<acc_t>(), beta_ex.data_ptr<acc_t>(), zero_infinity,
        grad_lp.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad_lp;
}

TORCH_LIBRARY_IMPL(speechlab, CUDA, m) {
  m.impl("gram_ctc_lattice", &gram_ctc_lattice_cuda);
  m.impl("gram_ctc_forward", &gram_ctc_forward_cuda);
  m.impl("gram_ctc_backward", &gram_ctc_backward_cuda);
}

}  // namespace speechlab
