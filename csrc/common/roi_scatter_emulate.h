// The deterministic RoI backward scatter (roi_scatter_kernels.cuh) run sequentially on the CPU:
// the same per-item functions in the same steps, std::stable_sort in place of the (stable) radix
// sort. For tests (*_emulate_cpu bindings): it checks the GPU logic byte-for-byte against the
// reference where there is no GPU. CPU only.
#pragma once
#include <algorithm>
#include <numeric>
#include <vector>

#include "common/roi_scatter.h"

namespace detkernels {

// Sorted keys and sequence numbers of M slots keyed by key[s]: the sort step.
inline void roi_emulate_sort(const std::vector<int64_t>& key, std::vector<int64_t>& skey,
                             std::vector<int64_t>& seq) {
  const int64_t M = static_cast<int64_t>(key.size());
  seq.resize(M);
  std::iota(seq.begin(), seq.end(), int64_t(0));
  std::stable_sort(seq.begin(), seq.end(), [&](int64_t a, int64_t b) { return key[a] < key[b]; });
  skey.resize(M);
  for (int64_t q = 0; q < M; ++q) skey[q] = key[seq[q]];
}

// Steps 1-5 of roi_scatter.h with policy P; grad through element strides gs; gi contiguous
// [N, C, H, W], overwritten.
template <class P>
void roi_scatter_emulate(const P& pol, const typename P::Scalar* grad, const int64_t* gs, int64_t C,
                         typename P::Scalar* gi) {
  using T = typename P::Scalar;
  const RoiGeom<T>& g = pol.a;
  const int64_t nb = g.PH * g.PW, HW = g.H * g.W, none = g.N * HW, K = g.K;
  std::fill(gi, gi + g.N * C * HW, T(0));
  std::vector<int64_t> off(K + 1, 0);
  std::vector<T> div(P::kDivPerBin ? K * nb : K);
  for (int64_t n = 0; n < K; ++n) off[n + 1] = pol.slots(n, div.data());
  for (int64_t n = 1; n <= K; ++n) off[n] += off[n - 1];
  const int64_t M = off[K];
  std::vector<int64_t> key(M), skey, seq, bins(M);
  for (int64_t s = 0; s < M; ++s) {
    const int64_t n = roi_find(off.data(), K, s);
    key[s] = pol.contrib(n, s - off[n]).key;
  }
  roi_emulate_sort(key, skey, seq);
  std::vector<T> w(M);
  for (int64_t q = 0; q < M; ++q) {
    const int64_t s = seq[q], n = roi_find(off.data(), K, s);
    const RoiContrib<T> r = pol.contrib(n, s - off[n]);
    bins[q] = n * nb + r.bin;
    w[q] = r.w;
  }
  for (int64_t c = 0; c < C; ++c)
    for (int64_t p = 0; p < M; ++p) {
      if (!roi_run_start(skey.data(), p, none)) continue;
      gi[roi_target_index(skey[p], c, C, HW)] =
          roi_run_sum(bins.data(), w.data(), div.data(), P::kDivPerBin, p,
                      roi_run_end(skey.data(), p, M), grad, gs, c, g.ps, g.PH, g.PW);
    }
}

}  // namespace detkernels
