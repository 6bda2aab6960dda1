// The sparse GPU NMS (issue 16), one element / one block / one round at a time: the only copy of
// the steps nms_cuda.cu launches (kernels: nms_sparse_gpu_kernels.cuh) and nms_emulate.cpp runs
// sequentially on the CPU. Its work follows the overlapping pairs, not the (kept x N) or N^2/64 of
// the bitmask (nms_bitmask.h), and its kept set is the bitmask's, bit for bit.
//
// It starts where the bitmask path starts its mask (nms_bitmask.h steps 1-2 done): candidates in
// rank order p (image, valid, class, score desc, q asc), columns x1..area, valid, seg_start.
//  S1. spatial order: a stable sort by nms_sparse_morton_key (a Z-order key of the float bits of
//      (x1, y1), data-independent: no reduction), then a stable sort by seg_start. Spatial
//      position s holds rank sp[s]; segments stay contiguous, in rank order, boxes of a segment
//      in Z order, so 64 consecutive positions (a block) are spatially compact (a Morton block of
//      uniform boxes is a square, where a 64-box block in score order spans the whole canvas).
//  S2. per block: the bounding box of its regular boxes (nms_sparse_block_box) and its segment
//      range. Any valid candidate with a non-finite coordinate sets the fallback flag.
//  S3. density rule (device side, no host sync): surviving block pairs vs the bitmask's live block
//      pairs (nms_sparse_block_pairs, nms_sparse_decide).
//  S4. edges: for each surviving block pair, the very nms_suppresses test of nms.h, from the
//      higher-ranked box to the lower-ranked one, as in-edges of the lower-ranked box (CSR by
//      spatial position: a count pass, an inclusive sum, an emit pass). More edges than the
//      workspace holds (nms_sparse_edge_cap) sets the fallback flag.
//  S5. rounds (nms_sparse_round_step): a box is kept once every higher-ranked neighbour is
//      decided and none is kept; removed as soon as one kept neighbour exists. After
//      kNmsSparseRounds rounds, a sequential pass in rank order finishes what is left.
//  S6. keep[sp[s]] = kept(s); then the bitmask path runs on neutralised inputs (every candidate
//      its own segment and invalid: nothing left to compute) -- or, when the fallback flag is
//      set, on the real ones, as if the sparse path had never run.
//
// Why the kept set is exact. The bitmask's mask bit (i, j) is set iff i < j (rank), same segment
// and nms_suppresses(i, j); its scan keeps j iff j is valid and no kept i has bit (i, j). S4's
// edges are exactly those bits, except pairs in culled block pairs, which are never set:
//  * A culled block pair (A, B) has, say, A.x1 >= B.x2, where A.x1 is the min of x1 over A's
//    regular boxes (valid, finite, x1 < x2, y1 < y2) and B.x2 the max of x2 over B's (an empty
//    block has +inf / -inf, so it never survives). For regular a in A, b in B: b.x2 <= B.x2 <=
//    A.x1 <= a.x1, so std_min(a.x2, b.x2) <= b.x2 <= a.x1 <= std_max(a.x1, b.x1): the exact
//    difference is <= 0, and so is its rounding (-0 or -inf included), and
//    w = std_max(0, dx) = +0. h is finite or +inf (huge finite boxes overflow), inter = 0 * h is
//    +0 or NaN, and iou = inter / union is +-0 or NaN: never > thr once thr >= 0. The other three
//    separations are the same with the roles or the axes swapped.
//  * A valid box that is not regular is finite (non-finite ones set the fallback) and has
//    x1 >= x2 or y1 >= y2: inert, it neither suppresses nor is suppressed by anything when
//    thr >= 0 (the argument is written at the top of nms_sparse.cpp). Invalid candidates are
//    segments of their own: no edges, and they start removed (the scan never keeps them).
//  * Blocks whose segment ranges are disjoint hold no same-segment pair.
// Rounds: by induction on rank, every decision a round takes is the greedy one: "removed" needs a
// kept higher-ranked neighbour (already decided, hence right), "kept" needs all of them decided
// and removed. A round reads the previous round's states and writes the other buffer (no race,
// the same schedule on the GPU and in the emulation); rounds needed = the longest chain of
// undecided dependencies. The final sequential pass visits the undecided in rank order, when
// every higher-ranked neighbour is decided. So the kept set equals the scan's.
//
// Where the pruning argument does not hold, the plain bitmask path runs instead:
//  * thr not >= 0 (negative or NaN; T-rounded): the host rule nms_sparse_gpu_use (never sparse);
//  * a valid candidate with a NaN or infinite coordinate: nms_sparse_gather sets the flag;
//  * more edges than the workspace holds: nms_sparse_check_cap sets the flag;
//  * the density rule (auto path only): nms_sparse_decide sets the flag.
// Every flag is read on the device: nms/batched_nms/nms_padded/multi_image_nms keep their
// host-sync behaviour (the workspace is sized from shapes only, nms_sparse_gpu_bytes).
#pragma once
#include "ops/nms/nms_bitmask.h"

namespace detkernels {

constexpr int kNmsSparseRounds = 64;       // round launches before the sequential pass
constexpr int kNmsSparseReduceThreads = 256;  // block size of nms_sparse_decide_kernel
// The density rule (S3): sparse iff surviving block pairs * kNmsSparseGain <= the bitmask's live
// block pairs. PROVISIONAL, from operation counts, never measured on a GPU (none was available):
// a surviving pair costs the sparse path 2 passes x 2 directions x 64 x 64 rank tests and about
// 2 x 64 x 64 IoUs, the bitmask 64 x 64 IoUs per live pair, plus the rounds: break-even near a
// ratio of 2, so 4 leaves a margin.
constexpr int64_t kNmsSparseGain = 4;
// Edge capacity floor, per candidate (S4); the edges alias the bitmask's mask tiles, which the
// sparse path never uses when it succeeds, so the floor only matters for small masks.
constexpr int64_t kNmsSparseMinEdgesPerCand = 16;

// States of S5.
constexpr uint8_t kNmsUndecided = 0, kNmsKept = 1, kNmsRemoved = 2;

template <typename T> DK_HD bool nms_finite(T v) { return v - v == T(0); }  // false for NaN, +-inf

// Ascending unsigned key of a coordinate, 32 bits (the high half of the double's): monotone in
// the value (-0 == +0), so nearby values share high bits. NaN: any key (such inputs fall back).
DK_HD uint32_t nms_sparse_coord_key(float v) {
  const uint32_t u = nms_bits_of<uint32_t>(v == 0.0f ? 0.0f : v);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
DK_HD uint32_t nms_sparse_coord_key(double v) {
  const uint64_t u = nms_bits_of<uint64_t>(v == 0.0 ? 0.0 : v);
  const uint64_t sign = uint64_t(1) << 63;
  return static_cast<uint32_t>(((u & sign) ? ~u : (u | sign)) >> 32);
}

// Z-order (Morton) key of (x1, y1): bit k of x's key at 2k + 1, of y's at 2k.
DK_HD uint64_t nms_sparse_spread(uint32_t v) {
  uint64_t x = v;
  x = (x | (x << 16)) & 0x0000FFFF0000FFFFull;
  x = (x | (x << 8)) & 0x00FF00FF00FF00FFull;
  x = (x | (x << 4)) & 0x0F0F0F0F0F0F0F0Full;
  x = (x | (x << 2)) & 0x3333333333333333ull;
  x = (x | (x << 1)) & 0x5555555555555555ull;
  return x;
}
template <typename T> DK_HD uint64_t nms_sparse_morton_key(T x1, T y1) {
  return (nms_sparse_spread(nms_sparse_coord_key(x1)) << 1) |
         nms_sparse_spread(nms_sparse_coord_key(y1));
}

// A box the block bounding boxes must cover (see "Why the kept set is exact").
template <typename T> DK_HD bool nms_sparse_regular(bool valid, T x1, T y1, T x2, T y2) {
  return valid && nms_finite(x1) && nms_finite(y1) && nms_finite(x2) && nms_finite(y2) &&
         x1 < x2 && y1 < y2;
}

// S2, per spatial position s: the columns in spatial order (sx1..sarea, sseg), pos_of (rank ->
// position) and the fallback flag for a valid candidate with a non-finite coordinate.
template <typename T>
DK_HD void nms_sparse_gather(int64_t s, const int64_t* sp, const T* x1, const T* y1, const T* x2,
                             const T* y2, const T* area, const int64_t* seg, const uint8_t* valid,
                             T* sx1, T* sy1, T* sx2, T* sy2, T* sarea, int64_t* sseg,
                             uint8_t* svalid, int32_t* pos_of, uint32_t* fallback) {
  const int64_t p = sp[s];
  const T a = x1[p], b = y1[p], c = x2[p], d = y2[p];
  sx1[s] = a; sy1[s] = b; sx2[s] = c; sy2[s] = d;
  sarea[s] = area[p];
  sseg[s] = seg[p];
  svalid[s] = valid[p];
  pos_of[p] = static_cast<int32_t>(s);
  if (valid[p] && !(nms_finite(a) && nms_finite(b) && nms_finite(c) && nms_finite(d)))
    *fallback = 1;  // benign race: every writer stores 1
}

// S2, per block A: bounding box [bx1, by1, bx2, by2] of its regular boxes (+inf, +inf, -inf,
// -inf when it has none) and its segment range [blo, bhi] (sseg is non-decreasing in s).
template <typename T>
DK_HD void nms_sparse_block_box(int64_t A, int64_t total, const T* sx1, const T* sy1,
                                const T* sx2, const T* sy2, const uint8_t* svalid,
                                const int64_t* sseg, T* bbox, int64_t* blo, int64_t* bhi) {
  const T inf = nms_inf<T>();
  T a = inf, b = inf, c = -inf, d = -inf;
  const int64_t s0 = A * kNmsWordBits;
  const int64_t s1 = s0 + kNmsWordBits < total ? s0 + kNmsWordBits : total;
  for (int64_t s = s0; s < s1; ++s) {
    if (!nms_sparse_regular(svalid[s] != 0, sx1[s], sy1[s], sx2[s], sy2[s])) continue;
    a = std_min(a, sx1[s]); b = std_min(b, sy1[s]);
    c = std_max(c, sx2[s]); d = std_max(d, sy2[s]);
  }
  bbox[4 * A] = a; bbox[4 * A + 1] = b; bbox[4 * A + 2] = c; bbox[4 * A + 3] = d;
  blo[A] = sseg[s0];
  bhi[A] = sseg[s1 - 1];
}

// Blocks A and B may hold a suppressing pair: their segment ranges meet and their bounding boxes
// overlap with positive width and height (the culling argument at the top).
template <typename T>
DK_HD bool nms_sparse_blocks_meet(int64_t A, int64_t B, const T* bbox, const int64_t* blo,
                                  const int64_t* bhi) {
  const T* a = bbox + 4 * A;
  const T* b = bbox + 4 * B;
  return blo[A] <= bhi[B] && blo[B] <= bhi[A] && a[0] < b[2] && b[0] < a[2] && a[1] < b[3] &&
         b[1] < a[3];
}

// The blocks whose segment ranges can meet A's: [*lo, *hi] (blo, bhi are non-decreasing).
DK_HD void nms_sparse_block_span(int64_t A, int64_t nb, const int64_t* blo, const int64_t* bhi,
                                 int64_t* lo, int64_t* hi) {
  int64_t a = 0, z = A;  // first block with bhi >= blo[A]
  while (a < z) {
    const int64_t m = a + (z - a) / 2;
    if (bhi[m] < blo[A]) a = m + 1; else z = m;
  }
  *lo = a;
  a = A; z = nb - 1;  // last block with blo <= bhi[A]
  while (a < z) {
    const int64_t m = z - (z - a) / 2;
    if (blo[m] <= bhi[A]) a = m; else z = m - 1;
  }
  *hi = a;
}

// S3, per block A: pairs[2A] = the bitmask's live block pairs (A, B >= A) -- an upper bound, the
// blocks of A's span -- and pairs[2A + 1] = the sparse path's visits (every B of the span that
// meets A, either side: the count and emit passes visit each from both ends).
template <typename T>
DK_HD void nms_sparse_block_pairs(int64_t A, int64_t nb, const T* bbox, const int64_t* blo,
                                  const int64_t* bhi, int64_t* pairs) {
  int64_t lo, hi, meet = 0;
  nms_sparse_block_span(A, nb, blo, bhi, &lo, &hi);
  for (int64_t B = lo; B <= hi; ++B) meet += nms_sparse_blocks_meet(A, B, bbox, blo, bhi);
  pairs[2 * A] = hi - A + 1;
  pairs[2 * A + 1] = meet;
}

// S3: thread t (of nthreads) sums its strided share of the (live, visits) pairs; the decision
// then compares the totals (integers: the sum's order does not matter).
DK_HD void nms_sparse_partial_sum(int t, int nthreads, int64_t nb, const int64_t* pairs,
                                  int64_t* live, int64_t* visits) {
  int64_t l = 0, v = 0;
  for (int64_t A = t; A < nb; A += nthreads) {
    l += pairs[2 * A];
    v += pairs[2 * A + 1];
  }
  *live = l;
  *visits = v;
}
DK_HD void nms_sparse_decide(int64_t live, int64_t visits, uint32_t* fallback) {
  // visits count both directions (about twice the surviving pairs, nms_sparse_block_pairs)
  if (visits * kNmsSparseGain > 2 * live) *fallback = 1;
}

// S4, thread of position j (rank rj, box b) against the `nc` boxes staged from block position c0
// (columns indexed from 0): counts the in-edges i -> j (same segment, higher rank, nms_suppresses
// with i as the kept box) and, if `out`, writes their positions from out[0]. The one IoU of nms.h.
template <typename T>
DK_HD int64_t nms_sparse_in_edges(int64_t rj, int64_t segj, T bx1, T by1, T bx2, T by2, T barea,
                                  const T* cx1, const T* cy1, const T* cx2, const T* cy2,
                                  const T* carea, const int64_t* cseg, const int64_t* crank,
                                  int64_t c0, int nc, T thr, int32_t* out) {
  int64_t n = 0;
  for (int k = 0; k < nc; ++k) {
    if (cseg[k] != segj || crank[k] >= rj) continue;
    if (nms_suppresses(cx1[k], cy1[k], cx2[k], cy2[k], carea[k], bx1, by1, bx2, by2, barea, thr)) {
      if (out) out[n] = static_cast<int32_t>(c0 + k);
      ++n;
    }
  }
  return n;
}

// Edges the workspace holds: the mask tiles' bytes as int32 edges, at least
// kNmsSparseMinEdgesPerCand per candidate (nms_sparse_gpu_bytes reserves the floor).
DK_HD int64_t nms_sparse_edge_cap(int64_t mask_bytes, int64_t total) {
  const int64_t a = mask_bytes / 4, b = kNmsSparseMinEdgesPerCand * total;
  return a > b ? a : b;
}

// S4, after the count pass and its inclusive sum (off[0] = 0, off[s + 1] = edges of 0..s).
DK_HD void nms_sparse_check_cap(const int64_t* off, int64_t total, int64_t cap,
                                uint32_t* fallback) {
  if (off[total] > cap || off[total] > int64_t(0x7FFFFFFF)) *fallback = 1;
}

// S5, position s: its state from its in-edges' states, read from `in` (the previous round),
// written to `out` (decided states are copied). Returns true if s is still undecided. The
// sequential pass (nms_sparse_finish) passes one array for both: it visits in rank order.
DK_HD bool nms_sparse_round_step(int64_t s, const int64_t* off, const int32_t* edges,
                                 const uint8_t* in, uint8_t* out) {
  if (in[s] != kNmsUndecided) {
    out[s] = in[s];
    return false;
  }
  bool all_removed = true;
  for (int64_t e = off[s]; e < off[s + 1]; ++e) {
    const uint8_t st = in[edges[e]];
    if (st == kNmsKept) {
      out[s] = kNmsRemoved;
      return false;
    }
    all_removed = all_removed && st == kNmsRemoved;
  }
  if (all_removed) {
    out[s] = kNmsKept;
    return false;
  }
  out[s] = kNmsUndecided;
  return true;
}

// S5, the initial state: invalid candidates removed, the rest undecided.
DK_HD uint8_t nms_sparse_init_state(uint8_t valid) { return valid ? kNmsUndecided : kNmsRemoved; }

// S5, after the rounds: the undecided ones in rank order (each one's higher-ranked neighbours are
// decided by then). One thread; runs only when the last round left something undecided.
DK_HD void nms_sparse_finish(int64_t total, const int32_t* pos_of, const int64_t* off,
                             const int32_t* edges, uint8_t* state) {
  for (int64_t p = 0; p < total; ++p) {
    const int64_t s = pos_of[p];
    if (state[s] == kNmsUndecided) nms_sparse_round_step(s, off, edges, state, state);
  }
}

// S6, position s: the keep flag of its rank.
DK_HD void nms_sparse_output(int64_t s, const int64_t* sp, const uint8_t* state, uint8_t* keep) {
  keep[sp[s]] = state[s] == kNmsKept ? 1 : 0;
}

// S6, rank p, when the sparse path succeeded: every candidate its own segment and invalid, so the
// bitmask tiles compute only diagonal words and its scan leaves keep as S6 wrote it.
DK_HD void nms_sparse_neutralise(int64_t p, int64_t* seg, uint8_t* valid) {
  seg[p] = p;
  valid[p] = 0;
}

#ifndef __CUDACC_RTC__
/// @brief Process-wide choice of the GPU NMS path (an NmsPath of nms_sparse.h: auto, plain,
/// pruned) and the number of round launches (0: kNmsSparseRounds), for tests
/// (_C.testing.nms_gpu_set_path); returns the previous path. Read by nms_cuda.cu and
/// nms_emulate.cpp.
int nms_gpu_set_path(int path, int rounds);
int nms_gpu_path();
int nms_gpu_rounds();

/// @brief The host side of the rule (shapes only, no data): whether the workspace gets the
/// sparse path's buffers. Auto: at least kNmsSparseMinPerImage candidates per image (smaller
/// segments are cheap for the bitmask; the CPU rule's kMinBoxes, nms_sparse.cpp); forced
/// pruned: any non-empty problem. Never when total >= 2^31 (int32 positions).
bool nms_sparse_gpu_sized(int64_t total, int64_t M);
/// @brief nms_sparse_gpu_sized and thr >= 0 (T-rounded; the pruning argument needs it).
bool nms_sparse_gpu_use(int64_t total, int64_t M, double thr_t);
/// @brief Whether the device density rule applies (auto path) or is skipped (forced pruned).
bool nms_sparse_gpu_rule();
constexpr int64_t kNmsSparseMinPerImage = 4096;

/// @brief What the last nms_multi_emulate_cpu call's sparse path did (tests: they check that the
/// path they force really runs): plain (host rule), fallback (a device flag), sparse, or sparse
/// with the sequential pass after the rounds.
enum NmsOutcome : int {
  kNmsOutcomePlain = 0, kNmsOutcomeFallback = 1, kNmsOutcomeSparse = 2,
  kNmsOutcomeSparseFinished = 3,
};
int nms_gpu_emulated_outcome();
/// @brief The last emulated call's work: (the bitmask's live block pairs, the sparse path's
/// block-pair visits -- both 0 unless the density rule ran --, edges, rounds that left a box
/// undecided). Operation counts for the report and the tests, not timings.
std::array<int64_t, 4> nms_gpu_emulated_work();
#endif

}  // namespace detkernels
