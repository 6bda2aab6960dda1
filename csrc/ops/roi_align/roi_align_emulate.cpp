// The CUDA RoIAlign kernels' steps run sequentially on the CPU (roi_align_gpu.h): the same
// per-thread functions; the backward through the generic scatter emulation (roi_scatter_emulate.h).
#include <stdexcept>

#include "common/dispatch.h"
#include "common/roi_scatter_emulate.h"
#include "ops/roi_align/roi_align_gpu.h"

namespace detkernels {
namespace {

template <typename T>
void backward(bool ps, const T* grad, const int64_t* gs, const T* rois, int64_t K, T ss, int64_t PH,
              int64_t PW, int64_t N, int64_t C, int64_t H, int64_t W, int64_t sr, bool aligned,
              T* gi) {
  const RoiAlignScatter<T> pol{{rois, ss, K, PH, PW, N, H, W, sr, aligned, ps}};
  roi_scatter_emulate(pol, grad, gs, C, gi);
}

template <typename T>
void forward(bool ps, const T* in, const int64_t* st, int64_t N, int64_t C, int64_t H, int64_t W,
             const T* rois, int64_t K, T ss, int64_t PH, int64_t PW, int64_t sr, bool aligned, T* out) {
  const int64_t Co = ps ? C / (PH * PW) : C;
  for (int64_t n = 0; n < K; ++n)
    for (int64_t c = 0; c < Co; ++c)
      for (int64_t ph = 0; ph < PH; ++ph)
        for (int64_t pw = 0; pw < PW; ++pw)
          out[((n * Co + c) * PH + ph) * PW + pw] =
              roi_align_output(in, st, N, H, W, rois, n, c, ph, pw, ss, PH, PW, sr, aligned, ps);
}

}  // namespace

void roi_align_backward_emulate_cpu(int dtype, bool ps, const void* grad, const Strides4& gs,
                                    const void* rois, int64_t K, double scale, int64_t PH,
                                    int64_t PW, int64_t N, int64_t C, int64_t H, int64_t W,
                                    int64_t sr, bool aligned, void* gi) {
  dispatch_float(dtype, "roi_align", [&](auto t) {
    using T = decltype(t);
    backward(ps, static_cast<const T*>(grad), gs.data(), static_cast<const T*>(rois), K,
             static_cast<T>(scale), PH, PW, N, C, H, W, sr, aligned, static_cast<T*>(gi));
  });
}

void roi_align_forward_emulate_cpu(int dtype, bool ps, const void* input, const Strides4& st,
                                   int64_t N, int64_t C, int64_t H, int64_t W, const void* rois,
                                   int64_t K, double scale, int64_t PH, int64_t PW, int64_t sr,
                                   bool aligned, void* out) {
  dispatch_float(dtype, "roi_align", [&](auto t) {
    using T = decltype(t);
    forward(ps, static_cast<const T*>(input), st.data(), N, C, H, W, static_cast<const T*>(rois), K,
            static_cast<T>(scale), PH, PW, sr, aligned, static_cast<T*>(out));
  });
}

}  // namespace detkernels
