// libFuzzer target: the YAML config loader (parse_config + validate) and its --set overrides.
// Any input must either parse or be refused with hetmoe::Error; anything else is a finding.
#include <cstddef>
#include <cstdint>
#include <string>

#include "hetmoe/config/config.h"
#include "hetmoe/core/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  // The part after a NUL byte, if any, is tried as one `--set` override.
  const auto nul = text.find('\0');
  std::vector<hetmoe::Override> overrides;
  try {
    if (nul != std::string::npos) overrides.push_back(hetmoe::parse_override(text.substr(nul + 1)));
    hetmoe::Config c = hetmoe::parse_config(text.substr(0, nul), "fuzz.yaml", overrides);
    // What parses must round-trip through to_yaml (checked on a sample: it is the slow part).
    if (size % 16 == 0) {
      hetmoe::Config back = hetmoe::parse_config(hetmoe::to_yaml(c), "roundtrip.yaml");
      if (hetmoe::to_yaml(back) != hetmoe::to_yaml(c)) __builtin_trap();
    }
  } catch (const hetmoe::Error&) {
  }
  return 0;
}
