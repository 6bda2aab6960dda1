// The CUDA Matrix NMS pipeline (matrix_nms_cuda.cu, S1-S6 of matrix_nms_gpu.h) run on the CPU
// with the same step functions: CUB's radix sorts become stable sorts by the same keys and bit
// counts, the max-scan a running max, the column kernels loops over (block, tile, thread) with
// the tiles read in place. Slow on purpose; tests only.
#include <algorithm>
#include <numeric>
#include <stdexcept>
#include <vector>

#include "common/cub_emulate.h"
#include "common/dispatch.h"
#include "ops/nms/matrix_nms_gpu.h"

namespace detkernels {
namespace {

template <typename T>
int64_t run(const T* boxes, const T* scores, const int64_t* labels, int64_t n, int kernel,
            double sigma, bool has_thr, double thr, int64_t max_output, int64_t pre_top_k,
            int64_t* keep, T* out_s) {
  if (n == 0) return 0;
  // S1
  std::vector<uint64_t> keys(n);
  std::vector<int64_t> order(n);
  for (int64_t q = 0; q < n; ++q) {
    keys[q] = nms_score_key(scores[q]);
    order[q] = q;
  }
  cub_sort_pairs_emulate(keys, order, nms_score_key_bits<T>());
  const int64_t m = pre_top_k >= 0 && pre_top_k < n ? pre_top_k : n;
  std::vector<uint8_t> kept(n, 0);
  std::vector<T> dec(n, T(0));
  if (m > 0) {
    // S2
    std::vector<uint64_t> ck(m);
    std::vector<int64_t> pos_rank(m);
    for (int64_t r = 0; r < m; ++r) {
      ck[r] = nms_class_key(labels[order[r]]);
      pos_rank[r] = r;
    }
    cub_sort_pairs_emulate(ck, pos_rank, 64);
    // S3
    std::vector<T> x1(m), y1(m), x2(m), y2(m), area(m), den(m);
    std::vector<int64_t> seg(m);
    for (int64_t p = 0; p < m; ++p)
      matrix_nms_gather(p, pos_rank.data(), order.data(), boxes, labels, x1.data(), y1.data(),
                        x2.data(), y2.data(), area.data(), seg.data());
    for (int64_t p = 1; p < m; ++p) seg[p] = std::max(seg[p], seg[p - 1]);
    // S4, S5: matrix_nms_column_kernel's loops (block of positions, tile of rows, thread)
    const T neg = static_cast<T>(-sigma);
    constexpr int64_t Tn = kMatrixNmsThreads;
    for (int decay = 0; decay < 2; ++decay) {
      for (int64_t j0 = 0; j0 < m; j0 += Tn) {
        const int64_t jend = std::min(m, j0 + Tn);
        std::vector<T> acc(Tn, decay ? T(1) : T(0));
        for (int64_t i0 = seg[j0]; i0 < jend - 1; i0 += Tn)
          for (int64_t t = 0; t < jend - j0; ++t) {
            const int64_t j = j0 + t;
            int64_t lo, hi;
            matrix_nms_tile_rows(j, seg[j], i0, Tn, &lo, &hi);
            acc[t] = decay ? matrix_nms_decay_tile(acc[t], x1[j], y1[j], x2[j], y2[j], area[j],
                                                   &x1[i0], &y1[i0], &x2[i0], &y2[i0], &area[i0],
                                                   &den[i0], lo, hi, kernel, neg)
                           : matrix_nms_comp_tile(acc[t], x1[j], y1[j], x2[j], y2[j], area[j],
                                                  &x1[i0], &y1[i0], &x2[i0], &y2[i0], &area[i0],
                                                  lo, hi);
          }
        for (int64_t t = 0; t < jend - j0; ++t) {
          const int64_t j = j0 + t;
          if (decay)
            matrix_nms_finish(j, acc[t], pos_rank.data(), order.data(), scores, has_thr ? 1 : 0,
                              thr, dec.data(), kept.data());
          else
            den[j] = matrix_nms_term(acc[t], kernel, neg);
        }
      }
    }
  }
  // S6
  std::vector<int64_t> fin(n);
  for (int64_t q = 0; q < n; ++q) {
    keys[q] = nms_final_key<T>(kept[q] != 0, dec[q]);
    fin[q] = q;
  }
  cub_sort_pairs_emulate(keys, fin, nms_score_key_bits<T>());
  const int64_t count = nms_count_kept(fin.data(), kept.data(), 0, n, max_output >= 0 ? max_output : n);
  for (int64_t k = 0; k < count; ++k) {
    keep[k] = fin[k];
    out_s[k] = dec[fin[k]];
  }
  return count;
}

}  // namespace

int64_t matrix_nms_emulate_cpu(int dtype, const void* boxes, const void* scores,
                               const int64_t* labels, int64_t n, int kernel, double sigma,
                               bool has_score_thr, double score_thr, int64_t max_output,
                               int64_t pre_top_k, int64_t* keep, void* out_scores) {
  if (kernel != kMatrixGaussian && kernel != kMatrixLinear)
    throw std::invalid_argument("matrix_nms_emulate_cpu: kernel must be 0 (gaussian) or 1 (linear)");
  return dispatch_float(dtype, "matrix_nms_emulate_cpu", [&](auto t) {
    using T = decltype(t);
    return run(static_cast<const T*>(boxes), static_cast<const T*>(scores), labels, n, kernel,
               sigma, has_score_thr, score_thr, max_output, pre_top_k, keep,
               static_cast<T*>(out_scores));
  });
}

void matrix_nms_multi_emulate_cpu(int dtype, const void* boxes, const void* scores,
                                  const int64_t* labels, int64_t B, int64_t N, int kernel,
                                  double sigma, bool has_score_thr, double score_thr,
                                  int64_t max_output, int64_t pre_top_k, int64_t* out_idx,
                                  void* out_scores, int64_t* counts, const int64_t* n_valid) {
  if (kernel != kMatrixGaussian && kernel != kMatrixLinear)
    throw std::invalid_argument("matrix_nms_multi_emulate_cpu: kernel must be 0 (gaussian) or 1 (linear)");
  dispatch_float(dtype, "matrix_nms_multi_emulate_cpu", [&](auto t) {
    using T = decltype(t);
    const T* bx = static_cast<const T*>(boxes);
    const T* sc = static_cast<const T*>(scores);
    std::vector<int64_t> keep(B * N), cnt(B);
    std::vector<T> dec(B * N);
    const int64_t per_image = n_valid ? -1 : max_output;  // as matrix_nms_multi_cuda
    for (int64_t b = 0; b < B; ++b)
      cnt[b] = run(bx + 4 * b * N, sc + b * N, labels + b * N, N, kernel, sigma, has_score_thr,
                   score_thr, per_image, pre_top_k, keep.data() + b * N, dec.data() + b * N);
    for (int64_t b = 0; b < B; ++b)
      matrix_nms_multi_emit(b, N, max_output, n_valid, keep.data(), dec.data(), cnt.data(),
                            out_idx, static_cast<T*>(out_scores), counts);
  });
}

}  // namespace detkernels
