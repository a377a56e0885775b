// The CPU backend: host information (cores, ISA, the BLAS and oneDNN LibTorch uses) and the CPU
// MoE kernel table.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <sys/resource.h>
#include <unistd.h>

#include <fstream>
#include <sstream>
#include <thread>

#include "hetmoe/core/host_memory.h"
#include "hetmoe/device/registry.h"
#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/dnnl_gemm.h"

namespace hetmoe {
namespace {

std::string cpuinfo_field(const std::string& key) {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(key, 0) == 0) {
      auto colon = line.find(':');
      if (colon != std::string::npos) {
        auto v = line.substr(colon + 1);
        v.erase(0, v.find_first_not_of(" \t"));
        return v;
      }
    }
  }
  return "";
}

bool has_flag(const std::string& flags, const std::string& f) {
  std::istringstream is(flags);
  std::string w;
  while (is >> w)
    if (w == f) return true;
  return false;
}

// "KEY=VALUE" entries of LibTorch's build configuration.
std::string torch_config_value(const std::string& config, const std::string& key) {
  auto pos = config.find(key + "=");
  if (pos == std::string::npos) return "";
  pos += key.size() + 1;
  auto end = config.find_first_of(",\n", pos);
  return config.substr(pos, end == std::string::npos ? std::string::npos : end - pos);
}

class CpuBackend final : public Backend {
 public:
  BackendKind kind() const override { return BackendKind::CPU; }
  bool available() const override { return true; }
  c10::Device torch_device(int) const override { return c10::Device(c10::kCPU); }
  void synchronize(int) const override {}
  int64_t peak_memory_bytes(int) const override {
    struct rusage usage;
    return getrusage(RUSAGE_SELF, &usage) == 0 ? static_cast<int64_t>(usage.ru_maxrss) * 1024 : 0;
  }
  const MoEKernels& kernels() const override { return cpu::cpu_moe_kernels(); }

  std::vector<DeviceInfo> devices() const override {
    DeviceInfo d;
    d.kind = BackendKind::CPU;
    const unsigned cores = std::thread::hardware_concurrency();
    std::string model = cpuinfo_field("model name");
    d.name =
        (model.empty() ? std::string("CPU") : model) + " (" + std::to_string(cores) + " cores)";
    d.memory_bytes = static_cast<int64_t>(sysconf(_SC_PHYS_PAGES)) * sysconf(_SC_PAGE_SIZE);

    const std::string flags = cpuinfo_field("flags");
    std::string isa;
    int fp32_per_cycle = 0;  // per core, with two FMA ports
    for (const char* f : {"sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16"}) {
      if (has_flag(flags, f)) isa += (isa.empty() ? "" : " ") + std::string(f);
    }
    if (has_flag(flags, "avx512f"))
      fp32_per_cycle = 64;
    else if (has_flag(flags, "avx2") && has_flag(flags, "fma"))
      fp32_per_cycle = 32;
    else if (has_flag(flags, "avx"))
      fp32_per_cycle = 16;
    d.details["isa"] = isa.empty() ? "unknown" : isa;
    d.details["cores"] = std::to_string(cores);
    d.details["intra_op_threads"] = std::to_string(at::get_num_threads());

    const std::string mhz = cpuinfo_field("cpu MHz");
    if (!mhz.empty() && fp32_per_cycle > 0) {
      const double hz = std::stod(mhz) * 1e6;
      d.peak_fp32_flops = hz * cores * fp32_per_cycle;
      // Without AVX512-BF16/AMX, bf16 GEMMs convert to fp32 and run no faster.
      d.peak_bf16_flops = has_flag(flags, "amx_bf16")      ? d.peak_fp32_flops * 8
                          : has_flag(flags, "avx512_bf16") ? d.peak_fp32_flops * 2
                                                           : d.peak_fp32_flops;
      d.details["peak_source"] =
          "estimate: cores x clock x fp32 FMA lanes (`hetmoe bench` measures)";
    }
    const std::string config = at::show_config();
    std::string blas = torch_config_value(config, "BLAS_INFO");
    d.details["blas"] = blas.empty() ? "unknown" : blas;
    d.details["onednn"] = at::hasMKLDNN() ? "oneDNN (bundled with LibTorch)" : "no";
    d.details["fp32_gemm"] = cpu::dnnl_status();
    d.details["host_malloc"] = host_malloc_status().detail;
    const std::string parallel = at::get_parallel_info();
    const std::string tag = "ATen parallel backend: ";
    if (auto pos = parallel.find(tag); pos != std::string::npos)
      d.details["parallel"] =
          parallel.substr(pos + tag.size(), parallel.find('\n', pos) - pos - tag.size());
    return {d};
  }
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend() {
  return std::make_unique<CpuBackend>();
}

}  // namespace hetmoe
