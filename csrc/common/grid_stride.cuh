// The grid-stride loop of every 1-d CUDA kernel (nvcc and NVRTC): i runs over [0, total) in steps
// of the whole grid, so any grid size is correct and launchers may cap the block count. int64
// arithmetic throughout: blockIdx.x * blockDim.x overflows 32 bits past 2^32 items.
#pragma once

#define DK_GRID_STRIDE(i, total)                                                                 \
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < (total);   \
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
