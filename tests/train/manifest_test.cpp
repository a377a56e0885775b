// The checkpoint manifest parser: what it accepts and the one-line errors for what it refuses
// (the fuzz target's first finding, a mistyped "format", is a case here).
#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include "hetmoe/core/error.h"
#include "hetmoe/train/manifest.h"

namespace hetmoe {
namespace {

std::string error_of(const std::string& text) {
  try {
    parse_checkpoint_manifest(text, "state.json");
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(ManifestTest, ParsesAValidManifest) {
  const CheckpointManifest m = parse_checkpoint_manifest(
      R"({"format": "hetmoe-checkpoint", "step": 7, "tokens_seen": 70, "world_size": 4,
          "expert_parallel": 2, "health": {"spikes": 1},
          "files": {"model.safetensors": {"bytes": 12, "fnv1a64": "0123456789abcdef"}}})",
      "state.json");
  EXPECT_EQ(m.step, 7);
  EXPECT_EQ(m.world_size, 4);
  EXPECT_EQ(m.expert_parallel, 2);
  EXPECT_EQ(m.files.at("model.safetensors").bytes, 12);
  EXPECT_EQ(m.health, R"({"spikes":1})");
}

// A diverged run's losses are NaN, which JSON writes as null: its checkpoints must still load.
TEST(ManifestTest, NullLossesReadAsNaNAndTheLogWindowRoundTrips) {
  const CheckpointManifest m = parse_checkpoint_manifest(
      R"({"format": "hetmoe-checkpoint", "step": 3, "tokens_seen": 30, "last_val_loss": null,
          "log_window": {"loss_sum": null, "steps": 2}})",
      "state.json");
  EXPECT_TRUE(std::isnan(m.last_val_loss));
  EXPECT_TRUE(std::isnan(m.log_loss_sum));
  EXPECT_EQ(m.log_steps, 2);
  const CheckpointManifest old = parse_checkpoint_manifest(
      R"({"format": "hetmoe-checkpoint", "step": 3, "tokens_seen": 30})", "state.json");
  EXPECT_EQ(old.last_val_loss, -1);  // before any evaluation
  EXPECT_EQ(old.log_steps, 0);
  EXPECT_NE(error_of(R"({"format": "hetmoe-checkpoint", "step": 3, "tokens_seen": 30,
                         "last_val_loss": "low"})")
                .find("last_val_loss is not a number"),
            std::string::npos);
}

TEST(ManifestTest, RefusesMalformedManifestsWithAClearError) {
  const std::string ok = R"("step": 1, "tokens_seen": 1)";
  EXPECT_NE(error_of("{").find("[checkpoint] state.json: not valid JSON"), std::string::npos);
  // A "format" that is not a string (found by the fuzz target: it used to escape as a
  // nlohmann exception and terminate the process).
  EXPECT_NE(error_of(R"({"format": 3, )" + ok + "}").find("not a hetmoe checkpoint"),
            std::string::npos);
  EXPECT_NE(error_of(R"({"format": "hetmoe-checkpoint", "step": "x", "tokens_seen": 1})")
                .find("[checkpoint] state.json:"),
            std::string::npos);
  EXPECT_NE(
      error_of(R"({"format": "hetmoe-checkpoint", )" + ok +
               R"(, "files": {"../../etc/passwd": {"bytes": 1, "fnv1a64": "0123456789abcdef"}}})")
          .find("is not a plain file name"),
      std::string::npos);
  EXPECT_NE(error_of(R"({"format": "hetmoe-checkpoint", )" + ok +
                     R"(, "files": {"m": {"bytes": 1, "fnv1a64": "xyz"}}})")
                .find("malformed checksum"),
            std::string::npos);
  EXPECT_NE(error_of(R"({"format": "hetmoe-checkpoint", )" + ok +
                     R"(, "world_size": 3, "expert_parallel": 2})")
                .find("do not form a grid"),
            std::string::npos);
}

}  // namespace
}  // namespace hetmoe
