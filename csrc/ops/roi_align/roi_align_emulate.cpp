// The CUDA RoIAlign kernels' steps run sequentially on the CPU (roi_align_gpu.h): the same
// per-thread functions, std::stable_sort in place of the (stable) radix sort.
#include <algorithm>
#include <numeric>
#include <stdexcept>
#include <vector>

#include "ops/roi_align/roi_align_gpu.h"

namespace detkernels {
namespace {

template <typename T>
void backward(bool ps, const T* grad, const int64_t* gs, const T* rois, int64_t K, T ss, int64_t PH,
              int64_t PW, int64_t N, int64_t C, int64_t H, int64_t W, int64_t sr, bool aligned,
              T* gi) {
  const int64_t nb = PH * PW, HW = H * W, none = N * HW;
  std::fill(gi, gi + N * C * HW, T(0));
  // Step 1: counts and exclusive scan.
  std::vector<int64_t> off(K + 1, 0);
  std::vector<T> count(K);
  for (int64_t n = 0; n < K; ++n) {
    const RoiAlignBox<T> g = roi_align_box(rois + 5 * n, ss, PH, PW, sr, aligned, ps, N);
    count[n] = g.count;
    off[n + 1] = off[n] + roi_contrib_count(g, PH, PW);
  }
  const int64_t M = off[K];
  // Step 2: keys per slot (value = the slot's sequence number).
  std::vector<int64_t> key(M), seq(M);
  for (int64_t s = 0; s < M; ++s) {
    const int64_t n = roi_find(off.data(), K, s);
    const RoiAlignBox<T> g = roi_align_box(rois + 5 * n, ss, PH, PW, sr, aligned, ps, N);
    key[s] = roi_contrib(g, s - off[n], PW, H, W, none).key;
  }
  // Step 3: stable sort by key.
  std::iota(seq.begin(), seq.end(), int64_t(0));
  std::stable_sort(seq.begin(), seq.end(), [&](int64_t a, int64_t b) { return key[a] < key[b]; });
  std::vector<int64_t> skey(M), bins(M);
  std::vector<T> w(M);
  for (int64_t q = 0; q < M; ++q) {
    const int64_t s = seq[q], n = roi_find(off.data(), K, s);
    const RoiAlignBox<T> g = roi_align_box(rois + 5 * n, ss, PH, PW, sr, aligned, ps, N);
    const RoiContrib<T> r = roi_contrib(g, s - off[n], PW, H, W, none);
    skey[q] = r.key;
    bins[q] = n * nb + r.bin;
    w[q] = r.w;
  }
  // Step 4: one (run, channel) at a time.
  for (int64_t p = 0; p < M; ++p) {
    if (p > 0 && skey[p - 1] == skey[p]) continue;
    if (skey[p] == none) break;  // sorted last
    int64_t end = p + 1;
    while (end < M && skey[end] == skey[p]) ++end;
    const int64_t b = skey[p] / HW, hw = skey[p] % HW;
    for (int64_t c = 0; c < C; ++c)
      gi[(b * C + c) * HW + hw] =
          roi_run_sum(bins.data(), w.data(), count.data(), p, end, grad, gs, c, ps, PH, PW);
  }
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

void roi_align_backward_emulate_cpu(int dtype, bool ps, const void* grad, const int64_t* gs,
                                    const void* rois, int64_t K, double scale, int64_t PH,
                                    int64_t PW, int64_t N, int64_t C, int64_t H, int64_t W,
                                    int64_t sr, bool aligned, void* gi) {
  if (dtype == kFloat32)
    return backward(ps, static_cast<const float*>(grad), gs, static_cast<const float*>(rois), K,
                    static_cast<float>(scale), PH, PW, N, C, H, W, sr, aligned,
                    static_cast<float*>(gi));
  if (dtype == kFloat64)
    return backward(ps, static_cast<const double*>(grad), gs, static_cast<const double*>(rois), K,
                    scale, PH, PW, N, C, H, W, sr, aligned, static_cast<double*>(gi));
  throw std::invalid_argument("roi_align: dtype must be float32 or float64");
}

void roi_align_forward_emulate_cpu(int dtype, bool ps, const void* input, const int64_t* st,
                                   int64_t N, int64_t C, int64_t H, int64_t W, const void* rois,
                                   int64_t K, double scale, int64_t PH, int64_t PW, int64_t sr,
                                   bool aligned, void* out) {
  if (dtype == kFloat32)
    return forward(ps, static_cast<const float*>(input), st, N, C, H, W,
                   static_cast<const float*>(rois), K, static_cast<float>(scale), PH, PW, sr,
                   aligned, static_cast<float*>(out));
  if (dtype == kFloat64)
    return forward(ps, static_cast<const double*>(input), st, N, C, H, W,
                   static_cast<const double*>(rois), K, scale, PH, PW, sr, aligned,
                   static_cast<double*>(out));
  throw std::invalid_argument("roi_align: dtype must be float32 or float64");
}

}  // namespace detkernels
