// CUDA rotated RoIAlign launches, bit-exact with the reference (detkernels/reference/
// roi_align_rotated.py). Forward: roi_align_rotated_kernels.cuh; backward: the generic
// deterministic scatter (roi_scatter_launch.cuh; no atomics) with the RoiAlignRotatedScatter
// policy. The workspace size is roi_align's (roi_align_backward_cuda_workspace_bytes).
#include "common/roi_scatter_launch.cuh"
#include "ops/roi_align/roi_align_rotated_kernels.cuh"

namespace detkernels {
namespace {

template <typename T>
RoiGeom<T> geom(const void* rois, int64_t K, double scale, int64_t PH, int64_t PW, int64_t N,
                int64_t H, int64_t W, int64_t sr, bool aligned) {
  return {static_cast<const T*>(rois), static_cast<T>(scale), K, PH, PW, N, H, W, sr, aligned, false};
}

}  // namespace

void roi_align_rotated_forward_cuda(int dtype, const void* input, const Strides4& st, int64_t N,
                                    int64_t C, int64_t H, int64_t W, const void* rois, int64_t K,
                                    double scale, int64_t PH, int64_t PW, int64_t sr, bool aligned,
                                    bool clockwise, void* out, int device, void* stream) {
  dispatch_float(dtype, "roi_align_rotated", [&](auto t) {
    using T = decltype(t);
    const int64_t total = K * C * PH * PW;
    if (total == 0) return;
    DeviceGuard guard(device);
    const bool channels_inner = st[1] == 1 && C > 1;
    roi_align_rotated_forward<T><<<roi_blocks(total), kRoiThreads, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<const T*>(input), st[0], st[1], st[2], st[3], N, C, H, W,
        static_cast<const T*>(rois), K, static_cast<T>(scale), PH, PW, sr, aligned, clockwise,
        channels_inner, static_cast<T*>(out));
    DK_CUDA_CHECK_LAUNCH("roi_align_rotated_forward");
  });
}

int64_t roi_align_rotated_backward_cuda_prepare(int dtype, const void* rois, int64_t K, double scale,
                                                int64_t PH, int64_t PW, int64_t N, int64_t sr,
                                                bool aligned, bool clockwise, void* pre, int device,
                                                void* stream) {
  return dispatch_float(dtype, "roi_align_rotated", [&](auto t) -> int64_t {
    using T = decltype(t);
    if (K == 0) return 0;
    DeviceGuard guard(device);
    const RoiGeom<T> g = geom<T>(rois, K, scale, PH, PW, N, 1, 1, sr, aligned);  // H, W: not in counts
    const cudaStream_t s = static_cast<cudaStream_t>(stream);
    return clockwise ? roi_scatter_prepare<RoiAlignRotatedScatter<T, true>>(g, pre, s, "roi_align_rotated backward prepare")
                     : roi_scatter_prepare<RoiAlignRotatedScatter<T, false>>(g, pre, s, "roi_align_rotated backward prepare");
  });
}

void roi_align_rotated_backward_cuda(int dtype, const void* grad, const Strides4& gst,
                                     const void* rois, int64_t K, double scale, int64_t PH,
                                     int64_t PW, int64_t N, int64_t C, int64_t H, int64_t W,
                                     int64_t sr, bool aligned, bool clockwise, const void* pre,
                                     int64_t M, void* ws, int64_t ws_bytes, void* gi, int device,
                                     void* stream) {
  dispatch_float(dtype, "roi_align_rotated", [&](auto t) {
    using T = decltype(t);
    DeviceGuard guard(device);
    const RoiGeom<T> g = geom<T>(rois, K, scale, PH, PW, N, H, W, sr, aligned);
    const cudaStream_t s = static_cast<cudaStream_t>(stream);
    if (clockwise)
      roi_scatter_backward<RoiAlignRotatedScatter<T, true>>(g, static_cast<const T*>(grad), gst.data(), C, pre,
                                                            M, ws, ws_bytes, static_cast<T*>(gi), s,
                                                            "roi_align_rotated backward");
    else
      roi_scatter_backward<RoiAlignRotatedScatter<T, false>>(g, static_cast<const T*>(grad), gst.data(), C,
                                                             pre, M, ws, ws_bytes, static_cast<T*>(gi), s,
                                                             "roi_align_rotated backward");
  });
}

}  // namespace detkernels
