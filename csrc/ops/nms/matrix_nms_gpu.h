// Matrix NMS on the GPU (issue 13): the steps of matrix_nms_kernels.cuh as DK_HD functions, so
// that matrix_nms_emulate.cpp runs the same code on the CPU for the tests. Reference:
// detkernels/reference/matrix_nms.py; the weight terms are matrix_nms.h's matrix_nms_term, the
// IoU nms.h's nms_iou (higher-ranked box first) -- one copy each.
//
//  S1. sort the candidates by nms_score_key (descending, NaN first, -0 == +0), stably, from index
//      order: rank r holds order[r], the reference's score_order; keep the first m = pre_top_k.
//  S2. stable sort of the ranks by nms_class_key(label): position p holds rank pos_rank[p], the
//      classes in ascending order, ranks ascending within one (matrix_nms_cpu.cpp's segments).
//  S3. gather the boxes by position (matrix_nms_gather); seg[p] = the first position of p's class
//      (an inclusive max-scan of matrix_nms_head).
//  S4. comp: one thread per position j; c = 0, then for i = seg[j] .. j-1 in ascending order
//      (rank order within the class) c = d if d > c (NaN skipped); den[j] = term(c).
//  S5. decay: one thread per j; mn = 1, then for i = seg[j] .. j-1 in ascending order
//      w = term(iou(i, j)) / den[i], mn = w if w < mn (NaN skipped); decayed = score * mn.
//      Each thread folds its own column sequentially in the reference's order, so the max and min
//      are bit for bit the reference's (their +-0 ties included) with no cross-thread reduction.
//      The rows i are staged in shared memory one tile of kMatrixNmsThreads boxes at a time: no
//      N x N matrix (nor any pair data) exists, only the tile.
//  S6. candidate q is kept iff it is in the top m and (double)decayed >= score_threshold (when
//      given); a stable sort of nms_final_key (kept by decayed score, NaN first, ties by index;
//      the others after) from index order gives the output order; count by nms_count_kept.
// Work: O(sum over classes of m_c^2) IoUs, twice, spread over m threads; memory O(n).
#pragma once
#include "common/host_device.h"
#include "ops/nms/matrix_nms.h"
#include "ops/nms/nms.h"
#include "ops/nms/nms_bitmask.h"

namespace detkernels {

constexpr int kMatrixNmsThreads = 256;  // block size of the S4 / S5 kernels = rows per tile

/// S3, position p (< m): its box (rank pos_rank[p], candidate order[rank]) and head flag (p if p
/// starts a class, else 0; seg is the running max of these).
template <typename T>
DK_HD void matrix_nms_gather(int64_t p, const int64_t* pos_rank, const int64_t* order,
                             const T* boxes, const int64_t* labels, T* x1, T* y1, T* x2, T* y2,
                             T* area, int64_t* head) {
  const int64_t q = order[pos_rank[p]];
  const T* b = boxes + 4 * q;
  const T bx1 = b[0], by1 = b[1], bx2 = b[2], by2 = b[3];
  x1[p] = bx1; y1[p] = by1; x2[p] = bx2; y2[p] = by2;
  area[p] = nms_area(bx1, by1, bx2, by2);
  head[p] = (p == 0 || labels[order[pos_rank[p - 1]]] != labels[q]) ? p : 0;
}

/// S4 over one tile: rows i in [lo, hi) of the tile arrays (higher-ranked boxes of j's class),
/// folded into j's running compensation c in ascending i.
template <typename T>
DK_HD T matrix_nms_comp_tile(T c, T jx1, T jy1, T jx2, T jy2, T ja, const T* tx1, const T* ty1,
                             const T* tx2, const T* ty2, const T* ta, int64_t lo, int64_t hi) {
  for (int64_t i = lo; i < hi; ++i) {
    const T d = nms_iou(tx1[i], ty1[i], tx2[i], ty2[i], ta[i], jx1, jy1, jx2, jy2, ja);
    if (d > c) c = d;
  }
  return c;
}

/// S5 over one tile: j's running min of num(iou(i, j)) / den[i], ascending i.
template <typename T>
DK_HD T matrix_nms_decay_tile(T mn, T jx1, T jy1, T jx2, T jy2, T ja, const T* tx1, const T* ty1,
                              const T* tx2, const T* ty2, const T* ta, const T* tden, int64_t lo,
                              int64_t hi, int kernel, T neg_sigma) {
  for (int64_t i = lo; i < hi; ++i) {
    const T d = nms_iou(tx1[i], ty1[i], tx2[i], ty2[i], ta[i], jx1, jy1, jx2, jy2, ja);
    const T w = matrix_nms_term(d, kernel, neg_sigma) / tden[i];
    if (w < mn) mn = w;
  }
  return mn;
}

/// The rows of tile [i0, i0 + tile) that position j (class start sj) folds: [lo, hi) relative to
/// i0, empty when none.
DK_HD void matrix_nms_tile_rows(int64_t j, int64_t sj, int64_t i0, int64_t tile, int64_t* lo,
                                int64_t* hi) {
  const int64_t a = sj > i0 ? sj : i0;
  const int64_t z = j < i0 + tile ? j : i0 + tile;
  *lo = a - i0;
  *hi = z > a ? z - i0 : a - i0;
}

/// S5's end, position j with decay mn: the decayed score and keep flag by candidate.
template <typename T>
DK_HD void matrix_nms_finish(int64_t j, T mn, const int64_t* pos_rank, const int64_t* order,
                             const T* scores, int has_thr, double thr, T* dec_by_q,
                             uint8_t* kept_by_q) {
  const int64_t q = order[pos_rank[j]];
  const T v = scores[q] * mn;
  dec_by_q[q] = v;
  kept_by_q[q] = (!has_thr || static_cast<double>(v) >= thr) ? 1 : 0;
}

/// Multi-image Matrix NMS (matrix_nms_multi_cuda), image b (one thread): image b's single-image
/// result (keep / dec at b * N, cnt[b] entries, in output order) filtered to its real boxes
/// (index < n_valid[b]; all when n_valid is nullptr), the first K of them, fill out_idx / out_s
/// [b, :counts[b]]; slots past counts[b] are -1 / 0. Sequential over the result: the entries are
/// already in output order, so the filter keeps it.
template <typename T>
DK_HD void matrix_nms_multi_emit(int64_t b, int64_t N, int64_t K, const int64_t* n_valid,
                                 const int64_t* keep, const T* dec, const int64_t* cnt,
                                 int64_t* out_idx, T* out_s, int64_t* counts) {
  const int64_t nb = n_valid ? n_valid[b] : N;
  int64_t c = 0;
  for (int64_t k = 0; k < cnt[b] && c < K; ++k) {
    const int64_t q = keep[b * N + k];
    if (q >= nb) continue;  // a padding slot
    out_idx[b * K + c] = q;
    out_s[b * K + c] = dec[b * N + k];
    ++c;
  }
  counts[b] = c;
  for (; c < K; ++c) {
    out_idx[b * K + c] = -1;
    out_s[b * K + c] = T(0);
  }
}

#ifndef __CUDACC_RTC__
/// @brief The CUDA algorithm (S1-S6) on the CPU with the same step functions; sorts are stable
/// sorts by the same keys and bit counts. Arguments as matrix_nms_cpu. Tests only.
int64_t matrix_nms_emulate_cpu(int dtype, const void* boxes, const void* scores,
                               const int64_t* labels, int64_t n, int kernel, double sigma,
                               bool has_score_thr, double score_thr, int64_t max_output,
                               int64_t pre_top_k, int64_t* keep, void* out_scores);

/// @brief matrix_nms_multi_cuda's algorithm on the CPU: matrix_nms_emulate_cpu per image, then
/// matrix_nms_multi_emit. Arguments as matrix_nms_multi_cuda's. Tests only.
void matrix_nms_multi_emulate_cpu(int dtype, const void* boxes, const void* scores,
                                  const int64_t* labels, int64_t B, int64_t N, int kernel,
                                  double sigma, bool has_score_thr, double score_thr,
                                  int64_t max_output, int64_t pre_top_k, int64_t* out_idx,
                                  void* out_scores, int64_t* counts, const int64_t* n_valid);

#ifdef DETKERNELS_WITH_CUDA
/// @brief Workspace bytes of matrix_nms_cuda for n boxes.
int64_t matrix_nms_cuda_workspace_bytes(int dtype, int64_t n, int device);
/// @brief matrix_nms_cpu's contract on the GPU (device pointers, `stream`). keep / out_scores
/// [n]: the first *count entries are the result; count is a device int64 (no host sync here).
void matrix_nms_cuda(int dtype, const void* boxes, const void* scores, const int64_t* labels,
                     int64_t n, int kernel, double sigma, bool has_score_thr, double score_thr,
                     int64_t max_output, int64_t pre_top_k, int64_t* keep, void* out_scores,
                     int64_t* count, void* workspace, int64_t workspace_bytes, int device,
                     void* stream);

/// @brief Workspace bytes of matrix_nms_multi_cuda for B images of N boxes.
int64_t matrix_nms_multi_cuda_workspace_bytes(int dtype, int64_t B, int64_t N, int device);
/// @brief multi_image_matrix_nms (reference/matrix_nms.py) on the GPU: boxes [B, N, 4], scores
/// and labels [B, N] (contiguous, device) -> out_idx [B, K] (-1 padded), out_scores [B, K]
/// decayed (0 padded), counts [B], K = max_output. Per image matrix_nms_cuda on its N boxes
/// (launches sized from N alone: B x its kernels, one workspace slice reused in stream order),
/// then one matrix_nms_multi_emit launch; no host synchronisation. n_valid: int64 [B] on the
/// device, image b's boxes being its first n_valid[b] and the others ignored -- which needs
/// their scores to rank below every real one of the image (detect's -inf padding slots, after
/// the real ones: then no real box's decay reads them) -- or nullptr (all N).
void matrix_nms_multi_cuda(int dtype, const void* boxes, const void* scores,
                           const int64_t* labels, int64_t B, int64_t N, int kernel, double sigma,
                           bool has_score_thr, double score_thr, int64_t max_output,
                           int64_t pre_top_k, int64_t* out_idx, void* out_scores, int64_t* counts,
                           void* workspace, int64_t workspace_bytes, int device, void* stream,
                           const int64_t* n_valid = nullptr);
#endif
#endif

}  // namespace detkernels
