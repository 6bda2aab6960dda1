// CUDA multi-image / per-class NMS: launches over nms_bitmask.h (the algorithm, step by step, is
// described there; nms_emulate.cpp runs the same steps on the CPU for the tests).
//
// Everything is enqueued on the caller's stream, on the caller's device, in a workspace the caller
// allocated (nms_multi_cuda_workspace_bytes): no host synchronisation, no allocation, no global
// state, so a call can be captured in a CUDA graph. The bitmask is built in row tiles of at most
// mask_cap_bytes (never less than 64 rows), so 10^6 boxes need ~8 MB of mask per tile instead of
// the 125 GB a full N x N/64 mask would take.
#include <cub/cub.cuh>
#include <cuda/functional>

#include <algorithm>
#include <stdexcept>

#include "common/cuda_check.h"
#include "ops/nms/nms.h"
#include "ops/nms/nms_bitmask.h"

namespace detkernels {
namespace {

constexpr int kThreads = 256;
constexpr int kScanThreads = 256;
static_assert(kScanThreads >= kNmsWordBits, "scan_kernel stages one row block per barrier");
constexpr int64_t kAlign = 256;

unsigned grid_1d(int64_t n) {
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(ceil_div<int64_t>(n, kThreads), 1 << 16)));
}

#define DK_GRID_STRIDE(i, n) \
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < (n); i += int64_t(gridDim.x) * blockDim.x)

template <typename T>
__global__ void score_key_kernel(const T* scores, uint64_t* keys, int64_t* vals, int64_t total) {
  DK_GRID_STRIDE(q, total) {
    keys[q] = nms_score_key(scores[q]);
    vals[q] = q;
  }
}

__global__ void class_key_kernel(const int64_t* order, uint64_t* keys, int64_t total, int64_t M,
                                 int64_t C, const int64_t* classes) {
  DK_GRID_STRIDE(p, total) keys[p] = nms_class_key(nms_cand_class(order[p], M, C, classes));
}

template <typename T>
__global__ void image_key_kernel(const int64_t* order, const T* scores, uint64_t* keys,
                                 int64_t total, int64_t M, bool has_sthr, double sthr) {
  DK_GRID_STRIDE(p, total) {
    const int64_t q = order[p];
    keys[p] = nms_image_key(q, M, nms_cand_valid(scores[q], has_sthr, sthr));
  }
}

template <typename T>
__global__ void gather_kernel(const int64_t* order, const T* boxes, const T* scores, T* x1, T* y1,
                              T* x2, T* y2, T* area, uint8_t* valid, int64_t total, int64_t M,
                              int64_t N, int64_t Cc, bool has_sthr, double sthr) {
  DK_GRID_STRIDE(p, total) {
    const int64_t q = order[p];
    const T* b = boxes + 4 * nms_cand_box(q, M, N, Cc);
    const T bx1 = b[0], by1 = b[1], bx2 = b[2], by2 = b[3];
    x1[p] = bx1; y1[p] = by1; x2[p] = bx2; y2[p] = by2;
    area[p] = nms_area(bx1, by1, bx2, by2);
    valid[p] = nms_cand_valid(scores[q], has_sthr, sthr);
  }
}

__global__ void head_kernel(const int64_t* order, int64_t M, int64_t C, const int64_t* classes,
                            const uint8_t* valid, int64_t* head, int64_t total) {
  DK_GRID_STRIDE(p, total) head[p] = nms_head(p, order, M, C, classes, valid);
}

// blockIdx.y: row block of the tile; blockIdx.x strides over column blocks cb >= rb until the
// first dead one. One thread per row; the 64 column boxes are staged in shared memory.
template <typename T>
__global__ void __launch_bounds__(kNmsWordBits)
    mask_kernel(const T* x1, const T* y1, const T* x2, const T* y2, const T* area,
                const int64_t* seg, uint64_t* mask, int64_t total, int64_t ncb, int64_t W,
                int64_t row0, T thr) {
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
  for (int64_t cb = rb + blockIdx.x; cb < ncb; cb += gridDim.x) {
    if (!nms_block_live(seg[cb * kNmsWordBits], rb, total)) break;  // uniform over the block
    const int64_t c0 = cb * kNmsWordBits;
    const int nc = static_cast<int>(min(int64_t(kNmsWordBits), total - c0));
    __syncthreads();  // the previous column block is no longer read
    if (t < nc) {
      sx1[t] = x1[c0 + t]; sy1[t] = y1[c0 + t]; sx2[t] = x2[c0 + t]; sy2[t] = y2[c0 + t];
      sa[t] = area[c0 + t]; sseg[t] = seg[c0 + t];
    }
    __syncthreads();
    if (row_ok)
      mask[(i - row0) * W + (cb - rb)] =
          nms_mask_word(i, ax1, ay1, ax2, ay2, aa, sx1, sy1, sx2, sy2, sa, sseg, c0, nc, thr);
  }
}

// Block b scans image b's rows of the tile [row0, row0 + R) row block by row block
// (nms_scan_rowblock; images are independent, see nms_bitmask.h). Each row block's diagonal words
// and validity (rows outside the image: invalid) are staged in shared memory first; a barrier
// closes each row block.
__global__ void __launch_bounds__(kScanThreads)
    scan_kernel(int64_t M, int64_t R, int64_t total, int64_t row0, const uint64_t* mask,
                int64_t W, int64_t ncb, uint64_t* removed, const int64_t* seg,
                const uint8_t* valid, uint8_t* keep) {
  __shared__ uint64_t s_diag[kNmsWordBits];
  __shared__ uint8_t s_valid[kNmsWordBits];
  const int t = threadIdx.x;
  const int64_t b = blockIdx.x;
  const int64_t lo = max(row0, b * M), hi = min(min(total, row0 + R), (b + 1) * M);
  for (int64_t rb = lo / kNmsWordBits; lo < hi && rb * kNmsWordBits < hi; ++rb) {
    const int64_t i = rb * kNmsWordBits + t;
    if (t < kNmsWordBits) {
      const bool in = i >= lo && i < hi;
      s_diag[t] = in ? mask[(i - row0) * W] : 0;
      s_valid[t] = in ? valid[i] : 0;
    }
    __syncthreads();
    nms_scan_rowblock(rb, t, blockDim.x, total, row0, mask, W, ncb, s_diag, 1, s_valid, removed,
                      seg, keep);
    __syncthreads();
  }
}

__global__ void scatter_kernel(const int64_t* order, const uint8_t* keep, uint8_t* kept_by_cand,
                               int64_t total) {
  DK_GRID_STRIDE(p, total) kept_by_cand[order[p]] = keep[p];
}

template <typename T>
__global__ void final_key_kernel(const uint8_t* kept_by_cand, const T* scores, uint64_t* keys,
                                 int64_t* vals, int64_t total) {
  DK_GRID_STRIDE(q, total) {
    keys[q] = nms_final_key<T>(kept_by_cand[q] != 0, scores[q]);
    vals[q] = q;
  }
}

__global__ void final_image_key_kernel(const int64_t* order, uint64_t* keys, int64_t total,
                                       int64_t M) {
  DK_GRID_STRIDE(p, total) keys[p] = nms_image_key(order[p], M, true);
}

__global__ void count_kernel(const int64_t* order, const uint8_t* kept_by_cand, int64_t* counts,
                             int64_t B, int64_t M, int64_t K) {
  DK_GRID_STRIDE(b, B) counts[b] = nms_count_kept(order, kept_by_cand, b * M, (b + 1) * M, K);
}

__global__ void output_kernel(int64_t B, int64_t K, int64_t M, int64_t C, const int64_t* order,
                              const int64_t* counts, int64_t* out_idx, int64_t* out_cls) {
  DK_GRID_STRIDE(s, B * K) nms_gather_slot(s / K, s % K, K, M, C, order, counts, out_idx, out_cls);
}

// ---- workspace --------------------------------------------------------------------------------

struct Layout {
  int64_t total = 0, ncb = 0, W = 0, R = 0, temp_bytes = 0;
  int64_t keys0, keys1, vals0, vals1, temp, cols, seg, valid, keep, kept, removed, mask, bytes;
};

int64_t col_stride(int64_t tsize, int64_t total) {
  return ceil_div<int64_t>(tsize * total, kAlign) * kAlign;
}

int64_t sort_temp_bytes(int64_t total, int end_bit) {
  size_t bytes = 0;
  cub::DoubleBuffer<uint64_t> k(nullptr, nullptr);
  cub::DoubleBuffer<int64_t> v(nullptr, nullptr);
  DK_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, bytes, k, v, total, 0, end_bit));
  return static_cast<int64_t>(bytes);
}

Layout make_layout(int dtype, int64_t B, int64_t N, int64_t C, int64_t cap) {
  Layout L;
  const int64_t Cc = C > 0 ? C : 1;
  L.total = B * N * Cc;
  L.ncb = ceil_div<int64_t>(L.total, kNmsWordBits);
  L.W = nms_mask_width(L.total, N * Cc);
  L.R = nms_tile_rows(L.total, L.W, cap);
  const int64_t tsize = dtype == kFloat64 ? 8 : 4;
  if (L.total > 0) {
    size_t scan_bytes = 0;
    DK_CUDA_CHECK(cub::DeviceScan::InclusiveScan(nullptr, scan_bytes,
                                                 static_cast<const int64_t*>(nullptr),
                                                 static_cast<int64_t*>(nullptr),
                                                 cuda::maximum<int64_t>{}, L.total));
    // Every bit count run() sorts on (score 32/64, class, image).
    L.temp_bytes = static_cast<int64_t>(scan_bytes);
    for (int bits : {32, 64, C > 0 ? nms_key_bits(uint64_t(C - 1)) : 64,
                     nms_key_bits(uint64_t(2 * B - 1))})
      L.temp_bytes = std::max(L.temp_bytes, sort_temp_bytes(L.total, std::max(bits, 1)));
  }
  int64_t off = 0;
  auto take = [&](int64_t bytes) {
    const int64_t at = off;
    off += ceil_div<int64_t>(std::max<int64_t>(bytes, 1), kAlign) * kAlign;
    return at;
  };
  L.keys0 = take(8 * L.total);
  L.keys1 = take(8 * L.total);
  L.vals0 = take(8 * L.total);
  L.vals1 = take(8 * L.total);
  L.temp = take(L.temp_bytes);
  L.cols = take(5 * col_stride(tsize, L.total));
  L.seg = take(8 * L.total);
  L.valid = take(L.total);
  L.keep = take(L.total);
  L.kept = take(L.total);
  L.removed = take(8 * L.ncb);
  L.mask = take(8 * L.R * L.W);
  L.bytes = off;
  return L;
}

template <typename T> T* col(char* ws, const Layout& L, int k) {
  return reinterpret_cast<T*>(ws + L.cols + k * col_stride(sizeof(T), L.total));
}

template <typename T>
void run(const T* boxes, const T* scores, const int64_t* classes, int64_t B, int64_t N, int64_t C,
         double iou_thr, bool has_sthr, double sthr, int64_t K, int64_t* out_idx,
         int64_t* out_cls, int64_t* counts, char* ws, const Layout& L, cudaStream_t st) {
  const int64_t Cc = C > 0 ? C : 1, M = N * Cc, total = L.total, ncb = L.ncb;
  const unsigned g = grid_1d(total);
  cub::DoubleBuffer<uint64_t> keys(reinterpret_cast<uint64_t*>(ws + L.keys0),
                                   reinterpret_cast<uint64_t*>(ws + L.keys1));
  cub::DoubleBuffer<int64_t> vals(reinterpret_cast<int64_t*>(ws + L.vals0),
                                  reinterpret_cast<int64_t*>(ws + L.vals1));
  void* temp = ws + L.temp;
  auto sort = [&](int end_bit) {
    size_t bytes = static_cast<size_t>(L.temp_bytes);
    DK_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp, bytes, keys, vals, total, 0, end_bit, st));
  };
  const bool has_cls = C > 1 || (C == 0 && classes != nullptr);
  const bool has_img = B > 1 || has_sthr;
  const int img_bits = nms_key_bits(uint64_t(2 * B - 1));

  // 1. order by (image, valid, class, score desc, q)
  score_key_kernel<<<g, kThreads, 0, st>>>(scores, keys.Current(), vals.Current(), total);
  DK_CUDA_CHECK_LAUNCH("score_key_kernel");
  sort(nms_score_key_bits<T>());
  if (has_cls) {
    class_key_kernel<<<g, kThreads, 0, st>>>(vals.Current(), keys.Current(), total, M, C, classes);
    DK_CUDA_CHECK_LAUNCH("class_key_kernel");
    sort(C > 0 ? nms_key_bits(uint64_t(C - 1)) : 64);
  }
  if (has_img) {
    image_key_kernel<<<g, kThreads, 0, st>>>(vals.Current(), scores, keys.Current(), total, M,
                                             has_sthr, sthr);
    DK_CUDA_CHECK_LAUNCH("image_key_kernel");
    sort(img_bits);
  }
  const int64_t* order = vals.Current();

  // 2. sorted columns, validity, segments
  T *x1 = col<T>(ws, L, 0), *y1 = col<T>(ws, L, 1), *x2 = col<T>(ws, L, 2),
    *y2 = col<T>(ws, L, 3), *area = col<T>(ws, L, 4);
  auto* seg = reinterpret_cast<int64_t*>(ws + L.seg);
  auto* valid = reinterpret_cast<uint8_t*>(ws + L.valid);
  auto* keep = reinterpret_cast<uint8_t*>(ws + L.keep);
  auto* kept = reinterpret_cast<uint8_t*>(ws + L.kept);
  auto* removed = reinterpret_cast<uint64_t*>(ws + L.removed);
  auto* mask = reinterpret_cast<uint64_t*>(ws + L.mask);
  int64_t* head = vals.Alternate();  // free until the final sorts
  gather_kernel<<<g, kThreads, 0, st>>>(order, boxes, scores, x1, y1, x2, y2, area, valid, total,
                                        M, N, Cc, has_sthr, sthr);
  DK_CUDA_CHECK_LAUNCH("gather_kernel");
  head_kernel<<<g, kThreads, 0, st>>>(order, M, C, classes, valid, head, total);
  DK_CUDA_CHECK_LAUNCH("head_kernel");
  {
    size_t bytes = static_cast<size_t>(L.temp_bytes);
    DK_CUDA_CHECK(cub::DeviceScan::InclusiveScan(temp, bytes, static_cast<const int64_t*>(head),
                                                 seg, cuda::maximum<int64_t>{}, total, st));
  }

  // 3.-4. mask tiles and keep scan
  DK_CUDA_CHECK(cudaMemsetAsync(keep, 0, total, st));
  DK_CUDA_CHECK(cudaMemsetAsync(removed, 0, 8 * ncb, st));
  const T thr = nms_threshold<T>(iou_thr);
  for (int64_t row0 = 0; row0 < total; row0 += L.R) {
    const int64_t rb0 = row0 / kNmsWordBits, rb1 = std::min(ncb, (row0 + L.R) / kNmsWordBits);
    const int64_t nrb = rb1 - rb0;
    const int64_t gx = std::max<int64_t>(1, std::min<int64_t>({ncb - rb0, L.W, 16384 / nrb}));
    mask_kernel<T><<<dim3(static_cast<unsigned>(gx), static_cast<unsigned>(nrb)), kNmsWordBits, 0,
                     st>>>(x1, y1, x2, y2, area, seg, mask, total, ncb, L.W, row0, thr);
    DK_CUDA_CHECK_LAUNCH("mask_kernel");
    scan_kernel<<<static_cast<unsigned>(B), kScanThreads, 0, st>>>(M, L.R, total, row0, mask, L.W,
                                                                   ncb, removed, seg, valid, keep);
    DK_CUDA_CHECK_LAUNCH("scan_kernel");
  }

  // 5. kept candidates by (image, score desc, q), counts, padded outputs
  scatter_kernel<<<g, kThreads, 0, st>>>(order, keep, kept, total);
  DK_CUDA_CHECK_LAUNCH("scatter_kernel");
  final_key_kernel<T><<<g, kThreads, 0, st>>>(kept, scores, keys.Current(), vals.Current(), total);
  DK_CUDA_CHECK_LAUNCH("final_key_kernel");
  sort(nms_score_key_bits<T>());
  if (B > 1) {
    final_image_key_kernel<<<g, kThreads, 0, st>>>(vals.Current(), keys.Current(), total, M);
    DK_CUDA_CHECK_LAUNCH("final_image_key_kernel");
    sort(img_bits);
  }
  count_kernel<<<grid_1d(B), kThreads, 0, st>>>(vals.Current(), kept, counts, B, M, K);
  DK_CUDA_CHECK_LAUNCH("count_kernel");
  if (B * K > 0) {
    output_kernel<<<grid_1d(B * K), kThreads, 0, st>>>(B, K, M, C, vals.Current(), counts, out_idx,
                                                       out_cls);
    DK_CUDA_CHECK_LAUNCH("output_kernel");
  }
}

}  // namespace

int64_t nms_multi_cuda_workspace_bytes(int dtype, int64_t B, int64_t N, int64_t C,
                                       bool /*has_classes*/, int64_t mask_cap_bytes, int device) {
  DeviceGuard guard(device);
  return make_layout(dtype, B, N, C, mask_cap_bytes).bytes;
}

void nms_multi_cuda(int dtype, const void* boxes, const void* scores, const int64_t* classes,
                    int64_t B, int64_t N, int64_t C, double iou_threshold, bool has_score_thr,
                    double score_thr, int64_t max_output, int64_t* out_idx, int64_t* out_cls,
                    int64_t* counts, void* workspace, int64_t workspace_bytes,
                    int64_t mask_cap_bytes, int device, void* stream) {
  if (dtype != kFloat32 && dtype != kFloat64)
    throw std::invalid_argument("nms: dtype must be float32 or float64");
  DeviceGuard guard(device);
  auto st = static_cast<cudaStream_t>(stream);
  const Layout L = make_layout(dtype, B, N, C, mask_cap_bytes);
  if (L.total == 0) {  // nothing to sort: all padding
    if (B * max_output > 0) {
      DK_CUDA_CHECK(cudaMemsetAsync(out_idx, 0xFF, 8 * B * max_output, st));
      if (out_cls) DK_CUDA_CHECK(cudaMemsetAsync(out_cls, 0xFF, 8 * B * max_output, st));
    }
    if (B > 0) DK_CUDA_CHECK(cudaMemsetAsync(counts, 0, 8 * B, st));
    return;
  }
  if (workspace_bytes < L.bytes)
    throw std::invalid_argument("nms (CUDA): workspace of " + std::to_string(workspace_bytes) +
                                " bytes is smaller than the " + std::to_string(L.bytes) + " needed");
  char* ws = static_cast<char*>(workspace);
  if (dtype == kFloat32)
    run(static_cast<const float*>(boxes), static_cast<const float*>(scores), classes, B, N, C,
        iou_threshold, has_score_thr, score_thr, max_output, out_idx, out_cls, counts, ws, L, st);
  else
    run(static_cast<const double*>(boxes), static_cast<const double*>(scores), classes, B, N, C,
        iou_threshold, has_score_thr, score_thr, max_output, out_idx, out_cls, counts, ws, L, st);
}

}  // namespace detkernels
