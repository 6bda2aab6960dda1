// Shared by the C++ CPU kernels (g++), the CUDA kernels (nvcc) and the CuPy backend (NVRTC).
// No allocation, no exceptions, no std headers under NVRTC.
#pragma once

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define DK_HD __host__ __device__ __forceinline__
#else
#define DK_HD inline
#endif

#ifndef __CUDACC_RTC__
#include <array>
#include <cstdint>
#else
// NVRTC (the CuPy backend) has no <cstdint>: the fixed-width types the headers use (LP64).
typedef long int64_t;
typedef int int32_t;
typedef unsigned long uint64_t;
typedef unsigned int uint32_t;
typedef unsigned char uint8_t;
#endif

namespace detkernels {

#ifndef __CUDACC_RTC__
// Element strides of a 4-d operand (the RoI ops' input or grad): entry points take them by value
// (Python passes a list of 4 ints), kernels and loops as a pointer to 4 int64.
using Strides4 = std::array<int64_t, 4>;
#endif

// Working-dtype codes shared with Python (detkernels/backends/native.py: _DTYPE_CODES).
enum DType : int { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3, kInt32 = 4, kInt64 = 5 };

// std::max / std::min written out, so that NaN and -0.0 follow the operand order on every
// compiler and device: std_max(a, NaN) = a, std_max(NaN, b) = NaN (torchvision's CPU NMS).
template <typename T> DK_HD T std_max(T a, T b) { return a < b ? b : a; }
template <typename T> DK_HD T std_min(T a, T b) { return b < a ? b : a; }

// torch.maximum / torch.minimum: NaN if either operand is NaN (torchvision's box_iou).
template <typename T> DK_HD T nan_max(T a, T b) { return (a < b || b != b) ? b : a; }
template <typename T> DK_HD T nan_min(T a, T b) { return (b < a || b != b) ? b : a; }

// Tensor.clamp(min=0): NaN stays NaN, -0.0 stays -0.0.
template <typename T> DK_HD T clamp_min0(T x) { return x < T(0) ? T(0) : x; }

}  // namespace detkernels
