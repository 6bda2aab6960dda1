// detkernels._C: the only PYBIND11_MODULE. Buffers arrive as raw addresses (uintptr) plus shapes,
// so the core serves torch, NumPy, CuPy and Numba arrays alike and never links libtorch. Shape,
// dtype and device checks are done in Python (detkernels/backends/native.py) before any call.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "common/parallel.h"
#include "dk_build_info.h"
#include "ops/box_iou/box_iou.h"
#include "ops/nms/nms.h"
#ifdef DETKERNELS_WITH_CUDA
#include "common/cuda_check.h"
#endif

namespace py = pybind11;
using detkernels::DType;

namespace {

template <typename P = void> P* ptr(uintptr_t a) { return reinterpret_cast<P*>(a); }

py::dict build_info() {
  py::dict d;
#ifdef DETKERNELS_WITH_CUDA
  d["cuda"] = true;
  d["cuda_version"] = std::string(DK_CUDA_VERSION);
  d["cuda_architectures"] = std::string(DK_CUDA_ARCHS);
#else
  d["cuda"] = false;
  d["cuda_version"] = py::none();
  d["cuda_architectures"] = py::none();
#endif
  d["float_flags"] = DK_FLOAT_FLAGS;
  d["cxx_compiler"] = DK_CXX_COMPILER;
  d["build_type"] = DK_BUILD_TYPE;
  return d;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "detkernels compiled core (raw-buffer kernels; see detkernels/backends/native.py)";
  auto nogil = py::call_guard<py::gil_scoped_release>();
  m.def("build_info", &build_info);
  m.def("num_threads", &detkernels::num_threads);
  m.def("set_num_threads", &detkernels::set_num_threads, py::arg("n"));
  m.def("cuda_device_count", [] {
#ifdef DETKERNELS_WITH_CUDA
    return detkernels::cuda_device_count();
#else
    return 0;
#endif
  });

  m.def("box_iou_cpu",
        [](int dtype, int fmt, int kind, double eps, int64_t B, int64_t N, int64_t M, uintptr_t b1,
           uintptr_t b2, uintptr_t out) {
          detkernels::box_iou_cpu(dtype, fmt, kind, eps, B, N, M, ptr(b1), ptr(b2), ptr(out));
        },
        nogil);
  m.def("nms_cpu",
        [](int dtype, uintptr_t boxes, uintptr_t scores, uintptr_t classes, int64_t n, double thr,
           uintptr_t keep) {
          return detkernels::nms_cpu(dtype, ptr(boxes), ptr(scores), ptr<const int64_t>(classes),
                                     n, thr, ptr<int64_t>(keep));
        },
        nogil);

#ifdef DETKERNELS_WITH_CUDA
  m.def("box_iou_cuda",
        [](int dtype, int fmt, int kind, double eps, int64_t B, int64_t N, int64_t M, uintptr_t b1,
           uintptr_t b2, uintptr_t out, uintptr_t stream) {
          detkernels::box_iou_cuda(dtype, fmt, kind, eps, B, N, M, ptr(b1), ptr(b2), ptr(out),
                                   ptr(stream));
        },
        nogil);
#endif
}
