#include "kernels/cpu/dnnl_gemm.h"

#include <dlfcn.h>

#include <cstdlib>
#include <vector>

#include "hetmoe/core/logging.h"
#include "kernels/cpu/dnnl/hetmoe_dnnl.h"

#if defined(__SANITIZE_ADDRESS__)
#define HETMOE_NO_DEEPBIND 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define HETMOE_NO_DEEPBIND 1
#endif
#endif

namespace hetmoe::cpu {
namespace {

constexpr const char* kModule = "libhetmoe_dnnl.so";

struct Loaded {
  DnnlGemm gemm;
  bool ok = false;
  std::string status;
};

std::string own_directory() {
  Dl_info info;
  if (dladdr(reinterpret_cast<void*>(&dnnl_gemm), &info) == 0 || !info.dli_fname) return "";
  std::string path = info.dli_fname;
  const auto slash = path.rfind('/');
  return slash == std::string::npos ? "" : path.substr(0, slash + 1);
}

Loaded load() {
  Loaded l;
  std::vector<std::string> candidates;
  if (const char* env = std::getenv("HETMOE_DNNL_LIBRARY"); env && *env) {
    const std::string v = env;
    if (v == "off" || v == "0") {
      l.status = "off (HETMOE_DNNL_LIBRARY=" + v + "): LibTorch's BLAS";
      return l;
    }
    candidates.push_back(v);
  } else {
    if (auto dir = own_directory(); !dir.empty()) candidates.push_back(dir + kModule);
    candidates.push_back(kModule);
  }
  // RTLD_DEEPBIND: the module's own dependencies (Debian's oneDNN) come before the global scope,
  // so the oneDNN that LibTorch carries can never serve its calls. AddressSanitizer cannot work
  // with a deep-bound library, and without deep binding oneDNN 2.6 binds to pieces of LibTorch's
  // oneDNN 3.x and fails (measured: every sgemm returns "unimplemented"), so sanitizer builds do
  // not load the module at all.
#ifdef HETMOE_NO_DEEPBIND
  l.status = "not loaded in sanitizer builds (the module needs RTLD_DEEPBIND): LibTorch's BLAS";
  return l;
#endif
  const int flags = RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND;
  std::string errors;
  for (const auto& path : candidates) {
    void* handle = dlopen(path.c_str(), flags);
    if (!handle) {
      errors += std::string(errors.empty() ? "" : "; ") + dlerror();
      continue;
    }
    auto abi = reinterpret_cast<int (*)()>(dlsym(handle, "hetmoe_dnnl_abi_version"));
    auto describe = reinterpret_cast<const char* (*)()>(dlsym(handle, "hetmoe_dnnl_describe"));
    auto sgemm = reinterpret_cast<decltype(DnnlGemm::sgemm)>(dlsym(handle, "hetmoe_dnnl_sgemm"));
    if (!abi || !describe || !sgemm || abi() != HETMOE_DNNL_ABI_VERSION) {
      errors += (errors.empty() ? "" : "; ") + path + ": not a matching hetmoe oneDNN module";
      dlclose(handle);
      continue;
    }
    l.gemm.sgemm = sgemm;
    l.gemm.path = path;
    l.gemm.description = describe();
    l.ok = true;
    l.status = l.gemm.description + " from " + path;
    return l;  // never unloaded: its OpenMP threads live as long as the process
  }
  l.status = "unavailable (" + errors + "): LibTorch's BLAS";
  return l;
}

const Loaded& loaded() {
  static const Loaded l = [] {
    Loaded r = load();
    HETMOE_LOG_DEBUG("[cpu] fp32 GEMM: %s", r.status.c_str());
    return r;
  }();
  return l;
}

}  // namespace

const DnnlGemm* dnnl_gemm() {
  return loaded().ok ? &loaded().gemm : nullptr;
}

const std::string& dnnl_status() {
  return loaded().status;
}

}  // namespace hetmoe::cpu
