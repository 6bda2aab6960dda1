// What cub::DeviceRadixSort::SortPairs does, for the CPU emulators of the GPU pipelines
// (ops/*/*_emulate.cpp): over key bits [0, end_bit), a stable sort by the masked key, keys and
// values permuted together. Tests only; the one copy the NMS, detect and Matrix NMS emulators use.
#pragma once
#include <algorithm>
#include <cstdint>
#include <numeric>
#include <vector>

namespace detkernels {

inline void cub_sort_pairs_emulate(std::vector<uint64_t>& keys, std::vector<int64_t>& vals,
                                   int end_bit) {
  const uint64_t m = end_bit >= 64 ? ~uint64_t(0) : ((uint64_t(1) << end_bit) - 1);
  std::vector<size_t> idx(keys.size());
  std::iota(idx.begin(), idx.end(), size_t{0});
  std::stable_sort(idx.begin(), idx.end(),
                   [&](size_t a, size_t b) { return (keys[a] & m) < (keys[b] & m); });
  std::vector<uint64_t> k2(keys.size());
  std::vector<int64_t> v2(vals.size());
  for (size_t p = 0; p < idx.size(); ++p) {
    k2[p] = keys[idx[p]];
    v2[p] = vals[idx[p]];
  }
  keys.swap(k2);
  vals.swap(v2);
}

}  // namespace detkernels
