// Gram-CTC on CUDA. Lattice layout and transitions: gram_ctc.h.
//
// Kernels, in launch order:
//   lattice_kernel   one block per utterance: gram lookups (binary search in the sorted gram
//                    keys), a block scan for the state offsets, predecessor/successor tables,
//                    and the label-sorted list of gram states used by grad_kernel.
//   alpha_kernel     one block per utterance, R lattice states per thread; alpha double-
//                    buffered in shared memory, one barrier per frame, emissions of the next
//                    D frames prefetched into registers. Writes log_alpha and nll.
//   beta_kernel      the same sweep backwards; for every (t, s) it stores the scaled state
//                    posterior -g * exp(alpha + beta - emission - log p). No atomics.
//   grad_kernel      one block per (t, utterance): assembles the dense |V| gradient row from
//                    the posteriors, summing the states of each label in a fixed order, so the
//                    gradient is bitwise repeatable.
//   *_generic        the same sweeps for lattices of more than kMaxFastStates states: any
//                    number of states per thread, alpha/beta in shared memory when they fit,
//                    else in a global scratch buffer.
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

// log-sum-exp of buf[idx[0..P)], -inf when all are -inf.
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
  for (int j = 0; j < P; ++j) s += fast_exp(v[j] - ms);
  return ms + fast_log(s);
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
__global__ void lattice_kernel(const int64_t* __restrict__ targets,
                               const int64_t* __restrict__ target_lengths,
                               const int64_t* __restrict__ keys, const int32_t* __restrict__ ids,
                               int64_t num_keys, int64_t num_chars, LatticeLayout L,
                               int32_t* __restrict__ lattice) {
  __shared__ int32_t warp_tot[32];
  const int b = blockIdx.x;
  const int N = static_cast<int>(L.max_n), P = static_cast<int>(L.P);
  const int Sb = static_cast<int>(L.S_bound);
  int32_t* row = lattice + b * L.width;
  int32_t* bidx = row + L.bidx;
  int32_t* mask = row + L.mask;
  int32_t* gid = row + L.gid;
  int32_t* label = row + L.label;
  int32_t* pred = row + L.pred;
  int32_t* succ = row + L.succ;
  int32_t* perm = row + L.perm;
  int32_t* seglen = row + L.seglen;
  const int64_t* y = targets + b * L.max_u;
  int U = static_cast<int>(target_lengths[b]);
  int err = U < 0 || U > L.max_u;
  U = err ? 0 : U;

  // phase 0: defaults (padding everywhere), target check
  for (int64_t i = threadIdx.x; i < L.label; i += blockDim.x) row[i] = (i >= L.gid) ? -1 : 0;
  for (int64_t i = threadIdx.x; i < Sb; i += blockDim.x) label[i] = 0;
  for (int64_t i = threadIdx.x; i < 2 * Sb * P; i += blockDim.x) pred[i] = Sb;  // pred, succ
  for (int64_t i = threadIdx.x; i < 2 * Sb; i += blockDim.x) perm[i] = 0;       // perm, seglen
  for (int j = threadIdx.x; j < U; j += blockDim.x) err |= (y[j] < 1 || y[j] > num_chars);
  err = __syncthreads_or(err);
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
  if (threadIdx.x == 0) mask[0] = 0;
  __syncthreads();
  // phase B: bidx[k] = k + sum_{k' <= k} popcount(mask[k']), a chunked block scan
  {
    const int per = (U + blockDim.x) / blockDim.x;  // positions 0..U
    const int k0 = threadIdx.x * per, k1 = min(k0 + per, U + 1);
    int local = 0;
    for (int k = k0; k < k1; ++k) local += (k > 0 ? popcount32(mask[k]) + 1 : 0);
    // exclusive scan of `local` over threads
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
  if (threadIdx.x == 0) {
    row[kHdrStates] = S;
    row[kHdrU] = U;
    row[kHdrFinal] = bidx[U];
    row[kHdrGrams] = S - U - 1;
    row[kHdrError] = err;
  }
  // phase C: states ending at k (same order of entries as the CPU builder)
  for (int k = threadIdx.x; k <= U; k += blockDim.x) {
    {
      const int s = bidx[k];
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
    }
  }
  __syncthreads();
  // phase D: gram states sorted by (label, index), by counting ranks
  for (int s = threadIdx.x; s < S; s += blockDim.x) {
    const int32_t l = label[s];
    if (l == 0) continue;
    int pos = 0, before = 0, same = 0;
    for (int s2 = 0; s2 < S; ++s2) {
      const int32_t l2 = label[s2];
      if (l2 == 0) continue;
      pos += (l2 < l) || (l2 == l && s2 < s);
      before += (l2 == l && s2 < s);
      same += (l2 == l);
    }
    perm[pos] = s;
    seglen[pos] = before == 0 ? same : 0;
  }
}

// ------------------------------------------------------------------------- fast sweeps
// R states per thread (s = threadIdx.x + r * blockDim.x), their table entries in registers.
template <typename scalar_t, typename acc_t, int P, int R>
__global__ void __launch_bounds__(kMaxThreads)
    alpha_kernel(const scalar_t* __restrict__ lp, const int32_t* __restrict__ lattice,
                 const int64_t* __restrict__ input_lengths, LatticeLayout L, int T, int B, int V,
                 acc_t* __restrict__ log_alpha, acc_t* __restrict__ nll) {
  extern __shared__ unsigned char smem_raw[];
  acc_t* buf0 = reinterpret_cast<acc_t*>(smem_raw);
  const int Sb = static_cast<int>(L.S_bound), Lp = static_cast<int>(L.P);  // Lp <= P
  acc_t* buf1 = buf0 + (Sb + 1);
  const int b = blockIdx.x;
  const int32_t* row = lattice + b * L.width;
  const int Tn = clamp_len(input_lengths[b], T);
  const int64_t lp_stride = static_cast<int64_t>(B) * V;
  const scalar_t* lpb = lp + static_cast<int64_t>(b) * V;
  acc_t* ab = log_alpha + static_cast<int64_t>(b) * T * Sb;

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
  acc_t e[kPrefetch][R];
#pragma unroll
  for (int d = 0; d < kPrefetch; ++d)
#pragma unroll
    for (int r = 0; r < R; ++r)
      e[d][r] = d < Tn ? static_cast<acc_t>(lpb[d * lp_stride + lab[r]]) : acc_t(0);
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
            const acc_t a = lse_fixed<acc_t, P>(prev, pr[r]) + e[d][r];
            cur[st[r]] = a;
            ab[static_cast<int64_t>(t) * Sb + st[r]] = a;
          }
          const int tn = t + kPrefetch;
          if (tn < Tn) e[d][r] = static_cast<acc_t>(lpb[tn * lp_stride + lab[r]]);
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
    const acc_t logp = lse_runtime<acc_t>(last, row + L.pred + fin * Lp, Lp);
    nll[b] = row[kHdrError] ? std::numeric_limits<acc_t>::quiet_NaN() : -logp;
  }
}

template <typename scalar_t, typename acc_t, int P, int R>
__global__ void __launch_bounds__(kMaxThreads)
    beta_kernel(const scalar_t* __restrict__ lp, const int32_t* __restrict__ lattice,
                const int64_t* __restrict__ input_lengths, LatticeLayout L, int T, int B, int V,
                const acc_t* __restrict__ log_alpha, const acc_t* __restrict__ nll,
                const acc_t* __restrict__ grad, acc_t* __restrict__ post) {
  extern __shared__ unsigned char smem_raw[];
  acc_t* buf0 = reinterpret_cast<acc_t*>(smem_raw);
  const int Sb = static_cast<int>(L.S_bound), Lp = static_cast<int>(L.P);  // Lp <= P
  acc_t* buf1 = buf0 + (Sb + 1);
  const int b = blockIdx.x;
  const acc_t nl = nll[b];
  if (!isfinite(nl)) return;  // grad_kernel writes NaN or zeros
  const acc_t g = grad[b];
  const int32_t* row = lattice + b * L.width;
  const int Tn = clamp_len(input_lengths[b], T);
  const int64_t lp_stride = static_cast<int64_t>(B) * V;
  const scalar_t* lpb = lp + static_cast<int64_t>(b) * V;
  const acc_t* ab = log_alpha + static_cast<int64_t>(b) * T * Sb;
  acc_t* qb = post + static_cast<int64_t>(b) * T * Sb;
  const int fin = row[kHdrFinal];

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
  acc_t e[kPrefetch][R], a[kPrefetch][R];
#pragma unroll
  for (int d = 0; d < kPrefetch; ++d)
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const int t = Tn - 1 - d;
      e[d][r] = t >= 0 ? static_cast<acc_t>(lpb[t * lp_stride + lab[r]]) : acc_t(0);
      a[d][r] = (t >= 0 && on[r]) ? ab[static_cast<int64_t>(t) * Sb + st[r]] : acc_t(0);
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
            cur[st[r]] = bex + e[d][r];
            qb[static_cast<int64_t>(t) * Sb + st[r]] = -g * fast_exp(a[d][r] + bex + nl);
          }
          const int tn = t - kPrefetch;
          if (tn >= 0) {
            e[d][r] = static_cast<acc_t>(lpb[tn * lp_stride + lab[r]]);
            if (on[r]) a[d][r] = ab[static_cast<int64_t>(tn) * Sb + st[r]];
          }
        }
        __syncthreads();
      }
    }
  }
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
                        int V, const acc_t* __restrict__ log_alpha, const acc_t* __restrict__ nll,
                        const acc_t* __restrict__ grad, acc_t* __restrict__ post, acc_t* gbuf) {
  extern __shared__ unsigned char smem_raw[];
  const int Sb = static_cast<int>(L.S_bound), P = static_cast<int>(L.P);
  const int b = blockIdx.x;
  const acc_t nl = nll[b];
  if (!isfinite(nl)) return;
  const acc_t g = grad[b];
  acc_t* buf0 = gbuf ? gbuf + static_cast<int64_t>(b) * 2 * (Sb + 1) : reinterpret_cast<acc_t*>(smem_raw);
  acc_t* buf1 = buf0 + (Sb + 1);
  const int32_t* row = lattice + b * L.width;
  const int32_t* label = row + L.label;
  const int32_t* succ = row + L.succ;
  const int Tn = clamp_len(input_lengths[b], T);
  const int64_t lp_stride = static_cast<int64_t>(B) * V;
  const scalar_t* lpb = lp + static_cast<int64_t>(b) * V;
  const acc_t* ab = log_alpha + static_cast<int64_t>(b) * T * Sb;
  acc_t* qb = post + static_cast<int64_t>(b) * T * Sb;
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
      qb[static_cast<int64_t>(t) * Sb + s] = -g * fast_exp(ab[static_cast<int64_t>(t) * Sb + s] + bex + nl);
    }
    __syncthreads();
  }
}

// ------------------------------------------------------------------------- gradient rows
template <typename scalar_t, typename acc_t>
__global__ void grad_kernel(const int32_t* __restrict__ lattice,
                            const int64_t* __restrict__ input_lengths, LatticeLayout L, int T,
                            int B, int V, const acc_t* __restrict__ nll,
                            const acc_t* __restrict__ post, bool zero_infinity,
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
  const int32_t* row = lattice + b * L.width;
  const acc_t* q = post + (static_cast<int64_t>(b) * T + t) * Sb;
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
    for (int i = 0; i < len; ++i) s += q[perm[j + i]];
    out[label[perm[j]]] = static_cast<scalar_t>(s);
  }
  // blank: the U + 1 blank states, summed by a fixed tree
  const int U = row[kHdrU];
  const int32_t* bidx = row + L.bidx;
  acc_t s = 0;
  for (int k = threadIdx.x; k <= U; k += blockDim.x) s += q[bidx[k]];
  s = block_sum(s, scratch);
  if (threadIdx.x == 0) out[0] = static_cast<scalar_t>(s);
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
at::Tensor gram_ctc_lattice_cuda(const at::Tensor& targets, const at::Tensor& target_lengths,
                                 const at::Tensor& gram_keys, const at::Tensor& gram_ids,
                                 int64_t num_chars, int64_t max_gram_len) {
  check_lattice_args(targets, target_lengths, gram_keys, gram_ids, num_chars, max_gram_len);
  const c10::cuda::CUDAGuard guard(targets.device());
  const at::Tensor y = targets.contiguous();
  const at::Tensor tl = target_lengths.contiguous();
  const at::Tensor keys = gram_keys.contiguous();
  const at::Tensor ids = gram_ids.contiguous();
  const int64_t B = y.size(0);
  const LatticeLayout L(y.size(1), max_gram_len);
  at::Tensor lattice = at::empty({B, L.width}, y.options().dtype(at::kInt));
  if (B == 0) return lattice;
  lattice_kernel<<<B, 256, 0, at::cuda::getCurrentCUDAStream()>>>(
      y.data_ptr<int64_t>(), tl.data_ptr<int64_t>(), keys.data_ptr<int64_t>(),
      ids.data_ptr<int32_t>(), keys.size(0), num_chars, L, lattice.data_ptr<int32_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return lattice;
}

std::tuple<at::Tensor, at::Tensor> gram_ctc_forward_cuda(const at::Tensor& log_probs,
                                                         const at::Tensor& lattice,
                                                         const at::Tensor& input_lengths,
                                                         int64_t max_target_len,
                                                         int64_t max_gram_len, bool zero_infinity) {
  (void)zero_infinity;
  check_forward_args(log_probs, lattice, input_lengths, max_target_len, max_gram_len);
  const c10::cuda::CUDAGuard guard(log_probs.device());
  const at::Tensor lp = log_probs.contiguous();
  const at::Tensor lat = lattice.contiguous();
  const at::Tensor il = input_lengths.contiguous();
  const int64_t T = lp.size(0), B = lp.size(1), V = lp.size(2);
  const LatticeLayout L(max_target_len, max_gram_len);
  const at::ScalarType acc_type = lp.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor nll = at::empty({B}, lp.options().dtype(acc_type));
  at::Tensor log_alpha = at::empty({B, T, L.S_bound}, lp.options().dtype(acc_type));
  if (B == 0) return {nll, log_alpha};
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, lp.scalar_type(), "gram_ctc_forward_cuda", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    const int64_t smem = 2 * (L.S_bound + 1) * sizeof(acc_t);
    int R = 0, threads = 0;
    if (L.P <= 14 && fast_config(L.S_bound, &R, &threads)) {
      dispatch_P(L.P, [&](auto PC) {
        constexpr int P = decltype(PC)::value;
        auto kernel = R == 1 ? alpha_kernel<scalar_t, acc_t, P, 1> : alpha_kernel<scalar_t, acc_t, P, 2>;
        kernel<<<B, threads, smem, stream>>>(lp.data_ptr<scalar_t>(), lat.data_ptr<int32_t>(),
                                             il.data_ptr<int64_t>(), L, T, B, V,
                                             log_alpha.data_ptr<acc_t>(), nll.data_ptr<acc_t>());
      });
    } else {
      const bool in_smem = smem <= max_dynamic_smem(lp.get_device());
      at::Tensor scratch;
      if (in_smem) {
        C10_CUDA_CHECK(cudaFuncSetAttribute(alpha_kernel_generic<scalar_t, acc_t>,
                                            cudaFuncAttributeMaxDynamicSharedMemorySize,
                                            static_cast<int>(smem)));
      } else {
        scratch = at::empty({B, 2 * (L.S_bound + 1)}, lp.options().dtype(acc_type));
      }
      alpha_kernel_generic<scalar_t, acc_t><<<B, kMaxThreads, in_smem ? smem : 0, stream>>>(
          lp.data_ptr<scalar_t>(), lat.data_ptr<int32_t>(), il.data_ptr<int64_t>(), L, T, B, V,
          log_alpha.data_ptr<acc_t>(), nll.data_ptr<acc_t>(),
          in_smem ? nullptr : scratch.data_ptr<acc_t>());
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {nll, log_alpha};
}

at::Tensor gram_ctc_backward_cuda(const at::Tensor& grad, const at::Tensor& log_probs,
                                  const at::Tensor& lattice, const at::Tensor& input_lengths,
                                  const at::Tensor& nll, const at::Tensor& log_alpha,
                                  int64_t max_target_len, int64_t max_gram_len,
                                  bool zero_infinity) {
  check_backward_args(grad, log_probs, lattice, input_lengths, nll, log_alpha, max_target_len,
                      max_gram_len);
  const c10::cuda::CUDAGuard guard(log_probs.device());
  const at::Tensor lp = log_probs.contiguous();
  const at::Tensor lat = lattice.contiguous();
  const at::Tensor il = input_lengths.contiguous();
  const at::Tensor la = log_alpha.contiguous();
  const int64_t T = lp.size(0), B = lp.size(1), V = lp.size(2);
  const LatticeLayout L(max_target_len, max_gram_len);
  const at::ScalarType acc_type = la.scalar_type();
  const at::Tensor g = grad.to(acc_type).contiguous();
  const at::Tensor nl = nll.to(acc_type).contiguous();
  at::Tensor grad_lp = at::empty_like(lp);
  if (B == 0 || T == 0) return grad_lp.zero_();
  at::Tensor post = at::empty({B, T, L.S_bound}, la.options());
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, lp.scalar_type(), "gram_ctc_backward_cuda", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    TORCH_CHECK(la.scalar_type() == c10::CppTypeToScalarType<acc_t>::value,
                "gram_ctc: log_alpha has the wrong dtype ", la.scalar_type());
    const int64_t smem = 2 * (L.S_bound + 1) * sizeof(acc_t);
    int R = 0, threads = 0;
    if (L.P <= 14 && fast_config(L.S_bound, &R, &threads)) {
      dispatch_P(L.P, [&](auto PC) {
        constexpr int P = decltype(PC)::value;
        auto kernel = R == 1 ? beta_kernel<scalar_t, acc_t, P, 1> : beta_kernel<scalar_t, acc_t, P, 2>;
        kernel<<<B, threads, smem, stream>>>(lp.data_ptr<scalar_t>(), lat.data_ptr<int32_t>(),
                                             il.data_ptr<int64_t>(), L, T, B, V,
                                             la.data_ptr<acc_t>(), nl.data_ptr<acc_t>(),
                                             g.data_ptr<acc_t>(), post.data_ptr<acc_t>());
      });
    } else {
      const bool in_smem = smem <= max_dynamic_smem(lp.get_device());
      at::Tensor scratch;
      if (in_smem) {
        C10_CUDA_CHECK(cudaFuncSetAttribute(beta_kernel_generic<scalar_t, acc_t>,
                                            cudaFuncAttributeMaxDynamicSharedMemorySize,
                                            static_cast<int>(smem)));
      } else {
        scratch = at::empty({B, 2 * (L.S_bound + 1)}, la.options());
      }
      beta_kernel_generic<scalar_t, acc_t><<<B, kMaxThreads, in_smem ? smem : 0, stream>>>(
          lp.data_ptr<scalar_t>(), lat.data_ptr<int32_t>(), il.data_ptr<int64_t>(), L, T, B, V,
          la.data_ptr<acc_t>(), nl.data_ptr<acc_t>(), g.data_ptr<acc_t>(),
          post.data_ptr<acc_t>(), in_smem ? nullptr : scratch.data_ptr<acc_t>());
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const int gthreads = V >= 256 ? 256 : 128;
    grad_kernel<scalar_t, acc_t><<<dim3(T, B), gthreads, 0, stream>>>(
        lat.data_ptr<int32_t>(), il.data_ptr<int64_t>(), L, T, B, V, nl.data_ptr<acc_t>(),
        post.data_ptr<acc_t>(), zero_infinity, grad_lp.data_ptr<scalar_t>());
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
