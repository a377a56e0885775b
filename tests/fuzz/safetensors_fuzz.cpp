// libFuzzer target: the safetensors reader on arbitrary bytes. It must accept a valid file or
// refuse with hetmoe::Error; every accepted tensor's view must lie inside the buffer.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "hetmoe/core/error.h"
#include "hetmoe/train/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    hetmoe::SafetensorsFile f(std::vector<uint8_t>(data, data + size), "fuzz.safetensors");
    for (const auto& name : f.names()) {
      const hetmoe::TensorView& v = f.get(name);
      // Touch every byte the view claims (ASan flags any that lie outside the buffer).
      const auto* p = static_cast<const volatile uint8_t*>(v.data);
      uint8_t sum = 0;
      for (size_t i = 0; i < v.nbytes; ++i) sum ^= p[i];
      (void)sum;
    }
  } catch (const hetmoe::Error&) {
  }
  return 0;
}
