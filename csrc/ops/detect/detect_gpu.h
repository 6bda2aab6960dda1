// The GPU detect pipeline, one element at a time: the only copy of the steps that detect_cuda.cu
// launches (detect_kernels.cuh) and that detect_emulate.cpp runs sequentially on the CPU, so the
// tests check them byte-for-byte against detkernels/reference/detect.py without a GPU.
//
// B images, M candidates each (M = A * C multi-label, A otherwise); gq = b * M + q.
//  1. score (detect_gpu_score): candidate gq's score in T (times objectness), class, and whether
//     it passes the score filter -- the reference's rules (first NaN column, else the lowest
//     column holding the maximum; `(double)s > score_thr`).
//  2. top-k, only when k < M: two stable radix sorts of all B * M candidates, by nms_score_key
//     (descending score, NaN first, -0 == +0; ties keep ascending gq) then by nms_image_key
//     (image, valid first): image b's candidates fill sorted positions [b M, (b + 1) M), its
//     valid ones first in the reference's rank order, so position p is selected iff it is valid
//     and p - b M < k (detect_gpu_select). With k >= M the valid candidates are the selection.
//     No candidate cap: the sorts cover every candidate (memory: detect_cuda_workspace_bytes).
//  3. compaction (detect_gpu_compact): an exclusive sum of the selection flags in gq order gives
//     each selected candidate its slot b * N + rank in image b, N = min(k, M) (static), so slots
//     ascend with the candidate index; free slots are padding (score -inf: fails every score
//     filter, `-inf > thr` being false for any thr, NaN included; and it ranks below every real
//     slot of its image, -inf ones included, since padding slots come last). detect_gpu_count
//     gives each image its number of real slots (n_valid, on the device).
//  4. the NMS of the [B, N] slots, by mode (DetectNms; each mode's existing multi-image CUDA
//     entry, its own workspace slice), classes per slot or none / zeros for class-agnostic:
//     - iou, diou: the multi-image bitmask engine (nms_multi_cuda, diou_nms_multi_cuda): per
//       class, greedy in descending score, ties by slot = candidate index, its output in
//       descending score, ties by slot -- what detect_cpu gets from nms_cpu / diou_nms_cpu. The
//       padding fails the engine's score filter; without one every image has exactly N selected
//       (no padding).
//     - soft: soft_nms_multi_cuda with n_valid (slots past it are never alive) and labels always
//       (zeros when class-agnostic, as detect_cpu), max_output = max_det, score_threshold =
//       min_score: its out_idx / decayed scores / counts are the kept slots in output order.
//     - matrix: matrix_nms_multi_cuda with n_valid: per image matrix_nms_cuda over all N slots
//       (the -inf padding ranks after every real slot, so no real slot's decay sees it), then the
//       real slots of its output, the first max_det (matrix_nms_multi_emit).
//  5. output slot (b, k) (detect_gpu_output): the k-th kept slot's box, score (the decayed one for
//     soft / matrix), class and anchor, or 0 / -1 padding past counts[b].
#pragma once
#include "common/host_device.h"  // <cstdint>, or its NVRTC stand-in (the CuPy backend)
#include "ops/box_iou/box_iou.h"
#include "ops/detect/detect.h"
#include "ops/nms/nms_bitmask.h"

namespace detkernels {

// Everything the per-element steps read; plain data (a kernel argument by value).
template <typename T> struct DetectGpuArgs {
  const T* boxes;       // [B, A, 4] in fmt, strides st.box_*
  const T* scores;      // [B, A, C] or [B, A] (C == 0), strides st.score_*
  const T* obj;         // [B, A] or nullptr
  const int64_t* idxs;  // [B, A] contiguous class ids (C == 0 only) or nullptr
  int64_t A, C, M;      // anchors, classes (0: [B, A] scores), candidates per image
  DetectStrides st;
  int fmt;
  int multi;    // multi-label (C > 0)
  int has_thr;  // score filter
  double thr;
};

// Candidates per image.
DK_HD int64_t detect_gpu_candidates(int64_t A, int64_t C, bool multi) {
  return multi && C > 0 ? A * C : A;
}

// Slots per image entering NMS: the top-k bound, or every candidate.
DK_HD int64_t detect_gpu_slots(int64_t M, int64_t top_k) {
  return top_k >= 0 && top_k < M ? top_k : M;
}

// 1. Candidate gq: score (times objectness), class, score-filter pass.
template <typename T>
DK_HD void detect_gpu_score(const DetectGpuArgs<T>& g, int64_t gq, T* score, int64_t* cls,
                            uint8_t* valid) {
  const int64_t b = gq / g.M, q = gq % g.M;
  const DetectStrides& st = g.st;
  const T* s = g.scores + b * st.score_image;
  int64_t a, c;
  if (g.C == 0) {
    a = q;
    c = g.idxs ? g.idxs[b * g.A + a] : 0;
  } else if (g.multi) {
    a = q / g.C;
    c = q % g.C;
  } else {
    a = q;
    c = -1;
  }
  const T o = g.obj ? g.obj[b * st.obj_image + a * st.obj_anchor] : T(1);
  const T* r = s + a * st.score_anchor;
  T v;
  if (c >= 0 || g.C == 0) {
    v = g.C == 0 ? r[0] : r[c * st.score_class];
    if (g.obj) v = v * o;  // one product in T
  } else {
    // Single label: the first NaN column, else the lowest column holding the maximum (a strict
    // `>` scan, -0 == +0), over the products.
    int64_t first_nan = -1, best_c = -1;
    T best = T(0);
    for (int64_t k = 0; k < g.C; ++k) {
      T x = r[k * st.score_class];
      if (g.obj) x = x * o;
      if (x != x) {
        if (first_nan < 0) first_nan = k;
      } else if (best_c < 0 || x > best) {
        best = x;
        best_c = k;
      }
    }
    c = first_nan >= 0 ? first_nan : best_c;
    v = r[c * st.score_class];
    if (g.obj) v = v * o;
  }
  score[gq] = v;
  cls[gq] = c;
  valid[gq] = nms_cand_valid(v, g.has_thr != 0, g.thr);
}

// 2. Sorted position p (order = the two sorts' permutation, nullptr = identity when k >= M).
DK_HD void detect_gpu_select(int64_t p, const int64_t* order, const uint8_t* valid, int64_t M,
                             int64_t k, int64_t* sel) {
  const int64_t gq = order ? order[p] : p;
  sel[gq] = valid[gq] && p % M < k ? 1 : 0;
}

// 3a. Padding slot s (every slot first; 3b overwrites the selected ones).
template <typename T>
DK_HD void detect_gpu_pad(int64_t s, T* cbox, T* cscore, int64_t* ccls, int64_t* canchor) {
  for (int d = 0; d < 4; ++d) cbox[4 * s + d] = T(0);
  cscore[s] = -nms_inf<T>();  // step 3 in the header
  ccls[s] = 0;
  canchor[s] = -1;
}

// 3b. Candidate gq -> its slot, if selected; pos = exclusive sum of sel in gq order.
template <typename T>
DK_HD void detect_gpu_compact(const DetectGpuArgs<T>& g, int64_t gq, int64_t N,
                              const int64_t* sel, const int64_t* pos, const T* score,
                              const int64_t* cls, T* cbox, T* cscore, int64_t* ccls,
                              int64_t* canchor) {
  if (!sel[gq]) return;
  const int64_t b = gq / g.M, q = gq % g.M;
  const int64_t s = b * N + (pos[gq] - pos[b * g.M]);
  const int64_t a = g.multi && g.C > 0 ? q / g.C : q;
  const T* bp = g.boxes + b * g.st.box_image + a * g.st.box_anchor;
  const T b4[4] = {bp[0], bp[g.st.box_coord], bp[2 * g.st.box_coord], bp[3 * g.st.box_coord]};
  box_corners(b4, g.fmt, cbox[4 * s], cbox[4 * s + 1], cbox[4 * s + 2], cbox[4 * s + 3]);
  cscore[s] = score[gq];
  ccls[s] = cls[gq];
  canchor[s] = a;
}

// 3c. Image b's number of real slots (selected candidates): the exclusive sum at its end.
DK_HD void detect_gpu_count(int64_t b, int64_t M, const int64_t* sel, const int64_t* pos,
                            int64_t* n_valid) {
  const int64_t last = (b + 1) * M - 1;
  n_valid[b] = pos[last] + sel[last] - pos[b * M];
}

// 5. Output slot (b, k) of K; out_idx holds NMS's kept slot (within image b) on entry and the
// anchor index on exit. dec: soft / matrix's decayed scores [B, K] (the output scores; may be
// out_scores itself: each element is read before it is written), or nullptr (iou, diou: the
// slot's score).
template <typename T>
DK_HD void detect_gpu_output(int64_t b, int64_t k, int64_t K, int64_t N, const int64_t* counts,
                             const T* cbox, const T* cscore, const int64_t* ccls,
                             const int64_t* canchor, const T* dec, T* out_boxes, T* out_scores,
                             int64_t* out_cls, int64_t* out_idx) {
  const int64_t o = b * K + k;
  const bool kept = k < counts[b];
  const int64_t s = kept ? b * N + out_idx[o] : 0;
  for (int d = 0; d < 4; ++d) out_boxes[4 * o + d] = kept ? cbox[4 * s + d] : T(0);
  out_scores[o] = kept ? (dec ? dec[o] : cscore[s]) : T(0);
  out_cls[o] = kept ? ccls[s] : -1;
  out_idx[o] = kept ? canchor[s] : -1;
}

#ifndef __CUDACC_RTC__  // host entry points: not for NVRTC (the CuPy backend)
/// @brief The GPU pipeline run sequentially on the CPU (tests only), arguments as detect_cpu;
/// each mode's NMS stage is its emulated CUDA form (nms_multi_emulate_cpu,
/// diou_nms_multi_emulate_cpu: tile_rows / mask_cap_bytes / scan_threads; soft_nms_multi_emulate_cpu:
/// scan_threads emulated threads per block, rounded down to a power of two;
/// matrix_nms_multi_emulate_cpu).
void detect_emulate_cpu(int dtype, const void* boxes, const void* scores, const void* objectness,
                        const int64_t* idxs, int64_t B, int64_t A, int64_t C,
                        const DetectStrides& st, int fmt, double iou_threshold, bool has_score_thr,
                        double score_thr, int64_t top_k, int64_t max_det, bool multi_label,
                        bool class_agnostic, const DetectNms& nms, void* out_boxes, void* out_scores, int64_t* out_cls,
                        int64_t* out_idx, int64_t* counts, int64_t tile_rows,
                        int64_t mask_cap_bytes, int scan_threads);

/// @brief Device workspace (bytes) of detect_cuda for these static shapes and NMS mode (the
/// mode's own workspace included).
int64_t detect_cuda_workspace_bytes(int dtype, int64_t B, int64_t A, int64_t C, bool multi_label,
                                    int64_t top_k, int nms_mode, int64_t mask_cap_bytes,
                                    int device);

/// @brief detect on the GPU, arguments as detect_cpu (every DetectNms mode), device pointers,
/// enqueued on `stream` with no host synchronisation; `workspace` holds
/// detect_cuda_workspace_bytes bytes (for the same nms.mode).
void detect_cuda(int dtype, const void* boxes, const void* scores, const void* objectness,
                 const int64_t* idxs, int64_t B, int64_t A, int64_t C, const DetectStrides& st,
                 int fmt, double iou_threshold, bool has_score_thr, double score_thr,
                 int64_t top_k, int64_t max_det, bool multi_label, bool class_agnostic,
                 const DetectNms& nms, void* out_boxes, void* out_scores, int64_t* out_cls, int64_t* out_idx,
                 int64_t* counts, void* workspace, int64_t workspace_bytes,
                 int64_t mask_cap_bytes, int device, void* stream);
#endif  // __CUDACC_RTC__

}  // namespace detkernels
