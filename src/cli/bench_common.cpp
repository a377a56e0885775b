#include "cli/bench_common.h"

#include <cstdio>
#include <fstream>
#include <sstream>

#include "hetmoe/core/error.h"
#include "hetmoe/device/registry.h"

namespace hetmoe::cli {

std::vector<std::string> split_list(const std::string& text, const std::string& option) {
  std::vector<std::string> out;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) {
    HETMOE_CHECK(!item.empty(), "cli", option, " '", text, "' has an empty item");
    out.push_back(item);
  }
  HETMOE_CHECK(!out.empty(), "cli", option, " needs at least one value");
  return out;
}

Config load_with_overrides(const std::string& path, const std::vector<std::string>& sets,
                           const std::string& dtype) {
  std::vector<Override> overrides;
  for (const auto& s : sets) overrides.push_back(parse_override(s));
  if (!dtype.empty()) overrides.push_back({"backend.dtype", dtype});
  return load_config(path, overrides);
}

std::vector<std::string> pick_backends(const std::vector<std::string>& names) {
  std::vector<std::string> out;
  if (names.empty()) {
    for (const Backend* b : backends())
      if (b->available()) out.push_back(b->name());
    return out;
  }
  for (const std::string& n : names) {
    const Backend* found = nullptr;
    for (const Backend* b : backends())
      if (b->name() == n) found = b;
    std::string known;
    for (const Backend* b : backends()) known += (known.empty() ? "" : ", ") + b->name();
    HETMOE_CHECK(found, "cli", "backend '", n, "' is not built into this hetmoe (built: ", known,
                 ")");
    HETMOE_CHECK(found->available(), "cli", "backend '", n,
                 "' is built in but has no usable device on this machine (see `hetmoe devices`)");
    out.push_back(n);
  }
  return out;
}

void check_writable(const std::string& path) {
  const std::string probe = path + ".probe";
  {
    std::ofstream out(probe);
    HETMOE_CHECK(out.good(), "cli", "cannot write '", path,
                 "': its directory does not exist or is not writable");
  }
  std::remove(probe.c_str());
}

void write_file_atomically(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << text;
    out.flush();
    HETMOE_CHECK(out.good(), "cli", "cannot write '", tmp, "'");
  }
  HETMOE_CHECK(std::rename(tmp.c_str(), path.c_str()) == 0, "cli", "cannot move '", tmp, "' to '",
               path, "'");
}

void add_config_options(CLI::App* cmd, std::string& config, std::vector<std::string>& sets) {
  cmd->add_option("-c,--config", config, "YAML config file (see docs/config.md)")
      ->required()
      ->check(CLI::ExistingFile);
  cmd->add_option("-s,--set", sets,
                  "Override a config value (repeatable), e.g. --set "
                  "train.micro_batch=4")
      ->type_name("KEY=VALUE");
}

}  // namespace hetmoe::cli
