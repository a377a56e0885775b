// The hetmoe executable's subcommands; each file adds one to the root CLI11 app. A subcommand's
// callback stores its exit code in `status`; hetmoe::Error escapes to main, which prints it.
#pragma once

#include <CLI/CLI.hpp>

namespace hetmoe::cli {

void add_train_command(CLI::App& root, int& status);
void add_data_command(CLI::App& root, int& status);
void add_generate_command(CLI::App& root, int& status);
void add_devices_command(CLI::App& root, int& status);
void add_version_command(CLI::App& root, int& status);
void add_bench_command(CLI::App& root, int& status);
void add_plan_command(CLI::App& root, int& status);
void add_check_command(CLI::App& root, int& status);

}  // namespace hetmoe::cli
