#include "common/cuda_check.h"

namespace detkernels {

int cuda_device_count() {
  int n = 0;
  // cudaErrorInsufficientDriver / cudaErrorNoDevice on GPU-less hosts: report 0 devices.
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
}

}  // namespace detkernels
