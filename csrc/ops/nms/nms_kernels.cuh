// The CUDA kernels of multi-image NMS, shared by the nvcc build (nms_cuda.cu launches every step,
// with CUB sorts and a CUB max-scan between them) and the CuPy backend (NVRTC compiles this header
// from detkernels/backends/cupy/kernels.cu and launches nms_gather_kernel, nms_mask_kernel and
// nms_scan_kernel; CuPy's stable sorts make the plan): one copy of the GPU code. Each kernel is a
// thin loop over a step of nms_bitmask.h, which nms_emulate.cpp runs sequentially on the CPU for
// the tests. Kernel arguments are scalars (int for flags: CuPy passes no bool) and pointers; no CUB
// and no std headers here.
//
// Included by exactly one translation unit of each program (nms_cuda.cu; the NVRTC source), so the
// non-template kernels are defined once.
#pragma once
#include "common/grid_stride.cuh"
#include "ops/nms/nms_bitmask.h"

namespace detkernels {

constexpr int kNmsScanThreads = 256;  // block size of nms_scan_kernel (launchers and CuPy)
static_assert(kNmsScanThreads >= kNmsWordBits, "nms_scan_kernel stages one row block per barrier");

template <typename T>
__global__ void nms_score_key_kernel(const T* scores, uint64_t* keys, int64_t* vals,
                                     int64_t total) {
  DK_GRID_STRIDE(q, total) {
    keys[q] = nms_score_key(scores[q]);
    vals[q] = q;
  }
}

__global__ void nms_class_key_kernel(const int64_t* order, uint64_t* keys, int64_t total, int64_t M,
                                     int64_t C, const int64_t* classes) {
  DK_GRID_STRIDE(p, total) keys[p] = nms_class_key(nms_cand_class(order[p], M, C, classes));
}

template <typename T>
__global__ void nms_image_key_kernel(const int64_t* order, const T* scores, uint64_t* keys,
                                     int64_t total, int64_t M, int has_sthr, double sthr) {
  DK_GRID_STRIDE(p, total) {
    const int64_t q = order[p];
    keys[p] = nms_image_key(q, M, nms_cand_valid(scores[q], has_sthr != 0, sthr));
  }
}

// Boxes: the predicate's box kind (nms.h NmsAxisBoxes, the default; nms_rotated_gpu.h's
// NmsRotatedBoxes), which says how many values a box row has and what the five columns hold.
template <typename T, typename Boxes = NmsAxisBoxes<T>>
__global__ void nms_gather_kernel(const int64_t* order, const T* boxes, const T* scores, T* x1,
                                  T* y1, T* x2, T* y2, T* area, uint8_t* valid, int64_t total,
                                  int64_t M, int64_t N, int64_t Cc, int has_sthr, double sthr) {
  DK_GRID_STRIDE(p, total) {
    const int64_t q = order[p];
    Boxes::columns(boxes + Boxes::kDim * nms_cand_box(q, M, N, Cc), x1[p], y1[p], x2[p], y2[p],
                   area[p]);
    valid[p] = nms_cand_valid(scores[q], has_sthr != 0, sthr);
  }
}

__global__ void nms_head_kernel(const int64_t* order, int64_t M, int64_t C, const int64_t* classes,
                                const uint8_t* valid, int64_t* head, int64_t total) {
  DK_GRID_STRIDE(p, total) head[p] = nms_head(p, order, M, C, classes, valid);
}

// blockIdx.y: row block of the tile; blockIdx.x strides over column blocks cb >= rb until the
// first dead one. One thread per row; the 64 column boxes are staged in shared memory. Generic
// over the suppression predicate (nms_bitmask.h): nms_mask_kernel below (IoU) and
// diou_nms_kernels.cuh's diou_nms_mask_kernel are thin wrappers, since a launch (and CuPy) passes
// scalars, not the predicate.
template <typename T, typename Pred>
__device__ void nms_mask_tile(const T* x1, const T* y1, const T* x2, const T* y2, const T* area,
                              const int64_t* seg, uint64_t* mask, int64_t total, int64_t ncb,
                              int64_t W, int64_t row0, const Pred& pred) {
  __shared__ T sx1[kNmsWordBits], sy1[kNmsWordBits], sx2[kNmsWordBits], sy2[kNmsWordBits],
      sa[kNmsWordBits];
  __shared__ int64_t sseg[kNmsWordBits];
  const int64_t rb = row0 / kNmsWordBits + blockIdx.y;
  if (rb >= ncb) return;
  const int t = threadIdx.x;
  const int64_t i = rb * kNmsWordBits + t;
  const bool row_ok = i < total;
  T ax1 = T(0), ay1 = T(0), ax2 = T(0), ay2 = T(0), aa = T(0);
  if (row_ok) {
    ax1 = x1[i]; ay1 = y1[i]; ax2 = x2[i]; ay2 = y2[i]; aa = area[i];
  }
  // cb - rb < W never binds (every live word is within W of the row's block, nms_mask_width);
  // it bounds the store even so.
  for (int64_t cb = rb + blockIdx.x; cb < ncb && cb - rb < W; cb += gridDim.x) {
    if (!nms_block_live(seg[cb * kNmsWordBits], rb, total)) break;  // uniform over the block
    const int64_t c0 = cb * kNmsWordBits;
    const int nc = total - c0 < kNmsWordBits ? static_cast<int>(total - c0) : kNmsWordBits;
    __syncthreads();  // the previous column block is no longer read
    if (t < nc) {
      sx1[t] = x1[c0 + t]; sy1[t] = y1[c0 + t]; sx2[t] = x2[c0 + t]; sy2[t] = y2[c0 + t];
      sa[t] = area[c0 + t]; sseg[t] = seg[c0 + t];
    }
    __syncthreads();
    if (row_ok)
      mask[(i - row0) * W + (cb - rb)] =
          nms_mask_word(i, ax1, ay1, ax2, ay2, aa, sx1, sy1, sx2, sy2, sa, sseg, c0, nc, pred);
  }
}

// Plain NMS: IoU > thr (thr = nms_threshold<T>(iou_threshold)).
template <typename T>
__global__ void __launch_bounds__(kNmsWordBits)
    nms_mask_kernel(const T* x1, const T* y1, const T* x2, const T* y2, const T* area,
                    const int64_t* seg, uint64_t* mask, int64_t total, int64_t ncb, int64_t W,
                    int64_t row0, T thr) {
  nms_mask_tile(x1, y1, x2, y2, area, seg, mask, total, ncb, W, row0, NmsIouSuppress<T>{thr});
}

// Block b scans image b's rows of the tile [row0, row0 + R) row block by row block
// (nms_scan_rowblock; images are independent, see nms_bitmask.h). Each row block's diagonal words
// and validity (rows outside the image: invalid) are staged in shared memory first; a barrier
// closes each row block.
// fast: Fast-NMS's scan (nms_scan_rowblock); nms_scan_kernel and nms_fast_scan_kernel below.
__device__ void nms_scan_tile(int64_t M, int64_t R, int64_t total, int64_t row0,
                              const uint64_t* mask, int64_t W, int64_t ncb, uint64_t* removed,
                              const int64_t* seg, const uint8_t* valid, uint8_t* keep, bool fast) {
  __shared__ uint64_t s_diag[kNmsWordBits];
  __shared__ uint8_t s_valid[kNmsWordBits];
  const int t = threadIdx.x;
  const int64_t b = blockIdx.x;
  const int64_t lo = std_max(row0, b * M), hi = std_min(std_min(total, row0 + R), (b + 1) * M);
  for (int64_t rb = lo / kNmsWordBits; lo < hi && rb * kNmsWordBits < hi; ++rb) {
    const int64_t i = rb * kNmsWordBits + t;
    if (t < kNmsWordBits) {
      const bool in = i >= lo && i < hi;
      s_diag[t] = in ? mask[(i - row0) * W] : 0;
      s_valid[t] = in ? valid[i] : 0;
    }
    __syncthreads();
    nms_scan_rowblock(rb, t, blockDim.x, total, row0, mask, W, ncb, s_diag, 1, s_valid, removed,
                      seg, keep, fast);
    __syncthreads();
  }
}

__global__ void __launch_bounds__(kNmsScanThreads)
    nms_scan_kernel(int64_t M, int64_t R, int64_t total, int64_t row0, const uint64_t* mask,
                    int64_t W, int64_t ncb, uint64_t* removed, const int64_t* seg,
                    const uint8_t* valid, uint8_t* keep) {
  nms_scan_tile(M, R, total, row0, mask, W, ncb, removed, seg, valid, keep, false);
}

// Fast-NMS (issue 17: ultralytics' OBB NMS on ProbIoU, nms_probiou(fast=True)).
__global__ void __launch_bounds__(kNmsScanThreads)
    nms_fast_scan_kernel(int64_t M, int64_t R, int64_t total, int64_t row0, const uint64_t* mask,
                         int64_t W, int64_t ncb, uint64_t* removed, const int64_t* seg,
                         const uint8_t* valid, uint8_t* keep) {
  nms_scan_tile(M, R, total, row0, mask, W, ncb, removed, seg, valid, keep, true);
}

__global__ void nms_scatter_kernel(const int64_t* order, const uint8_t* keep, uint8_t* kept_by_cand,
                                   int64_t total) {
  DK_GRID_STRIDE(p, total) kept_by_cand[order[p]] = keep[p];
}

template <typename T>
__global__ void nms_final_key_kernel(const uint8_t* kept_by_cand, const T* scores, uint64_t* keys,
                                     int64_t* vals, int64_t total) {
  DK_GRID_STRIDE(q, total) {
    keys[q] = nms_final_key<T>(kept_by_cand[q] != 0, scores[q]);
    vals[q] = q;
  }
}

__global__ void nms_final_image_key_kernel(const int64_t* order, uint64_t* keys, int64_t total,
                                           int64_t M) {
  DK_GRID_STRIDE(p, total) keys[p] = nms_image_key(order[p], M, true);
}

__global__ void nms_count_kernel(const int64_t* order, const uint8_t* kept_by_cand, int64_t* counts,
                                 int64_t B, int64_t M, int64_t K) {
  DK_GRID_STRIDE(b, B) counts[b] = nms_count_kept(order, kept_by_cand, b * M, (b + 1) * M, K);
}

__global__ void nms_output_kernel(int64_t B, int64_t K, int64_t M, int64_t C, const int64_t* order,
                                  const int64_t* counts, int64_t* out_idx, int64_t* out_cls) {
  DK_GRID_STRIDE(s, B * K) nms_gather_slot(s / K, s % K, K, M, C, order, counts, out_idx, out_cls);
}

}  // namespace detkernels
