// CUDA RoIAlign / PSRoIAlign launches, bit-exact with the reference. The kernels live in
// roi_align_kernels.cuh (shared with the CuPy backend); the backward is the generic deterministic
// scatter (roi_scatter_launch.cuh: counts + scan -> keys -> CUB stable radix sort -> decode ->
// ordered per-(run, channel) sums; no atomics) with the RoiAlignScatter policy.
#include "ops/roi_align/roi_align_kernels.cuh"
#include "common/roi_scatter_launch.cuh"

namespace detkernels {
namespace {

template <typename T>
RoiGeom<T> geom(const void* rois, int64_t K, double scale, int64_t PH, int64_t PW, int64_t N,
                int64_t H, int64_t W, int64_t sr, bool aligned, bool ps) {
  return {static_cast<const T*>(rois), static_cast<T>(scale), K, PH, PW, N, H, W, sr, aligned, ps};
}

}  // namespace

void roi_align_forward_cuda(int dtype, bool ps, const void* input, const Strides4& st, int64_t N,
                            int64_t C, int64_t H, int64_t W, const void* rois, int64_t K,
                            double scale, int64_t PH, int64_t PW, int64_t sr, bool aligned,
                            void* out, int device, void* stream) {
  dispatch_float(dtype, "roi_align", [&](auto t) {
    using T = decltype(t);
    const int64_t Co = ps ? C / (PH * PW) : C;
    const int64_t total = K * Co * PH * PW;
    if (total == 0) return;
    DeviceGuard guard(device);
    const bool channels_inner = !ps && st[1] == 1 && C > 1;
    roi_align_forward<T><<<roi_blocks(total), kRoiThreads, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<const T*>(input), st[0], st[1], st[2], st[3], N, Co, H, W,
        static_cast<const T*>(rois), K, static_cast<T>(scale), PH, PW, sr, aligned, ps,
        channels_inner, static_cast<T*>(out));
    DK_CUDA_CHECK_LAUNCH("roi_align_forward");
  });
}

int64_t roi_align_backward_cuda_prepare(int dtype, bool ps, const void* rois, int64_t K,
                                        double scale, int64_t PH, int64_t PW, int64_t N, int64_t sr,
                                        bool aligned, void* pre, int device, void* stream) {
  return dispatch_float(dtype, "roi_align", [&](auto t) -> int64_t {
    using T = decltype(t);
    if (K == 0) return 0;
    DeviceGuard guard(device);
    // H and W do not enter the slot counts.
    return roi_scatter_prepare<RoiAlignScatter<T>>(
        geom<T>(rois, K, scale, PH, PW, N, 1, 1, sr, aligned, ps), pre,
        static_cast<cudaStream_t>(stream), "roi_align backward prepare");
  });
}

int64_t roi_align_backward_cuda_workspace_bytes(int64_t M, int64_t N, int64_t H, int64_t W,
                                                int device) {
  if (M == 0) return 0;
  DeviceGuard guard(device);
  return roi_sort_workspace_bytes(M, N * H * W);
}

void roi_align_backward_cuda(int dtype, bool ps, const void* grad, const Strides4& gst,
                             const void* rois, int64_t K, double scale, int64_t PH, int64_t PW,
                             int64_t N, int64_t C, int64_t H, int64_t W, int64_t sr, bool aligned,
                             const void* pre, int64_t M, void* ws, int64_t ws_bytes, void* gi,
                             int device, void* stream) {
  dispatch_float(dtype, "roi_align", [&](auto t) {
    using T = decltype(t);
    DeviceGuard guard(device);
    roi_scatter_backward<RoiAlignScatter<T>>(
        geom<T>(rois, K, scale, PH, PW, N, H, W, sr, aligned, ps), static_cast<const T*>(grad),
        gst.data(), C, pre, M, ws, ws_bytes, static_cast<T*>(gi),
        static_cast<cudaStream_t>(stream), "roi_align backward");
  });
}

}  // namespace detkernels
