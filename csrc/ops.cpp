// Operator schemas of speechlab's compiled extension (speechlab._C) and their CPU kernels.
// The CUDA kernels register themselves in gram_ctc_cuda.cu; autograd and fake (meta) kernels
// are registered from Python (speechlab/ops/gram_ctc.py), as in pytorch/extension-cpp.
#include <Python.h>
#include <torch/library.h>

#include "gram_ctc.h"

extern "C" {
// Importing speechlab._C loads this library and runs the registrations below; the module
// itself is empty. No pybind11: the extension builds faster and uses the limited API.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr,
  };
  return PyModule_Create(&module_def);
}
}

namespace speechlab {

at::Tensor gram_ctc_lattice_cpu(const at::Tensor& targets, const at::Tensor& target_lengths,
                                const at::Tensor& gram_keys, const at::Tensor& gram_ids,
                                int64_t num_chars, int64_t max_gram_len);
std::tuple<at::Tensor, at::Tensor> gram_ctc_forward_cpu(const at::Tensor& log_probs,
                                                        const at::Tensor& lattice,
                                                        const at::Tensor& input_lengths,
                                                        int64_t max_target_len,
                                                        int64_t max_gram_len, bool zero_infinity);
at::Tensor gram_ctc_backward_cpu(const at::Tensor& grad, const at::Tensor& log_probs,
                                 const at::Tensor& lattice, const at::Tensor& input_lengths,
                                 const at::Tensor& nll, const at::Tensor& log_alpha,
                                 int64_t max_target_len, int64_t max_gram_len,
                                 bool zero_infinity);

TORCH_LIBRARY(speechlab, m) {
  // Lattice tables of each target (one int32 row per utterance; layout in gram_ctc.h).
  m.def(
      "gram_ctc_lattice(Tensor targets, Tensor target_lengths, Tensor gram_keys, "
      "Tensor gram_ids, int num_chars, int max_gram_len) -> Tensor");
  // Per-utterance negative log-likelihood (N,) and log alpha (N, T, S_bound), both in fp32
  // (fp64 for fp64 inputs).
  m.def(
      "gram_ctc_forward(Tensor log_probs, Tensor lattice, Tensor input_lengths, "
      "int max_target_len, int max_gram_len, bool zero_infinity) -> (Tensor, Tensor)");
  // Gradient of sum_n grad[n] * nll[n] with respect to log_probs: -grad[n] * gamma_t(c).
  m.def(
      "gram_ctc_backward(Tensor grad, Tensor log_probs, Tensor lattice, Tensor input_lengths, "
      "Tensor neg_log_likelihood, Tensor log_alpha, int max_target_len, int max_gram_len, "
      "bool zero_infinity) -> Tensor");
}

TORCH_LIBRARY_IMPL(speechlab, CPU, m) {
  m.impl("gram_ctc_lattice", &gram_ctc_lattice_cpu);
  m.impl("gram_ctc_forward", &gram_ctc_forward_cpu);
  m.impl("gram_ctc_backward", &gram_ctc_backward_cpu);
}

}  // namespace speechlab
