// CPU loops over roi_align.h (RoIAlign and PSRoIAlign, forward and backward).
//
// Per RoI the in-range samples of every bin are listed once (offsets and bilinear weights do not
// depend on the channel), then applied to each channel. Forward: RoIs split across threads.
// Channels-last input (channel stride 1) takes a path whose inner loop runs over contiguous
// channels, so it vectorises; per channel the operations and their order are the reference's.
// Backward: input channels split across threads; each thread walks all RoIs in order, so every
// grad_input element receives its contributions in the reference order whatever the thread count.
#include "ops/roi_align/roi_align.h"

#include <algorithm>
#include <stdexcept>
#include <vector>

#include "common/parallel.h"

namespace detkernels {
namespace {

// The four taps of one in-range sample: element offsets (through the strides) and weights.
template <typename T> struct Taps {
  int64_t o[4];
  T w[4];
};

// In-range samples of one RoI, bin-major (ph, pw), then iy, ix: bin k owns taps[start[k], start[k+1]).
template <typename T> struct RoiSamples {
  std::vector<AxisSample<T>> ys, xs;
  std::vector<int64_t> ystart, xstart;
  std::vector<Taps<T>> taps;
  std::vector<int64_t> start;

  void build(const RoiAlignBox<T>& g, int64_t PH, int64_t PW, int64_t H, int64_t W, int64_t sH,
             int64_t sW) {
    axis(g.y0, g.bin_h, PH, g.gh, H, ys, ystart);
    axis(g.x0, g.bin_w, PW, g.gw, W, xs, xstart);
    taps.clear();
    start.assign(1, 0);
    for (int64_t ph = 0; ph < PH; ++ph)
      for (int64_t pw = 0; pw < PW; ++pw) {
        for (int64_t a = ystart[ph]; a < ystart[ph + 1]; ++a)
          for (int64_t b = xstart[pw]; b < xstart[pw + 1]; ++b) {
            const AxisSample<T>& y = ys[a];
            const AxisSample<T>& x = xs[b];
            Taps<T> t;
            roi_weights(y, x, t.w);
            t.o[0] = y.lo * sH + x.lo * sW;
            t.o[1] = y.lo * sH + x.hi * sW;
            t.o[2] = y.hi * sH + x.lo * sW;
            t.o[3] = y.hi * sH + x.hi * sW;
            taps.push_back(t);
          }
        start.push_back(static_cast<int64_t>(taps.size()));
      }
  }

 private:
  static void axis(T s0, T bin, int64_t P, int64_t grid, int64_t size, std::vector<AxisSample<T>>& v,
                   std::vector<int64_t>& st) {
    v.clear();
    st.assign(1, 0);
    for (int64_t p = 0; p < P; ++p) {
      for (int64_t i = 0; i < grid; ++i) {
        const AxisSample<T> s = roi_axis_sample(s0, bin, p, i, grid, size);
        if (s.valid) v.push_back(s);
      }
      st.push_back(static_cast<int64_t>(v.size()));
    }
  }
};

template <typename T>
void forward(bool ps, const T* in, const int64_t* st, int64_t N, int64_t C, int64_t H, int64_t W,
             const T* rois, int64_t K, T ss, int64_t PH, int64_t PW, int64_t sr, bool aligned, T* out) {
  const int64_t nb = PH * PW, Co = ps ? C / nb : C;
  const int64_t sN = st[0], sC = st[1], sH = st[2], sW = st[3];
  const bool channels_last = !ps && sC == 1 && C > 1;
  parallel_for(K, 1, [&](int64_t lo, int64_t hi) {
    RoiSamples<T> S;
    std::vector<T> acc(channels_last ? C : 0);
    for (int64_t n = lo; n < hi; ++n) {
      T* o = out + n * Co * nb;
      const RoiAlignBox<T> g = roi_align_box(rois + 5 * n, ss, PH, PW, sr, aligned, ps, N);
      if (g.batch < 0 || g.gh == 0 || g.gw == 0) {
        std::fill(o, o + Co * nb, T(0));
        continue;
      }
      S.build(g, PH, PW, H, W, sH, sW);
      const T* base = in + g.batch * sN;
      if (channels_last) {
        for (int64_t k = 0; k < nb; ++k) {
          std::fill(acc.begin(), acc.end(), T(0));
          T* a = acc.data();
          for (int64_t t = S.start[k]; t < S.start[k + 1]; ++t) {
            const Taps<T>& tp = S.taps[t];
            const T *p1 = base + tp.o[0], *p2 = base + tp.o[1], *p3 = base + tp.o[2], *p4 = base + tp.o[3];
            for (int64_t c = 0; c < C; ++c) a[c] += roi_bilinear(tp.w, p1[c], p2[c], p3[c], p4[c]);
          }
          for (int64_t c = 0; c < C; ++c) o[c * nb + k] = a[c] / g.count;
        }
        continue;
      }
      for (int64_t c = 0; c < Co; ++c)
        for (int64_t k = 0; k < nb; ++k) {
          const T* p = base + (ps ? c * nb + k : c) * sC;
          T a = T(0);
          for (int64_t t = S.start[k]; t < S.start[k + 1]; ++t) {
            const Taps<T>& tp = S.taps[t];
            a += roi_bilinear(tp.w, p[tp.o[0]], p[tp.o[1]], p[tp.o[2]], p[tp.o[3]]);
          }
          o[c * nb + k] = a / g.count;
        }
    }
  });
}

template <typename T>
void backward(bool ps, const T* grad, const int64_t* gs, const T* rois, int64_t K, T ss, int64_t PH,
              int64_t PW, int64_t N, int64_t C, int64_t H, int64_t W, int64_t sr, bool aligned, T* gi) {
  const int64_t nb = PH * PW, HW = H * W;
  std::fill(gi, gi + N * C * HW, T(0));
  // Threads own input channels; geometry is rebuilt per thread (cheap next to the scatter).
  parallel_for(C, 8, [&](int64_t c_lo, int64_t c_hi) {
    RoiSamples<T> S;
    for (int64_t n = 0; n < K; ++n) {
      const RoiAlignBox<T> g = roi_align_box(rois + 5 * n, ss, PH, PW, sr, aligned, ps, N);
      if (g.batch < 0 || g.gh == 0 || g.gw == 0) continue;
      S.build(g, PH, PW, H, W, W, 1);
      const T* gn = grad + n * gs[0];
      for (int64_t c = c_lo; c < c_hi; ++c) {
        T* p = gi + (g.batch * C + c) * HW;
        // roi_align: every bin feeds channel c; ps: only bin c % nb, from output channel c / nb.
        const int64_t k0 = ps ? c % nb : 0, k1 = ps ? k0 + 1 : nb;
        const int64_t co = ps ? c / nb : c;
        for (int64_t k = k0; k < k1; ++k) {
          const T gv = gn[co * gs[1] + (k / PW) * gs[2] + (k % PW) * gs[3]];
          for (int64_t t = S.start[k]; t < S.start[k + 1]; ++t) {
            const Taps<T>& tp = S.taps[t];
            for (int j = 0; j < 4; ++j) p[tp.o[j]] += (gv * tp.w[j]) / g.count;
          }
        }
      }
    }
  });
}

}  // namespace

void roi_align_forward_cpu(int dtype, bool ps, const void* input, const int64_t* in_strides,
                           int64_t N, int64_t C, int64_t H, int64_t W, const void* rois, int64_t K,
                           double spatial_scale, int64_t PH, int64_t PW, int64_t sampling_ratio,
                           bool aligned, void* out) {
  if (K == 0) return;
  switch (dtype) {
    case kFloat32:
      return forward(ps, static_cast<const float*>(input), in_strides, N, C, H, W,
                     static_cast<const float*>(rois), K, static_cast<float>(spatial_scale), PH, PW,
                     sampling_ratio, aligned, static_cast<float*>(out));
    case kFloat64:
      return forward(ps, static_cast<const double*>(input), in_strides, N, C, H, W,
                     static_cast<const double*>(rois), K, spatial_scale, PH, PW, sampling_ratio,
                     aligned, static_cast<double*>(out));
  }
  throw std::invalid_argument("roi_align: dtype must be float32 or float64");
}

void roi_align_backward_cpu(int dtype, bool ps, const void* grad, const int64_t* grad_strides,
                            const void* rois, int64_t K, double spatial_scale, int64_t PH,
                            int64_t PW, int64_t N, int64_t C, int64_t H, int64_t W,
                            int64_t sampling_ratio, bool aligned, void* grad_input) {
  switch (dtype) {
    case kFloat32:
      return backward(ps, static_cast<const float*>(grad), grad_strides,
                      static_cast<const float*>(rois), K, static_cast<float>(spatial_scale), PH, PW,
                      N, C, H, W, sampling_ratio, aligned, static_cast<float*>(grad_input));
    case kFloat64:
      return backward(ps, static_cast<const double*>(grad), grad_strides,
                      static_cast<const double*>(rois), K, spatial_scale, PH, PW, N, C, H, W,
                      sampling_ratio, aligned, static_cast<double*>(grad_input));
  }
  throw std::invalid_argument("roi_align: dtype must be float32 or float64");
}

}  // namespace detkernels
