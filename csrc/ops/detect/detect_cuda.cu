// CUDA detect (detect_gpu.h has the pipeline and its steps; detect_kernels.cuh the kernels): score
// pass -> (top-k only when k < M: two CUB stable radix sorts of every candidate, then selection by
// sorted position) -> exclusive sum + compaction to [B, N] slots -> the mode's multi-image NMS
// (nms_multi_cuda, diou_nms_multi_cuda, soft_nms_multi_cuda, matrix_nms_multi_cuda: the existing
// CUDA entries, each in its own workspace slice) -> output gather. One stream, no host
// synchronisation, fixed-size outputs; the workspace is sized from the static shapes and the mode
// (detect_cuda_workspace_bytes) before any kernel runs, so the whole call captures in a CUDA graph.
#include <cub/cub.cuh>

#include <algorithm>
#include <stdexcept>
#include <string>

#include "common/cuda_check.h"
#include "common/dispatch.h"
#include "ops/detect/detect_kernels.cuh"
#include "ops/nms/diou_nms.h"
#include "ops/nms/matrix_nms_gpu.h"
#include "ops/nms/nms.h"
#include "ops/nms/soft_nms_gpu.h"

namespace detkernels {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kAlign = 256;

unsigned grid_1d(int64_t n) {
  return static_cast<unsigned>(
      std::max<int64_t>(1, std::min<int64_t>(ceil_div<int64_t>(n, kThreads), 1 << 16)));
}

struct Layout {
  int64_t M = 0, N = 0, total = 0, slots = 0, temp_bytes = 0;
  bool sort = false;
  int64_t score, cls, valid, sel, pos, keys0, keys1, vals0, vals1, temp, cbox, cscore, ccls,
      canchor, n_valid, zeros, nms, nms_bytes, bytes;
};

// The NMS stage's workspace for B images of N slots (per_class: the slots' classes, else none or
// zeros): each mode's own entry's size.
int64_t nms_stage_bytes(int mode, int dtype, int64_t B, int64_t N, int64_t cap, int device) {
  switch (mode) {
    case kDetectIou:
    case kDetectDiou:  // the same engine, the same workspace (diou_nms.h); none without slots
      return B * N > 0 ? nms_multi_cuda_workspace_bytes(dtype, B, N, 0, true, cap, device) : 0;
    case kDetectSoft:
      return soft_nms_multi_cuda_workspace_bytes(dtype, B, N, true);
    case kDetectMatrix:
      return matrix_nms_multi_cuda_workspace_bytes(dtype, B, N, device);
    default:
      throw std::invalid_argument("detect (CUDA): nms mode must be 0 (iou), 1 (diou), 2 (soft), 3 (matrix)");
  }
}

Layout make_layout(int dtype, int64_t B, int64_t A, int64_t C, bool multi, int64_t top_k,
                   int mode, int64_t cap, int device) {
  Layout L;
  const int64_t tsize = dtype == kFloat64 ? 8 : 4;
  L.M = detect_gpu_candidates(A, C, multi && C > 0);
  L.N = detect_gpu_slots(L.M, top_k);
  L.total = B * L.M;
  L.slots = B * L.N;
  L.sort = L.N < L.M && L.total > 0;
  if (L.total > 0) {
    size_t scan = 0;
    DK_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(nullptr, scan, static_cast<const int64_t*>(nullptr),
                                                static_cast<int64_t*>(nullptr), L.total));
    L.temp_bytes = static_cast<int64_t>(scan);
    if (L.sort) {
      size_t bytes = 0;
      cub::DoubleBuffer<uint64_t> k(nullptr, nullptr);
      cub::DoubleBuffer<int64_t> v(nullptr, nullptr);
      DK_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, bytes, k, v, L.total, 0, 64));
      L.temp_bytes = std::max(L.temp_bytes, static_cast<int64_t>(bytes));
    }
  }
  int64_t off = 0;
  auto take = [&](int64_t bytes) {
    const int64_t at = off;
    off += ceil_div<int64_t>(std::max<int64_t>(bytes, 1), kAlign) * kAlign;
    return at;
  };
  L.score = take(tsize * L.total);
  L.cls = take(8 * L.total);
  L.valid = take(L.total);
  L.sel = take(8 * L.total);
  L.pos = take(8 * L.total);
  const int64_t sorted = L.sort ? L.total : 0;
  L.keys0 = take(8 * sorted);
  L.keys1 = take(8 * sorted);
  L.vals0 = take(8 * sorted);
  L.vals1 = take(8 * sorted);
  L.temp = take(L.temp_bytes);
  L.cbox = take(4 * tsize * L.slots);
  L.cscore = take(tsize * L.slots);
  L.ccls = take(8 * L.slots);
  L.canchor = take(8 * L.slots);
  const bool decays = mode == kDetectSoft || mode == kDetectMatrix;  // they need n_valid, labels
  L.n_valid = take(decays ? 8 * B : 0);
  L.zeros = take(decays ? 8 * L.slots : 0);  // class-agnostic labels (one class, as detect_cpu)
  // (validates the mode too; Soft / Matrix NMS launch even without slots: they write the padding)
  L.nms_bytes = nms_stage_bytes(mode, dtype, B, L.N, cap, device);
  L.nms = take(L.nms_bytes);
  L.bytes = off;
  return L;
}

template <typename T>
void run(const DetectGpuArgs<T>& g, int64_t B, double iou_thr, int64_t K, bool agnostic,
         const DetectNms& nms, T* ob, T* os, int64_t* oc, int64_t* oi, int64_t* counts, char* ws,
         const Layout& L, int64_t cap, int device, cudaStream_t st) {
  const int64_t M = L.M, N = L.N, total = L.total;
  T* score = reinterpret_cast<T*>(ws + L.score);
  auto* cls = reinterpret_cast<int64_t*>(ws + L.cls);
  auto* valid = reinterpret_cast<uint8_t*>(ws + L.valid);
  auto* sel = reinterpret_cast<int64_t*>(ws + L.sel);
  auto* pos = reinterpret_cast<int64_t*>(ws + L.pos);
  T* cbox = reinterpret_cast<T*>(ws + L.cbox);
  T* cscore = reinterpret_cast<T*>(ws + L.cscore);
  auto* ccls = reinterpret_cast<int64_t*>(ws + L.ccls);
  auto* canchor = reinterpret_cast<int64_t*>(ws + L.canchor);
  void* temp = ws + L.temp;
  if (L.slots > 0) {
    const unsigned gt = grid_1d(total);
    cub::DoubleBuffer<uint64_t> keys(reinterpret_cast<uint64_t*>(ws + L.keys0),
                                     reinterpret_cast<uint64_t*>(ws + L.keys1));
    cub::DoubleBuffer<int64_t> vals(reinterpret_cast<int64_t*>(ws + L.vals0),
                                    reinterpret_cast<int64_t*>(ws + L.vals1));
    // 1. score pass (and, with a top-k, the first sort's keys)
    detect_score_kernel<T><<<gt, kThreads, 0, st>>>(DK_DETECT_GPU_ARGS(g), score, cls, valid,
                                                    L.sort ? keys.Current() : nullptr,
                                                    L.sort ? vals.Current() : nullptr, total);
    DK_CUDA_CHECK_LAUNCH("detect_score_kernel");
    // 2. top-k: (image, valid, score desc, candidate asc) by two stable sorts, then the selection
    const int64_t* order = nullptr;
    if (L.sort) {
      auto sort = [&](int end_bit) {
        size_t bytes = static_cast<size_t>(L.temp_bytes);
        DK_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp, bytes, keys, vals, total, 0, end_bit, st));
      };
      sort(nms_score_key_bits<T>());
      detect_image_key_kernel<<<gt, kThreads, 0, st>>>(vals.Current(), valid, keys.Current(), total, M);
      DK_CUDA_CHECK_LAUNCH("detect_image_key_kernel");
      sort(std::max(1, nms_key_bits(uint64_t(2 * B - 1))));
      order = vals.Current();
    }
    detect_select_kernel<<<gt, kThreads, 0, st>>>(order, valid, M, L.sort ? N : M, sel, total);
    DK_CUDA_CHECK_LAUNCH("detect_select_kernel");
    // 3. slots: exclusive sum of the selection in candidate order, padding, compaction
    {
      size_t bytes = static_cast<size_t>(L.temp_bytes);
      DK_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(temp, bytes, static_cast<const int64_t*>(sel), pos,
                                                  total, st));
    }
    detect_pad_kernel<T><<<grid_1d(L.slots), kThreads, 0, st>>>(cbox, cscore, ccls, canchor, L.slots);
    DK_CUDA_CHECK_LAUNCH("detect_pad_kernel");
    detect_compact_kernel<T><<<gt, kThreads, 0, st>>>(DK_DETECT_GPU_ARGS(g), N, sel, pos, score,
                                                      cls, cbox, cscore, ccls, canchor, total);
    DK_CUDA_CHECK_LAUNCH("detect_compact_kernel");
  }
  // 4. NMS of the [B, N] slots (N == 0: each entry writes the padding and zero counts)
  const int dt = std::is_same<T, float>::value ? kFloat32 : kFloat64;
  const bool per_class = !agnostic && (g.C > 0 || g.idxs != nullptr);
  const T* dec = nullptr;  // soft / matrix: the decayed scores, written to os by their entry
  if (nms.mode == kDetectIou || nms.mode == kDetectDiou) {
    const int64_t* classes = per_class ? ccls : nullptr;
    if (nms.mode == kDetectIou)
      nms_multi_cuda(dt, cbox, cscore, classes, B, N, 0, iou_thr, g.has_thr != 0, g.thr, K, oi,
                     nullptr, counts, ws + L.nms, L.nms_bytes, cap, device, st);
    else
      diou_nms_multi_cuda(dt, cbox, cscore, classes, B, N, 0, iou_thr, nms.beta, g.has_thr != 0,
                          g.thr, K, oi, nullptr, counts, ws + L.nms, L.nms_bytes, cap, device, st);
  } else {
    // The real slots per image (the rest is -inf padding); labels always: the slots' classes,
    // or one class (zeros) when class-agnostic, as detect_cpu calls soft_nms_cpu / matrix_nms_cpu.
    auto* n_valid = reinterpret_cast<int64_t*>(ws + L.n_valid);
    auto* zeros = reinterpret_cast<int64_t*>(ws + L.zeros);
    if (L.slots > 0) {
      detect_count_kernel<<<grid_1d(B), kThreads, 0, st>>>(B, M, sel, pos, n_valid);
      DK_CUDA_CHECK_LAUNCH("detect_count_kernel");
      if (!per_class) DK_CUDA_CHECK(cudaMemsetAsync(zeros, 0, 8 * L.slots, st));
    } else if (B > 0) {
      DK_CUDA_CHECK(cudaMemsetAsync(n_valid, 0, 8 * B, st));
    }
    const int64_t* labels = per_class ? ccls : zeros;
    if (nms.mode == kDetectSoft)
      soft_nms_multi_cuda(dt, cbox, cscore, labels, B, N, iou_thr, nms.sigma, nms.decay,
                          nms.min_score, K, oi, os, counts, ws + L.nms, L.nms_bytes, device, st,
                          n_valid);
    else
      matrix_nms_multi_cuda(dt, cbox, cscore, labels, B, N, nms.decay, nms.sigma,
                            nms.has_min_score, nms.min_score, K, -1, oi, os, counts, ws + L.nms,
                            L.nms_bytes, device, st, n_valid);
    dec = os;
  }
  // 5. outputs
  if (B * K > 0) {
    detect_output_kernel<T><<<grid_1d(B * K), kThreads, 0, st>>>(B, K, N, counts, cbox, cscore,
                                                                 ccls, canchor, dec, ob, os, oc, oi);
    DK_CUDA_CHECK_LAUNCH("detect_output_kernel");
  }
}

}  // namespace

int64_t detect_cuda_workspace_bytes(int dtype, int64_t B, int64_t A, int64_t C, bool multi_label,
                                    int64_t top_k, int nms_mode, int64_t mask_cap_bytes,
                                    int device) {
  DeviceGuard guard(device);
  return make_layout(dtype, B, A, C, multi_label, top_k, nms_mode, mask_cap_bytes, device).bytes;
}

void detect_cuda(int dtype, const void* boxes, const void* scores, const void* objectness,
                 const int64_t* idxs, int64_t B, int64_t A, int64_t C, const DetectStrides& st,
                 int fmt, double iou_threshold, bool has_score_thr, double score_thr,
                 int64_t top_k, int64_t max_det, bool multi_label, bool class_agnostic,
                 const DetectNms& nms, void* out_boxes, void* out_scores, int64_t* out_cls,
                 int64_t* out_idx, int64_t* counts, void* workspace, int64_t workspace_bytes,
                 int64_t mask_cap_bytes, int device, void* stream) {
  dispatch_float(dtype, "detect", [&](auto t) {
    using T = decltype(t);
    DeviceGuard guard(device);
    const bool multi = multi_label && C > 0;
    const Layout L = make_layout(dtype, B, A, C, multi, top_k, nms.mode, mask_cap_bytes, device);
    if (workspace_bytes < L.bytes)
      throw std::invalid_argument("detect (CUDA): workspace of " + std::to_string(workspace_bytes) +
                                  " bytes is smaller than the " + std::to_string(L.bytes) +
                                  " needed");
    const DetectGpuArgs<T> g{static_cast<const T*>(boxes), static_cast<const T*>(scores),
                             static_cast<const T*>(objectness), idxs, A, C, L.M, st, fmt,
                             multi ? 1 : 0, has_score_thr ? 1 : 0, score_thr};
    run(g, B, iou_threshold, max_det, class_agnostic, nms, static_cast<T*>(out_boxes),
        static_cast<T*>(out_scores), out_cls, out_idx, counts, static_cast<char*>(workspace), L,
        mask_cap_bytes, device, static_cast<cudaStream_t>(stream));
  });
}

}  // namespace detkernels
