// Every op schema of anacuda, in one place. Host entries: ops/<name>.cpp (one for every device),
// their kernels: cpu/ and cuda/; autograd: ops/autograd.cpp; fakes: anacuda/ops.py. Semantics:
// docs/semantics.md (SPEC §n) and anacuda/reference.py. Helper ops carry a leading underscore,
// as torchvision's do.
#include <Python.h>
#include <torch/library.h>

#include <string>

#include "cpu/kernel_table.h"

TORCH_LIBRARY(anacuda, m) {
  // --- ANA (SPEC §4, §5) ---------------------------------------------------------------
  // y = eps * g(x / eps). levels/thresholds: the quantiser in the compute dtype (float64 for
  // float64 inputs, float32 otherwise) on the input's device; uniform_grid: the thresholds
  // are equally spaced. mu, sigma, eps: tensors on the host or the input's device, so that
  // changing them recompiles nothing. seed: (seed, stream) int64, for strategy "random".
  // The backward noise (noise_b, mu_b, sigma_b) rides along for autograd.
  m.def(
      "ana(Tensor x, Tensor levels, Tensor thresholds, bool uniform_grid, Tensor eps, "
      "str noise, Tensor mu, Tensor sigma, str strategy, bool training, Tensor? seed, "
      "str noise_b, Tensor mu_b, Tensor sigma_b) -> Tensor");
  // grad_x = grad * sum_t dq_t * f_b(x / eps - mu_b - theta_t)
  m.def(
      "_ana_backward(Tensor grad, Tensor x, Tensor levels, Tensor thresholds, bool uniform_grid, "
      "Tensor eps, str noise_b, Tensor mu_b, Tensor sigma_b) -> Tensor");
  // A uniform backward noise on a quantiser of K <= 15 thresholds: the backward needs only a
  // 1-byte code per element (which thresholds' boxes hold x / eps - mu_b), saved in place of x.
  m.def(
      "_ana_code(Tensor x, Tensor levels, Tensor thresholds, Tensor eps, Tensor mu_b, Tensor sigma_b) -> Tensor");
  m.def("_ana_backward_code(Tensor grad, Tensor code, Tensor levels, Tensor sigma_b) -> Tensor");
  // ana and _ana_code in one pass over x, (y, code): the forward autograd runs when x needs a
  // gradient and the backward noise is uniform on K <= 15 thresholds (anacuda/functional.py).
  m.def(
      "_ana_coded(Tensor x, Tensor levels, Tensor thresholds, bool uniform_grid, Tensor eps, "
      "str noise, Tensor mu, Tensor sigma, str strategy, bool training, Tensor? seed, "
      "str noise_b, Tensor mu_b, Tensor sigma_b) -> (Tensor, Tensor)");

  // --- Alpha-blending (SPEC §6) ---------------------------------------------------------
  // y = alpha * eps * Q(w / eps) + (1 - alpha) * w; alpha a one-element tensor in [0, 1].
  // The gradient, (1 - alpha) * grad, is composed in anacuda/ops.py.
  m.def(
      "alpha_blend(Tensor w, Tensor levels, Tensor thresholds, bool uniform_grid, Tensor eps, "
      "Tensor alpha) -> Tensor");

  // --- Learned scale (SPEC §8) -----------------------------------------------------------
  // (grad_x, grad_eps) of ana in one pass: ana's arguments (the forward's g is recomputed from x,
  // the random strategy's sample from the same seed) after the incoming gradient. grad_eps has
  // eps's shape and dtype, reduced in the kernel for one value or one value per channel.
  m.def(
      "_ana_backward_eps(Tensor grad, Tensor x, Tensor levels, Tensor thresholds, bool uniform_grid, "
      "Tensor eps, str noise, Tensor mu, Tensor sigma, str strategy, bool training, Tensor? seed, "
      "str noise_b, Tensor mu_b, Tensor sigma_b) -> (Tensor, Tensor)");
  // grad_eps = sum of grad * alpha * Q(w / eps) to eps's shape.
  m.def(
      "_alpha_blend_backward_eps(Tensor grad, Tensor w, Tensor levels, Tensor thresholds, bool uniform_grid, "
      "Tensor eps, Tensor alpha) -> Tensor");
  // --- Dynamic scales (SPEC §9) -----------------------------------------------------------
  // eps = max(r(|x|), r_min) / reach per group of the rule (absmax_per_token, absmean, absmax,
  // absmean_per_channel, absmax_per_channel), shaped to broadcast to x, in the compute dtype;
  // NaN for a group holding a NaN or inf. Deterministic. ops/dynamic.cpp.
  m.def("_dynamic_eps(Tensor x, str rule, float reach, float r_min) -> Tensor");
  // ana at the rule's scale, computed in the same call: (y, eps). The scale takes no gradient.
  m.def(
      "_ana_dynamic(Tensor x, Tensor levels, Tensor thresholds, bool uniform_grid, str rule, float reach, "
      "float r_min, str noise, Tensor mu, Tensor sigma, str strategy, bool training, Tensor? seed, str noise_b, "
      "Tensor mu_b, Tensor sigma_b) -> (Tensor, Tensor)");
  // _ana_backward at the eps _ana_dynamic returned (its NaN groups give NaN gradients).
  m.def(
      "_ana_dynamic_backward(Tensor grad, Tensor x, Tensor eps, Tensor levels, Tensor thresholds, "
      "bool uniform_grid, str noise_b, Tensor mu_b, Tensor sigma_b) -> Tensor");
  m.def(
      "_alpha_blend_dynamic(Tensor w, Tensor levels, Tensor thresholds, bool uniform_grid, str rule, "
      "float reach, float r_min, Tensor alpha) -> Tensor");
}

// `import anacuda._C` loads the library (and so the registrations above). The module also
// reports how it was built, and holds the switch of the CPU path (kernel_table.h; use it
// through anacuda._testing).
namespace {

#ifndef ANACUDA_WITH_CUDA
#define ANACUDA_WITH_CUDA 0
#endif

PyObject* with_cuda(PyObject*, PyObject*) { return PyBool_FromLong(ANACUDA_WITH_CUDA); }

PyObject* cpu_kernels(PyObject*, PyObject*) { return PyUnicode_FromString(anacuda::cpu_kernels().name); }

PyObject* cpu_path(PyObject*, PyObject*) { return PyUnicode_FromString(anacuda::cpu_path().c_str()); }

PyObject* set_cpu_path(PyObject*, PyObject* arg) {
  const char* path = PyUnicode_Check(arg) ? PyUnicode_AsUTF8(arg) : nullptr;
  if (path == nullptr || (std::string(path) != "fast" && std::string(path) != "functors")) {
    PyErr_SetString(PyExc_ValueError, "anacuda: the CPU path is 'fast' or 'functors'");
    return nullptr;
  }
  anacuda::set_cpu_path(path);
  Py_RETURN_NONE;
}

PyMethodDef methods[] = {
    {"with_cuda", with_cuda, METH_NOARGS, "True if the CUDA kernels are compiled in."},
    {"cpu_kernels", cpu_kernels, METH_NOARGS, "The build of the CPU kernels in use: AVX512, AVX2 or DEFAULT."},
    {"_cpu_path", cpu_path, METH_NOARGS, "The CPU path: 'fast' or 'functors' (the GPU's code)."},
    {"_set_cpu_path", set_cpu_path, METH_O, "Sets the CPU path: 'fast' or 'functors' (for tests)."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, methods};

}  // namespace

PyMODINIT_FUNC PyInit__C() { return PyModule_Create(&module); }
