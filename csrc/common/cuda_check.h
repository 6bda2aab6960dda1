// CUDA error handling for the launchers: every runtime call and every launch is checked, and a
// failure becomes a C++ exception (pybind11 turns it into a Python RuntimeError).
#pragma once
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

namespace detkernels {

inline void cuda_check(cudaError_t err, const char* what) {
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("detkernels CUDA error in ") + what + ": " +
                             cudaGetErrorString(err));
}

#define DK_CUDA_CHECK(expr) ::detkernels::cuda_check((expr), #expr)
// After a <<<...>>> launch: catches bad configurations without synchronising the stream.
#define DK_CUDA_CHECK_LAUNCH(name) ::detkernels::cuda_check(cudaGetLastError(), name)

template <typename I> constexpr I ceil_div(I a, I b) { return (a + b - 1) / b; }

/// @brief Makes `device` current for a launch and restores the caller's device on exit (the
/// caller's tensor may live on cuda:1 while cuda:0 is current).
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    DK_CUDA_CHECK(cudaGetDevice(&prev_));
    if (prev_ == device) prev_ = -1;
    else DK_CUDA_CHECK(cudaSetDevice(device));
  }
  ~DeviceGuard() {
    if (prev_ >= 0) cudaSetDevice(prev_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int prev_ = -1;
};

/// @brief Number of usable CUDA devices; 0 when there is no driver or no GPU (never throws).
int cuda_device_count();

}  // namespace detkernels
