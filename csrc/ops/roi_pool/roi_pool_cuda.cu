// CUDA RoIPool / PSRoIPool launches, bit-exact with the reference; kernels in roi_pool_kernels.cuh
// (shared with the CuPy backend). Forward: one thread per output element, no host sync.
// Backward (no atomics, deterministic, roi_pool_gpu.h): roi_pool keys its K*C*PH*PW output
// elements by argmax target, CUB-sorts them stably and sums each run (no host sync);
// ps_roi_pool runs the generic scatter of roi_scatter_launch.cuh, whose prepare step syncs once
// to size the workspace.
#include "common/roi_scatter_launch.cuh"
#include "ops/roi_pool/roi_pool_kernels.cuh"

namespace detkernels {
namespace {

template <typename T>
RoiGeom<T> ps_geom(const void* rois, int64_t K, double scale, int64_t PH, int64_t PW, int64_t N,
                   int64_t H, int64_t W) {
  return {static_cast<const T*>(rois), static_cast<T>(scale), K, PH, PW, N, H, W, 0, false, true};
}

}  // namespace

void roi_pool_forward_cuda(int dtype, bool ps, const void* input, const Strides4& st, int64_t N,
                           int64_t C, int64_t H, int64_t W, const void* rois, int64_t K,
                           double scale, int64_t PH, int64_t PW, void* out, int32_t* idx,
                           int device, void* stream) {
  dispatch_float(dtype, "roi_pool", [&](auto t) {
    using T = decltype(t);
    const int64_t Co = ps ? C / (PH * PW) : C;
    const int64_t total = K * Co * PH * PW;
    if (total == 0) return;
    DeviceGuard guard(device);
    const bool channels_inner = !ps && st[1] == 1 && C > 1;
    roi_pool_forward<T><<<roi_blocks(total), kRoiThreads, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<const T*>(input), st[0], st[1], st[2], st[3], N, Co, H, W,
        static_cast<const T*>(rois), K, static_cast<T>(scale), PH, PW, ps, channels_inner,
        static_cast<T*>(out), idx);
    DK_CUDA_CHECK_LAUNCH("roi_pool_forward");
  });
}

int64_t ps_roi_pool_backward_cuda_pre_bytes(int64_t K, int64_t PH, int64_t PW) {
  return roi_scatter_pre_bytes(K, PH, PW, PsRoiPoolScatter<float>::kDivPerBin);
}

int64_t ps_roi_pool_backward_cuda_prepare(int dtype, const void* rois, int64_t K, double scale,
                                          int64_t PH, int64_t PW, int64_t N, int64_t H, int64_t W,
                                          void* pre, int device, void* stream) {
  return dispatch_float(dtype, "ps_roi_pool", [&](auto t) -> int64_t {
    using T = decltype(t);
    if (K == 0) return 0;
    DeviceGuard guard(device);
    return roi_scatter_prepare<PsRoiPoolScatter<T>>(ps_geom<T>(rois, K, scale, PH, PW, N, H, W),
                                                    pre, static_cast<cudaStream_t>(stream),
                                                    "ps_roi_pool backward prepare");
  });
}

int64_t roi_pool_backward_cuda_workspace_bytes(bool ps, int64_t M, int64_t N, int64_t C, int64_t H,
                                               int64_t W, int device) {
  if (M == 0) return 0;
  DeviceGuard guard(device);
  return roi_sort_workspace_bytes(M, ps ? N * H * W : N * C * H * W);
}

void roi_pool_backward_cuda(int dtype, bool ps, const void* grad, const Strides4& gst,
                            const void* rois, const int32_t* argmax, int64_t K, double scale,
                            int64_t PH, int64_t PW, int64_t N, int64_t C, int64_t H, int64_t W,
                            const void* pre, int64_t M, void* ws, int64_t ws_bytes, void* gi,
                            int device, void* stream) {
  dispatch_float(dtype, "roi_pool", [&](auto t) {
    using T = decltype(t);
    DeviceGuard guard(device);
    auto s = static_cast<cudaStream_t>(stream);
    const T* g = static_cast<const T*>(grad);
    T* out = static_cast<T*>(gi);
    if (ps)
      return roi_scatter_backward<PsRoiPoolScatter<T>>(ps_geom<T>(rois, K, scale, PH, PW, N, H, W),
                                                       g, gst.data(), C, pre, M, ws, ws_bytes, out,
                                                       s, "ps_roi_pool backward");
    const int64_t HW = H * W, none = N * C * HW;
    if (none > 0) DK_CUDA_CHECK(cudaMemsetAsync(out, 0, sizeof(T) * none, s));
    if (M != K * C * PH * PW)
      throw std::invalid_argument("roi_pool backward (CUDA): M must be K*C*PH*PW");
    if (M == 0) return;
    const RoiSortBuffers b = roi_sort_buffers(ws, M);
    roi_pool_max_keys<T><<<roi_blocks(M), kRoiThreads, 0, s>>>(
        static_cast<const T*>(rois), argmax, M, C, PH * PW, N, HW, b.key_in, b.seq_in);
    DK_CUDA_CHECK_LAUNCH("roi_pool_max_keys");
    roi_sort_pairs(ws, ws_bytes, M, none, s, "roi_pool backward");
    roi_pool_max_reduce<T><<<roi_blocks(M), kRoiThreads, 0, s>>>(
        b.key_out, b.seq_out, M, none, g, gst[0], gst[1], gst[2], gst[3], C, PH, PW, out);
    DK_CUDA_CHECK_LAUNCH("roi_pool_max_reduce");
  });
}

}  // namespace detkernels
