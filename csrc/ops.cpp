// Operator schemas of speechlab's compiled extension (speechlab._C), their CPU kernels and the
// autograd formula (in C++, so that neither direction goes through Python). The CUDA kernels
// register themselves in gram_ctc_cuda.cu; fake (meta) kernels are registered from Python
// (speechlab/ops/gram_ctc.py), as in pytorch/extension-cpp.
#include <Python.h>
#include <torch/autograd.h>
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
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> gram_ctc_forward_cpu(
    const at::Tensor& log_probs, const at::Tensor& targets, const at::Tensor& input_lengths,
    const at::Tensor& target_lengths, const at::Tensor& gram_keys, const at::Tensor& gram_ids,
    int64_t num_chars, int64_t max_gram_len, bool zero_infinity, bool need_beta);
at::Tensor gram_ctc_backward_cpu(const at::Tensor& grad, const at::Tensor& log_probs,
                                 const at::Tensor& lattice, const at::Tensor& input_lengths,
                                 const at::Tensor& nll, const at::Tensor& log_alpha,
                                 const at::Tensor& beta, int64_t max_target_len,
                                 int64_t max_gram_len, bool zero_infinity);

TORCH_LIBRARY(speechlab, m) {
  // Lattice tables of each target (one int32 row per utterance; layout in gram_ctc.h).
  m.def(
      "gram_ctc_lattice(Tensor targets, Tensor target_lengths, Tensor gram_keys, "
      "Tensor gram_ids, int num_chars, int max_gram_len) -> Tensor");
  // Per-utterance negative log-likelihood (N,), log alpha (N, T, S_bound), log beta without
  // the frame's emission (N, T, S_bound) when need_beta, else (0,) (all fp32, fp64 for fp64
  // inputs), and the lattice (N, W). nll is NaN where lattice[:, 4] flags bad input.
  m.def(
      "gram_ctc_forward(Tensor log_probs, Tensor targets, Tensor input_lengths, "
      "Tensor target_lengths, Tensor gram_keys, Tensor gram_ids, int num_chars, "
      "int max_gram_len, bool zero_infinity, bool need_beta) -> (Tensor, Tensor, Tensor, Tensor)");
  // Gradient of sum_n grad[n] * nll[n] with respect to log_probs: -grad[n] * gamma_t(c).
  // beta may be empty (0,): the backward then runs the beta sweep itself.
  m.def(
      "gram_ctc_backward(Tensor grad, Tensor log_probs, Tensor lattice, Tensor input_lengths, "
      "Tensor neg_log_likelihood, Tensor log_alpha, Tensor beta, int max_target_len, "
      "int max_gram_len, bool zero_infinity) -> Tensor");
}

TORCH_LIBRARY_IMPL(speechlab, CPU, m) {
  m.impl("gram_ctc_lattice", &gram_ctc_lattice_cpu);
  m.impl("gram_ctc_forward", &gram_ctc_forward_cpu);
  m.impl("gram_ctc_backward", &gram_ctc_backward_cpu);
}

// ---------------------------------------------------------------------------- autograd
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> call_forward(
    const at::Tensor& log_probs, const at::Tensor& targets, const at::Tensor& input_lengths,
    const at::Tensor& target_lengths, const at::Tensor& gram_keys, const at::Tensor& gram_ids,
    int64_t num_chars, int64_t max_gram_len, bool zero_infinity, bool need_beta) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("speechlab::gram_ctc_forward", "")
                       .typed<decltype(gram_ctc_forward_cpu)>();
  return op.call(log_probs, targets, input_lengths, target_lengths, gram_keys, gram_ids,
                 num_chars, max_gram_len, zero_infinity, need_beta);
}

at::Tensor call_backward(const at::Tensor& grad, const at::Tensor& log_probs,
                         const at::Tensor& lattice, const at::Tensor& input_lengths,
                         const at::Tensor& nll, const at::Tensor& log_alpha,
                         const at::Tensor& beta, int64_t max_target_len, int64_t max_gram_len,
                         bool zero_infinity) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("speechlab::gram_ctc_backward", "")
                       .typed<decltype(gram_ctc_backward_cpu)>();
  return op.call(grad, log_probs, lattice, input_lengths, nll, log_alpha, beta, max_target_len,
                 max_gram_len, zero_infinity);
}

class GramCTCFunction : public torch::autograd::Function<GramCTCFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& log_probs,
                               const at::Tensor& targets, const at::Tensor& input_lengths,
                               const at::Tensor& target_lengths, const at::Tensor& gram_keys,
                               const at::Tensor& gram_ids, int64_t num_chars,
                               int64_t max_gram_len, bool zero_infinity, bool need_beta) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [nll, log_alpha, beta, lattice] =
        call_forward(log_probs, targets, input_lengths, target_lengths, gram_keys, gram_ids,
                     num_chars, max_gram_len, zero_infinity, need_beta);
    ctx->save_for_backward({log_probs, lattice, input_lengths, nll, log_alpha, beta});
    ctx->saved_data["max_target_len"] = targets.size(1);
    ctx->saved_data["max_gram_len"] = max_gram_len;
    ctx->saved_data["zero_infinity"] = zero_infinity;
    ctx->mark_non_differentiable({log_alpha, beta, lattice});
    // only nll's gradient is used (an undefined one is zeros below): without this the engine
    // fills a zero tensor for each of the three other outputs on every backward
    ctx->set_materialize_grads(false);
    return {nll, log_alpha, beta, lattice};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    at::Tensor grad = grad_outputs[0];
    if (!grad.defined()) grad = at::zeros_like(saved[3]);
    at::Tensor grad_lp =
        call_backward(grad.contiguous(), saved[0], saved[1], saved[2], saved[3], saved[4],
                      saved[5], ctx->saved_data["max_target_len"].toInt(),
                      ctx->saved_data["max_gram_len"].toInt(),
                      ctx->saved_data["zero_infinity"].toBool());
    variable_list out(10);
    out[0] = grad_lp;
    return out;
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> gram_ctc_forward_autograd(
    const at::Tensor& log_probs, const at::Tensor& targets, const at::Tensor& input_lengths,
    const at::Tensor& target_lengths, const at::Tensor& gram_keys, const at::Tensor& gram_ids,
    int64_t num_chars, int64_t max_gram_len, bool zero_infinity, bool need_beta) {
  auto out = GramCTCFunction::apply(log_probs, targets, input_lengths, target_lengths, gram_keys,
                                    gram_ids, num_chars, max_gram_len, zero_infinity, need_beta);
  return {out[0], out[1], out[2], out[3]};
}

}  // namespace

TORCH_LIBRARY_IMPL(speechlab, Autograd, m) {
  m.impl("gram_ctc_forward", &gram_ctc_forward_autograd);
}

}  // namespace speechlab
