// The CUDA rotated RoIAlign kernels' steps run sequentially on the CPU (roi_align_rotated_gpu.h):
// the same per-thread functions; the backward through the generic scatter emulation.
#include "common/dispatch.h"
#include "common/roi_scatter_emulate.h"
#include "ops/roi_align/roi_align_rotated_gpu.h"

namespace detkernels {

void roi_align_rotated_backward_emulate_cpu(int dtype, const void* grad, const Strides4& gs,
                                            const void* rois, int64_t K, double scale, int64_t PH,
                                            int64_t PW, int64_t N, int64_t C, int64_t H, int64_t W,
                                            int64_t sr, bool aligned, bool clockwise, void* gi) {
  dispatch_float(dtype, "roi_align_rotated", [&](auto t) {
    using T = decltype(t);
    const RoiGeom<T> g{static_cast<const T*>(rois), static_cast<T>(scale), K, PH, PW, N, H, W, sr, aligned, false};
    if (clockwise)
      roi_scatter_emulate(RoiAlignRotatedScatter<T, true>{g}, static_cast<const T*>(grad), gs.data(), C,
                          static_cast<T*>(gi));
    else
      roi_scatter_emulate(RoiAlignRotatedScatter<T, false>{g}, static_cast<const T*>(grad), gs.data(), C,
                          static_cast<T*>(gi));
  });
}

void roi_align_rotated_forward_emulate_cpu(int dtype, const void* input, const Strides4& st,
                                           int64_t N, int64_t C, int64_t H, int64_t W,
                                           const void* rois, int64_t K, double scale, int64_t PH,
                                           int64_t PW, int64_t sr, bool aligned, bool clockwise,
                                           void* out) {
  dispatch_float(dtype, "roi_align_rotated", [&](auto t) {
    using T = decltype(t);
    const T* in = static_cast<const T*>(input);
    const T* r = static_cast<const T*>(rois);
    T* o = static_cast<T*>(out);
    for (int64_t n = 0; n < K; ++n)
      for (int64_t c = 0; c < C; ++c)
        for (int64_t ph = 0; ph < PH; ++ph)
          for (int64_t pw = 0; pw < PW; ++pw)
            o[((n * C + c) * PH + ph) * PW + pw] = roi_rotated_output(
                in, st.data(), N, H, W, r, n, c, ph, pw, static_cast<T>(scale), PH, PW, sr, aligned, clockwise);
  });
}

}  // namespace detkernels
