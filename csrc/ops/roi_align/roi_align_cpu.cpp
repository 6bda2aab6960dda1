// CPU loops over roi_align.h (RoIAlign and PSRoIAlign, forward and backward).
//
// Per RoI the in-range samples of each axis are listed once (they do not depend on the channel);
// each bin's taps are their cross product, applied to each channel. Forward: RoIs split across threads.
// roi_align works on channels-last data (the input as given, or a transposed copy when there is
// enough work): its inner loops then run over contiguous channels and vectorise, with the
// reference's operations and order per channel. Backward: channels split across threads; each
// thread walks all RoIs in order, so every grad_input element receives its contributions in the
// reference order whatever the thread count.
#include "ops/roi_align/roi_align.h"
#include "ops/roi_align/roi_align_rotated.h"

#include <algorithm>
#include <stdexcept>
#include <vector>

#include "common/dispatch.h"
#include "common/parallel.h"

namespace detkernels {
namespace {

// The four taps of one in-range sample: element offsets (through the strides) and weights.
template <typename T> struct Taps {
  int64_t o[4];
  T w[4];
};

// In-range samples of one RoI along each axis, bin-major: bin row ph owns ys[ystart[ph],
// ystart[ph + 1]), bin column pw owns xs[xstart[pw], xstart[pw + 1]). A bin's taps are the cross
// product of its two lists, made where they are used (for_each_tap): the tap list itself, bins x
// samples per bin, is never stored, so memory grows with PH*grid + PW*grid only (a stored list
// asked for 21 GB at sampling_ratio = 3000, issue 19.4).
template <typename T> struct RoiSamples {
  std::vector<AxisSample<T>> ys, xs;
  std::vector<int64_t> ystart, xstart;

  void build(const RoiAlignBox<T>& g, int64_t PH, int64_t PW, int64_t H, int64_t W) {
    axis(g.y0, g.bin_h, PH, g.gh, H, ys, ystart);
    axis(g.x0, g.bin_w, PW, g.gw, W, xs, xstart);
  }

  // f(taps) for every in-range sample of bin (ph, pw), iy outer, ix inner (the reference order);
  // offsets through the element strides sH, sW.
  template <typename F> void for_each_tap(int64_t ph, int64_t pw, int64_t sH, int64_t sW, F&& f) const {
    for (int64_t a = ystart[ph]; a < ystart[ph + 1]; ++a) {
      const AxisSample<T>& y = ys[a];
      const int64_t ylo = y.lo * sH, yhi = y.hi * sH;
      for (int64_t b = xstart[pw]; b < xstart[pw + 1]; ++b) {
        const AxisSample<T>& x = xs[b];
        Taps<T> t;
        roi_weights(y, x, t.w);
        t.o[0] = ylo + x.lo * sW;
        t.o[1] = ylo + x.hi * sW;
        t.o[2] = yhi + x.lo * sW;
        t.o[3] = yhi + x.hi * sW;
        f(static_cast<const Taps<T>&>(t));
      }
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

// Channels-last feature maps (channel stride 1) of every work item below: a NCHW input is first
// transposed into one when the sampling work outweighs the copy (see use_channels_last).
template <typename T> struct Nhwc {
  const T* p;
  int64_t sN, sH, sW;  // element strides; channel stride 1
};

// A channels-last copy pays off when the taps read (about 4 per bin) exceed the map's pixels;
// for a few RoIs on a large map (small FPN levels), per-channel gathers are cheaper.
inline bool use_channels_last(int64_t K, int64_t nb, int64_t N, int64_t H, int64_t W) {
  return 4 * K * nb >= N * H * W;
}

template <typename T>
void to_nhwc(const T* in, const int64_t* st, int64_t N, int64_t C, int64_t H, int64_t W, T* out) {
  parallel_for(N * H, 8, [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r) {
      const int64_t n = r / H, h = r % H;
      const T* src = in + n * st[0] + h * st[2];
      T* dst = out + r * W * C;
      for (int64_t w = 0; w < W; ++w)
        for (int64_t c = 0; c < C; ++c) dst[w * C + c] = src[c * st[1] + w * st[3]];
    }
  });
}

// The two vectorised inner loops also get an AVX2 clone, picked at load time on CPUs that have
// it. Same IEEE operations per element (no FMA: -ffp-contract=off), so the same bytes.
#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
#define DK_VEC_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define DK_VEC_CLONES
#endif

// a[c] += bilinear sample, for contiguous channels: the loop g++ vectorises.
template <typename T>
DK_VEC_CLONES void accumulate_sample(T* __restrict a, const T* __restrict p1, const T* __restrict p2,
                       const T* __restrict p3, const T* __restrict p4, const T* wts, int64_t C) {
  const T w[4] = {wts[0], wts[1], wts[2], wts[3]};
  for (int64_t c = 0; c < C; ++c) a[c] += roi_bilinear(w, p1[c], p2[c], p3[c], p4[c]);
}

// a[c] /= count for contiguous channels (vectorised; the reference's division per element).
template <typename T> DK_VEC_CLONES void average_bin(T* __restrict a, T count, int64_t C) {
  for (int64_t c = 0; c < C; ++c) a[c] = a[c] / count;
}

// acc [nb, C] (bin-major) -> o [C, nb], in blocks of 8 channels (see forward_cl).
template <typename T> void store_bins(const T* acc, int64_t nb, int64_t C, T* o) {
  for (int64_t c0 = 0; c0 < C; c0 += 8) {
    const int64_t c1 = std::min(C, c0 + 8);
    for (int64_t k = 0; k < nb; ++k)
      for (int64_t c = c0; c < c1; ++c) o[c * nb + k] = acc[k * C + c];
  }
}

// Per RoI the bins are summed channels-last into acc [nb, C] (contiguous, vectorised), then
// transposed into the output's [C, nb]. Storing each bin straight to o[c * nb + k] cost half the
// forward: 256 stores per bin to 256 cache lines 196 bytes apart. The transpose goes in blocks of
// 8 channels: contiguous reads, and the written lines stay in L1 (reading acc down a column
// strides by C, often a power of two, which thrashes L1 sets).
template <typename T>
void forward_cl(const Nhwc<T>& in, int64_t N, int64_t C, int64_t H, int64_t W, const T* rois,
                int64_t K, T ss, int64_t PH, int64_t PW, int64_t sr, bool aligned, T* out) {
  const int64_t nb = PH * PW;
  parallel_for(K, 1, [&](int64_t lo, int64_t hi) {
    RoiSamples<T> S;
    std::vector<T> acc(static_cast<size_t>(nb * C));
    for (int64_t n = lo; n < hi; ++n) {
      T* o = out + n * C * nb;
      const RoiAlignBox<T> g = roi_align_box(rois + 5 * n, ss, PH, PW, sr, aligned, false, N);
      if (g.batch < 0 || g.gh == 0 || g.gw == 0) {
        std::fill(o, o + C * nb, T(0));
        continue;
      }
      S.build(g, PH, PW, H, W);
      const T* base = in.p + g.batch * in.sN;
      for (int64_t k = 0; k < nb; ++k) {
        T* a = acc.data() + k * C;
        std::fill(a, a + C, T(0));
        S.for_each_tap(k / PW, k % PW, in.sH, in.sW, [&](const Taps<T>& tp) {
          accumulate_sample(a, base + tp.o[0], base + tp.o[1], base + tp.o[2], base + tp.o[3],
                            tp.w, C);
        });
        average_bin(a, g.count, C);
      }
      store_bins(acc.data(), nb, C, o);
    }
  });
}

template <typename T>
void forward(bool ps, const T* in, const int64_t* st, int64_t N, int64_t C, int64_t H, int64_t W,
             const T* rois, int64_t K, T ss, int64_t PH, int64_t PW, int64_t sr, bool aligned, T* out) {
  const int64_t nb = PH * PW, Co = ps ? C / nb : C;
  if (!ps && C > 1) {
    if (st[1] == 1)
      return forward_cl(Nhwc<T>{in, st[0], st[2], st[3]}, N, C, H, W, rois, K, ss, PH, PW, sr,
                        aligned, out);
    if (use_channels_last(K, nb, N, H, W)) {
      std::vector<T> tmp(static_cast<size_t>(N * H * W * C));
      to_nhwc(in, st, N, C, H, W, tmp.data());
      return forward_cl(Nhwc<T>{tmp.data(), H * W * C, W * C, C}, N, C, H, W, rois, K, ss, PH,
                        PW, sr, aligned, out);
    }
  }
  // Per-channel gathers through the strides (ps_roi_align, or few RoIs on a large map).
  const int64_t sN = st[0], sC = st[1], sH = st[2], sW = st[3];
  parallel_for(K, 1, [&](int64_t lo, int64_t hi) {
    RoiSamples<T> S;
    for (int64_t n = lo; n < hi; ++n) {
      T* o = out + n * Co * nb;
      const RoiAlignBox<T> g = roi_align_box(rois + 5 * n, ss, PH, PW, sr, aligned, ps, N);
      if (g.batch < 0 || g.gh == 0 || g.gw == 0) {
        std::fill(o, o + Co * nb, T(0));
        continue;
      }
      S.build(g, PH, PW, H, W);
      const T* base = in + g.batch * sN;
      for (int64_t c = 0; c < Co; ++c)
        for (int64_t k = 0; k < nb; ++k) {
          const T* p = base + (ps ? c * nb + k : c) * sC;
          T a = T(0);
          S.for_each_tap(k / PW, k % PW, sH, sW, [&](const Taps<T>& tp) {
            a += roi_bilinear(tp.w, p[tp.o[0]], p[tp.o[1]], p[tp.o[2]], p[tp.o[3]]);
          });
          o[c * nb + k] = a / g.count;
        }
    }
  });
}

// ws[c] += (g[c] * w) / count for contiguous channels (vectorised; same ops per channel).
template <typename T>
DK_VEC_CLONES void scatter_tap(T* __restrict ws, const T* __restrict g, T w, T count, int64_t n) {
  for (int64_t c = 0; c < n; ++c) ws[c] += (g[c] * w) / count;
}

// [N, H, W, C] -> contiguous [N, C, H, W] in tiles of 16 channels x 64 pixels, so the lines
// read stay cached while their 16 channels are copied out.
template <typename T> void nhwc_to_nchw(const T* ws, int64_t N, int64_t C, int64_t H, int64_t W, T* gi) {
  const int64_t HW = H * W, ncb = (C + 15) / 16;
  parallel_for(N * ncb, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r) {
      const int64_t n = r / ncb, c0 = (r % ncb) * 16, c1 = std::min(C, c0 + 16);
      const T* src = ws + n * HW * C;
      T* dst = gi + n * C * HW;
      for (int64_t i0 = 0; i0 < HW; i0 += 64) {
        const int64_t i1 = std::min(HW, i0 + 64);
        for (int64_t c = c0; c < c1; ++c)
          for (int64_t i = i0; i < i1; ++i) dst[c * HW + i] = src[i * C + c];
      }
    }
  });
}

// One RoI's gradient for nc channels from gn (element strides gs), bin-major into gt [nb, nc],
// in blocks of 8 channels.
template <typename T>
void gather_grad(const T* gn, const int64_t* gs, int64_t nb, int64_t PW, int64_t nc, T* gt) {
  for (int64_t c0 = 0; c0 < nc; c0 += 8) {
    const int64_t c1 = std::min(nc, c0 + 8);
    for (int64_t k = 0; k < nb; ++k) {
      const T* gk = gn + (k / PW) * gs[2] + (k % PW) * gs[3];
      for (int64_t c = c0; c < c1; ++c) gt[k * nc + c] = gk[c * gs[1]];
    }
  }
}

// roi_align backward into a channels-last workspace [N, H, W, C]: threads own channel ranges and
// walk all RoIs in order, so each element's sum keeps the order (roi, ph, pw, iy, ix, tap).
template <typename T>
void backward_cl(const T* grad, const int64_t* gs, const T* rois, int64_t K, T ss, int64_t PH,
                 int64_t PW, int64_t N, int64_t C, int64_t H, int64_t W, int64_t sr, bool aligned,
                 T* gi) {
  const int64_t nb = PH * PW;
  std::vector<T> ws(static_cast<size_t>(N * H * W * C), T(0));
  parallel_for(C, 16, [&](int64_t c_lo, int64_t c_hi) {
    const int64_t nc = c_hi - c_lo;
    RoiSamples<T> S;
    // This RoI's gradient for the thread's channels, bin-major [nb, nc]: read once per RoI in
    // blocks of 8 channels (the per-bin gather down the channels touched a line per channel).
    std::vector<T> gt(static_cast<size_t>(nb * nc));
    for (int64_t n = 0; n < K; ++n) {
      const RoiAlignBox<T> g = roi_align_box(rois + 5 * n, ss, PH, PW, sr, aligned, false, N);
      if (g.batch < 0 || g.gh == 0 || g.gw == 0) continue;
      S.build(g, PH, PW, H, W);
      T* base = ws.data() + g.batch * H * W * C + c_lo;
      const T* gn = grad + n * gs[0] + c_lo * gs[1];
      gather_grad(gn, gs, nb, PW, nc, gt.data());
      for (int64_t k = 0; k < nb; ++k) {
        const T* gb = gt.data() + k * nc;
        S.for_each_tap(k / PW, k % PW, W * C, C, [&](const Taps<T>& tp) {
          for (int j = 0; j < 4; ++j) scatter_tap(base + tp.o[j], gb, tp.w[j], g.count, nc);
        });
      }
    }
  });
  nhwc_to_nchw(ws.data(), N, C, H, W, gi);
}

template <typename T>
void backward(bool ps, const T* grad, const int64_t* gs, const T* rois, int64_t K, T ss, int64_t PH,
              int64_t PW, int64_t N, int64_t C, int64_t H, int64_t W, int64_t sr, bool aligned, T* gi) {
  const int64_t nb = PH * PW, HW = H * W;
  if (!ps && C > 1 && use_channels_last(K, nb, N, H, W))
    return backward_cl(grad, gs, rois, K, ss, PH, PW, N, C, H, W, sr, aligned, gi);
  std::fill(gi, gi + N * C * HW, T(0));
  // Threads own input channels; geometry is rebuilt per thread (cheap next to the scatter).
  parallel_for(C, 8, [&](int64_t c_lo, int64_t c_hi) {
    RoiSamples<T> S;
    for (int64_t n = 0; n < K; ++n) {
      const RoiAlignBox<T> g = roi_align_box(rois + 5 * n, ss, PH, PW, sr, aligned, ps, N);
      if (g.batch < 0 || g.gh == 0 || g.gw == 0) continue;
      S.build(g, PH, PW, H, W);
      const T* gn = grad + n * gs[0];
      for (int64_t c = c_lo; c < c_hi; ++c) {
        T* p = gi + (g.batch * C + c) * HW;
        // roi_align: every bin feeds channel c; ps: only bin c % nb, from output channel c / nb.
        const int64_t k0 = ps ? c % nb : 0, k1 = ps ? k0 + 1 : nb;
        const int64_t co = ps ? c / nb : c;
        for (int64_t k = k0; k < k1; ++k) {
          const T gv = gn[co * gs[1] + (k / PW) * gs[2] + (k % PW) * gs[3]];
          S.for_each_tap(k / PW, k % PW, W, 1, [&](const Taps<T>& tp) {
            for (int j = 0; j < 4; ++j) p[tp.o[j]] += (gv * tp.w[j]) / g.count;
          });
        }
      }
    }
  });
}

}  // namespace

void roi_align_forward_cpu(int dtype, bool ps, const void* input, const Strides4& in_strides,
                           int64_t N, int64_t C, int64_t H, int64_t W, const void* rois, int64_t K,
                           double spatial_scale, int64_t PH, int64_t PW, int64_t sampling_ratio,
                           bool aligned, void* out) {
  if (K == 0) return;
  dispatch_float(dtype, "roi_align", [&](auto t) {
    using T = decltype(t);
    forward(ps, static_cast<const T*>(input), in_strides.data(), N, C, H, W,
            static_cast<const T*>(rois), K, static_cast<T>(spatial_scale), PH, PW, sampling_ratio, aligned,
            static_cast<T*>(out));
  });
}

void roi_align_backward_cpu(int dtype, bool ps, const void* grad, const Strides4& grad_strides,
                            const void* rois, int64_t K, double spatial_scale, int64_t PH,
                            int64_t PW, int64_t N, int64_t C, int64_t H, int64_t W,
                            int64_t sampling_ratio, bool aligned, void* grad_input) {
  dispatch_float(dtype, "roi_align", [&](auto t) {
    using T = decltype(t);
    backward(ps, static_cast<const T*>(grad), grad_strides.data(), static_cast<const T*>(rois), K,
             static_cast<T>(spatial_scale), PH, PW, N, C, H, W, sampling_ratio, aligned,
             static_cast<T*>(grad_input));
  });
}

// ---- roi_align_rotated (roi_align_rotated.h) -------------------------------------------------------
// The sample points of a rotated bin do not factor into two axes: each bin walks its gh x gw
// samples (roi_rotated_sample) and applies every in-range one to all channels. Same two layouts
// and the same thread split as roi_align; backward always through the channels-last workspace.

namespace {

// f(taps) for every in-range sample of bin (ph, pw), iy outer, ix inner (the reference order);
// offsets through the element strides sH, sW.
template <typename T, typename F>
void for_each_rotated_tap(const RoiRotatedBox<T>& g, int64_t ph, int64_t pw, int64_t H, int64_t W,
                          int64_t sH, int64_t sW, F&& f) {
  for (int64_t iy = 0; iy < g.gh; ++iy)
    for (int64_t ix = 0; ix < g.gw; ++ix) {
      AxisSample<T> y, x;
      if (!roi_rotated_sample(g, ph, pw, iy, ix, H, W, y, x)) continue;
      Taps<T> t;
      roi_weights(y, x, t.w);
      t.o[0] = y.lo * sH + x.lo * sW;
      t.o[1] = y.lo * sH + x.hi * sW;
      t.o[2] = y.hi * sH + x.lo * sW;
      t.o[3] = y.hi * sH + x.hi * sW;
      f(static_cast<const Taps<T>&>(t));
    }
}

template <typename T>
void rotated_forward(const T* in, const int64_t* st, int64_t N, int64_t C, int64_t H, int64_t W,
                     const T* rois, int64_t K, T ss, int64_t PH, int64_t PW, int64_t sr, bool aligned,
                     bool cw, T* out) {
  const int64_t nb = PH * PW;
  std::vector<T> tmp;
  Nhwc<T> v{in, st[0], st[2], st[3]};  // channel stride 1 (or a single channel)
  bool cl = C == 1 || st[1] == 1;
  if (!cl && use_channels_last(K, nb, N, H, W)) {
    tmp.resize(static_cast<size_t>(N * H * W * C));
    to_nhwc(in, st, N, C, H, W, tmp.data());
    v = Nhwc<T>{tmp.data(), H * W * C, W * C, C};
    cl = true;
  }
  parallel_for(K, 1, [&](int64_t lo, int64_t hi) {
    std::vector<T> acc(cl ? static_cast<size_t>(nb * C) : 0);
    for (int64_t n = lo; n < hi; ++n) {
      T* o = out + n * C * nb;
      const RoiRotatedBox<T> g = roi_rotated_box(rois + 6 * n, ss, PH, PW, sr, aligned, cw, N);
      if (g.batch < 0 || g.gh == 0 || g.gw == 0) {
        std::fill(o, o + C * nb, T(0));
        continue;
      }
      if (cl) {
        const T* base = v.p + g.batch * v.sN;
        for (int64_t k = 0; k < nb; ++k) {
          T* a = acc.data() + k * C;
          std::fill(a, a + C, T(0));
          for_each_rotated_tap(g, k / PW, k % PW, H, W, v.sH, v.sW, [&](const Taps<T>& tp) {
            accumulate_sample(a, base + tp.o[0], base + tp.o[1], base + tp.o[2], base + tp.o[3],
                              tp.w, C);
          });
          average_bin(a, g.count, C);
        }
        store_bins(acc.data(), nb, C, o);
        continue;
      }
      // Per-channel gathers through the strides (few RoIs on a large NCHW map).
      const T* base = in + g.batch * st[0];
      for (int64_t c = 0; c < C; ++c) {
        const T* p = base + c * st[1];
        for (int64_t k = 0; k < nb; ++k) {
          T a = T(0);
          for_each_rotated_tap(g, k / PW, k % PW, H, W, st[2], st[3], [&](const Taps<T>& tp) {
            a += roi_bilinear(tp.w, p[tp.o[0]], p[tp.o[1]], p[tp.o[2]], p[tp.o[3]]);
          });
          o[c * nb + k] = a / g.count;
        }
      }
    }
  });
}

// Channels-last workspace [N, H, W, C]: threads own channel ranges and walk all RoIs in order,
// so each element's sum keeps the order (roi, ph, pw, iy, ix, tap) whatever the thread count.
template <typename T>
void rotated_backward(const T* grad, const int64_t* gs, const T* rois, int64_t K, T ss, int64_t PH,
                      int64_t PW, int64_t N, int64_t C, int64_t H, int64_t W, int64_t sr,
                      bool aligned, bool cw, T* gi) {
  const int64_t nb = PH * PW;
  std::vector<T> ws(static_cast<size_t>(N * H * W * C), T(0));
  parallel_for(C, 16, [&](int64_t c_lo, int64_t c_hi) {
    const int64_t nc = c_hi - c_lo;
    std::vector<T> gt(static_cast<size_t>(nb * nc));
    for (int64_t n = 0; n < K; ++n) {
      const RoiRotatedBox<T> g = roi_rotated_box(rois + 6 * n, ss, PH, PW, sr, aligned, cw, N);
      if (g.batch < 0 || g.gh == 0 || g.gw == 0) continue;
      T* base = ws.data() + g.batch * H * W * C + c_lo;
      gather_grad(grad + n * gs[0] + c_lo * gs[1], gs, nb, PW, nc, gt.data());
      for (int64_t k = 0; k < nb; ++k) {
        const T* gb = gt.data() + k * nc;
        for_each_rotated_tap(g, k / PW, k % PW, H, W, W * C, C, [&](const Taps<T>& tp) {
          for (int j = 0; j < 4; ++j) scatter_tap(base + tp.o[j], gb, tp.w[j], g.count, nc);
        });
      }
    }
  });
  nhwc_to_nchw(ws.data(), N, C, H, W, gi);
}

}  // namespace

void roi_align_rotated_forward_cpu(int dtype, const void* input, const Strides4& in_strides,
                                   int64_t N, int64_t C, int64_t H, int64_t W, const void* rois,
                                   int64_t K, double spatial_scale, int64_t PH, int64_t PW,
                                   int64_t sampling_ratio, bool aligned, bool clockwise, void* out) {
  if (K == 0) return;
  dispatch_float(dtype, "roi_align_rotated", [&](auto t) {
    using T = decltype(t);
    rotated_forward(static_cast<const T*>(input), in_strides.data(), N, C, H, W,
                    static_cast<const T*>(rois), K, static_cast<T>(spatial_scale), PH, PW,
                    sampling_ratio, aligned, clockwise, static_cast<T*>(out));
  });
}

void roi_align_rotated_backward_cpu(int dtype, const void* grad, const Strides4& grad_strides,
                                    const void* rois, int64_t K, double spatial_scale, int64_t PH,
                                    int64_t PW, int64_t N, int64_t C, int64_t H, int64_t W,
                                    int64_t sampling_ratio, bool aligned, bool clockwise,
                                    void* grad_input) {
  dispatch_float(dtype, "roi_align_rotated", [&](auto t) {
    using T = decltype(t);
    rotated_backward(static_cast<const T*>(grad), grad_strides.data(), static_cast<const T*>(rois), K,
                     static_cast<T>(spatial_scale), PH, PW, N, C, H, W, sampling_ratio, aligned,
                     clockwise, static_cast<T*>(grad_input));
  });
}

}  // namespace detkernels
