// CUDA (multi-image) Soft-NMS: one launch of soft_nms_kernel (soft_nms_kernels.cuh; the
// algorithm and its cost are described in soft_nms_gpu.h, whose steps soft_nms_emulate.cpp runs
// on the CPU for the tests), one block per image. Everything is enqueued on the caller's stream
// in the caller's workspace (soft_nms_multi_cuda_workspace_bytes): no host synchronisation, no
// allocation, so a call can be captured in a CUDA graph.
#include <stdexcept>
#include <string>

#include "common/cuda_check.h"
#include "common/dispatch.h"
#include "ops/nms/soft_nms_kernels.cuh"

namespace detkernels {
namespace {

constexpr int64_t kAlign = 256;

struct SoftLayout {
  int64_t s, alive, cnt, pick_idx, pick_s, bytes;
};

SoftLayout soft_layout(int dtype, int64_t B, int64_t N, bool has_classes) {
  const int64_t ts = dtype == kFloat64 ? 8 : 4, n = B * N;
  SoftLayout L{};
  int64_t off = 0;
  auto take = [&](int64_t bytes) {
    const int64_t at = off;
    off += ceil_div<int64_t>(bytes > 0 ? bytes : 1, kAlign) * kAlign;
    return at;
  };
  L.s = take(ts * n);
  L.alive = take(n);
  L.cnt = take(has_classes ? 4 * n : 0);
  L.pick_idx = take(8 * n);
  L.pick_s = take(ts * n);
  L.bytes = off;
  return L;
}

}  // namespace

int64_t soft_nms_multi_cuda_workspace_bytes(int dtype, int64_t B, int64_t N, bool has_classes) {
  return soft_layout(dtype, B, N, has_classes).bytes;
}

void soft_nms_multi_cuda(int dtype, const void* boxes, const void* scores, const int64_t* classes,
                         int64_t B, int64_t N, double iou_threshold, double sigma, int method,
                         double score_threshold, int64_t max_output, int64_t* out_idx,
                         void* out_scores, int64_t* counts, void* workspace,
                         int64_t workspace_bytes, int device, void* stream,
                         const int64_t* n_valid) {
  if (method != kSoftLinear && method != kSoftGaussian)
    throw std::invalid_argument("soft_nms (CUDA): method must be 0 (linear) or 1 (gaussian)");
  if (B == 0) return;
  dispatch_float(dtype, "soft_nms", [&](auto t) {
    using T = decltype(t);
    DeviceGuard guard(device);
    auto st = static_cast<cudaStream_t>(stream);
    const SoftLayout L = soft_layout(dtype, B, N, classes != nullptr);
    if (workspace_bytes < L.bytes)
      throw std::invalid_argument("soft_nms (CUDA): workspace of " + std::to_string(workspace_bytes) +
                                  " bytes is smaller than the " + std::to_string(L.bytes) +
                                  " needed");
    char* ws = static_cast<char*>(workspace);
    soft_nms_kernel<T><<<static_cast<unsigned>(B), kSoftNmsThreads, 0, st>>>(
        static_cast<const T*>(boxes), static_cast<const T*>(scores), classes, N, method,
        iou_threshold, sigma, score_threshold, max_output, reinterpret_cast<T*>(ws + L.s),
        reinterpret_cast<uint8_t*>(ws + L.alive),
        classes ? reinterpret_cast<int32_t*>(ws + L.cnt) : nullptr,
        reinterpret_cast<int64_t*>(ws + L.pick_idx), reinterpret_cast<T*>(ws + L.pick_s), out_idx,
        static_cast<T*>(out_scores), counts, n_valid);
    DK_CUDA_CHECK_LAUNCH("soft_nms_kernel");
  });
}

}  // namespace detkernels
