// CPU loops over roi_pool.h (RoIPool and PSRoIPool, forward and backward).
// Forward: RoIs split across threads. Backward: input channels split across threads, each walking
// the RoIs in order, so every grad_input element sums its contributions in the reference order.
#include "ops/roi_pool/roi_pool.h"

#include <algorithm>
#include <stdexcept>

#include "common/dispatch.h"
#include "common/parallel.h"
#include "ops/roi_align/roi_align.h"  // roi_batch_index

namespace detkernels {
namespace {

template <typename T>
void forward(bool ps, const T* in, const int64_t* st, int64_t N, int64_t C, int64_t H, int64_t W,
             const T* rois, int64_t K, T ss, int64_t PH, int64_t PW, T* out, int32_t* idx) {
  const int64_t nb = PH * PW, Co = ps ? C / nb : C;
  const int64_t sN = st[0], sC = st[1], sH = st[2], sW = st[3];
  parallel_for(K, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t n = lo; n < hi; ++n) {
      T* o = out + n * Co * nb;
      int32_t* ix = idx + n * Co * nb;
      const T* roi = rois + 5 * n;
      const int64_t b = roi_batch_index(roi[0], N);
      const RoiPoolBox<T> g = roi_pool_box(roi, ss, PH, PW, ps);
      for (int64_t c = 0; c < Co; ++c)
        for (int64_t k = 0; k < nb; ++k) {
          const int64_t e = c * nb + k, cin = ps ? c * nb + k : c;
          if (ps) ix[e] = static_cast<int32_t>(cin);
          const T* p = b < 0 ? nullptr : in + b * sN + cin * sC;
          o[e] = roi_pool_bin_value(p, sH, sW, g, k / PW, k % PW, H, W, ps, &ix[e]);
        }
    }
  });
}

template <typename T>
void backward(bool ps, const T* grad, const int64_t* gs, const T* rois, const int32_t* argmax,
              int64_t K, T ss, int64_t PH, int64_t PW, int64_t N, int64_t C, int64_t H, int64_t W,
              T* gi) {
  const int64_t nb = PH * PW, HW = H * W, Co = ps ? C / nb : C;
  std::fill(gi, gi + N * C * HW, T(0));
  parallel_for(C, 8, [&](int64_t c_lo, int64_t c_hi) {
    for (int64_t n = 0; n < K; ++n) {
      const T* roi = rois + 5 * n;
      const int64_t b = roi_batch_index(roi[0], N);
      if (b < 0) continue;
      const T* gn = grad + n * gs[0];
      if (!ps) {
        for (int64_t c = c_lo; c < c_hi; ++c) {
          T* p = gi + (b * C + c) * HW;
          const int32_t* am = argmax + (n * C + c) * nb;
          for (int64_t k = 0; k < nb; ++k)
            if (am[k] >= 0 && am[k] < HW) p[am[k]] += gn[c * gs[1] + (k / PW) * gs[2] + (k % PW) * gs[3]];
        }
        continue;
      }
      const RoiPoolBox<T> g = roi_pool_box(roi, ss, PH, PW, true);
      if (!g.ok) continue;
      for (int64_t c = c_lo; c < c_hi; ++c) {
        const int64_t k = c % nb, co = c / nb, ph = k / PW, pw = k % PW;
        if (co >= Co) continue;
        int64_t hs = 0, he = 0, ws = 0, we = 0;
        roi_pool_bin(g.bin_h, ph, g.sh, H - 1, hs, he);
        roi_pool_bin(g.bin_w, pw, g.sw, W - 1, ws, we);
        if (he <= hs || we <= ws) continue;
        const T d = gn[co * gs[1] + ph * gs[2] + pw * gs[3]] / T((he - hs) * (we - ws));
        T* p = gi + (b * C + c) * HW;
        for (int64_t h = hs; h < he; ++h)
          for (int64_t w = ws; w < we; ++w) p[h * W + w] += d;
      }
    }
  });
}

}  // namespace

void roi_pool_forward_cpu(int dtype, bool ps, const void* input, const Strides4& in_strides,
                          int64_t N, int64_t C, int64_t H, int64_t W, const void* rois, int64_t K,
                          double spatial_scale, int64_t PH, int64_t PW, void* out, int32_t* idx) {
  if (K == 0) return;
  dispatch_float(dtype, "roi_pool", [&](auto t) {
    using T = decltype(t);
    forward(ps, static_cast<const T*>(input), in_strides.data(), N, C, H, W,
            static_cast<const T*>(rois), K, static_cast<T>(spatial_scale), PH, PW, static_cast<T*>(out), idx);
  });
}

void roi_pool_backward_cpu(int dtype, bool ps, const void* grad, const Strides4& grad_strides,
                           const void* rois, const int32_t* argmax, int64_t K, double spatial_scale,
                           int64_t PH, int64_t PW, int64_t N, int64_t C, int64_t H, int64_t W,
                           void* grad_input) {
  dispatch_float(dtype, "roi_pool", [&](auto t) {
    using T = decltype(t);
    backward(ps, static_cast<const T*>(grad), grad_strides.data(), static_cast<const T*>(rois),
             argmax, K, static_cast<T>(spatial_scale), PH, PW, N, C, H, W, static_cast<T*>(grad_input));
  });
}

}  // namespace detkernels
