// `hetmoe devices` and `hetmoe version`: what this build has and what it runs on.
#include <ATen/ATen.h>
#include <torch/version.h>
#include <yaml-cpp/yaml.h>

#include <cstdio>
#include <nlohmann/json.hpp>
#include <sstream>

#include "cli/commands.h"
#include "hetmoe/comm/communicator.h"
#include "hetmoe/core/logging.h"
#include "hetmoe/core/version.h"
#include "hetmoe/device/registry.h"

namespace hetmoe::cli {
namespace {

std::string human_bytes(int64_t b) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f GiB", static_cast<double>(b) / (1024.0 * 1024 * 1024));
  return buf;
}

int run_devices() {
  for (const Backend* b : backends()) {
    const auto devs = b->devices();
    std::printf("%s backend: %s, kernels '%s'\n", b->name().c_str(),
                b->available() ? "available" : "built in, no device visible",
                b->kernels().implementation.c_str());
    for (const DeviceInfo& d : devs) {
      std::printf("  [%s:%d] %s\n", b->name().c_str(), d.index, d.name.c_str());
      std::printf("      memory %s", human_bytes(d.memory_bytes).c_str());
      if (d.peak_fp32_flops > 0)
        std::printf(", peak fp32 %.1f TFLOP/s, bf16 %.1f TFLOP/s", d.peak_fp32_flops / 1e12,
                    d.peak_bf16_flops / 1e12);
      std::printf("\n");
      for (const auto& [k, v] : d.details) std::printf("      %s: %s\n", k.c_str(), v.c_str());
    }
  }
  const char* absent[] = {HETMOE_HAS_CUDA ? nullptr : "cuda", HETMOE_HAS_ROCM ? nullptr : "rocm"};
  for (const char* a : absent)
    if (a) std::printf("%s backend: not built in this hetmoe\n", a);
  return 0;
}

// LibTorch's math libraries and GPU runtime, from its build configuration.
std::string torch_libraries() {
  const std::string config = at::show_config();
  std::istringstream in(config);
  std::string line, out;
  while (std::getline(in, line)) {
    for (const char* key : {"oneMKL", "MKL-DNN", "oneDNN", "OpenMP", "CUDA Runtime", "CuDNN"}) {
      if (line.find(key) != std::string::npos) {
        line.erase(0, line.find_first_not_of(" -"));
        out += "    " + line + "\n";
        break;
      }
    }
  }
  for (const char* key : {"BLAS_INFO", "CUDA_VERSION", "CUDNN_VERSION"}) {
    const std::string tag = std::string(key) + "=";
    if (auto pos = config.find(tag); pos != std::string::npos)
      out += "    " + config.substr(pos, config.find_first_of(",\n", pos) - pos) + "\n";
  }
  return out;
}

int run_version() {
  std::printf("hetmoe %s (commit %s)\n", HETMOE_VERSION_STRING, HETMOE_GIT_COMMIT);
  std::printf(
      "  backends: cpu%s%s%s\n", HETMOE_HAS_CUDA ? ", cuda" : "", HETMOE_HAS_ROCM ? ", rocm" : "",
      HETMOE_HAS_HIP && !HETMOE_HAS_ROCM ? " (GPU kernels also compile-checked with hipcc)" : "");
  std::printf("  communication: %s\n", comm_transports().c_str());
  std::printf("  libtorch %s\n%s", TORCH_VERSION, torch_libraries().c_str());
  std::printf("  %s, nlohmann-json %d.%d.%d, CLI11 %s, yaml-cpp %s, oneDNN (Debian) %s\n",
              logging_library_version().c_str(), NLOHMANN_JSON_VERSION_MAJOR,
              NLOHMANN_JSON_VERSION_MINOR, NLOHMANN_JSON_VERSION_PATCH, CLI11_VERSION,
              *HETMOE_YAML_CPP_VERSION ? HETMOE_YAML_CPP_VERSION : "(unknown)",
              *HETMOE_DNNL_VERSION ? HETMOE_DNNL_VERSION : "(not found)");
  std::printf("  compiler %s\n", __VERSION__);
  return 0;
}

}  // namespace

void add_devices_command(CLI::App& root, int& status) {
  root.add_subcommand("devices", "List the backends and devices this build has")
      ->callback([&status] { status = run_devices(); });
}

void add_version_command(CLI::App& root, int& status) {
  root.add_subcommand("version", "Print versions of hetmoe, LibTorch and the other libraries")
      ->callback([&status] { status = run_version(); });
}

}  // namespace hetmoe::cli
