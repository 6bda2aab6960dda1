// NMS: the suppression predicate, the only copy of NMS's IoU, shared by nms_cpu.cpp, the CUDA
// bitmask kernel and the CuPy backend. Reference: detkernels/reference/nms.py.
//
// Maths (torchvision 0.29.1 CPU kernel, operation order kept exactly), in working type T, where
// `a` is the higher-ranked (already kept) box and `b` the candidate:
//   area  = (x2 - x1) * (y2 - y1)
//   w     = std::max(0, std::min(a.x2, b.x2) - std::max(a.x1, b.x1))   h likewise
//   inter = w * h ;  iou = inter / ((area_a + area_b) - inter)
//   b is suppressed iff (double)iou > iou_threshold   -- strictly greater (IoU == thr is kept)
// std::max/min order matters: std::max(0, NaN) = 0, std::max(a.x1, NaN) = a.x1. Identical
// zero-area boxes give 0/0 = NaN, and NaN never suppresses. Same-class tests for batched NMS live
// in the drivers (segments of one class), never as coordinate offsets (docs/SPEC.md §1.2).
#pragma once
#include "common/host_device.h"

namespace detkernels {

template <typename T> DK_HD T nms_area(T x1, T y1, T x2, T y2) { return (x2 - x1) * (y2 - y1); }

// The five sorted columns the bitmask engine gathers per candidate (nms_bitmask.h step 2), by box
// kind: an axis-aligned box (4 values, x1 y1 x2 y2) gives (x1, y1, x2, y2, area), what the IoU
// and DIoU predicates read. Rotated boxes: nms_rotated_gpu.h's NmsRotatedBoxes.
template <typename T> struct NmsAxisBoxes {
  static constexpr int kDim = 4;  // values per box row
  DK_HD static void columns(const T* b, T& c0, T& c1, T& c2, T& c3, T& c4) {
    c0 = b[0];
    c1 = b[1];
    c2 = b[2];
    c3 = b[3];
    c4 = nms_area(b[0], b[1], b[2], b[3]);
  }
};

template <typename T>
DK_HD T nms_iou(T ax1, T ay1, T ax2, T ay2, T area_a, T bx1, T by1, T bx2, T by2, T area_b) {
  const T w = std_max(T(0), std_min(ax2, bx2) - std_max(ax1, bx1));
  const T h = std_max(T(0), std_min(ay2, by2) - std_max(ay1, by1));
  const T inter = w * h;
  return inter / ((area_a + area_b) - inter);
}

// `thr` is the threshold already rounded down to T (nms_threshold below), so this float compare
// equals torchvision CPU's `(double)iou > (double)iou_threshold` (docs/SPEC.md divergence 1).
template <typename T>
DK_HD bool nms_suppresses(T ax1, T ay1, T ax2, T ay2, T area_a, T bx1, T by1, T bx2, T by2,
                          T area_b, T thr) {
  return nms_iou(ax1, ay1, ax2, ay2, area_a, bx1, by1, bx2, by2, area_b) > thr;
}

// Scores rank descending with NaN above +inf (torch.sort(descending=True)); ties keep index order.
template <typename T> DK_HD bool score_before(T a, T b) { return (a != a && b == b) || a > b; }

#ifndef __CUDACC_RTC__
/// @brief Largest T <= thr: for any T value x, `x > nms_threshold<T>(thr)` iff `(double)x > thr`.
template <typename T> T nms_threshold(double thr);

/// @brief Greedy NMS on the CPU, exact per-class when `classes` is given.
/// @param dtype   kFloat32 or kFloat64 (boxes [n, 4] and scores [n], contiguous)
/// @param classes int64 [n] class (or image) ids, or nullptr for one class
/// @param keep    int64 [n] output: kept indices, by descending score, ties by ascending index
/// @return the number of kept boxes
int64_t nms_cpu(int dtype, const void* boxes, const void* scores, const int64_t* classes,
                int64_t n, double iou_threshold, int64_t* keep);

/// @brief Multi-image NMS with fixed-size outputs (reference: detkernels/reference/nms.py,
/// multi_image_nms). Per image b, candidates are its boxes (scores [B, N], C = 0) or its
/// (box, class) pairs (scores [B, N, C], flattened row-major); those with
/// (double)score > score_thr (when has_score_thr) run greedy NMS within each class (classes
/// [B, N] int64 ids, or the score column, or one class); the kept ones, by descending score then
/// ascending candidate index, fill out_idx[b, :counts[b]] (box index in the image) and
/// out_cls[b, :counts[b]] (class; out_cls may be nullptr), capped at max_output; the rest is -1.
/// @param dtype kFloat32 or kFloat64 (boxes [B, N, 4], scores; contiguous)
void nms_multi_cpu(int dtype, const void* boxes, const void* scores, const int64_t* classes,
                   int64_t B, int64_t N, int64_t C, double iou_threshold, bool has_score_thr,
                   double score_thr, int64_t max_output, int64_t* out_idx, int64_t* out_cls,
                   int64_t* counts);

/// @brief nms_multi_cpu computed by the GPU algorithm (nms_bitmask.h), run sequentially: same
/// sort keys, segments, mask tiles of `tile_rows` rows (0: from mask_cap_bytes, as on the GPU)
/// and keep scan with `scan_threads` emulated threads. For testing the GPU logic without a GPU.
void nms_multi_emulate_cpu(int dtype, const void* boxes, const void* scores,
                           const int64_t* classes, int64_t B, int64_t N, int64_t C,
                           double iou_threshold, bool has_score_thr, double score_thr,
                           int64_t max_output, int64_t* out_idx, int64_t* out_cls,
                           int64_t* counts, int64_t tile_rows, int64_t mask_cap_bytes,
                           int scan_threads);

#ifdef DETKERNELS_WITH_CUDA
/// @brief Device workspace (bytes) nms_multi_cuda needs; mask tiles take at most
/// max(mask_cap_bytes, 64 rows of mask words).
int64_t nms_multi_cuda_workspace_bytes(int dtype, int64_t B, int64_t N, int64_t C,
                                       bool has_classes, int64_t mask_cap_bytes, int device);

/// @brief nms_multi_cpu on device pointers (boxes, scores, classes, outputs and a caller-allocated
/// workspace of nms_multi_cuda_workspace_bytes bytes) on device `device`, enqueued on `stream`.
/// Never synchronises with the host and allocates nothing, so it can be captured in a CUDA graph.
void nms_multi_cuda(int dtype, const void* boxes, const void* scores, const int64_t* classes,
                    int64_t B, int64_t N, int64_t C, double iou_threshold, bool has_score_thr,
                    double score_thr, int64_t max_output, int64_t* out_idx, int64_t* out_cls,
                    int64_t* counts, void* workspace, int64_t workspace_bytes,
                    int64_t mask_cap_bytes, int device, void* stream);
#endif
#endif

}  // namespace detkernels
