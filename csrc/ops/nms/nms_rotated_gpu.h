// Rotated NMS on the bitmask NMS engine (issue 17): the box kind and the suppression predicate
// that nms_bitmask.h's steps are generic over; everything else (sorts, segments per image and
// class, mask tiles, keep scan, fixed-size outputs) is plain NMS's. Shared by nms_cuda.cu
// (nms_rotated_multi_cuda, via nms_rotated_kernels.cuh) and nms_emulate.cpp (the CPU emulation
// the tests run). The metric is box_iou_rotated.h's RotatedIouMetric or ProbIouMetric, the very
// policy the CPU NMS loop (box_iou_rotated_cpu.cpp) uses, with the same comparison:
// double(metric(kept, other)) > iou_threshold.
#pragma once
#include "ops/box_iou/box_iou_rotated.h"
#include "ops/nms/nms.h"

namespace detkernels {

// Rotated boxes (5 values: cx, cy, w, h, angle) are gathered as they are into the five columns.
template <typename T> struct NmsRotatedBoxes {
  static constexpr int kDim = 5;
  DK_HD static void columns(const T* b, T& c0, T& c1, T& c2, T& c3, T& c4) {
    c0 = b[0];
    c1 = b[1];
    c2 = b[2];
    c3 = b[3];
    c4 = b[4];
  }
};

// The per-box preparation (trig, bounds / covariance) is recomputed per pair here, as
// torchvision's kernels do: the mask tile stages raw columns, and a prep is a few double
// operations against the polygon's hundreds.
template <typename T, typename Metric> struct RotatedNmsSuppress {
  using Boxes = NmsRotatedBoxes<T>;
  double thr;  // iou_threshold, compared in double (the CPU loop's rule)
  Metric metric;
  bool fast;  // Fast-NMS's keep scan instead of greedy (nms_bitmask.h nms_scan_rowblock)
  DK_HD bool operator()(T a0, T a1, T a2, T a3, T a4, T b0, T b1, T b2, T b3, T b4) const {
    const T a[5] = {a0, a1, a2, a3, a4}, b[5] = {b0, b1, b2, b3, b4};
    return static_cast<double>(metric.value(a, b, metric.prep(a), metric.prep(b))) > thr;
  }
};

// Whether the engine runs Fast-NMS's keep scan for this predicate (only rotated ones can).
template <typename P> DK_HD bool nms_pred_fast(const P&) { return false; }
template <typename T, typename Metric>
DK_HD bool nms_pred_fast(const RotatedNmsSuppress<T, Metric>& p) { return p.fast; }


#ifndef __CUDACC_RTC__
/// @brief The CUDA rotated NMS (nms_rotated_multi_cuda) run step by step on the CPU:
/// boxes [B, N, 5] (cxcywhr, or ultralytics xywhr for ProbIoU), scores [B, N], classes [B, N] or
/// null, greedy by the metric (kRotatedIou, kRotatedProbIou with eps) or Fast-NMS on ProbIoU
/// (kRotatedProbIouFast), score filter, fixed-size
/// outputs out_idx [B, max_output] (-1 padded) and counts [B]. For testing the GPU logic.
void nms_rotated_multi_emulate_cpu(int dtype, int metric, const void* boxes, const void* scores,
                                   const int64_t* classes, int64_t B, int64_t N,
                                   double iou_threshold, double eps, bool has_score_thr,
                                   double score_thr, int64_t max_output, int64_t* out_idx,
                                   int64_t* counts, int64_t tile_rows, int64_t mask_cap_bytes,
                                   int scan_threads);
#ifdef DETKERNELS_WITH_CUDA
/// @brief Rotated NMS on CUDA on the bitmask engine (the workspace of
/// nms_multi_cuda_workspace_bytes(dtype, B, N, 0, ...)); never synchronises.
void nms_rotated_multi_cuda(int dtype, int metric, const void* boxes, const void* scores,
                            const int64_t* classes, int64_t B, int64_t N, double iou_threshold,
                            double eps, bool has_score_thr, double score_thr, int64_t max_output,
                            int64_t* out_idx, int64_t* counts, void* workspace,
                            int64_t workspace_bytes, int64_t mask_cap_bytes, int device,
                            void* stream);
#endif
#endif

}  // namespace detkernels
