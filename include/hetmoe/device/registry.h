// The backend registry: an explicit list (CUDA, ROCm, CPU last), no static initialisers.
// Backends that were not built are link-time stubs that report themselves unavailable.
#pragma once

#include <ATen/core/Tensor.h>

#include <memory>
#include <string>
#include <vector>

#include "hetmoe/device/backend.h"

namespace hetmoe {

// Every backend compiled into this build, in priority order (CPU last).
const std::vector<const Backend*>& backends();

// The backend of a kind; throws hetmoe::Error("[device] ...") when it is not built in.
const Backend& backend(BackendKind kind);

// The backend that owns a tensor's device (a ROCm LibTorch reports CUDA-type tensors: those map
// to the ROCm backend there).
const Backend& backend_for(const at::Tensor& t);
// The backend that owns a LibTorch device (backend_for(tensor) is this on tensor.device()).
const Backend& backend_for(c10::Device device);

// Resolves a config device string (auto | cpu | cuda[:i] | rocm[:i]) to a LibTorch device.
// auto picks the first available GPU backend, else the CPU. Throws naming the string when the
// backend is not built or has no such device.
c10::Device resolve_device(const std::string& spec);

// Factories, one per backend source folder; a backend not built returns nullptr (stub).
std::unique_ptr<Backend> make_cpu_backend();
std::unique_ptr<Backend> make_cuda_backend();
std::unique_ptr<Backend> make_rocm_backend();

}  // namespace hetmoe
