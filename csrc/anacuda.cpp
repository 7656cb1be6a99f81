// Every op schema of anacuda, in one place. Kernels: cpu/<name>.cpp and cuda/<name>.cu.
// Fakes and autograd: anacuda/ops.py. Semantics: SPEC.md and anacuda/reference.py.
#include <Python.h>
#include <torch/library.h>

#include "cpu/kernels.h"

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
      "ana_backward(Tensor grad, Tensor x, Tensor levels, Tensor thresholds, bool uniform_grid, "
      "Tensor eps, str noise_b, Tensor mu_b, Tensor sigma_b) -> Tensor");
  // A uniform backward noise on a quantiser of K <= 15 thresholds: the backward needs only a
  // 1-byte code per element (which thresholds' boxes hold x / eps - mu_b), saved in place of x.
  m.def(
      "ana_code(Tensor x, Tensor levels, Tensor thresholds, Tensor eps, Tensor mu_b, Tensor sigma_b) -> Tensor");
  m.def("ana_backward_code(Tensor grad, Tensor code, Tensor levels, Tensor sigma_b) -> Tensor");
  // ana and ana_code in one pass over x, (y, code): the forward autograd runs when x needs a
  // gradient and the backward noise is uniform on K <= 15 thresholds (anacuda/functional.py).
  m.def(
      "ana_coded(Tensor x, Tensor levels, Tensor thresholds, bool uniform_grid, Tensor eps, "
      "str noise, Tensor mu, Tensor sigma, str strategy, bool training, Tensor? seed, "
      "str noise_b, Tensor mu_b, Tensor sigma_b) -> (Tensor, Tensor)");

  // --- Alpha-blending (SPEC §6) ---------------------------------------------------------
  // y = alpha * eps * Q(w / eps) + (1 - alpha) * w; alpha a one-element tensor in [0, 1].
  // The gradient, (1 - alpha) * grad, is composed in anacuda/ops.py.
  m.def(
      "alpha_blend(Tensor w, Tensor levels, Tensor thresholds, bool uniform_grid, Tensor eps, "
      "Tensor alpha) -> Tensor");
}

// `import anacuda._C` loads the library (and so the registrations above). The module also
// reports how it was built.
namespace {

#ifndef ANACUDA_WITH_CUDA
#define ANACUDA_WITH_CUDA 0
#endif

PyObject* with_cuda(PyObject*, PyObject*) { return PyBool_FromLong(ANACUDA_WITH_CUDA); }

PyObject* cpu_kernels(PyObject*, PyObject*) { return PyUnicode_FromString(anacuda::cpu_kernels().name); }

PyMethodDef methods[] = {
    {"with_cuda", with_cuda, METH_NOARGS, "True if the CUDA kernels are compiled in."},
    {"cpu_kernels", cpu_kernels, METH_NOARGS, "The build of the CPU kernels in use: AVX2 or DEFAULT."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, methods};

}  // namespace

PyMODINIT_FUNC PyInit__C() { return PyModule_Create(&module); }
