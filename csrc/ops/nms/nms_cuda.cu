// CUDA multi-image / per-class NMS: launches the kernels of nms_kernels.cuh (shared with the CuPy
// backend) over nms_bitmask.h's steps (the algorithm, step by step, is described there;
// nms_emulate.cpp runs the same steps on the CPU for the tests), with CUB sorts and scan between.
//
// Everything is enqueued on the caller's stream, on the caller's device, in a workspace the caller
// allocated (nms_multi_cuda_workspace_bytes): no host synchronisation, no allocation, no global
// state, so a call can be captured in a CUDA graph. The bitmask is built in row tiles of at most
// mask_cap_bytes (never less than 64 rows), so 10^6 boxes need ~8 MB of mask per tile instead of
// the 125 GB a full N x N/64 mask would take.
//
// The engine is generic over the suppression predicate (issue 13): nms_multi_cuda runs it with
// IoU (NmsIouSuppress), diou_nms_multi_cuda with DIoU (diou_nms.h DiouNmsSuppress; no sparse path),
// nms_rotated_multi_cuda with rotated IoU or ProbIoU (nms_rotated_gpu.h, issue 17; no sparse path).
#include <cub/cub.cuh>
#include <cuda/functional>

#include <algorithm>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "common/cuda_check.h"
#include "common/dispatch.h"
#include "ops/nms/diou_nms_kernels.cuh"
#include "ops/nms/nms.h"
#include "ops/nms/nms_kernels.cuh"
#include "ops/nms/nms_rotated_kernels.cuh"
#include "ops/nms/nms_sparse_gpu_kernels.cuh"

namespace detkernels {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kAlign = 256;

unsigned grid_1d(int64_t n) {
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(ceil_div<int64_t>(n, kThreads), 1 << 16)));
}

// ---- workspace --------------------------------------------------------------------------------

struct Layout {
  int64_t total = 0, ncb = 0, W = 0, R = 0, temp_bytes = 0;
  int64_t keys0, keys1, vals0, vals1, temp, cols, seg, valid, keep, kept, removed, mask, bytes;
  // issue 16, the sparse path's buffers (nms_sparse_gpu.h), when the shape rule allows it; its
  // edges alias the mask tiles (at least kNmsSparseMinEdgesPerCand int32 per candidate).
  bool sparse = false;
  int64_t nb = 0, mask_bytes = 0;
  int64_t sp_alt, scols, sseg, svalid, pos_of, cnt, off, state0, state1, bbox, blo, bhi, pairs, ctrl;
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
    L.sparse = nms_sparse_gpu_sized(L.total, N * Cc);
    if (L.sparse) {  // its segment sort (the Z-order one is 64 bits) and the edge-count sum
      size_t sum_bytes = 0;
      DK_CUDA_CHECK(cub::DeviceScan::InclusiveSum(nullptr, sum_bytes,
                                                  static_cast<const int64_t*>(nullptr),
                                                  static_cast<int64_t*>(nullptr), L.total));
      L.temp_bytes = std::max({L.temp_bytes, static_cast<int64_t>(sum_bytes),
                               sort_temp_bytes(L.total, std::max(1, nms_key_bits(uint64_t(L.total - 1))))});
    }
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
  L.mask_bytes = 8 * L.R * L.W;
  L.mask = take(L.sparse ? std::max(L.mask_bytes, 4 * kNmsSparseMinEdgesPerCand * L.total)
                         : L.mask_bytes);
  if (L.sparse) {
    L.nb = L.ncb;
    L.sp_alt = take(8 * L.total);
    L.scols = take(5 * col_stride(tsize, L.total));
    L.sseg = take(8 * L.total);
    L.svalid = take(L.total);
    L.pos_of = take(4 * L.total);
    L.cnt = take(8 * L.total);
    L.off = take(8 * (L.total + 1));
    L.state0 = take(L.total);
    L.state1 = take(L.total);
    L.bbox = take(4 * tsize * L.nb);
    L.blo = take(8 * L.nb);
    L.bhi = take(8 * L.nb);
    L.pairs = take(16 * L.nb);
    L.ctrl = take(4 * (1 + kNmsSparseRounds));  // fallback flag, then one undecided flag per round
  }
  L.bytes = off;
  return L;
}

template <typename T> T* col(char* ws, const Layout& L, int k) {
  return reinterpret_cast<T*>(ws + L.cols + k * col_stride(sizeof(T), L.total));
}

// issue 16: the sparse path (nms_sparse_gpu.h S1-S6; nms_emulate.cpp runs the same steps), enqueued
// between the segments and the mask tiles. No host synchronisation: every give-up (non-finite
// box, density rule, edge capacity) is the device flag ctrl[0], which each later kernel reads;
// on success the bitmask path's seg / valid are neutralised (its tiles then compute only empty
// diagonal words and its scan leaves keep alone), on fallback it runs as if this had not.
template <typename T>
void run_sparse(const T* x1, const T* y1, const T* x2, const T* y2, const T* area, uint8_t* valid,
                int64_t* seg, uint8_t* keep, int64_t* spare, T thr, char* ws, const Layout& L,
                cudaStream_t st) {
  const int64_t total = L.total, nb = L.nb;
  const unsigned g = grid_1d(total);
  void* temp = ws + L.temp;
  auto* ctrl = reinterpret_cast<uint32_t*>(ws + L.ctrl);
  uint32_t* fallback = ctrl;
  DK_CUDA_CHECK(cudaMemsetAsync(ctrl, 0, 4 * (1 + kNmsSparseRounds), st));
  // S1: sort ranks by Z-order key, then stably by segment
  cub::DoubleBuffer<uint64_t> keys(reinterpret_cast<uint64_t*>(ws + L.keys0),
                                   reinterpret_cast<uint64_t*>(ws + L.keys1));
  cub::DoubleBuffer<int64_t> sp(spare, reinterpret_cast<int64_t*>(ws + L.sp_alt));
  auto sort = [&](int end_bit) {
    size_t bytes = static_cast<size_t>(L.temp_bytes);
    DK_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp, bytes, keys, sp, total, 0, end_bit, st));
  };
  nms_sparse_key_kernel<T><<<g, kThreads, 0, st>>>(x1, y1, keys.Current(), sp.Current(), total);
  DK_CUDA_CHECK_LAUNCH("nms_sparse_key_kernel");
  sort(64);
  nms_sparse_seg_key_kernel<<<g, kThreads, 0, st>>>(sp.Current(), seg, keys.Current(), total);
  DK_CUDA_CHECK_LAUNCH("nms_sparse_seg_key_kernel");
  sort(std::max(1, nms_key_bits(uint64_t(total - 1))));
  const int64_t* spos = sp.Current();
  // S2
  const int64_t cs = col_stride(sizeof(T), total);
  T* sx1 = reinterpret_cast<T*>(ws + L.scols);
  T *sy1 = reinterpret_cast<T*>(ws + L.scols + cs), *sx2 = reinterpret_cast<T*>(ws + L.scols + 2 * cs),
    *sy2 = reinterpret_cast<T*>(ws + L.scols + 3 * cs), *sarea = reinterpret_cast<T*>(ws + L.scols + 4 * cs);
  auto* sseg = reinterpret_cast<int64_t*>(ws + L.sseg);
  auto* svalid = reinterpret_cast<uint8_t*>(ws + L.svalid);
  auto* pos_of = reinterpret_cast<int32_t*>(ws + L.pos_of);
  auto* cnt = reinterpret_cast<int64_t*>(ws + L.cnt);
  auto* off = reinterpret_cast<int64_t*>(ws + L.off);
  uint8_t* state[2] = {reinterpret_cast<uint8_t*>(ws + L.state0),
                       reinterpret_cast<uint8_t*>(ws + L.state1)};
  T* bbox = reinterpret_cast<T*>(ws + L.bbox);
  auto* blo = reinterpret_cast<int64_t*>(ws + L.blo);
  auto* bhi = reinterpret_cast<int64_t*>(ws + L.bhi);
  auto* pairs = reinterpret_cast<int64_t*>(ws + L.pairs);
  auto* edges = reinterpret_cast<int32_t*>(ws + L.mask);
  nms_sparse_gather_kernel<T><<<g, kThreads, 0, st>>>(spos, x1, y1, x2, y2, area, seg, valid, sx1,
                                                      sy1, sx2, sy2, sarea, sseg, svalid, pos_of,
                                                      fallback, total);
  DK_CUDA_CHECK_LAUNCH("nms_sparse_gather_kernel");
  const unsigned gb = grid_1d(nb);
  nms_sparse_block_box_kernel<T><<<gb, kThreads, 0, st>>>(sx1, sy1, sx2, sy2, svalid, sseg, bbox,
                                                         blo, bhi, nb, total, fallback);
  DK_CUDA_CHECK_LAUNCH("nms_sparse_block_box_kernel");
  // S3 (auto path only; a forced pruned path skips the density rule)
  if (nms_sparse_gpu_rule()) {
    nms_sparse_block_pairs_kernel<T><<<gb, kThreads, 0, st>>>(bbox, blo, bhi, pairs, nb, fallback);
    DK_CUDA_CHECK_LAUNCH("nms_sparse_block_pairs_kernel");
    nms_sparse_decide_kernel<<<1, kNmsSparseReduceThreads, 0, st>>>(pairs, nb, fallback);
    DK_CUDA_CHECK_LAUNCH("nms_sparse_decide_kernel");
  }
  // S4: count, inclusive sum into off[1..], capacity, emit
  const unsigned ge = static_cast<unsigned>(std::min<int64_t>(nb, 1 << 20));
  nms_sparse_edges_kernel<T><<<ge, kNmsWordBits, 0, st>>>(sx1, sy1, sx2, sy2, sarea, sseg, spos,
                                                         bbox, blo, bhi, nb, total, thr, cnt,
                                                         nullptr, nullptr, fallback);
  DK_CUDA_CHECK_LAUNCH("nms_sparse_edges_kernel (count)");
  DK_CUDA_CHECK(cudaMemsetAsync(off, 0, 8, st));
  {
    size_t bytes = static_cast<size_t>(L.temp_bytes);
    DK_CUDA_CHECK(cub::DeviceScan::InclusiveSum(temp, bytes, static_cast<const int64_t*>(cnt),
                                                off + 1, total, st));
  }
  nms_sparse_cap_kernel<<<1, 1, 0, st>>>(off, total, nms_sparse_edge_cap(L.mask_bytes, total),
                                         fallback);
  DK_CUDA_CHECK_LAUNCH("nms_sparse_cap_kernel");
  nms_sparse_edges_kernel<T><<<ge, kNmsWordBits, 0, st>>>(sx1, sy1, sx2, sy2, sarea, sseg, spos,
                                                         bbox, blo, bhi, nb, total, thr, cnt, off,
                                                         edges, fallback);
  DK_CUDA_CHECK_LAUNCH("nms_sparse_edges_kernel (emit)");
  // S5: rounds (buffer r % 2 -> (r + 1) % 2), then the sequential pass if one is left
  nms_sparse_init_kernel<<<g, kThreads, 0, st>>>(svalid, state[0], total, fallback);
  DK_CUDA_CHECK_LAUNCH("nms_sparse_init_kernel");
  const int rounds = nms_gpu_rounds();
  for (int r = 0; r < rounds; ++r) {
    nms_sparse_round_kernel<<<g, kThreads, 0, st>>>(off, edges, state[r % 2], state[(r + 1) % 2],
                                                    ctrl + 1 + r, total, fallback);
    DK_CUDA_CHECK_LAUNCH("nms_sparse_round_kernel");
  }
  uint8_t* fin = state[rounds % 2];
  nms_sparse_finish_kernel<<<1, 1, 0, st>>>(total, pos_of, off, edges, fin, ctrl + rounds, fallback);
  DK_CUDA_CHECK_LAUNCH("nms_sparse_finish_kernel");
  // S6
  nms_sparse_output_kernel<<<g, kThreads, 0, st>>>(spos, fin, keep, total, fallback);
  DK_CUDA_CHECK_LAUNCH("nms_sparse_output_kernel");
  nms_sparse_neutralise_kernel<<<g, kThreads, 0, st>>>(seg, valid, total, fallback);
  DK_CUDA_CHECK_LAUNCH("nms_sparse_neutralise_kernel");
}

// One mask tile's launch, by predicate (issue 13): the IoU one (nms_mask_kernel) or the DIoU one
// (diou_nms_mask_kernel), both nms_mask_tile over nms_bitmask.h's nms_mask_word.
template <typename T>
void launch_mask(dim3 grid, cudaStream_t st, const T* x1, const T* y1, const T* x2, const T* y2,
                 const T* area, const int64_t* seg, uint64_t* mask, const Layout& L, int64_t row0,
                 const NmsIouSuppress<T>& pred) {
  nms_mask_kernel<T><<<grid, kNmsWordBits, 0, st>>>(x1, y1, x2, y2, area, seg, mask, L.total,
                                                    L.ncb, L.W, row0, pred.thr);
  DK_CUDA_CHECK_LAUNCH("nms_mask_kernel");
}
template <typename T>
void launch_mask(dim3 grid, cudaStream_t st, const T* x1, const T* y1, const T* x2, const T* y2,
                 const T* area, const int64_t* seg, uint64_t* mask, const Layout& L, int64_t row0,
                 const DiouNmsSuppress<T>& pred) {
  diou_nms_mask_kernel<T><<<grid, kNmsWordBits, 0, st>>>(x1, y1, x2, y2, area, seg, mask, L.total,
                                                         L.ncb, L.W, row0, pred.thr, pred.beta);
  DK_CUDA_CHECK_LAUNCH("diou_nms_mask_kernel");
}

// The metric's scalar parameter, as the kernel takes it (RotatedIouMetric has none).
template <typename T> T param_of(const RotatedIouMetric<T>&) { return T(0); }
template <typename T> T param_of(const ProbIouMetric<T>& m) { return m.eps; }

template <typename T, typename Metric>
void launch_mask(dim3 grid, cudaStream_t st, const T* c0, const T* c1, const T* c2, const T* c3,
                 const T* c4, const int64_t* seg, uint64_t* mask, const Layout& L, int64_t row0,
                 const RotatedNmsSuppress<T, Metric>& pred) {
  rotated_nms_mask_kernel<T, Metric><<<grid, kNmsWordBits, 0, st>>>(
      c0, c1, c2, c3, c4, seg, mask, L.total, L.ncb, L.W, row0, pred.thr,
      param_of(pred.metric));
  DK_CUDA_CHECK_LAUNCH("rotated_nms_mask_kernel");
}

// `pred`: the suppression predicate (nms_bitmask.h NmsIouSuppress, diou_nms.h DiouNmsSuppress);
// the sparse path is the IoU predicate's only (its pruning is IoU-specific).
template <typename T, typename Pred>
void run(const T* boxes, const T* scores, const int64_t* classes, int64_t B, int64_t N, int64_t C,
         const Pred& pred, bool has_sthr, double sthr, int64_t K, int64_t* out_idx,
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
  nms_score_key_kernel<<<g, kThreads, 0, st>>>(scores, keys.Current(), vals.Current(), total);
  DK_CUDA_CHECK_LAUNCH("nms_score_key_kernel");
  sort(nms_score_key_bits<T>());
  if (has_cls) {
    nms_class_key_kernel<<<g, kThreads, 0, st>>>(vals.Current(), keys.Current(), total, M, C,
                                                 classes);
    DK_CUDA_CHECK_LAUNCH("nms_class_key_kernel");
    sort(C > 0 ? nms_key_bits(uint64_t(C - 1)) : 64);
  }
  if (has_img) {
    nms_image_key_kernel<<<g, kThreads, 0, st>>>(vals.Current(), scores, keys.Current(), total,
                                                 M, has_sthr, sthr);
    DK_CUDA_CHECK_LAUNCH("nms_image_key_kernel");
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
  nms_gather_kernel<T, typename Pred::Boxes><<<g, kThreads, 0, st>>>(
      order, boxes, scores, x1, y1, x2, y2, area, valid, total, M, N, Cc, has_sthr, sthr);
  DK_CUDA_CHECK_LAUNCH("nms_gather_kernel");
  nms_head_kernel<<<g, kThreads, 0, st>>>(order, M, C, classes, valid, head, total);
  DK_CUDA_CHECK_LAUNCH("nms_head_kernel");
  {
    size_t bytes = static_cast<size_t>(L.temp_bytes);
    DK_CUDA_CHECK(cub::DeviceScan::InclusiveScan(temp, bytes, static_cast<const int64_t*>(head),
                                                 seg, cuda::maximum<int64_t>{}, total, st));
  }

  // 3.-4. mask tiles and keep scan
  DK_CUDA_CHECK(cudaMemsetAsync(keep, 0, total, st));
  DK_CUDA_CHECK(cudaMemsetAsync(removed, 0, 8 * ncb, st));
  // issue 16: the sparse path first where the host rule allows it (nms_sparse_gpu_use: shapes and
  // thr >= 0); `head` (vals.Alternate()) is free once the max-scan is done.
  if constexpr (std::is_same<Pred, NmsIouSuppress<T>>::value) {
    if (L.sparse && nms_sparse_gpu_use(total, M, static_cast<double>(pred.thr)))
      run_sparse(x1, y1, x2, y2, area, valid, seg, keep, head, pred.thr, ws, L, st);
  }
  for (int64_t row0 = 0; row0 < total; row0 += L.R) {
    const int64_t rb0 = row0 / kNmsWordBits, rb1 = std::min(ncb, (row0 + L.R) / kNmsWordBits);
    const int64_t nrb = rb1 - rb0;
    const int64_t gx = std::max<int64_t>(1, std::min<int64_t>({ncb - rb0, L.W, 16384 / nrb}));
    launch_mask(dim3(static_cast<unsigned>(gx), static_cast<unsigned>(nrb)), st, x1, y1, x2, y2,
                area, seg, mask, L, row0, pred);
    if (nms_pred_fast(pred)) {
      nms_fast_scan_kernel<<<static_cast<unsigned>(B), kNmsScanThreads, 0, st>>>(
          M, L.R, total, row0, mask, L.W, ncb, removed, seg, valid, keep);
      DK_CUDA_CHECK_LAUNCH("nms_fast_scan_kernel");
    } else {
      nms_scan_kernel<<<static_cast<unsigned>(B), kNmsScanThreads, 0, st>>>(
          M, L.R, total, row0, mask, L.W, ncb, removed, seg, valid, keep);
      DK_CUDA_CHECK_LAUNCH("nms_scan_kernel");
    }
  }

  // 5. kept candidates by (image, score desc, q), counts, padded outputs
  nms_scatter_kernel<<<g, kThreads, 0, st>>>(order, keep, kept, total);
  DK_CUDA_CHECK_LAUNCH("nms_scatter_kernel");
  nms_final_key_kernel<T><<<g, kThreads, 0, st>>>(kept, scores, keys.Current(), vals.Current(),
                                                  total);
  DK_CUDA_CHECK_LAUNCH("nms_final_key_kernel");
  sort(nms_score_key_bits<T>());
  if (B > 1) {
    nms_final_image_key_kernel<<<g, kThreads, 0, st>>>(vals.Current(), keys.Current(), total, M);
    DK_CUDA_CHECK_LAUNCH("nms_final_image_key_kernel");
    sort(img_bits);
  }
  nms_count_kernel<<<grid_1d(B), kThreads, 0, st>>>(vals.Current(), kept, counts, B, M, K);
  DK_CUDA_CHECK_LAUNCH("nms_count_kernel");
  if (B * K > 0) {
    nms_output_kernel<<<grid_1d(B * K), kThreads, 0, st>>>(B, K, M, C, vals.Current(), counts,
                                                           out_idx, out_cls);
    DK_CUDA_CHECK_LAUNCH("nms_output_kernel");
  }
}

// The public launchers: one body, the predicate made per dtype by `make_pred` (issue 13).
template <typename MakePred>
void multi_cuda(const char* what, int dtype, const void* boxes, const void* scores,
                const int64_t* classes, int64_t B, int64_t N, int64_t C, MakePred make_pred,
                bool has_score_thr, double score_thr, int64_t max_output, int64_t* out_idx,
                int64_t* out_cls, int64_t* counts, void* workspace, int64_t workspace_bytes,
                int64_t mask_cap_bytes, int device, void* stream) {
  dispatch_float(dtype, what, [&](auto t) {
    using T = decltype(t);
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
      throw std::invalid_argument(std::string(what) + " (CUDA): workspace of " +
                                  std::to_string(workspace_bytes) + " bytes is smaller than the " +
                                  std::to_string(L.bytes) + " needed");
    run(static_cast<const T*>(boxes), static_cast<const T*>(scores), classes, B, N, C,
        make_pred(t), has_score_thr, score_thr, max_output, out_idx, out_cls, counts,
        static_cast<char*>(workspace), L, st);
  });
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
  multi_cuda("nms", dtype, boxes, scores, classes, B, N, C,
             [&](auto t) {
               using T = decltype(t);
               return NmsIouSuppress<T>{nms_threshold<T>(iou_threshold)};
             },
             has_score_thr, score_thr, max_output, out_idx, out_cls, counts, workspace,
             workspace_bytes, mask_cap_bytes, device, stream);
}

void diou_nms_multi_cuda(int dtype, const void* boxes, const void* scores, const int64_t* classes,
                         int64_t B, int64_t N, int64_t C, double iou_threshold, double beta,
                         bool has_score_thr, double score_thr, int64_t max_output,
                         int64_t* out_idx, int64_t* out_cls, int64_t* counts, void* workspace,
                         int64_t workspace_bytes, int64_t mask_cap_bytes, int device,
                         void* stream) {
  multi_cuda("diou_nms", dtype, boxes, scores, classes, B, N, C,
             [&](auto t) {
               using T = decltype(t);
               return DiouNmsSuppress<T>{nms_threshold<T>(iou_threshold), static_cast<T>(beta)};
             },
             has_score_thr, score_thr, max_output, out_idx, out_cls, counts, workspace,
             workspace_bytes, mask_cap_bytes, device, stream);
}

void nms_rotated_multi_cuda(int dtype, int metric, const void* boxes, const void* scores,
                            const int64_t* classes, int64_t B, int64_t N, double iou_threshold,
                            double eps, bool has_score_thr, double score_thr, int64_t max_output,
                            int64_t* out_idx, int64_t* counts, void* workspace,
                            int64_t workspace_bytes, int64_t mask_cap_bytes, int device,
                            void* stream) {
  auto go = [&](auto make_pred) {
    multi_cuda("nms_rotated", dtype, boxes, scores, classes, B, N, 0, make_pred, has_score_thr,
               score_thr, max_output, out_idx, nullptr, counts, workspace, workspace_bytes,
               mask_cap_bytes, device, stream);
  };
  if (metric == kRotatedIou) {
    go([&](auto t) {
      using T = decltype(t);
      return RotatedNmsSuppress<T, RotatedIouMetric<T>>{iou_threshold, RotatedIouMetric<T>{},
                                                        false};
    });
  } else if (metric == kRotatedProbIou || metric == kRotatedProbIouFast) {
    go([&](auto t) {
      using T = decltype(t);
      return RotatedNmsSuppress<T, ProbIouMetric<T>>{
          iou_threshold, ProbIouMetric<T>{static_cast<T>(eps)}, metric == kRotatedProbIouFast};
    });
  } else {
    throw std::invalid_argument("nms_rotated (CUDA): unknown metric");
  }
}

}  // namespace detkernels
