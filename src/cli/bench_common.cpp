#include "cli/bench_common.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "hetmoe/core/error.h"
#include "hetmoe/core/fs.h"
#include "hetmoe/device/registry.h"

namespace hetmoe::cli {

std::vector<std::string> split_list(const std::string& text, const std::string& option) {
  std::vector<std::string> out;
  size_t start = 0;
  while (true) {
    const size_t comma = text.find(',', start);
    out.push_back(text.substr(start, comma == std::string::npos ? comma : comma - start));
    HETMOE_CHECK(!out.back().empty(), "usage", option, " '", text, "' has an empty item");
    HETMOE_CHECK(std::find(out.begin(), out.end() - 1, out.back()) == out.end() - 1, "usage",
                 option, " '", text, "' names '", out.back(), "' twice");
    if (comma == std::string::npos) return out;
    start = comma + 1;
  }
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
  for (const std::string& device : names) {
    // A device ("cuda:1") names its backend before the colon.
    const std::string n = device.substr(0, device.find(':'));
    const Backend* found = nullptr;
    for (const Backend* b : backends())
      if (b->name() == n) found = b;
    std::string known;
    for (const Backend* b : backends()) known += (known.empty() ? "" : ", ") + b->name();
    HETMOE_CHECK(found, "usage", "backend '", n, "' is not built into this hetmoe (built: ", known,
                 ")");
    HETMOE_CHECK(found->available(), "cli", "backend '", n,
                 "' is built in but has no usable device on this machine (see `hetmoe devices`)");
    out.push_back(device);
  }
  return out;
}

void check_writable(const std::string& path) {
  HETMOE_CHECK(!std::filesystem::is_directory(path), "usage", "'", path,
               "' is a directory; name a file to write");
  std::string probe;
  const int fd = create_unique_file(path + ".tmp-", &probe);
  HETMOE_CHECK(fd >= 0, "cli", "cannot write '", path,
               "': its directory does not exist or is not writable");
  close(fd);
  std::remove(probe.c_str());
}

void write_file_atomically(const std::string& path, const std::string& text) {
  std::string tmp;
  const int fd = create_unique_file(path + ".tmp-", &tmp);
  HETMOE_CHECK(fd >= 0, "cli", "cannot write beside '", path, "'");
  close(fd);
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << text;
    out.flush();
    if (!out.good()) std::remove(tmp.c_str());
    HETMOE_CHECK(out.good(), "cli", "cannot write '", tmp, "'");
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    HETMOE_FAIL("cli", "cannot move '", tmp, "' to '", path, "'");
  }
}

DeviceCatalog open_catalog(const std::string& explicit_path) {
  if (!explicit_path.empty()) return load_device_catalog(explicit_path);
  const std::string path = default_catalog_path();
  if (std::ifstream(path).good()) return load_device_catalog(path);
  std::fprintf(stderr,
               "hetmoe: warning: no device catalog at '%s' (give one with --catalog FILE or "
               "HETMOE_DEVICES); no peaks or prices\n",
               path.c_str());
  return DeviceCatalog{};
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
