// Exact greedy NMS whose cost follows the overlapping pairs, not N^2: a spatial index of the kept
// boxes (nms_sparse.cpp) finds the only kept boxes that can suppress a candidate. Same kept set
// and order as the plain loop of nms_cpu.cpp, bit for bit; the argument is written at the top of
// nms_sparse.cpp, next to the rule that chooses the path.
#pragma once
#include <cstdint>

namespace detkernels {

/// @brief Which path nms_sparse_segment takes (tests force one; the library runs kNmsPathAuto).
enum NmsPath : int {
  kNmsPathAuto = 0,    // the measured size/density rule (nms_sparse.cpp)
  kNmsPathPlain = 1,   // never pruned: nms_sparse_segment returns false
  kNmsPathPruned = 2,  // pruned wherever the pruning argument holds (threshold >= 0)
};

/// @brief Greedy NMS of n boxes already in visiting order (columns x1, y1, x2, y2 and their
/// nms_area), pruned by a spatial index of the kept boxes. Sets keep[p] = 1 for each kept p.
/// @param thr the threshold rounded down to T (nms_threshold), as nms_suppresses takes it
/// @return false, with keep untouched, when the rule picks the plain path (the caller runs it)
template <typename T>
bool nms_sparse_segment(const T* x1, const T* y1, const T* x2, const T* y2, const T* area,
                        int64_t n, T thr, uint8_t* keep);

/// @brief Sets the process-wide path (an NmsPath) and returns the previous one. For tests
/// (_C.testing.nms_set_path): they compare the pruned and plain paths on the same inputs.
int nms_set_path(int path);

}  // namespace detkernels
