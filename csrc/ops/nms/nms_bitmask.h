// The GPU NMS algorithm, one element / one tile / one row block at a time: the only copy of the
// logic that nms_cuda.cu launches and that nms_emulate.cpp runs sequentially on the CPU (so the
// tests verify the GPU's mask layout, keep scan and segmentation without a GPU).
//
// Problem (all drivers of nms_multi_*): B images, N boxes each; scores [B, N] (C = 0) or
// [B, N, C] (one candidate per (box, class), flattened row-major). M = N * max(C, 1) candidates
// per image, total = B * M; candidate q (0 <= q < total) belongs to image q / M.
//
// Pipeline (every sort is a stable radix sort on an unsigned key, i.e. a stable sort by key):
//  1. sort candidates by nms_score_key (descending score, NaN first, -0 == +0), then by class key,
//     then by nms_image_key (image, then valid before score-filtered): sorted position p holds
//     candidate order[p], in (image, valid, class, score desc, q asc) order.
//  2. segments: p starts one when its (image, class) differs from p-1's, or p or p-1 is invalid
//     (an invalid candidate is a segment of its own, so it costs no mask work);
//     seg_start[p] = max over p' <= p of (head(p') ? p' : 0). Boxes i < j are in one segment iff
//     seg_start[j] <= i.
//  3. in row tiles of R rows (R a multiple of 64, so tiles hold whole row blocks): the 64-bit
//     mask word (row i, column block cb), stored at cb - rb(i) (nms_mask_width), has bit k set iff column j = 64 cb + k is in i's segment,
//     j > i, and box i suppresses box j (the predicate: nms.h's IoU, or diou_nms.h's DIoU).
//     A (row block, column block) pair is computed only if it is live (nms_block_live); the keep scan reads live words only.
//  4. keep scan over row blocks in order (nms_scan_rowblock): removed words are owned by threads
//     (word w by thread w % T), so threads of a row block never race and one barrier per row block
//     suffices. Kept flags land in sorted order. Images are scanned independently (one block
//     each, rows outside the image masked as invalid): a row only sets bits of its own segment,
//     and a word shared by images b and b+1 is written only by b's rows of earlier row blocks,
//     while b+1 reads it only for its own bits, which nothing sets.
//  5. kept candidates re-sorted by (image, score desc, q asc) (nms_final_key, then nms_image_key
//     on q / M); image b's first min(kept_b, max_output) are its output.
#pragma once
#include "ops/nms/nms.h"

namespace detkernels {

constexpr int kNmsWordBits = 64;

template <typename U, typename F> DK_HD U nms_bits_of(F v) {
  union {
    F f;
    U u;
  } x;
  x.f = v;
  return x.u;
}
// +inf in T from its bits (NVRTC, which builds these headers for CuPy, has no <cmath>).
template <typename T> DK_HD T nms_inf() {
  return sizeof(T) == 4 ? static_cast<T>(nms_bits_of<float>(uint32_t(0x7F800000u)))
                        : static_cast<T>(nms_bits_of<double>(uint64_t(0x7FF0000000000000ull)));
}

// Ascending key = descending score, NaN first (key 0), -0.0 and +0.0 equal: a stable ascending
// sort by this key is torch.sort(descending=True, stable=True). Never all-ones (that is a NaN).
DK_HD uint64_t nms_score_key(float v) {
  if (v != v) return 0;
  const uint32_t u = nms_bits_of<uint32_t>(v == 0.0f ? 0.0f : v);
  const uint32_t asc = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
  return static_cast<uint32_t>(~asc);
}
DK_HD uint64_t nms_score_key(double v) {
  if (v != v) return 0;
  const uint64_t u = nms_bits_of<uint64_t>(v == 0.0 ? 0.0 : v);
  const uint64_t sign = uint64_t(1) << 63;
  const uint64_t asc = (u & sign) ? ~u : (u | sign);
  return ~asc;
}
template <typename T> DK_HD constexpr int nms_score_key_bits() { return sizeof(T) == 4 ? 32 : 64; }
// Sorts after every score key: marks candidates that were not kept in the final sort.
template <typename T> DK_HD uint64_t nms_dropped_key() {
  return sizeof(T) == 4 ? uint64_t(0xFFFFFFFFu) : ~uint64_t(0);
}

// int64 class id -> unsigned key with the same order.
DK_HD uint64_t nms_class_key(int64_t c) {
  return static_cast<uint64_t>(c) ^ (uint64_t(1) << 63);
}

// Image first, then valid (0) before score-filtered (1) candidates.
DK_HD uint64_t nms_image_key(int64_t q, int64_t M, bool valid) {
  return static_cast<uint64_t>(q / M) * 2 + (valid ? 0 : 1);
}

// Bits a radix sort must look at for keys in [0, max_key].
DK_HD int nms_key_bits(uint64_t max_key) {
  int b = 0;
  while (b < 64 && (max_key >> b) != 0) ++b;
  return b;
}

// Candidate q -> row of boxes [B*N, 4]; Cc = max(C, 1).
DK_HD int64_t nms_cand_box(int64_t q, int64_t M, int64_t N, int64_t Cc) {
  return (q / M) * N + (q % M) / Cc;
}
// Candidate q -> class: its score column for [B, N, C] scores, classes[q] for [B, N] scores with
// class ids, else 0.
DK_HD int64_t nms_cand_class(int64_t q, int64_t M, int64_t C, const int64_t* classes) {
  if (C > 0) return (q % M) % C;
  return classes ? classes[q] : 0;
}
// Score filter: (double)score > score_threshold, as torchvision's detection heads filter.
template <typename T> DK_HD bool nms_cand_valid(T score, bool has_thr, double score_thr) {
  return !has_thr || static_cast<double>(score) > score_thr;
}

// Segment head at sorted position p (see 2. above); returns p for a head, else 0, ready for an
// inclusive max-scan.
DK_HD int64_t nms_head(int64_t p, const int64_t* order, int64_t M, int64_t C,
                       const int64_t* classes, const uint8_t* valid) {
  if (p == 0 || !valid[p] || !valid[p - 1]) return p;
  const int64_t q = order[p], r = order[p - 1];
  if (q / M != r / M || nms_cand_class(q, M, C, classes) != nms_cand_class(r, M, C, classes))
    return p;
  return 0;
}

// Pair (row block rb, column block cb >= rb) needs computing iff its first column's segment
// starts at or before the block's last row (seg_start is non-decreasing, so liveness is monotone
// in cb: a driver may stop at the first dead column block).
DK_HD bool nms_block_live(int64_t col_block_seg_start, int64_t rb, int64_t total) {
  const int64_t last_row = rb * kNmsWordBits + kNmsWordBits - 1;
  return col_block_seg_start <= (last_row < total ? last_row : total - 1);
}

// The suppression predicate the engine is generic over (issue 13): pred(a, b) with a the kept
// (higher-ranked) box and b the candidate, each as its five gathered columns (Pred::Boxes: for
// axis-aligned boxes x1, y1, x2, y2, area; for rotated ones cx, cy, w, h, angle). Plain NMS is this one;
// DIoU-NMS's is diou_nms.h's DiouNmsSuppress. Everything else (sorts, segments, tiles, scan,
// outputs) is the same for every predicate.
template <typename T> struct NmsIouSuppress {
  using Boxes = NmsAxisBoxes<T>;  // the columns it reads (nms.h)
  T thr;  // nms_threshold<T>(iou_threshold)
  DK_HD bool operator()(T ax1, T ay1, T ax2, T ay2, T aarea, T bx1, T by1, T bx2, T by2,
                        T barea) const {
    return nms_suppresses(ax1, ay1, ax2, ay2, aarea, bx1, by1, bx2, by2, barea, thr);
  }
};

// Mask word of row i (box a, the higher-ranked one) against `ncols` column boxes starting at
// sorted position col0 (column arrays indexed from 0 = col0; cseg = their seg_start).
template <typename T, typename Pred>
DK_HD uint64_t nms_mask_word(int64_t i, T ax1, T ay1, T ax2, T ay2, T aarea, const T* cx1,
                             const T* cy1, const T* cx2, const T* cy2, const T* carea,
                             const int64_t* cseg, int64_t col0, int ncols, const Pred& pred) {
  uint64_t w = 0;
  for (int k = 0; k < ncols; ++k) {
    const int64_t j = col0 + k;
    if (j > i && cseg[k] <= i &&
        pred(ax1, ay1, ax2, ay2, aarea, cx1[k], cy1[k], cx2[k], cy2[k], carea[k]))
      w |= uint64_t(1) << k;
  }
  return w;
}

// Mask row width in words. Row i stores the words of column blocks rb(i) .. rb(i) + W - 1 (word
// cb at cb - rb). A segment never leaves its image, so every live word is within ceil(M/64) of
// the row's block: W = ceil(M/64) + 1 (at most ncb). Multi-image batches thus need B times less
// mask than a total x total/64 one.
DK_HD int64_t nms_mask_width(int64_t total, int64_t M) {
  const int64_t ncb = (total + kNmsWordBits - 1) / kNmsWordBits;
  const int64_t w = (M + kNmsWordBits - 1) / kNmsWordBits + 1;
  return w < ncb ? w : ncb;
}

// Rows per mask tile (a multiple of 64): as many rows as fit `cap_bytes` of mask words (W words
// per row), at least one row block, at most the whole problem.
DK_HD int64_t nms_tile_rows(int64_t total, int64_t W, int64_t cap_bytes) {
  const int64_t ncb = (total + kNmsWordBits - 1) / kNmsWordBits;
  int64_t blocks = W > 0 ? cap_bytes / (W * 8 * kNmsWordBits) : 1;
  if (blocks < 1) blocks = 1;
  if (blocks > ncb) blocks = ncb;
  if (blocks > 65535) blocks = 65535;  // one CUDA grid dimension
  return blocks * kNmsWordBits;
}

// Thread t (of nthreads) of the keep scan, over row block rb. `mask` holds rows [row0, row0 + R)
// of the mask, W words each (nms_mask_width); removed has ncb words. diag_words[r * diag_stride] is row
// (64 rb + r)'s word for column block rb and valid_rows[r] its validity (a GPU stages both in
// shared memory). Every thread computes the same `diag` (the row block's own removed word) and so
// the same keep decisions; thread t ORs kept rows into the words w > rb it owns
// (w % nthreads == t). A barrier must separate row blocks.
// fast: Fast-NMS (Bolya et al. 2019, ultralytics' OBB NMS) instead of greedy: every valid row
// suppresses, whether or not it was itself suppressed (a box is dropped iff any earlier box of
// its segment suppresses it).
DK_HD void nms_scan_rowblock(int64_t rb, int t, int nthreads, int64_t total, int64_t row0,
                             const uint64_t* mask, int64_t W, int64_t ncb,
                             const uint64_t* diag_words,
                             int64_t diag_stride, const uint8_t* valid_rows, uint64_t* removed,
                             const int64_t* seg_start, uint8_t* keep, bool fast = false) {
  uint64_t diag = removed[rb];
  const int64_t base = rb * kNmsWordBits;
  const int64_t rem = total - base;
  const int nrows = rem < kNmsWordBits ? static_cast<int>(rem) : kNmsWordBits;
  const int64_t first = rb + 1;
  const int64_t w0 = first + ((t - first % nthreads) % nthreads + nthreads) % nthreads;
  // Rows before the next block's first segment start have nothing to OR beyond this block
  // (seg_start is non-decreasing): the common case with many small classes costs no global load.
  const int64_t next_seg = first < ncb ? seg_start[first * kNmsWordBits] : total;
  for (int r = 0; r < nrows; ++r) {
    const int64_t i = base + r;
    const bool dead = (diag >> r) & 1;
    if (!valid_rows[r] || (dead && !fast)) continue;
    diag |= diag_words[r * diag_stride];
    if (i >= next_seg) {
      const uint64_t* mrow = mask + (i - row0) * W;
      for (int64_t w = w0; w < ncb && seg_start[w * kNmsWordBits] <= i; w += nthreads)
        removed[w] |= mrow[w - rb];
    }
    if (t == 0 && !dead) keep[i] = 1;
  }
}

// Final sort key of candidate q: its score key if kept, else after every score.
template <typename T> DK_HD uint64_t nms_final_key(bool kept, T score) {
  return kept ? nms_score_key(score) : nms_dropped_key<T>();
}

// After the final sort, image b's kept candidates come first in [b*M, (b+1)*M): count them by
// bisection, capped at max_output.
DK_HD int64_t nms_count_kept(const int64_t* final_order, const uint8_t* kept_by_cand, int64_t lo,
                             int64_t hi, int64_t max_output) {
  int64_t a = lo, z = hi;  // first dropped position in [a, z]
  while (a < z) {
    const int64_t m = a + (z - a) / 2;
    if (kept_by_cand[final_order[m]]) a = m + 1; else z = m;
  }
  const int64_t n = a - lo;
  return n < max_output ? n : max_output;
}

// Output slot k of image b: box index within the image (and class if out_cls), or -1 padding.
DK_HD void nms_gather_slot(int64_t b, int64_t k, int64_t max_output, int64_t M, int64_t C,
                           const int64_t* final_order, const int64_t* counts, int64_t* out_idx,
                           int64_t* out_cls) {
  const int64_t Cc = C > 0 ? C : 1;
  const bool kept = k < counts[b];
  const int64_t ql = kept ? final_order[b * M + k] % M : 0;
  out_idx[b * max_output + k] = kept ? ql / Cc : -1;
  if (out_cls) out_cls[b * max_output + k] = kept ? ql % Cc : -1;
}

}  // namespace detkernels
