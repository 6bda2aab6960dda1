// detkernels._C: the only PYBIND11_MODULE. Buffers arrive as raw addresses (uintptr) plus shapes,
// so the core serves torch, NumPy, CuPy and Numba arrays alike and never links libtorch. Shape,
// dtype and device checks are done in Python (detkernels/backends/native.py) before any call.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/dispatch.h"
#include "common/parallel.h"
#include "dk_build_info.h"
#include "ops/box_iou/box_iou.h"
#include "ops/box_iou/box_iou_rotated.h"
#include "ops/detect/detect.h"
#include "ops/detect/detect_gpu.h"
#include "ops/nms/nms.h"
#include "ops/nms/nms_bitmask.h"
#include "ops/nms/nms_rotated_gpu.h"
#include "ops/nms/nms_sparse.h"
#include "ops/nms/soft_nms.h"
#include "ops/nms/diou_nms.h"
#include "ops/nms/matrix_nms.h"
#include "ops/nms/nms_sparse_gpu.h"
#include "ops/nms/soft_nms_gpu.h"
#include "ops/nms/matrix_nms_gpu.h"
#include "ops/roi_align/roi_align.h"
#include "ops/roi_align/roi_align_gpu.h"
#include "ops/roi_align/roi_align_rotated.h"
#include "ops/roi_align/roi_align_rotated_gpu.h"
#include "ops/roi_pool/roi_pool.h"
#include "ops/roi_pool/roi_pool_gpu.h"
#ifdef DETKERNELS_WITH_CUDA
#include "common/cuda_check.h"
#endif

namespace py = pybind11;

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
  d["cuda_why"] = DK_CUDA_WHY;  // why CUDA kernels were (not) built: DETKERNELS_CUDA and nvcc
  return d;
}

// The codes and caps the Python side mirrors (detkernels/_constants.py; tests/support/test_constants.py
// checks that the two agree).
py::dict constants() {
  using namespace detkernels;
  py::dict dtype, fmt, kind, d;
  dtype["float32"] = int(kFloat32);
  dtype["float64"] = int(kFloat64);
  dtype["float16"] = int(kFloat16);
  dtype["bfloat16"] = int(kBFloat16);
  dtype["int32"] = int(kInt32);
  dtype["int64"] = int(kInt64);
  fmt["xyxy"] = int(kXYXY);
  fmt["xywh"] = int(kXYWH);
  fmt["cxcywh"] = int(kCXCYWH);
  kind["iou"] = int(kIoU);
  kind["giou"] = int(kGIoU);
  kind["diou"] = int(kDIoU);
  kind["ciou"] = int(kCIoU);
  d["dtype_codes"] = dtype;
  d["fmt_codes"] = fmt;
  d["kind_codes"] = kind;
  d["roi_max_grid"] = kRoiMaxGrid;
  d["nms_word_bits"] = kNmsWordBits;
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

// ---- the adapter: one line per entry point --------------------------------------------------------
// Python sees every pointer parameter (const void*, T*, the CUDA stream handle) as a uintptr_t
// address and everything else (scalars, Strides4) as itself, so a raw-buffer entry point binds
// with `def(m, "name", &detkernels::name)` and never re-lists its arguments.
template <typename T> struct PyArg {
  using type = T;
  static T to(T v) { return v; }
};
template <typename T> struct PyArg<T*> {
  using type = uintptr_t;
  static T* to(uintptr_t a) { return reinterpret_cast<T*>(a); }
};
template <typename T> struct PyArg<const T&> {
  using type = T;
  static const T& to(const T& v) { return v; }
};

// Binds f with its pointers as addresses; the GIL is released around the call (ReleaseGil).
template <typename R, typename... A> void def(py::module_& m, const char* name, R (*f)(A...)) {
  m.def(name, [f](typename PyArg<A>::type... a) -> R {
    ReleaseGil release;
    return f(PyArg<A>::to(a)...);
  });
}

// score_thr arrives as a Python object: None = no score filter.
struct ScoreThr {
  bool has;
  double value;
  explicit ScoreThr(const py::object& o)
      : has(!o.is_none()), value(o.is_none() ? 0.0 : o.cast<double>()) {}
};

}  // namespace

PYBIND11_MODULE(_C, m) {
  using namespace detkernels;
  m.doc() = "detkernels compiled core (raw-buffer kernels; see detkernels/backends/native.py)";
  m.def("build_info", &build_info);
  m.def("num_threads", &num_threads);
  m.def("set_num_threads", &set_num_threads, py::arg("n"));
  m.def("share_openmp_runtime", &share_openmp_runtime, py::arg("libraries"),
        "Run the CPU pool's jobs on the first already-loaded OpenMP runtime of `libraries` "
        "(torch's); returns its name, or '' (binding unchanged).");
  m.def("use_own_pool", &use_own_pool, "Run the CPU pool's jobs on its own threads again.");
  m.def("thread_runtime", &thread_runtime, "'own', or 'openmp:<library>'.");
  m.def("cuda_device_count", [] {
#ifdef DETKERNELS_WITH_CUDA
    return detkernels::cuda_device_count();
#else
    return 0;
#endif
  });

  def(m, "box_iou_cpu", &box_iou_cpu);
  def(m, "box_iou_rotated_cpu", &box_iou_rotated_cpu);
  def(m, "nms_rotated_cpu", &nms_rotated_cpu);
  def(m, "probiou_cpu", &probiou_cpu);
  def(m, "nms_probiou_cpu", &nms_probiou_cpu);
  def(m, "nms_rotated_multi_cpu", &nms_rotated_multi_cpu);  // issue 17: fixed-size, per image
  def(m, "nms_cpu", &nms_cpu);
  def(m, "soft_nms_cpu", &soft_nms_cpu);
  def(m, "soft_nms_multi_cpu", &soft_nms_multi_cpu);  // issue 13: fixed-size, per image
  def(m, "diou_nms_cpu", &diou_nms_cpu);  // issue 13: classes 0 = none
  def(m, "matrix_nms_cpu", &matrix_nms_cpu);  // issue 13: max_output / pre_top_k < 0 = none  // issue 13: classes 0 = none, max_output < 0 = all
  def(m, "diou_nms_multi_cpu", &diou_nms_multi_cpu);  // issue 13: fixed-size, per image
  def(m, "matrix_nms_multi_cpu", &matrix_nms_multi_cpu);  // issue 13: fixed-size, per image
  // Multi-image NMS (also nms_padded and, with B = 1, max_output = N, the drop-in nms on CUDA).
  // classes: 0 = none. out_cls: 0 = not wanted.
  m.def("nms_multi_cpu", [](int dtype, uintptr_t boxes, uintptr_t scores, uintptr_t classes,
                            int64_t B, int64_t N, int64_t C, double thr, py::object score_thr,
                            int64_t max_output, uintptr_t out_idx, uintptr_t out_cls,
                            uintptr_t counts) {
    const ScoreThr st(score_thr);
    ReleaseGil release;
    nms_multi_cpu(dtype, ptr(boxes), ptr(scores), ptr<const int64_t>(classes), B, N, C, thr,
                  st.has, st.value, max_output, ptr<int64_t>(out_idx), ptr<int64_t>(out_cls),
                  ptr<int64_t>(counts));
  });
  // detect: objectness / idxs 0 = none; top_k < 0 = all; strides: the 8 DetectStrides fields;
  // then the NMS mode (a DetectNmsMode) and its DetectNms fields, min_score None = none.
  m.def("detect_cpu", [](int dtype, uintptr_t boxes, uintptr_t scores, uintptr_t objectness,
                         uintptr_t idxs, int64_t B, int64_t A, int64_t C,
                         const std::vector<int64_t>& strides, int fmt, double thr,
                         py::object score_thr, int64_t top_k, int64_t max_det, bool multi_label,
                         bool class_agnostic, int nms_mode, double beta, int decay, double sigma,
                         py::object min_score, uintptr_t out_boxes, uintptr_t out_scores,
                         uintptr_t out_cls, uintptr_t out_idx, uintptr_t counts) {
    if (strides.size() != 8) throw std::invalid_argument("detect_cpu: strides must have 8 entries");
    const DetectStrides ds{strides[0], strides[1], strides[2], strides[3],
                           strides[4], strides[5], strides[6], strides[7]};
    const ScoreThr st(score_thr), ms(min_score);
    const DetectNms nms{nms_mode, beta, decay, sigma, ms.has, ms.value};
    ReleaseGil release;
    detect_cpu(dtype, ptr(boxes), ptr(scores), ptr(objectness), ptr<const int64_t>(idxs), B, A, C,
               ds, fmt, thr, st.has, st.value, top_k, max_det, multi_label, class_agnostic, nms,
               ptr(out_boxes), ptr(out_scores), ptr<int64_t>(out_cls), ptr<int64_t>(out_idx),
               ptr<int64_t>(counts));
  });
  // RoI ops: strides are the element strides [4] of the strided operand (input, or grad).
  def(m, "roi_align_forward_cpu", &roi_align_forward_cpu);
  def(m, "roi_align_backward_cpu", &roi_align_backward_cpu);
  def(m, "roi_align_rotated_forward_cpu", &roi_align_rotated_forward_cpu);
  def(m, "roi_align_rotated_backward_cpu", &roi_align_rotated_backward_cpu);
  def(m, "roi_pool_forward_cpu", &roi_pool_forward_cpu);
  def(m, "roi_pool_backward_cpu", &roi_pool_backward_cpu);

#ifdef DETKERNELS_WITH_CUDA
  def(m, "box_iou_cuda", &box_iou_cuda);
  def(m, "box_iou_rotated_cuda", &box_iou_rotated_cuda);  // issue 17
  def(m, "probiou_cuda", &probiou_cuda);
  def(m, "nms_multi_cuda_workspace_bytes", &nms_multi_cuda_workspace_bytes);
  m.def("nms_multi_cuda", [](int dtype, uintptr_t boxes, uintptr_t scores, uintptr_t classes,
                             int64_t B, int64_t N, int64_t C, double thr, py::object score_thr,
                             int64_t max_output, uintptr_t out_idx, uintptr_t out_cls,
                             uintptr_t counts, uintptr_t workspace, int64_t workspace_bytes,
                             int64_t mask_cap_bytes, int device, uintptr_t stream) {
    const ScoreThr st(score_thr);
    ReleaseGil release;
    nms_multi_cuda(dtype, ptr(boxes), ptr(scores), ptr<const int64_t>(classes), B, N, C, thr,
                   st.has, st.value, max_output, ptr<int64_t>(out_idx), ptr<int64_t>(out_cls),
                   ptr<int64_t>(counts), ptr(workspace), workspace_bytes, mask_cap_bytes, device,
                   ptr(stream));
  });
  // issue 13: DIoU-NMS on CUDA (nms_multi_cuda's arguments + beta, the same workspace).
  m.def("diou_nms_multi_cuda", [](int dtype, uintptr_t boxes, uintptr_t scores, uintptr_t classes,
                                  int64_t B, int64_t N, int64_t C, double thr, double beta,
                                  py::object score_thr, int64_t max_output, uintptr_t out_idx,
                                  uintptr_t out_cls, uintptr_t counts, uintptr_t workspace,
                                  int64_t workspace_bytes, int64_t mask_cap_bytes, int device,
                                  uintptr_t stream) {
    const ScoreThr st(score_thr);
    ReleaseGil release;
    diou_nms_multi_cuda(dtype, ptr(boxes), ptr(scores), ptr<const int64_t>(classes), B, N, C, thr,
                        beta, st.has, st.value, max_output, ptr<int64_t>(out_idx),
                        ptr<int64_t>(out_cls), ptr<int64_t>(counts), ptr(workspace),
                        workspace_bytes, mask_cap_bytes, device, ptr(stream));
  });
  // issue 17: rotated NMS on the bitmask engine (rotated IoU or ProbIoU; nms_multi_cuda's workspace).
  m.def("nms_rotated_multi_cuda", [](int dtype, int metric, uintptr_t boxes, uintptr_t scores,
                                     uintptr_t classes, int64_t B, int64_t N, double thr,
                                     double eps, py::object score_thr, int64_t max_output,
                                     uintptr_t out_idx, uintptr_t counts, uintptr_t workspace,
                                     int64_t workspace_bytes, int64_t mask_cap_bytes, int device,
                                     uintptr_t stream) {
    const ScoreThr st(score_thr);
    ReleaseGil release;
    nms_rotated_multi_cuda(dtype, metric, ptr(boxes), ptr(scores), ptr<const int64_t>(classes), B,
                           N, thr, eps, st.has, st.value, max_output, ptr<int64_t>(out_idx),
                           ptr<int64_t>(counts), ptr(workspace), workspace_bytes, mask_cap_bytes,
                           device, ptr(stream));
  });
  // issue 12: detect on CUDA (arguments as detect_cpu, NMS mode included, then the workspace,
  // device and stream); the workspace size takes the mode (its NMS stage's share).
  def(m, "detect_cuda_workspace_bytes", &detect_cuda_workspace_bytes);
  m.def("detect_cuda", [](int dtype, uintptr_t boxes, uintptr_t scores, uintptr_t objectness,
                          uintptr_t idxs, int64_t B, int64_t A, int64_t C,
                          const std::vector<int64_t>& strides, int fmt, double thr,
                          py::object score_thr, int64_t top_k, int64_t max_det, bool multi_label,
                          bool class_agnostic, int nms_mode, double beta, int decay, double sigma,
                          py::object min_score, uintptr_t out_boxes, uintptr_t out_scores,
                          uintptr_t out_cls, uintptr_t out_idx, uintptr_t counts,
                          uintptr_t workspace, int64_t workspace_bytes, int64_t mask_cap_bytes,
                          int device, uintptr_t stream) {
    if (strides.size() != 8) throw std::invalid_argument("detect_cuda: strides must have 8 entries");
    const DetectStrides ds{strides[0], strides[1], strides[2], strides[3],
                           strides[4], strides[5], strides[6], strides[7]};
    const ScoreThr st(score_thr), ms(min_score);
    const DetectNms nms{nms_mode, beta, decay, sigma, ms.has, ms.value};
    ReleaseGil release;
    detect_cuda(dtype, ptr(boxes), ptr(scores), ptr(objectness), ptr<const int64_t>(idxs), B, A, C,
                ds, fmt, thr, st.has, st.value, top_k, max_det, multi_label, class_agnostic, nms,
                ptr(out_boxes), ptr(out_scores), ptr<int64_t>(out_cls), ptr<int64_t>(out_idx),
                ptr<int64_t>(counts), ptr(workspace), workspace_bytes, mask_cap_bytes, device,
                ptr(stream));
  });
  def(m, "roi_align_forward_cuda", &roi_align_forward_cuda);
  def(m, "roi_align_backward_cuda_prepare", &roi_align_backward_cuda_prepare);
  def(m, "roi_align_backward_cuda_workspace_bytes", &roi_align_backward_cuda_workspace_bytes);
  def(m, "roi_align_backward_cuda", &roi_align_backward_cuda);
  def(m, "roi_align_rotated_forward_cuda", &roi_align_rotated_forward_cuda);
  def(m, "roi_align_rotated_backward_cuda_prepare", &roi_align_rotated_backward_cuda_prepare);
  def(m, "roi_align_rotated_backward_cuda", &roi_align_rotated_backward_cuda);
  def(m, "roi_pool_forward_cuda", &roi_pool_forward_cuda);
  def(m, "ps_roi_pool_backward_cuda_pre_bytes", &ps_roi_pool_backward_cuda_pre_bytes);
  def(m, "ps_roi_pool_backward_cuda_prepare", &ps_roi_pool_backward_cuda_prepare);
  def(m, "roi_pool_backward_cuda_workspace_bytes", &roi_pool_backward_cuda_workspace_bytes);
  def(m, "roi_pool_backward_cuda", &roi_pool_backward_cuda);
  // issue 13: Soft-NMS (one block per image, no host sync) and Matrix NMS (count stays on device)
  def(m, "soft_nms_multi_cuda_workspace_bytes", &soft_nms_multi_cuda_workspace_bytes);
  m.def("soft_nms_multi_cuda", [](int dtype, uintptr_t boxes, uintptr_t scores, uintptr_t classes,
                                  int64_t B, int64_t N, double thr, double sigma, int method,
                                  double sthr, int64_t max_output, uintptr_t out_idx,
                                  uintptr_t out_scores, uintptr_t counts, uintptr_t workspace,
                                  int64_t workspace_bytes, int device, uintptr_t stream) {
    ReleaseGil release;
    soft_nms_multi_cuda(dtype, ptr(boxes), ptr(scores), ptr<const int64_t>(classes), B, N, thr,
                        sigma, method, sthr, max_output, ptr<int64_t>(out_idx), ptr(out_scores),
                        ptr<int64_t>(counts), ptr(workspace), workspace_bytes, device, ptr(stream));
  });
  def(m, "matrix_nms_cuda_workspace_bytes", &matrix_nms_cuda_workspace_bytes);
  // multi-image Matrix NMS (no host sync); n_valid 0 = every box (detect passes its slot counts)
  def(m, "matrix_nms_multi_cuda_workspace_bytes", &matrix_nms_multi_cuda_workspace_bytes);
  def(m, "matrix_nms_multi_cuda", &matrix_nms_multi_cuda);
  m.def("matrix_nms_cuda", [](int dtype, uintptr_t boxes, uintptr_t scores, uintptr_t labels,
                              int64_t n, int kernel, double sigma, bool has_thr, double thr,
                              int64_t max_output, int64_t pre_top_k, uintptr_t keep,
                              uintptr_t out_scores, uintptr_t count, uintptr_t workspace,
                              int64_t workspace_bytes, int device, uintptr_t stream) {
    ReleaseGil release;
    matrix_nms_cuda(dtype, ptr(boxes), ptr(scores), ptr<const int64_t>(labels), n, kernel, sigma,
                    has_thr, thr, max_output, pre_top_k, ptr<int64_t>(keep), ptr(out_scores),
                    ptr<int64_t>(count), ptr(workspace), workspace_bytes, device, ptr(stream));
  });
#endif

  m.def("constants", &constants);

  // Entry points only the tests call: the GPU algorithms emulated on the CPU, thread-pool probes
  // and the NMS tile planning (tests/test_*_cuda_logic.py, test_parallel.py, test_constants.py).
  py::module_ t = m.def_submodule("testing", "test-only entry points of detkernels._C");
  def(t, "parallel_probe", &testing::parallel_probe);
  def(t, "parallel_backoff_probe", &testing::parallel_backoff_probe);
  def(t, "parallel_coarse_probe", &testing::parallel_coarse_probe);
  t.def("nms_multi_emulate_cpu",
        [](int dtype, uintptr_t boxes, uintptr_t scores, uintptr_t classes, int64_t B, int64_t N,
           int64_t C, double thr, py::object score_thr, int64_t max_output, uintptr_t out_idx,
           uintptr_t out_cls, uintptr_t counts, int64_t tile_rows, int64_t mask_cap_bytes,
           int scan_threads) {
          const ScoreThr st(score_thr);
          ReleaseGil release;
          nms_multi_emulate_cpu(dtype, ptr(boxes), ptr(scores), ptr<const int64_t>(classes), B, N,
                                C, thr, st.has, st.value, max_output, ptr<int64_t>(out_idx),
                                ptr<int64_t>(out_cls), ptr<int64_t>(counts), tile_rows,
                                mask_cap_bytes, scan_threads);
        });
  // issue 13: DIoU-NMS on the same emulated engine (nms_multi_emulate_cpu's arguments + beta).
  t.def("diou_nms_multi_emulate_cpu",
        [](int dtype, uintptr_t boxes, uintptr_t scores, uintptr_t classes, int64_t B, int64_t N,
           int64_t C, double thr, double beta, py::object score_thr, int64_t max_output,
           uintptr_t out_idx, uintptr_t out_cls, uintptr_t counts, int64_t tile_rows,
           int64_t mask_cap_bytes, int scan_threads) {
          const ScoreThr st(score_thr);
          ReleaseGil release;
          diou_nms_multi_emulate_cpu(dtype, ptr(boxes), ptr(scores), ptr<const int64_t>(classes),
                                     B, N, C, thr, beta, st.has, st.value, max_output,
                                     ptr<int64_t>(out_idx), ptr<int64_t>(out_cls),
                                     ptr<int64_t>(counts), tile_rows, mask_cap_bytes,
                                     scan_threads);
        });
  // issue 17: rotated NMS on the same emulated engine.
  t.def("nms_rotated_multi_emulate_cpu",
        [](int dtype, int metric, uintptr_t boxes, uintptr_t scores, uintptr_t classes, int64_t B,
           int64_t N, double thr, double eps, py::object score_thr, int64_t max_output,
           uintptr_t out_idx, uintptr_t counts, int64_t tile_rows, int64_t mask_cap_bytes,
           int scan_threads) {
          const ScoreThr st(score_thr);
          ReleaseGil release;
          nms_rotated_multi_emulate_cpu(dtype, metric, ptr(boxes), ptr(scores),
                                        ptr<const int64_t>(classes), B, N, thr, eps, st.has,
                                        st.value, max_output, ptr<int64_t>(out_idx),
                                        ptr<int64_t>(counts), tile_rows, mask_cap_bytes,
                                        scan_threads);
        });
  // issue 12: the GPU detect pipeline emulated (arguments as detect_cpu, NMS mode included,
  // then the NMS tiling).
  t.def("detect_emulate_cpu",
        [](int dtype, uintptr_t boxes, uintptr_t scores, uintptr_t objectness, uintptr_t idxs,
           int64_t B, int64_t A, int64_t C, const std::vector<int64_t>& strides, int fmt,
           double thr, py::object score_thr, int64_t top_k, int64_t max_det, bool multi_label,
           bool class_agnostic, int nms_mode, double beta, int decay, double sigma,
           py::object min_score, uintptr_t out_boxes, uintptr_t out_scores, uintptr_t out_cls,
           uintptr_t out_idx, uintptr_t counts, int64_t tile_rows, int64_t mask_cap_bytes,
           int scan_threads) {
          if (strides.size() != 8) throw std::invalid_argument("detect: strides must have 8 entries");
          const DetectStrides ds{strides[0], strides[1], strides[2], strides[3],
                                 strides[4], strides[5], strides[6], strides[7]};
          const ScoreThr st(score_thr), ms(min_score);
          const DetectNms nms{nms_mode, beta, decay, sigma, ms.has, ms.value};
          ReleaseGil release;
          detect_emulate_cpu(dtype, ptr(boxes), ptr(scores), ptr(objectness),
                             ptr<const int64_t>(idxs), B, A, C, ds, fmt, thr, st.has, st.value,
                             top_k, max_det, multi_label, class_agnostic, nms, ptr(out_boxes),
                             ptr(out_scores), ptr<int64_t>(out_cls), ptr<int64_t>(out_idx),
                             ptr<int64_t>(counts), tile_rows, mask_cap_bytes, scan_threads);
        });
  def(t, "roi_align_forward_emulate_cpu", &roi_align_forward_emulate_cpu);
  def(t, "roi_align_backward_emulate_cpu", &roi_align_backward_emulate_cpu);
  def(t, "roi_align_rotated_forward_emulate_cpu", &roi_align_rotated_forward_emulate_cpu);
  def(t, "roi_align_rotated_backward_emulate_cpu", &roi_align_rotated_backward_emulate_cpu);
  def(t, "roi_pool_forward_emulate_cpu", &roi_pool_forward_emulate_cpu);
  def(t, "roi_pool_backward_emulate_cpu", &roi_pool_backward_emulate_cpu);
  def(t, "soft_nms_exp_cpu", &soft_nms_exp_cpu);
  def(t, "soft_nms_multi_emulate_cpu", &soft_nms_multi_emulate_cpu);  // issue 13: CUDA Soft-NMS
  def(t, "matrix_nms_emulate_cpu", &matrix_nms_emulate_cpu);  // issue 13: CUDA Matrix NMS
  def(t, "matrix_nms_multi_emulate_cpu", &matrix_nms_multi_emulate_cpu);  // its multi-image form
  def(t, "diou_nms_log_cpu", &diou_nms_log_cpu);  // issue 13: dk_log against the reference  // issue 13: dk_exp against the reference
  def(t, "nms_set_path", &nms_set_path);  // issue 16: force the pruned/plain CPU NMS path
  def(t, "nms_gpu_set_path", &nms_gpu_set_path);  // issue 16: the GPU path (and its rounds)
  def(t, "nms_gpu_emulated_outcome", &nms_gpu_emulated_outcome);
  def(t, "nms_gpu_emulated_work", &nms_gpu_emulated_work);
  t.def("nms_tile_rows", [](int64_t total, int64_t W, int64_t cap_bytes) {
    return nms_tile_rows(total, W, cap_bytes);
  });
  t.def("nms_threshold", [](double thr, int dtype) {
    return dispatch_float(dtype, "nms_threshold", [&](auto t) {
      return static_cast<double>(nms_threshold<decltype(t)>(thr));  // exact: float widens
    });
  });
}
