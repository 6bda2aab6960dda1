// The CUDA kernels of Matrix NMS: thin loops over matrix_nms_gpu.h's steps (S1-S6 there), which
// matrix_nms_emulate.cpp runs on the CPU for the tests; the sorts and the max-scan between them
// are CUB's (matrix_nms_cuda.cu). No CUB and no std headers here. Included by one translation
// unit (matrix_nms_cuda.cu).
#pragma once
#include "common/grid_stride.cuh"
#include "ops/nms/matrix_nms_gpu.h"

namespace detkernels {

template <typename T>
__global__ void matrix_nms_score_key_kernel(const T* scores, uint64_t* keys, int64_t* vals,
                                            int64_t n) {
  DK_GRID_STRIDE(q, n) {
    keys[q] = nms_score_key(scores[q]);
    vals[q] = q;
  }
}

__global__ void matrix_nms_class_key_kernel(const int64_t* order, const int64_t* labels,
                                            uint64_t* keys, int64_t* vals, int64_t m) {
  DK_GRID_STRIDE(r, m) {
    keys[r] = nms_class_key(labels[order[r]]);
    vals[r] = r;
  }
}

template <typename T>
__global__ void matrix_nms_gather_kernel(const int64_t* pos_rank, const int64_t* order,
                                         const T* boxes, const int64_t* labels, T* x1, T* y1,
                                         T* x2, T* y2, T* area, int64_t* head, int64_t m) {
  DK_GRID_STRIDE(p, m) matrix_nms_gather(p, pos_rank, order, boxes, labels, x1, y1, x2, y2, area, head);
}

// S4 (decay == 0) or S5 (decay == 1): block = kMatrixNmsThreads consecutive positions; the rows
// [seg[j0], j_last) they need are staged tile by tile in shared memory (seg is non-decreasing, so
// seg[j0] is the block's lowest), each thread folding its own column in ascending row order.
template <typename T>
__global__ void __launch_bounds__(kMatrixNmsThreads)
    matrix_nms_column_kernel(int decay, const T* x1, const T* y1, const T* x2, const T* y2,
                             const T* area, const int64_t* seg, T* den, int64_t m, int kernel,
                             double sigma, const int64_t* pos_rank, const int64_t* order,
                             const T* scores, int has_thr, double thr, T* dec_by_q,
                             uint8_t* kept_by_q) {
  __shared__ T sx1[kMatrixNmsThreads], sy1[kMatrixNmsThreads], sx2[kMatrixNmsThreads],
      sy2[kMatrixNmsThreads], sa[kMatrixNmsThreads], sden[kMatrixNmsThreads];
  const T neg = static_cast<T>(-sigma);
  for (int64_t j0 = static_cast<int64_t>(blockIdx.x) * kMatrixNmsThreads; j0 < m;
       j0 += static_cast<int64_t>(gridDim.x) * kMatrixNmsThreads) {
    const int64_t j = j0 + threadIdx.x;
    const int64_t jend = m < j0 + kMatrixNmsThreads ? m : j0 + kMatrixNmsThreads;
    const bool mine = j < m;
    T jx1 = T(0), jy1 = T(0), jx2 = T(0), jy2 = T(0), ja = T(0);
    int64_t sj = 0;
    if (mine) {
      jx1 = x1[j]; jy1 = y1[j]; jx2 = x2[j]; jy2 = y2[j]; ja = area[j]; sj = seg[j];
    }
    T acc = decay ? T(1) : T(0);
    for (int64_t i0 = seg[j0]; i0 < jend - 1; i0 += kMatrixNmsThreads) {
      __syncthreads();  // the previous tile is no longer read
      const int64_t i = i0 + threadIdx.x;
      if (i < jend) {
        sx1[threadIdx.x] = x1[i]; sy1[threadIdx.x] = y1[i]; sx2[threadIdx.x] = x2[i];
        sy2[threadIdx.x] = y2[i]; sa[threadIdx.x] = area[i];
        if (decay) sden[threadIdx.x] = den[i];
      }
      __syncthreads();
      if (!mine) continue;
      int64_t lo, hi;
      matrix_nms_tile_rows(j, sj, i0, kMatrixNmsThreads, &lo, &hi);
      acc = decay ? matrix_nms_decay_tile(acc, jx1, jy1, jx2, jy2, ja, sx1, sy1, sx2, sy2, sa, sden,
                                          lo, hi, kernel, neg)
                  : matrix_nms_comp_tile(acc, jx1, jy1, jx2, jy2, ja, sx1, sy1, sx2, sy2, sa, lo, hi);
    }
    __syncthreads();  // before the next block of positions restages the tiles
    if (!mine) continue;
    if (decay)
      matrix_nms_finish(j, acc, pos_rank, order, scores, has_thr, thr, dec_by_q, kept_by_q);
    else
      den[j] = matrix_nms_term(acc, kernel, neg);
  }
}

template <typename T>
__global__ void matrix_nms_final_key_kernel(const uint8_t* kept_by_q, const T* dec_by_q,
                                            uint64_t* keys, int64_t* vals, int64_t n) {
  DK_GRID_STRIDE(q, n) {
    keys[q] = nms_final_key<T>(kept_by_q[q] != 0, dec_by_q[q]);
    vals[q] = q;
  }
}

// One thread: the number kept (capped at max_output), read by the host once.
__global__ void matrix_nms_count_kernel(const int64_t* final_order, const uint8_t* kept_by_q,
                                        int64_t n, int64_t max_output, int64_t* count) {
  if (blockIdx.x == 0 && threadIdx.x == 0)
    *count = nms_count_kept(final_order, kept_by_q, 0, n, max_output);
}

template <typename T>
__global__ void matrix_nms_output_kernel(const int64_t* final_order, const T* dec_by_q,
                                         const int64_t* count, int64_t* keep, T* out_s,
                                         int64_t n) {
  DK_GRID_STRIDE(k, n) {
    if (k < *count) {
      const int64_t q = final_order[k];
      keep[k] = q;
      out_s[k] = dec_by_q[q];
    }
  }
}

template <typename T>
__global__ void matrix_nms_multi_emit_kernel(int64_t B, int64_t N, int64_t K,
                                             const int64_t* n_valid, const int64_t* keep,
                                             const T* dec, const int64_t* cnt, int64_t* out_idx,
                                             T* out_s, int64_t* counts) {
  DK_GRID_STRIDE(b, B) matrix_nms_multi_emit(b, N, K, n_valid, keep, dec, cnt, out_idx, out_s, counts);
}

}  // namespace detkernels
