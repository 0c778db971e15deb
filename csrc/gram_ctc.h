// Gram-CTC: shared definitions of the CPU and CUDA kernels.
//
// The lattice of one utterance (target y of U characters, grams of up to N characters) is
// stored as one int32 row of a [B, W] tensor, built by gram_ctc_lattice and read by the
// forward and backward kernels. States are ordered by end position:
//
//   b_0, G(1), b_1, G(2), b_2, ..., G(U), b_U
//
// where b_k is the blank after k characters and G(k) holds the gram states (i, n) with
// i + n = k whose string y[i:i+n] is in the gram set, by increasing n. With unigrams only this
// is CTC's 2U+1 lattice. Transitions t-1 -> t (DESIGN.md §3.1):
//   into b_k:          from b_k and from every gram state ending at k;
//   into (i, n), id g: from itself, from b_i, and from every gram state ending at i whose id != g.
// Start: b_0 and grams starting at 0. Final: b_U and grams ending at U. Both follow from one
// virtual frame t = -1 holding only b_0 (alpha) and one virtual frame t = T holding only b_U
// (beta), so the kernels need no special start or end case.
//
// Every state keeps P = N + 2 predecessor and P successor indices (itself first); unused
// slots hold the padding index S_bound, whose value is always -inf.
#pragma once

#include <cstdint>

#include <ATen/core/Tensor.h>

#if defined(__CUDACC__)
#define SL_HD __host__ __device__ __forceinline__
#else
#define SL_HD inline
#endif

namespace speechlab {

constexpr int kHeader = 8;  // ints before the tables
// header fields
constexpr int kHdrStates = 0;      // S: number of states
constexpr int kHdrU = 1;           // U: target length
constexpr int kHdrFinal = 2;       // index of b_U
constexpr int kHdrGrams = 3;       // number of gram (non-blank) states
constexpr int kHdrError = 4;       // bit set of the kErr* below; the utterance's nll is NaN
constexpr int kErrTargetId = 1;      // a target id outside [1, num_chars]
constexpr int kErrTargetLength = 2;  // target length outside [0, max_target_len]
constexpr int kErrInputLength = 4;   // input length outside [0, T]

// Offsets of the tables inside one lattice row, for targets padded to max_u characters and
// grams of up to max_n characters.
struct LatticeLayout {
  int64_t max_u, max_n, P, S_bound;
  int64_t bidx, mask, gid, label, pred, succ, perm, seglen, width;

  SL_HD LatticeLayout(int64_t max_u_, int64_t max_n_) : max_u(max_u_), max_n(max_n_) {
    P = max_n + 2;
    S_bound = max_u + 1;
    for (int64_t n = 1; n <= max_n; ++n) S_bound += (max_u - n + 1 > 0) ? (max_u - n + 1) : 0;
    bidx = kHeader;                     // [max_u + 1]   state index of b_k
    mask = bidx + (max_u + 1);          // [max_u + 1]   bit n-1: a gram of length n ends at k
    gid = mask + (max_u + 1);           // [max_u + 1, max_n] gram id of y[k-n:k] or -1
    label = gid + (max_u + 1) * max_n;  // [S_bound]     output id of each state
    pred = label + S_bound;             // [S_bound, P]  predecessors (self first)
    succ = pred + S_bound * P;          // [S_bound, P]  successors (self first)
    perm = succ + S_bound * P;          // [S_bound]     gram states sorted by (label, index)
    seglen = perm + S_bound;            // [S_bound]     at the first of each label: its count
    width = seglen + S_bound;
  }
};

// Number of states bound used to size log_alpha: (U+1) + sum_n (U-n+1).
SL_HD int64_t state_bound(int64_t max_u, int64_t max_n) { return LatticeLayout(max_u, max_n).S_bound; }

SL_HD int popcount32(uint32_t x) {
#if defined(__CUDA_ARCH__)
  return __popc(x);
#else
  return __builtin_popcount(x);
#endif
}

// Index of the gram state that starts at p and has length n (it must exist).
SL_HD int gram_state_index(const int32_t* bidx, const int32_t* mask, int p, int n) {
  const int e = p + n;
  return bidx[e - 1] + 1 + popcount32(static_cast<uint32_t>(mask[e]) & ((1u << (n - 1)) - 1u));
}

// Gram id of y[k-n:k] by binary search in the sorted key table, or -1.
SL_HD int32_t lookup_gram(const int64_t* y, int k, int n, int64_t base, const int64_t* keys,
                          const int32_t* ids, int64_t num_keys) {
  int64_t key = 0;
  for (int j = k - n; j < k; ++j) key = key * base + y[j];
  int64_t lo = 0, hi = num_keys;
  while (lo < hi) {
    const int64_t mid = (lo + hi) >> 1;
    if (keys[mid] < key) lo = mid + 1; else hi = mid;
  }
  return (lo < num_keys && keys[lo] == key) ? ids[lo] : -1;
}

// ---------------------------------------------------------------- host-side checks
// Defined in gram_ctc_cpu.cpp, shared by the CPU and CUDA entry points.
void check_lattice_args(const at::Tensor& targets, const at::Tensor& target_lengths,
                        const at::Tensor& gram_keys, const at::Tensor& gram_ids,
                        int64_t num_chars, int64_t max_gram_len);
void check_forward_args(const at::Tensor& log_probs, const at::Tensor& targets,
                        const at::Tensor& input_lengths, const at::Tensor& target_lengths,
                        const at::Tensor& gram_keys, const at::Tensor& gram_ids,
                        int64_t num_chars, int64_t max_gram_len);
void check_lattice_input(const at::Tensor& log_probs, const at::Tensor& lattice,
                         const at::Tensor& input_lengths, int64_t max_target_len,
                         int64_t max_gram_len);
void check_backward_args(const at::Tensor& grad, const at::Tensor& log_probs,
                         const at::Tensor& lattice, const at::Tensor& input_lengths,
                         const at::Tensor& nll, const at::Tensor& log_alpha,
                         const at::Tensor& beta, int64_t max_target_len, int64_t max_gram_len);

}  // namespace speechlab
