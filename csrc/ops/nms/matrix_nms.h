// Matrix NMS (SOLOv2; mmdetection's mask_matrix_nms on boxes): the decay weight, the only copy
// (matrix_nms_cpu.cpp). Reference: detkernels/reference/matrix_nms.py (the algorithm, the float
// order and the differences from mmdetection / Paddle).
//
// For box j and a higher-ranked box i of its class, d = nms_iou(i, j) and c = i's compensation
// (the max IoU of i with the boxes ranked before it in its class):
//   gaussian: w = dk_exp(T(-sigma) * (d * d)) / dk_exp(T(-sigma) * (c * c))
//   linear:   w = (T(1) - d) / (T(1) - c)
// computed as num(d) / den(c) with den(c) once per box. decay_j = min(1, min_i w), NaN skipped.
#pragma once

#include "common/host_device.h"
#include "ops/nms/soft_nms.h"

namespace detkernels {

enum MatrixNmsKernel : int { kMatrixGaussian = 0, kMatrixLinear = 1 };

/// The weight's numerator (x = d) or denominator (x = c); `neg_sigma` = T(-sigma).
template <typename T> DK_HD T matrix_nms_term(T x, int kernel, T neg_sigma) {
  return kernel == kMatrixGaussian ? dk_exp(neg_sigma * (x * x)) : T(1) - x;
}

#ifndef __CUDACC_RTC__
/// @brief Matrix NMS on the CPU, O(N) memory (no N x N matrix: IoUs are recomputed in the
/// second pass). labels: int64 [n] class ids. has_score_thr: keep (double)decayed >= score_thr.
/// max_output, pre_top_k: < 0 for none. Outputs: keep int64 [n], out_scores T [n]; returns count.
int64_t matrix_nms_cpu(int dtype, const void* boxes, const void* scores, const int64_t* labels,
                       int64_t n, int kernel, double sigma, bool has_score_thr, double score_thr,
                       int64_t max_output, int64_t pre_top_k, int64_t* keep, void* out_scores);

/// @brief matrix_nms_cpu per image of a batch, fixed-size outputs (reference/matrix_nms.py,
/// multi_image_matrix_nms): boxes [B, N, 4], scores [B, N], labels int64 [B, N]; image b's first
/// counts[b] kept (by decayed score, at most max_output >= 0) fill out_idx[b] (box index in the
/// image, then -1) and out_scores[b] (decayed score, then 0). Images run in parallel on the CPU
/// thread pool.
void matrix_nms_multi_cpu(int dtype, const void* boxes, const void* scores, const int64_t* labels,
                          int64_t B, int64_t N, int kernel, double sigma, bool has_score_thr,
                          double score_thr, int64_t max_output, int64_t pre_top_k,
                          int64_t* out_idx, void* out_scores, int64_t* counts);
#endif

}  // namespace detkernels
