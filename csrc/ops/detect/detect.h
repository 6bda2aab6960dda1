// detect: the fused detection post-process (score threshold -> pre-NMS top-k -> exact per-class
// NMS -> max_det) with fixed-size outputs. Reference and the full rule: detkernels/reference/detect.py.
//
// Candidate ranking, shared by the top-k and the output order: descending score with NaN first
// (nms.h score_before), ties by ascending candidate index q (q = a for one candidate per anchor,
// a * C + c for multi-label). The single-label class is the first NaN column, else the lowest
// column holding the row maximum. Scores are `score * objectness` in T when objectness is given.
// The score filter is `(double)s > score_thr`, done in T against nms_threshold<T>(score_thr)
// (the largest T <= score_thr, so the T compare equals the double one). Boxes enter NMS (nms.h
// maths, nms_cpu) and the outputs as xyxy corners (box_iou.h box_corners). DetectNms picks another
// single-image NMS instead of nms_cpu: diou_nms_cpu, soft_nms_cpu or matrix_nms_cpu, called as is
// (their maths stays theirs: diou_nms.h, soft_nms.h, matrix_nms.h).
#pragma once
#include "common/host_device.h"  // <cstdint>, or its NVRTC stand-in (the CuPy backend)

namespace detkernels {

/// Element strides of the inputs (any layout: a YOLOv5 [B, A, 85] head sliced, ultralytics'
/// [B, 4 + C, A] transposed). Fast paths: classes contiguous (row scans) and, single-label,
/// anchors contiguous (column scans); other layouts gather each row.
struct DetectStrides {
  int64_t box_image, box_anchor, box_coord;
  int64_t score_image, score_anchor, score_class;  // score_class unused when C == 0
  int64_t obj_image, obj_anchor;
};

/// detect's NMS modes (reference/detect.py NMS_MODES).
enum DetectNmsMode : int { kDetectIou = 0, kDetectDiou = 1, kDetectSoft = 2, kDetectMatrix = 3 };

/// The NMS of step 5 and the parameters its mode uses (reference/detect.py NMS_PARAMETERS);
/// the other fields are ignored.
struct DetectNms {
  int mode = kDetectIou;
  double beta = 1.0;           // diou: the penalty exponent
  int decay = 0;               // soft: a SoftNmsMethod; matrix: a MatrixNmsKernel
  double sigma = 0.0;          // soft, matrix
  bool has_min_score = false;  // soft: always true (soft_nms's score_threshold); matrix: optional
  double min_score = 0.0;
};

#ifndef __CUDACC_RTC__  // host entry points: not for NVRTC (the CuPy backend)
/// @brief Fused post-process of B images on the CPU (images on the thread pool).
/// @param dtype      kFloat32 or kFloat64: boxes [B, A, 4], scores, objectness (strides `st`)
/// @param scores     [B, A, C], or [B, A] when C == 0
/// @param objectness [B, A] or nullptr
/// @param idxs       int64 [B, A] class ids (only with C == 0, contiguous) or nullptr
/// @param fmt        box format (box_iou.h BoxFmt) of `boxes`
/// @param top_k      pre-NMS candidates kept per image; < 0: all
/// @param class_agnostic one NMS over all classes (C == 0 without idxs is always agnostic)
/// @param nms        the NMS mode; soft and matrix write their decayed scores to out_scores
/// @param out_boxes  [B, max_det, 4] T xyxy (0 padded); out_scores [B, max_det] T (0 padded)
/// @param out_cls    int64 [B, max_det]; out_idx int64 [B, max_det] anchor index (-1 padded)
/// @param counts     int64 [B]
void detect_cpu(int dtype, const void* boxes, const void* scores, const void* objectness,
                const int64_t* idxs, int64_t B, int64_t A, int64_t C, const DetectStrides& st,
                int fmt, double iou_threshold, bool has_score_thr, double score_thr,
                int64_t top_k, int64_t max_det, bool multi_label, bool class_agnostic,
                const DetectNms& nms, void* out_boxes, void* out_scores, int64_t* out_cls, int64_t* out_idx,
                int64_t* counts);
#endif  // __CUDACC_RTC__

}  // namespace detkernels
