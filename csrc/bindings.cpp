// detkernels._C: the only PYBIND11_MODULE. Buffers arrive as raw addresses (uintptr) plus shapes,
// so the core serves torch, NumPy, CuPy and Numba arrays alike and never links libtorch. Shape,
// dtype and device checks are done in Python (detkernels/backends/native.py) before any call.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>

#include <cstdint>
#include <string>

#include "common/parallel.h"
#include "dk_build_info.h"
#include "ops/box_iou/box_iou.h"
#include "ops/nms/nms.h"
#include "ops/roi_align/roi_align.h"
#include "ops/roi_align/roi_align_gpu.h"
#include "ops/roi_pool/roi_pool.h"
#include "ops/roi_pool/roi_pool_gpu.h"
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

// Releases the GIL around a kernel. Unlike py::gil_scoped_release, its destructor may throw: a
// daemon thread that finishes a kernel while the interpreter shuts down is ended inside
// PyEval_RestoreThread by a forced unwind, which must propagate (a noexcept destructor turns it
// into std::terminate and aborts the whole process; pybind11 #2215).
struct ReleaseGil {
  PyThreadState* state = PyEval_SaveThread();
  ReleaseGil() = default;
  ReleaseGil(const ReleaseGil&) = delete;
  ReleaseGil& operator=(const ReleaseGil&) = delete;
  ~ReleaseGil() noexcept(false) { PyEval_RestoreThread(state); }
};

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "detkernels compiled core (raw-buffer kernels; see detkernels/backends/native.py)";
  auto nogil = py::call_guard<ReleaseGil>();
  m.def("build_info", &build_info);
  m.def("num_threads", &detkernels::num_threads);
  m.def("set_num_threads", &detkernels::set_num_threads, py::arg("n"));
  m.def("_parallel_probe", &detkernels::testing::parallel_probe, nogil);  // tests only
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
  // Multi-image NMS (also nms_padded and, with B = 1, max_output = N, the drop-in nms on CUDA).
  // score_thr: None = no score filter. classes: 0 = none. out_cls: 0 = not wanted.
  m.def("nms_multi_cpu",
        [](int dtype, uintptr_t boxes, uintptr_t scores, uintptr_t classes, int64_t B, int64_t N,
           int64_t C, double thr, py::object score_thr, int64_t max_output, uintptr_t out_idx,
           uintptr_t out_cls, uintptr_t counts) {
          const bool has = !score_thr.is_none();
          const double st = has ? score_thr.cast<double>() : 0.0;
          ReleaseGil release;  // not py::gil_scoped_release: see ReleaseGil
          detkernels::nms_multi_cpu(dtype, ptr(boxes), ptr(scores), ptr<const int64_t>(classes),
                                    B, N, C, thr, has, st, max_output, ptr<int64_t>(out_idx),
                                    ptr<int64_t>(out_cls), ptr<int64_t>(counts));
        });
  m.def("nms_multi_emulate_cpu",
        [](int dtype, uintptr_t boxes, uintptr_t scores, uintptr_t classes, int64_t B, int64_t N,
           int64_t C, double thr, py::object score_thr, int64_t max_output, uintptr_t out_idx,
           uintptr_t out_cls, uintptr_t counts, int64_t tile_rows, int64_t mask_cap_bytes,
           int scan_threads) {
          const bool has = !score_thr.is_none();
          const double st = has ? score_thr.cast<double>() : 0.0;
          ReleaseGil release;  // not py::gil_scoped_release: see ReleaseGil
          detkernels::nms_multi_emulate_cpu(
              dtype, ptr(boxes), ptr(scores), ptr<const int64_t>(classes), B, N, C, thr, has, st,
              max_output, ptr<int64_t>(out_idx), ptr<int64_t>(out_cls), ptr<int64_t>(counts),
              tile_rows, mask_cap_bytes, scan_threads);
        });

  // RoI ops: strides are element strides [4] of the strided operand (input, or grad).
  m.def("roi_align_forward_cpu",
        [](int dtype, bool ps, uintptr_t input, std::array<int64_t, 4> strides, int64_t N, int64_t C,
           int64_t H, int64_t W, uintptr_t rois, int64_t K, double scale, int64_t PH, int64_t PW,
           int64_t sr, bool aligned, uintptr_t out) {
          detkernels::roi_align_forward_cpu(dtype, ps, ptr(input), strides.data(), N, C, H, W,
                                            ptr(rois), K, scale, PH, PW, sr, aligned, ptr(out));
        },
        nogil);
  m.def("roi_align_backward_cpu",
        [](int dtype, bool ps, uintptr_t grad, std::array<int64_t, 4> strides, uintptr_t rois,
           int64_t K, double scale, int64_t PH, int64_t PW, int64_t N, int64_t C, int64_t H,
           int64_t W, int64_t sr, bool aligned, uintptr_t grad_input) {
          detkernels::roi_align_backward_cpu(dtype, ps, ptr(grad), strides.data(), ptr(rois), K,
                                             scale, PH, PW, N, C, H, W, sr, aligned,
                                             ptr(grad_input));
        },
        nogil);
  // The CUDA RoIAlign's steps run sequentially on the CPU (tests of the GPU logic).
  m.def("roi_align_forward_emulate_cpu",
        [](int dtype, bool ps, uintptr_t input, std::array<int64_t, 4> strides, int64_t N, int64_t C,
           int64_t H, int64_t W, uintptr_t rois, int64_t K, double scale, int64_t PH, int64_t PW,
           int64_t sr, bool aligned, uintptr_t out) {
          detkernels::roi_align_forward_emulate_cpu(dtype, ps, ptr(input), strides.data(), N, C, H,
                                                    W, ptr(rois), K, scale, PH, PW, sr, aligned,
                                                    ptr(out));
        },
        nogil);
  m.def("roi_align_backward_emulate_cpu",
        [](int dtype, bool ps, uintptr_t grad, std::array<int64_t, 4> strides, uintptr_t rois,
           int64_t K, double scale, int64_t PH, int64_t PW, int64_t N, int64_t C, int64_t H,
           int64_t W, int64_t sr, bool aligned, uintptr_t grad_input) {
          detkernels::roi_align_backward_emulate_cpu(dtype, ps, ptr(grad), strides.data(),
                                                     ptr(rois), K, scale, PH, PW, N, C, H, W, sr,
                                                     aligned, ptr(grad_input));
        },
        nogil);
  m.def("roi_pool_forward_cpu",
        [](int dtype, bool ps, uintptr_t input, std::array<int64_t, 4> strides, int64_t N, int64_t C,
           int64_t H, int64_t W, uintptr_t rois, int64_t K, double scale, int64_t PH, int64_t PW,
           uintptr_t out, uintptr_t idx) {
          detkernels::roi_pool_forward_cpu(dtype, ps, ptr(input), strides.data(), N, C, H, W,
                                           ptr(rois), K, scale, PH, PW, ptr(out), ptr<int32_t>(idx));
        },
        nogil);
  m.def("roi_pool_backward_cpu",
        [](int dtype, bool ps, uintptr_t grad, std::array<int64_t, 4> strides, uintptr_t rois,
           uintptr_t argmax, int64_t K, double scale, int64_t PH, int64_t PW, int64_t N, int64_t C,
           int64_t H, int64_t W, uintptr_t grad_input) {
          detkernels::roi_pool_backward_cpu(dtype, ps, ptr(grad), strides.data(), ptr(rois),
                                            ptr<const int32_t>(argmax), K, scale, PH, PW, N, C, H,
                                            W, ptr(grad_input));
        },
        nogil);
  m.def("roi_pool_forward_emulate_cpu",
        [](int dtype, bool ps, uintptr_t input, std::array<int64_t, 4> strides, int64_t N, int64_t C,
           int64_t H, int64_t W, uintptr_t rois, int64_t K, double scale, int64_t PH, int64_t PW,
           uintptr_t out, uintptr_t idx) {
          detkernels::roi_pool_forward_emulate_cpu(dtype, ps, ptr(input), strides.data(), N, C, H,
                                                   W, ptr(rois), K, scale, PH, PW, ptr(out),
                                                   ptr<int32_t>(idx));
        },
        nogil);
  m.def("roi_pool_backward_emulate_cpu",
        [](int dtype, bool ps, uintptr_t grad, std::array<int64_t, 4> strides, uintptr_t rois,
           uintptr_t argmax, int64_t K, double scale, int64_t PH, int64_t PW, int64_t N, int64_t C,
           int64_t H, int64_t W, uintptr_t grad_input) {
          detkernels::roi_pool_backward_emulate_cpu(dtype, ps, ptr(grad), strides.data(), ptr(rois),
                                                    ptr<const int32_t>(argmax), K, scale, PH, PW,
                                                    N, C, H, W, ptr(grad_input));
        },
        nogil);

#ifdef DETKERNELS_WITH_CUDA
  m.def("box_iou_cuda",
        [](int dtype, int fmt, int kind, double eps, int64_t B, int64_t N, int64_t M, uintptr_t b1,
           uintptr_t b2, uintptr_t out, int device, uintptr_t stream) {
          detkernels::box_iou_cuda(dtype, fmt, kind, eps, B, N, M, ptr(b1), ptr(b2), ptr(out),
                                   device, ptr(stream));
        },
        nogil);
  m.def("nms_multi_cuda_workspace_bytes", &detkernels::nms_multi_cuda_workspace_bytes);
  m.def("nms_multi_cuda",
        [](int dtype, uintptr_t boxes, uintptr_t scores, uintptr_t classes, int64_t B, int64_t N,
           int64_t C, double thr, py::object score_thr, int64_t max_output, uintptr_t out_idx,
           uintptr_t out_cls, uintptr_t counts, uintptr_t workspace, int64_t workspace_bytes,
           int64_t mask_cap_bytes, int device, uintptr_t stream) {
          const bool has = !score_thr.is_none();
          const double st = has ? score_thr.cast<double>() : 0.0;
          ReleaseGil release;  // not py::gil_scoped_release: see ReleaseGil
          detkernels::nms_multi_cuda(dtype, ptr(boxes), ptr(scores), ptr<const int64_t>(classes),
                                     B, N, C, thr, has, st, max_output, ptr<int64_t>(out_idx),
                                     ptr<int64_t>(out_cls), ptr<int64_t>(counts), ptr(workspace),
                                     workspace_bytes, mask_cap_bytes, device, ptr(stream));
        });
  m.def("roi_align_forward_cuda",
        [](int dtype, bool ps, uintptr_t input, std::array<int64_t, 4> strides, int64_t N, int64_t C,
           int64_t H, int64_t W, uintptr_t rois, int64_t K, double scale, int64_t PH, int64_t PW,
           int64_t sr, bool aligned, uintptr_t out, int device, uintptr_t stream) {
          detkernels::roi_align_forward_cuda(dtype, ps, ptr(input), strides.data(), N, C, H, W,
                                             ptr(rois), K, scale, PH, PW, sr, aligned, ptr(out),
                                             device, ptr(stream));
        },
        nogil);
  m.def("roi_align_backward_cuda_prepare",
        [](int dtype, bool ps, uintptr_t rois, int64_t K, double scale, int64_t PH, int64_t PW,
           int64_t N, int64_t sr, bool aligned, uintptr_t pre, int device, uintptr_t stream) {
          return detkernels::roi_align_backward_cuda_prepare(dtype, ps, ptr(rois), K, scale, PH, PW,
                                                             N, sr, aligned, ptr(pre), device,
                                                             ptr(stream));
        },
        nogil);
  m.def("roi_align_backward_cuda_workspace_bytes",
        &detkernels::roi_align_backward_cuda_workspace_bytes, nogil);
  m.def("roi_align_backward_cuda",
        [](int dtype, bool ps, uintptr_t grad, std::array<int64_t, 4> strides, uintptr_t rois,
           int64_t K, double scale, int64_t PH, int64_t PW, int64_t N, int64_t C, int64_t H,
           int64_t W, int64_t sr, bool aligned, uintptr_t pre, int64_t M, uintptr_t ws,
           int64_t ws_bytes, uintptr_t grad_input, int device, uintptr_t stream) {
          detkernels::roi_align_backward_cuda(dtype, ps, ptr(grad), strides.data(), ptr(rois), K,
                                              scale, PH, PW, N, C, H, W, sr, aligned, ptr(pre), M,
                                              ptr(ws), ws_bytes, ptr(grad_input), device,
                                              ptr(stream));
        },
        nogil);
  m.def("roi_pool_forward_cuda",
        [](int dtype, bool ps, uintptr_t input, std::array<int64_t, 4> strides, int64_t N, int64_t C,
           int64_t H, int64_t W, uintptr_t rois, int64_t K, double scale, int64_t PH, int64_t PW,
           uintptr_t out, uintptr_t idx, int device, uintptr_t stream) {
          detkernels::roi_pool_forward_cuda(dtype, ps, ptr(input), strides.data(), N, C, H, W,
                                            ptr(rois), K, scale, PH, PW, ptr(out), ptr<int32_t>(idx),
                                            device, ptr(stream));
        },
        nogil);
  m.def("ps_roi_pool_backward_cuda_pre_bytes", &detkernels::ps_roi_pool_backward_cuda_pre_bytes);
  m.def("ps_roi_pool_backward_cuda_prepare",
        [](int dtype, uintptr_t rois, int64_t K, double scale, int64_t PH, int64_t PW, int64_t N,
           int64_t H, int64_t W, uintptr_t pre, int device, uintptr_t stream) {
          return detkernels::ps_roi_pool_backward_cuda_prepare(dtype, ptr(rois), K, scale, PH, PW,
                                                               N, H, W, ptr(pre), device,
                                                               ptr(stream));
        },
        nogil);
  m.def("roi_pool_backward_cuda_workspace_bytes",
        &detkernels::roi_pool_backward_cuda_workspace_bytes, nogil);
  m.def("roi_pool_backward_cuda",
        [](int dtype, bool ps, uintptr_t grad, std::array<int64_t, 4> strides, uintptr_t rois,
           uintptr_t argmax, int64_t K, double scale, int64_t PH, int64_t PW, int64_t N, int64_t C,
           int64_t H, int64_t W, uintptr_t pre, int64_t M, uintptr_t ws, int64_t ws_bytes,
           uintptr_t grad_input, int device, uintptr_t stream) {
          detkernels::roi_pool_backward_cuda(dtype, ps, ptr(grad), strides.data(), ptr(rois),
                                             ptr<const int32_t>(argmax), K, scale, PH, PW, N, C, H,
                                             W, ptr(pre), M, ptr(ws), ws_bytes, ptr(grad_input),
                                             device, ptr(stream));
        },
        nogil);
#endif
}
