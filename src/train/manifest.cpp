#include "hetmoe/train/manifest.h"

#include <cmath>
#include <nlohmann/json.hpp>

#include "core/json_int.h"
#include "hetmoe/core/error.h"

namespace hetmoe {

namespace {

// A loss field: a number, or null for a loss that was NaN or infinite (JSON has no such numbers,
// and a diverged run must still leave loadable checkpoints); `missing` when absent.
double loss_value(const nlohmann::json& j, const char* key, double missing,
                  const std::string& where) {
  if (!j.contains(key)) return missing;
  const nlohmann::json& v = j.at(key);
  if (v.is_null()) return std::nan("");
  HETMOE_CHECK(v.is_number(), "checkpoint", where, key, " is not a number");
  return v.get<double>();
}

}  // namespace

CheckpointManifest parse_checkpoint_manifest(const std::string& text, const std::string& source) {
  CheckpointManifest m;
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    HETMOE_FAIL("checkpoint", source, ": not valid JSON (", e.what(), ")");
  }
  // (every typed access inside the try: value() throws when a key holds another type)
  try {
    HETMOE_CHECK(j.is_object() && j.contains("format") && j.at("format").is_string() &&
                     j.at("format").get<std::string>() == "hetmoe-checkpoint",
                 "checkpoint", source, ": not a hetmoe checkpoint manifest");
    const std::string where = source + ": ";
    if (j.contains("version")) {
      const int64_t v = json_int64(j.at("version"), "checkpoint", where + "version");
      HETMOE_CHECK(v == 1, "checkpoint", source, ": manifest version ", v,
                   " is not one this hetmoe reads (1); a newer hetmoe wrote it?");
    }
    m.step = json_int64(j.at("step"), "checkpoint", where + "step");
    m.tokens_seen = json_int64(j.at("tokens_seen"), "checkpoint", where + "tokens_seen");
    m.last_val_loss = loss_value(j, "last_val_loss", -1.0, where);
    if (j.contains("log_window")) {
      const auto& w = j.at("log_window");
      HETMOE_CHECK(w.is_object(), "checkpoint", source, ": log_window is not an object");
      m.log_loss_sum = loss_value(w, "loss_sum", 0.0, where + "log_window.");
      m.log_steps = json_int64(w.at("steps"), "checkpoint", where + "log_window.steps");
      HETMOE_CHECK(m.log_steps >= 0, "checkpoint", source, ": negative log_window.steps");
    }
    if (j.contains("world_size")) {
      const int64_t w = json_int64(j.at("world_size"), "checkpoint", where + "world_size");
      HETMOE_CHECK(w >= 1 && w <= (1 << 24), "checkpoint", where, "world_size ", w,
                   " is out of range");
      m.world_size = static_cast<int>(w);
    }
    if (j.contains("expert_parallel"))
      m.expert_parallel =
          json_int64(j.at("expert_parallel"), "checkpoint", where + "expert_parallel");
    if (j.contains("health")) {
      HETMOE_CHECK(j.at("health").is_object(), "checkpoint", source, ": health is not an object");
      m.health = j.at("health").dump();
    }
    if (j.contains("files")) {
      HETMOE_CHECK(j.at("files").is_object(), "checkpoint", source, ": files is not an object");
      for (const auto& [name, d] : j.at("files").items()) {
        HETMOE_CHECK(
            !name.empty() && name.find('/') == std::string::npos && name != "." && name != "..",
            "checkpoint", source, ": file name '", name, "' is not a plain file name");
        FileDigest fd;
        fd.bytes = json_int64(d.at("bytes"), "checkpoint", where + name + " bytes");
        fd.fnv1a64 = d.at("fnv1a64").get<std::string>();
        HETMOE_CHECK(fd.bytes >= 0, "checkpoint", source, ": ", name, " has ", fd.bytes, " bytes");
        HETMOE_CHECK(fd.fnv1a64.size() == 16 &&
                         fd.fnv1a64.find_first_not_of("0123456789abcdef") == std::string::npos,
                     "checkpoint", source, ": ", name, " has a malformed checksum");
        m.files.emplace(name, fd);
      }
    }
  } catch (const nlohmann::json::exception& e) {
    HETMOE_FAIL("checkpoint", source, ": ", e.what());
  }
  HETMOE_CHECK(m.step >= 0 && m.tokens_seen >= 0, "checkpoint", source,
               ": negative step or tokens_seen");
  HETMOE_CHECK(m.world_size >= 1 && m.expert_parallel >= 1 && m.world_size % m.expert_parallel == 0,
               "checkpoint", source, ": world_size ", m.world_size, " and expert_parallel ",
               m.expert_parallel, " do not form a grid");
  return m;
}

}  // namespace hetmoe
