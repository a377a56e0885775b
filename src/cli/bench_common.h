// Helpers shared by `hetmoe bench`, `plan` and `check`: comma lists, the config with its --set
// overrides, which backends to run on, and writing a result file without losing an old one.
#pragma once

#include <CLI/CLI.hpp>

#include <string>
#include <vector>

#include "hetmoe/bench/catalog.h"
#include "hetmoe/config/config.h"

namespace hetmoe::cli {

// "cpu,cuda" -> {"cpu", "cuda"}; empty items are an error naming the option.
std::vector<std::string> split_list(const std::string& text, const std::string& option);

// The config file with `--set` overrides (and a --dtype override when not empty).
Config load_with_overrides(const std::string& path, const std::vector<std::string>& sets,
                           const std::string& dtype = "");

// The backends to run on: the named ones (each must be built in and have a device) or, when
// `names` is empty, every available one. Throws naming the backend that is missing.
std::vector<std::string> pick_backends(const std::vector<std::string>& names);

// Writes text to `path` through a temporary file and a rename, so a failure leaves any previous
// file as it was. Throws naming the path.
void write_file_atomically(const std::string& path, const std::string& text);

// Throws naming the path when a file cannot be created there (checked before long work).
void check_writable(const std::string& path);

// The catalog named by --catalog (errors are errors), else the default one when it exists, else
// an empty catalog after a one-line warning: figures without prices.
DeviceCatalog open_catalog(const std::string& explicit_path);

// --config, --set and --catalog, as every one of the three commands takes them.
void add_config_options(CLI::App* cmd, std::string& config, std::vector<std::string>& sets);

}  // namespace hetmoe::cli
