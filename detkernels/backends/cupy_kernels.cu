// Kernels of the CuPy backend, compiled at run time by NVRTC (detkernels/backends/cupy.py) with
// the native build's float flags (--fmad=false, IEEE division and sqrt, no FTZ). The maths is the
// shared headers', not a copy: box_iou_kernel is the very kernel box_iou_cuda.cu launches, and the
// NMS kernels below call nms.h's predicate. Instantiated by name (RawModule name_expressions).
//
// NMS: boxes visited in (class, score rank, index) order computed by the caller with CuPy sorts.
// A bitmask kernel marks, for box i and each 64-wide column block, which later boxes of the same
// class i suppresses (IoU > thr, thr already rounded down to T: nms_threshold); one block then
// scans the boxes in order and keeps a box iff no kept box has marked it.
//
// Multi-image NMS (multi_mask, multi_scan): nms_bitmask.h's algorithm, the one nms_cuda.cu
// launches, over a plan made with CuPy sorts (detkernels/backends/cupy.py): sorted positions in
// (image, valid, class, score, q) order, gathered into columns by `gather`, seg_start per position;
// the mask is built in row tiles of W words per row and scanned by one block per image.
#include "ops/box_iou/box_iou_kernel.cuh"
#include "ops/nms/nms.h"
#include "ops/nms/nms_bitmask.h"

namespace detkernels {
namespace cupy_nms {

constexpr int kWord = 64;

// cols[0..4][p] = x1, y1, x2, y2, area of box order[p]; scls[p] its class (0 without classes).
template <typename T>
__global__ void gather(const T* __restrict__ boxes, const int64_t* __restrict__ order,
                       const int64_t* __restrict__ cls, int has_cls, int64_t n, T* __restrict__ cols,
                       int64_t* __restrict__ scls) {
  const int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (p >= n) return;
  const T* q = boxes + 4 * order[p];
  cols[p] = q[0];
  cols[n + p] = q[1];
  cols[2 * n + p] = q[2];
  cols[3 * n + p] = q[3];
  cols[4 * n + p] = nms_area(q[0], q[1], q[2], q[3]);
  scls[p] = has_cls ? cls[order[p]] : 0;
}

// Block (cb, rb) of kWord threads: bit c of mask[i * ncb + cb], i = rb * 64 + t, is set iff box i
// suppresses box j = cb * 64 + c, j > i, same class. Blocks below the diagonal exit.
template <typename T>
__global__ void mask(const T* __restrict__ cols, const int64_t* __restrict__ scls, int64_t n,
                     int64_t ncb, T thr, unsigned long long* __restrict__ out) {
  const int64_t rb = blockIdx.y, cb = blockIdx.x;
  if (cb < rb) return;
  __shared__ T sh[5][kWord];
  __shared__ int64_t shc[kWord];
  const int t = threadIdx.x;
  const int64_t j0 = cb * kWord;
  if (j0 + t < n) {
    for (int k = 0; k < 5; ++k) sh[k][t] = cols[k * n + j0 + t];
    shc[t] = scls[j0 + t];
  }
  __syncthreads();
  const int64_t i = rb * kWord + t;
  if (i >= n) return;
  const T ax1 = cols[i], ay1 = cols[n + i], ax2 = cols[2 * n + i], ay2 = cols[3 * n + i];
  const T aa = cols[4 * n + i];
  const int64_t ci = scls[i];
  const int stop = n - j0 < kWord ? static_cast<int>(n - j0) : kWord;
  unsigned long long bits = 0;
  for (int c = cb == rb ? t + 1 : 0; c < stop; ++c)
    if (shc[c] == ci &&
        nms_suppresses(ax1, ay1, ax2, ay2, aa, sh[0][c], sh[1][c], sh[2][c], sh[3][c], sh[4][c], thr))
      bits |= 1ull << c;
  out[i * ncb + cb] = bits;
}

// One block: keep[i] = 1 iff bit i of `removed` (ncb words, zero-initialised) is clear when box i
// is reached; a kept box ORs its mask row into `removed`.
__global__ void scan(const unsigned long long* __restrict__ mask, int64_t n, int64_t ncb,
                     unsigned long long* __restrict__ removed, uint8_t* __restrict__ keep) {
  for (int64_t i = 0; i < n; ++i) {
    const int64_t w = i / kWord;
    const bool alive = ((removed[w] >> (i % kWord)) & 1ull) == 0;
    __syncthreads();  // every thread has read word w before any thread writes it
    if (alive) {
      if (threadIdx.x == 0) keep[i] = 1;
      for (int64_t x = w + threadIdx.x; x < ncb; x += blockDim.x) removed[x] |= mask[i * ncb + x];
    }
    __syncthreads();  // the ORs are visible before the next box is read
  }
}

// One row tile of the multi-image mask (nms_cuda.cu's mask_kernel): blockIdx.y is a row block of
// the tile, blockIdx.x strides over column blocks cb >= rb until the first dead one
// (nms_block_live); word cb of row i is stored at mask[(i - row0) * W + cb - rb]. `cols` holds
// x1, y1, x2, y2, area of the sorted positions (gather), `n` apart.
template <typename T>
__global__ void __launch_bounds__(kWord)
    multi_mask(const T* __restrict__ cols, const int64_t* __restrict__ seg,
               unsigned long long* __restrict__ mask, int64_t n, int64_t ncb, int64_t W,
               int64_t row0, T thr) {
  __shared__ T sx1[kWord], sy1[kWord], sx2[kWord], sy2[kWord], sa[kWord];
  __shared__ int64_t sseg[kWord];
  const int64_t rb = row0 / kWord + blockIdx.y;
  if (rb >= ncb) return;
  const int t = threadIdx.x;
  const int64_t i = rb * kWord + t;
  const bool row_ok = i < n;
  T ax1 = T(0), ay1 = T(0), ax2 = T(0), ay2 = T(0), aa = T(0);
  if (row_ok) {
    ax1 = cols[i]; ay1 = cols[n + i]; ax2 = cols[2 * n + i]; ay2 = cols[3 * n + i];
    aa = cols[4 * n + i];
  }
  for (int64_t cb = rb + blockIdx.x; cb < ncb && cb - rb < W; cb += gridDim.x) {
    if (!nms_block_live(seg[cb * kWord], rb, n)) break;  // uniform over the block
    const int64_t c0 = cb * kWord;
    const int nc = n - c0 < kWord ? static_cast<int>(n - c0) : kWord;
    __syncthreads();  // the previous column block is no longer read
    if (t < nc) {
      sx1[t] = cols[c0 + t]; sy1[t] = cols[n + c0 + t]; sx2[t] = cols[2 * n + c0 + t];
      sy2[t] = cols[3 * n + c0 + t]; sa[t] = cols[4 * n + c0 + t]; sseg[t] = seg[c0 + t];
    }
    __syncthreads();
    if (row_ok)
      mask[(i - row0) * W + (cb - rb)] =
          nms_mask_word(i, ax1, ay1, ax2, ay2, aa, sx1, sy1, sx2, sy2, sa, sseg, c0, nc, thr);
  }
}

// Block b scans image b's rows [b * M, (b + 1) * M) of the tile [row0, row0 + R) row block by row
// block (nms_scan_rowblock; images are independent, see nms_bitmask.h). Each row block's
// diagonal words and validity (rows outside the image: invalid) are staged in shared memory.
// blockDim.x must be >= 64.
__global__ void multi_scan(int64_t M, int64_t R, int64_t n, int64_t row0,
                           const unsigned long long* __restrict__ mask, int64_t W, int64_t ncb,
                           unsigned long long* __restrict__ removed, const int64_t* __restrict__ seg,
                           const uint8_t* __restrict__ valid, uint8_t* __restrict__ keep) {
  __shared__ uint64_t s_diag[kWord];
  __shared__ uint8_t s_valid[kWord];
  const int t = threadIdx.x;
  const int64_t b = blockIdx.x;
  const int64_t lo = row0 > b * M ? row0 : b * M;
  int64_t hi = row0 + R < n ? row0 + R : n;
  if ((b + 1) * M < hi) hi = (b + 1) * M;
  for (int64_t rb = lo / kWord; lo < hi && rb * kWord < hi; ++rb) {
    const int64_t i = rb * kWord + t;
    if (t < kWord) {
      const bool in = i >= lo && i < hi;
      s_diag[t] = in ? mask[(i - row0) * W] : 0;
      s_valid[t] = in ? valid[i] : 0;
    }
    __syncthreads();
    nms_scan_rowblock(rb, t, blockDim.x, n, row0, reinterpret_cast<const uint64_t*>(mask), W, ncb,
                      s_diag, 1, s_valid, reinterpret_cast<uint64_t*>(removed), seg, keep);
    __syncthreads();
  }
}

}  // namespace cupy_nms
}  // namespace detkernels

// RoI ops: the very kernels the nvcc build launches (roi_align_kernels.cuh, roi_pool_kernels.cuh
// and the generic deterministic backward scatter of roi_scatter_kernels.cuh); the sorts between
// the backward's steps are CuPy's (stable) argsort, the scan cupy.cumsum.
#include "ops/roi_align/roi_align_kernels.cuh"
#include "ops/roi_pool/roi_pool_kernels.cuh"
