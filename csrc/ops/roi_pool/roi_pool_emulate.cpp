// The CUDA RoIPool / PSRoIPool kernels' steps run sequentially on the CPU (roi_pool_gpu.h): the
// same per-item functions, std::stable_sort in place of the (stable) radix sort. Tests only.
#include <stdexcept>

#include "common/dispatch.h"
#include "common/roi_scatter_emulate.h"
#include "ops/roi_pool/roi_pool_gpu.h"

namespace detkernels {
namespace {

template <typename T>
void forward(bool ps, const T* in, const int64_t* st, int64_t N, int64_t C, int64_t H, int64_t W,
             const T* rois, int64_t K, T ss, int64_t PH, int64_t PW, T* out, int32_t* idx) {
  const int64_t Co = ps ? C / (PH * PW) : C;
  for (int64_t n = 0; n < K; ++n)
    for (int64_t c = 0; c < Co; ++c)
      for (int64_t ph = 0; ph < PH; ++ph)
        for (int64_t pw = 0; pw < PW; ++pw) {
          const int64_t e = ((n * Co + c) * PH + ph) * PW + pw;
          int arg = -1;
          out[e] = roi_pool_output(in, st, N, H, W, rois, n, c, ph, pw, ss, PH, PW, ps, &arg);
          idx[e] = arg;
        }
}

template <typename T>
void backward(bool ps, const T* grad, const int64_t* gs, const T* rois, const int32_t* argmax,
              int64_t K, T ss, int64_t PH, int64_t PW, int64_t N, int64_t C, int64_t H, int64_t W,
              T* gi) {
  if (ps) {
    const PsRoiPoolScatter<T> pol{{rois, ss, K, PH, PW, N, H, W, 0, false, true}};
    return roi_scatter_emulate(pol, grad, gs, C, gi);
  }
  const int64_t HW = H * W, none = N * C * HW, M = K * C * PH * PW;
  std::fill(gi, gi + none, T(0));
  std::vector<int64_t> key(M), skey, seq;
  for (int64_t i = 0; i < M; ++i) key[i] = roi_pool_max_key(rois, argmax, i, C, PH * PW, N, HW);
  roi_emulate_sort(key, skey, seq);
  for (int64_t p = 0; p < M; ++p)
    if (roi_run_start(skey.data(), p, none))
      gi[skey[p]] = roi_pool_max_run_sum(seq.data(), p, roi_run_end(skey.data(), p, M), grad, gs,
                                         C, PH, PW);
}

}  // namespace

void roi_pool_forward_emulate_cpu(int dtype, bool ps, const void* input, const Strides4& st,
                                  int64_t N, int64_t C, int64_t H, int64_t W, const void* rois,
                                  int64_t K, double scale, int64_t PH, int64_t PW, void* out,
                                  int32_t* idx) {
  dispatch_float(dtype, "roi_pool", [&](auto t) {
    using T = decltype(t);
    forward(ps, static_cast<const T*>(input), st.data(), N, C, H, W, static_cast<const T*>(rois), K,
            static_cast<T>(scale), PH, PW, static_cast<T*>(out), idx);
  });
}

void roi_pool_backward_emulate_cpu(int dtype, bool ps, const void* grad, const Strides4& gs,
                                   const void* rois, const int32_t* argmax, int64_t K, double scale,
                                   int64_t PH, int64_t PW, int64_t N, int64_t C, int64_t H,
                                   int64_t W, void* gi) {
  dispatch_float(dtype, "roi_pool", [&](auto t) {
    using T = decltype(t);
    backward(ps, static_cast<const T*>(grad), gs.data(), static_cast<const T*>(rois), argmax, K,
             static_cast<T>(scale), PH, PW, N, C, H, W, static_cast<T*>(gi));
  });
}

}  // namespace detkernels
