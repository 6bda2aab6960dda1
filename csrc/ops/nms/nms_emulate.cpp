// The CUDA NMS pipeline (nms_cuda.cu) run step by step on the CPU, with the same nms_bitmask.h
// functions: radix sorts become stable sorts by the same keys, kernels become loops over the same
// (row block, column block) pairs and emulated scan threads. Slow on purpose; it exists so that
// the GPU's mask layout, tiling, keep scan and segmentation are tested on machines without a GPU.
// Generic over the suppression predicate as the GPU engine is: plain NMS (nms_multi_emulate_cpu)
// DIoU-NMS (diou_nms_multi_emulate_cpu, issue 13) and rotated NMS (nms_rotated_multi_emulate_cpu,
// issue 17).
#include <algorithm>
#include <array>
#include <atomic>
#include <numeric>
#include <stdexcept>
#include <type_traits>
#include <vector>

#include "common/cub_emulate.h"
#include "common/dispatch.h"
#include "ops/nms/diou_nms.h"
#include "ops/nms/nms.h"
#include "ops/nms/nms_bitmask.h"
#include "ops/nms/nms_rotated_gpu.h"
#include "ops/nms/nms_sparse_gpu.h"

namespace detkernels {
namespace {

// What the last emulated call's sparse path did (nms_gpu_emulated_outcome), for the tests.
std::atomic<int> g_outcome{0};
// Its work counts: live block pairs, block-pair visits (the density rule's totals, auto path),
// edges, rounds that left a box undecided.
std::array<int64_t, 4> g_work{};

// The sparse path (nms_sparse_gpu.h S1-S6), as nms_cuda.cu's run_sparse launches it: same sorts,
// same steps, the block kernels as loops over (block, thread), the rounds reading the previous
// round's buffer. On success keep holds the kept flags and seg / valid are neutralised; on
// fallback nothing changed. `mask_bytes` is the mask area the GPU's edges alias.
template <typename T>
void run_sparse(const std::vector<T>& x1, const std::vector<T>& y1, const std::vector<T>& x2,
                const std::vector<T>& y2, const std::vector<T>& area, std::vector<uint8_t>& valid,
                std::vector<int64_t>& seg, std::vector<uint8_t>& keep, int64_t total, int64_t M,
                T thr, int64_t mask_bytes) {
  g_outcome = kNmsOutcomePlain;
  g_work = {0, 0, 0, 0};
  if (!nms_sparse_gpu_use(total, M, static_cast<double>(thr))) return;
  g_outcome = kNmsOutcomeFallback;  // until it succeeds
  uint32_t fallback = 0;
  // S1: Z order, then segments (two stable radix sorts)
  std::vector<uint64_t> keys(total);
  std::vector<int64_t> sp(total);
  for (int64_t p = 0; p < total; ++p) {
    keys[p] = nms_sparse_morton_key(x1[p], y1[p]);
    sp[p] = p;
  }
  cub_sort_pairs_emulate(keys, sp, 64);
  for (int64_t s = 0; s < total; ++s) keys[s] = static_cast<uint64_t>(seg[sp[s]]);
  cub_sort_pairs_emulate(keys, sp, std::max(1, nms_key_bits(uint64_t(total - 1))));
  // S2: spatial columns, block boxes
  std::vector<T> sx1(total), sy1(total), sx2(total), sy2(total), sarea(total);
  std::vector<int64_t> sseg(total);
  std::vector<uint8_t> svalid(total);
  std::vector<int32_t> pos_of(total);
  for (int64_t s = 0; s < total; ++s)
    nms_sparse_gather(s, sp.data(), x1.data(), y1.data(), x2.data(), y2.data(), area.data(),
                      seg.data(), valid.data(), sx1.data(), sy1.data(), sx2.data(), sy2.data(),
                      sarea.data(), sseg.data(), svalid.data(), pos_of.data(), &fallback);
  if (fallback) return;
  const int64_t nb = (total + kNmsWordBits - 1) / kNmsWordBits;
  std::vector<T> bbox(4 * nb);
  std::vector<int64_t> blo(nb), bhi(nb);
  for (int64_t A = 0; A < nb; ++A)
    nms_sparse_block_box(A, total, sx1.data(), sy1.data(), sx2.data(), sy2.data(), svalid.data(),
                         sseg.data(), bbox.data(), blo.data(), bhi.data());
  // S3: the density rule (auto path), one reduction block of emulated threads
  if (nms_sparse_gpu_rule()) {
    std::vector<int64_t> pairs(2 * nb);
    for (int64_t A = 0; A < nb; ++A)
      nms_sparse_block_pairs(A, nb, bbox.data(), blo.data(), bhi.data(), pairs.data());
    int64_t live = 0, visits = 0;
    for (int t = 0; t < kNmsSparseReduceThreads; ++t) {
      int64_t l, v;
      nms_sparse_partial_sum(t, kNmsSparseReduceThreads, nb, pairs.data(), &l, &v);
      live += l;
      visits += v;
    }
    g_work[0] = live;
    g_work[1] = visits;
    nms_sparse_decide(live, visits, &fallback);
    if (fallback) return;
  }
  // S4: count pass, inclusive sum, capacity, emit pass (nms_sparse_edges_kernel's loops)
  std::vector<int64_t> off(total + 1, 0), cnt(total, 0);
  std::vector<int32_t> edges;
  auto edge_pass = [&](bool emit) {
    for (int64_t A = 0; A < nb; ++A) {
      int64_t lo, hi;
      nms_sparse_block_span(A, nb, blo.data(), bhi.data(), &lo, &hi);
      std::vector<int64_t> n(kNmsWordBits, 0);
      for (int64_t B = lo; B <= hi; ++B) {
        if (!nms_sparse_blocks_meet(A, B, bbox.data(), blo.data(), bhi.data())) continue;
        const int64_t c0 = B * kNmsWordBits;
        const int nc = static_cast<int>(std::min<int64_t>(kNmsWordBits, total - c0));
        for (int t = 0; t < kNmsWordBits; ++t) {
          const int64_t j = A * kNmsWordBits + t;
          if (j >= total) break;
          int32_t* out = emit ? edges.data() + off[j] + n[t] : nullptr;
          n[t] += nms_sparse_in_edges(sp[j], sseg[j], sx1[j], sy1[j], sx2[j], sy2[j], sarea[j],
                                      &sx1[c0], &sy1[c0], &sx2[c0], &sy2[c0], &sarea[c0],
                                      &sseg[c0], &sp[c0], c0, nc, thr, out);
        }
      }
      for (int t = 0; t < kNmsWordBits && A * kNmsWordBits + t < total; ++t)
        if (!emit) cnt[A * kNmsWordBits + t] = n[t];
    }
  };
  edge_pass(false);
  for (int64_t s = 0; s < total; ++s) off[s + 1] = off[s] + cnt[s];
  nms_sparse_check_cap(off.data(), total, nms_sparse_edge_cap(mask_bytes, total), &fallback);
  if (fallback) return;
  edges.assign(static_cast<size_t>(off[total]), -1);
  g_work[2] = off[total];
  edge_pass(true);
  // S5: rounds between two buffers, then the sequential pass if one is left undecided
  std::vector<uint8_t> st[2] = {std::vector<uint8_t>(total), std::vector<uint8_t>(total)};
  for (int64_t s = 0; s < total; ++s) st[0][s] = nms_sparse_init_state(svalid[s]);
  const int rounds = nms_gpu_rounds();
  uint32_t undecided = 0;
  for (int r = 0; r < rounds; ++r) {
    undecided = 0;
    for (int64_t s = 0; s < total; ++s)
      if (nms_sparse_round_step(s, off.data(), edges.data(), st[r % 2].data(), st[(r + 1) % 2].data()))
        undecided = 1;
    g_work[3] += undecided;
  }
  std::vector<uint8_t>& state = st[rounds % 2];
  if (undecided) nms_sparse_finish(total, pos_of.data(), off.data(), edges.data(), state.data());
  g_outcome = undecided ? kNmsOutcomeSparseFinished : kNmsOutcomeSparse;
  // S6
  for (int64_t s = 0; s < total; ++s) nms_sparse_output(s, sp.data(), state.data(), keep.data());
  for (int64_t p = 0; p < total; ++p) nms_sparse_neutralise(p, seg.data(), valid.data());
}

// `pred`: the suppression predicate (nms_bitmask.h NmsIouSuppress, diou_nms.h DiouNmsSuppress);
// the sparse path is the IoU predicate's only (its pruning is IoU-specific).
template <typename T, typename Pred>
void run(const T* boxes, const T* scores, const int64_t* classes, int64_t B, int64_t N, int64_t C,
         const Pred& pred, bool has_sthr, double sthr, int64_t K, int64_t* out_idx,
         int64_t* out_cls, int64_t* counts, int64_t tile_rows, int64_t cap, int nthreads) {
  const int64_t Cc = C > 0 ? C : 1, M = N * Cc, total = B * M;
  for (int64_t b = 0; b < B; ++b) counts[b] = 0;
  if (total == 0) {
    for (int64_t k = 0; k < B * K; ++k) {
      out_idx[k] = -1;
      if (out_cls) out_cls[k] = -1;
    }
    return;
  }
  const bool has_cls = C > 1 || (C == 0 && classes != nullptr);
  const bool has_img = B > 1 || has_sthr;
  // 1. sorts (nms_cuda.cu: sort_candidates)
  std::vector<uint64_t> keys(total);
  std::vector<int64_t> order(total);
  for (int64_t q = 0; q < total; ++q) {
    keys[q] = nms_score_key(scores[q]);
    order[q] = q;
  }
  cub_sort_pairs_emulate(keys, order, nms_score_key_bits<T>());
  if (has_cls) {
    for (int64_t p = 0; p < total; ++p) keys[p] = nms_class_key(nms_cand_class(order[p], M, C, classes));
    cub_sort_pairs_emulate(keys, order, C > 0 ? nms_key_bits(uint64_t(C - 1)) : 64);
  }
  if (has_img) {
    for (int64_t p = 0; p < total; ++p)
      keys[p] = nms_image_key(order[p], M, nms_cand_valid(scores[order[p]], has_sthr, sthr));
    cub_sort_pairs_emulate(keys, order, nms_key_bits(uint64_t(2 * B - 1)));
  }
  // 2. sorted columns, validity, segments (gather_kernel, head_kernel + inclusive max-scan)
  std::vector<T> x1(total), y1(total), x2(total), y2(total), area(total);
  std::vector<uint8_t> valid(total), keep(total, 0), kept_by_cand(total);
  for (int64_t p = 0; p < total; ++p) {
    const int64_t q = order[p];
    using Boxes = typename Pred::Boxes;
    Boxes::columns(boxes + Boxes::kDim * nms_cand_box(q, M, N, Cc), x1[p], y1[p], x2[p], y2[p],
                   area[p]);
    valid[p] = nms_cand_valid(scores[q], has_sthr, sthr);
  }
  std::vector<int64_t> seg(total);
  for (int64_t p = 0, run_max = 0; p < total; ++p) {
    run_max = std::max(run_max, nms_head(p, order.data(), M, C, classes, valid.data()));
    seg[p] = run_max;
  }
  // 3.-4. mask tiles and keep scan (mask_kernel, scan_kernel)
  const int64_t ncb = (total + kNmsWordBits - 1) / kNmsWordBits;
  const int64_t W = nms_mask_width(total, M);
  const int64_t R = tile_rows > 0 ? tile_rows : nms_tile_rows(total, W, cap);
  if (R % kNmsWordBits != 0) throw std::invalid_argument("tile_rows must be a multiple of 64");
  std::vector<uint64_t> mask(static_cast<size_t>(R * W), 0xA5A5A5A5A5A5A5A5ull);  // garbage
  std::vector<uint64_t> removed(ncb, 0);
  // issue 16: the sparse path first (nms_cuda.cu: run_sparse); on success the tiles below find
  // nothing left to do, on fallback they run on the real inputs.
  if constexpr (std::is_same_v<Pred, NmsIouSuppress<T>>) {
    run_sparse(x1, y1, x2, y2, area, valid, seg, keep, total, M, pred.thr,
               static_cast<int64_t>(sizeof(uint64_t)) * R * W);
  } else {
    g_outcome = kNmsOutcomePlain;
    g_work = {0, 0, 0, 0};
  }
  for (int64_t row0 = 0; row0 < total; row0 += R) {
    const int64_t rb0 = row0 / kNmsWordBits, rb1 = std::min(ncb, (row0 + R) / kNmsWordBits);
    for (int64_t rb = rb0; rb < rb1; ++rb) {
      for (int64_t cb = rb; cb < ncb && nms_block_live(seg[cb * kNmsWordBits], rb, total); ++cb) {
        if (cb - rb >= W) throw std::logic_error("nms: live mask word beyond the mask width");
        const int64_t c0 = cb * kNmsWordBits;
        const int nc = static_cast<int>(std::min<int64_t>(kNmsWordBits, total - c0));
        for (int64_t i = rb * kNmsWordBits; i < std::min(total, (rb + 1) * kNmsWordBits); ++i)
          mask[(i - row0) * W + (cb - rb)] =
              nms_mask_word(i, x1[i], y1[i], x2[i], y2[i], area[i], &x1[c0], &y1[c0], &x2[c0],
                            &y2[c0], &area[c0], &seg[c0], c0, nc, pred);
      }
    }
    // One scan block per image, independent (nms_scan_rows); run in reverse image order here so
    // that any dependence between images would show.
    for (int64_t b = B - 1; b >= 0; --b) {
      const int64_t lo = std::max(row0, b * M), hi = std::min({total, row0 + R, (b + 1) * M});
      for (int64_t rb = lo / kNmsWordBits; lo < hi && rb * kNmsWordBits < hi; ++rb) {
        uint8_t v[kNmsWordBits];  // the block's staged validity, rows outside [lo, hi) off
        for (int r = 0; r < kNmsWordBits; ++r) {
          const int64_t i = rb * kNmsWordBits + r;
          v[r] = i >= lo && i < hi ? valid[i] : 0;
        }
        for (int t = 0; t < nthreads; ++t)  // threads of one row block, then a barrier
          nms_scan_rowblock(rb, t, nthreads, total, row0, mask.data(), W, ncb,
                            &mask[(rb * kNmsWordBits - row0) * W], W, v,
                            removed.data(), seg.data(), keep.data(), nms_pred_fast(pred));
      }
    }
  }
  // 5. final order (scatter_kernel, final_key_kernel, two sorts), counts, gather
  for (int64_t p = 0; p < total; ++p) kept_by_cand[order[p]] = keep[p];
  for (int64_t q = 0; q < total; ++q) {
    keys[q] = nms_final_key(kept_by_cand[q] != 0, scores[q]);
    order[q] = q;
  }
  cub_sort_pairs_emulate(keys, order, nms_score_key_bits<T>());
  if (B > 1) {
    for (int64_t p = 0; p < total; ++p) keys[p] = nms_image_key(order[p], M, true);
    cub_sort_pairs_emulate(keys, order, nms_key_bits(uint64_t(2 * B - 1)));
  }
  for (int64_t b = 0; b < B; ++b)
    counts[b] = nms_count_kept(order.data(), kept_by_cand.data(), b * M, (b + 1) * M, K);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t k = 0; k < K; ++k)
      nms_gather_slot(b, k, K, M, C, order.data(), counts, out_idx, out_cls);
}

}  // namespace

int nms_gpu_emulated_outcome() { return g_outcome.load(); }
std::array<int64_t, 4> nms_gpu_emulated_work() { return g_work; }

void nms_multi_emulate_cpu(int dtype, const void* boxes, const void* scores,
                           const int64_t* classes, int64_t B, int64_t N, int64_t C,
                           double iou_threshold, bool has_score_thr, double score_thr,
                           int64_t max_output, int64_t* out_idx, int64_t* out_cls,
                           int64_t* counts, int64_t tile_rows, int64_t mask_cap_bytes,
                           int scan_threads) {
  if (scan_threads < 1) throw std::invalid_argument("scan_threads must be >= 1");
  dispatch_float(dtype, "nms", [&](auto t) {
    using T = decltype(t);
    run(static_cast<const T*>(boxes), static_cast<const T*>(scores), classes, B, N, C,
        NmsIouSuppress<T>{nms_threshold<T>(iou_threshold)}, has_score_thr, score_thr, max_output,
        out_idx, out_cls, counts, tile_rows, mask_cap_bytes, scan_threads);
  });
}

void diou_nms_multi_emulate_cpu(int dtype, const void* boxes, const void* scores,
                                const int64_t* classes, int64_t B, int64_t N, int64_t C,
                                double iou_threshold, double beta, bool has_score_thr,
                                double score_thr, int64_t max_output, int64_t* out_idx,
                                int64_t* out_cls, int64_t* counts, int64_t tile_rows,
                                int64_t mask_cap_bytes, int scan_threads) {
  if (scan_threads < 1) throw std::invalid_argument("scan_threads must be >= 1");
  dispatch_float(dtype, "diou_nms", [&](auto t) {
    using T = decltype(t);
    run(static_cast<const T*>(boxes), static_cast<const T*>(scores), classes, B, N, C,
        DiouNmsSuppress<T>{nms_threshold<T>(iou_threshold), static_cast<T>(beta)}, has_score_thr,
        score_thr, max_output, out_idx, out_cls, counts, tile_rows, mask_cap_bytes, scan_threads);
  });
}

void nms_rotated_multi_emulate_cpu(int dtype, int metric, const void* boxes, const void* scores,
                                   const int64_t* classes, int64_t B, int64_t N,
                                   double iou_threshold, double eps, bool has_score_thr,
                                   double score_thr, int64_t max_output, int64_t* out_idx,
                                   int64_t* counts, int64_t tile_rows, int64_t mask_cap_bytes,
                                   int scan_threads) {
  if (scan_threads < 1) throw std::invalid_argument("scan_threads must be >= 1");
  if (metric != kRotatedIou && metric != kRotatedProbIou && metric != kRotatedProbIouFast)
    throw std::invalid_argument("nms_rotated: unknown metric");
  dispatch_float(dtype, "nms_rotated", [&](auto t) {
    using T = decltype(t);
    auto go = [&](const auto& pred) {
      run(static_cast<const T*>(boxes), static_cast<const T*>(scores), classes, B, N, 0, pred,
          has_score_thr, score_thr, max_output, out_idx, nullptr, counts, tile_rows,
          mask_cap_bytes, scan_threads);
    };
    if (metric == kRotatedIou)
      go(RotatedNmsSuppress<T, RotatedIouMetric<T>>{iou_threshold, RotatedIouMetric<T>{}, false});
    else
      go(RotatedNmsSuppress<T, ProbIouMetric<T>>{iou_threshold, ProbIouMetric<T>{static_cast<T>(eps)},
                                                 metric == kRotatedProbIouFast});
  });
}

}  // namespace detkernels
