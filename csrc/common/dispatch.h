// Dtype dispatch of the host entry points: the one place where a DType code (host_device.h)
// becomes a C++ type. f is called with a value of that type as a tag (`[&](auto t) { using T =
// decltype(t); ... }`); an unsupported code throws std::invalid_argument (Python ValueError)
// naming the op and the dtypes it supports. Host only (throws): never included by NVRTC sources.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>

#include "common/host_device.h"

namespace detkernels {

namespace detail {
[[noreturn]] inline void unsupported_dtype(const char* op, int dtype, const char* supported) {
  throw std::invalid_argument(std::string(op) + ": dtype must be " + supported + " (got dtype code " +
                              std::to_string(dtype) + ")");
}
}  // namespace detail

/// @brief f(float()) or f(double()) for kFloat32 / kFloat64.
template <class F> decltype(auto) dispatch_float(int dtype, const char* op, F&& f) {
  switch (dtype) {
    case kFloat32: return f(float());
    case kFloat64: return f(double());
  }
  detail::unsupported_dtype(op, dtype, "float32 or float64");
}

/// @brief dispatch_float, plus f(int32_t()) / f(int64_t()) for the integer boxes of box_iou.
template <class F> decltype(auto) dispatch_float_int(int dtype, const char* op, F&& f) {
  switch (dtype) {
    case kFloat32: return f(float());
    case kFloat64: return f(double());
    case kInt32: return f(int32_t());
    case kInt64: return f(int64_t());
  }
  detail::unsupported_dtype(op, dtype, "float32, float64, int32 or int64");
}

}  // namespace detkernels
