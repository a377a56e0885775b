// libFuzzer target: the checkpoint manifest (state.json) parser and the training-health state it
// carries. Accept or refuse with hetmoe::Error; nothing else.
#include <cstddef>
#include <cstdint>
#include <string>

#include "hetmoe/core/error.h"
#include "hetmoe/train/health.h"
#include "hetmoe/train/manifest.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    hetmoe::CheckpointManifest m = hetmoe::parse_checkpoint_manifest(text, "state.json");
    hetmoe::HealthMonitor h;
    h.load(m.health);
    h.load(h.save());  // what it saves it can read back
    for (const auto& [name, d] : m.files)
      if (name.find('/') != std::string::npos || d.bytes < 0) __builtin_trap();
  } catch (const hetmoe::Error&) {
  }
  return 0;
}
