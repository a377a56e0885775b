#include "hetmoe/device/registry.h"

#include <memory>

#include "hetmoe/core/error.h"

namespace hetmoe {

std::string to_string(BackendKind kind) {
  switch (kind) {
    case BackendKind::CPU:
      return "cpu";
    case BackendKind::CUDA:
      return "cuda";
    case BackendKind::ROCm:
      return "rocm";
  }
  return "unknown";
}

namespace {
// Owned backends, built once on first use in an explicit order: GPU backends first, CPU last.
struct Registry {
  std::vector<std::unique_ptr<Backend>> owned;
  std::vector<const Backend*> list;
  Registry() {
    for (auto make : {make_cuda_backend, make_rocm_backend, make_cpu_backend}) {
      if (auto b = make()) {
        list.push_back(b.get());
        owned.push_back(std::move(b));
      }
    }
  }
};
const Registry& registry() {
  static const Registry r;
  return r;
}
}  // namespace

const std::vector<const Backend*>& backends() {
  return registry().list;
}

const Backend& backend(BackendKind kind) {
  for (const Backend* b : backends())
    if (b->kind() == kind) return *b;
  HETMOE_FAIL("device", "this hetmoe was not built with the ", to_string(kind),
              " backend (see `hetmoe devices`)");
}

const Backend& backend_for(const at::Tensor& t) {
  return backend_for(t.device());
}

const Backend& backend_for(c10::Device device) {
  switch (device.type()) {
    case c10::DeviceType::CPU:
      return backend(BackendKind::CPU);
    case c10::DeviceType::CUDA:
      // A ROCm build of LibTorch also reports CUDA-type devices.
      for (const Backend* b : backends())
        if (b->kind() == BackendKind::CUDA || b->kind() == BackendKind::ROCm) return *b;
      HETMOE_FAIL("device", "tensor on ", device.str(),
                  " but this hetmoe has no CUDA or ROCm backend");
    default:
      HETMOE_FAIL("device", "no hetmoe backend for tensors on ", device.str());
  }
}

c10::Device resolve_device(const std::string& spec) {
  std::string kind = spec;
  int index = 0;
  if (auto colon = spec.find(':'); colon != std::string::npos) {
    kind = spec.substr(0, colon);
    try {
      size_t used = 0;
      index = std::stoi(spec.substr(colon + 1), &used);
      HETMOE_CHECK(used == spec.size() - colon - 1 && index >= 0, "device", "bad device index in '",
                   spec, "'");
    } catch (const std::logic_error&) {
      HETMOE_FAIL("device", "bad device index in '", spec, "'");
    }
  }
  if (kind == "auto") {
    for (const Backend* b : backends())
      if (b->kind() != BackendKind::CPU && b->available()) return b->torch_device(0);
    return backend(BackendKind::CPU).torch_device(0);
  }
  BackendKind k;
  if (kind == "cpu")
    k = BackendKind::CPU;
  else if (kind == "cuda")
    k = BackendKind::CUDA;
  else if (kind == "rocm")
    k = BackendKind::ROCm;
  else
    HETMOE_FAIL("device", "unknown device '", spec, "' (expected auto, cpu, cuda[:i] or rocm[:i])");
  const Backend& b = backend(k);
  HETMOE_CHECK(b.available(), "device", "device '", spec, "': the ", b.name(),
               " backend is built in but no device is visible");
  const auto devs = b.devices();
  HETMOE_CHECK(index < static_cast<int>(devs.size()), "device", "device '", spec, "': only ",
               devs.size(), " ", b.name(), " device(s) visible");
  return b.torch_device(index);
}

}  // namespace hetmoe
