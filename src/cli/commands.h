// The hetmoe executable's subcommands; each file adds one to the root CLI11 app. A subcommand's
// callback stores its exit code in `status`; hetmoe::Error escapes to main, which prints it.
#pragma once

#include <CLI/CLI.hpp>
#include <cmath>
#include <string>

namespace hetmoe::cli {

// Flag checks CLI11 lacks: a value given but empty (`--out-dir ""` would otherwise mean "not
// given"), and a number that is NaN or infinite (CLI11's ranges let NaN through).
inline CLI::Validator non_empty() {
  return CLI::Validator(
      [](std::string& s) { return s.empty() ? std::string("must not be empty") : std::string(); },
      "NONEMPTY");
}
inline CLI::Validator finite_number() {
  return CLI::Validator(
      [](std::string& s) {
        try {
          size_t used = 0;
          const double v = std::stod(s, &used);
          if (used == s.size() && std::isfinite(v)) return std::string();
        } catch (const std::exception&) {
        }
        return "'" + s + "' is not a finite number";
      },
      "FINITE");
}

void add_train_command(CLI::App& root, int& status);
void add_data_command(CLI::App& root, int& status);
void add_generate_command(CLI::App& root, int& status);
void add_devices_command(CLI::App& root, int& status);
void add_version_command(CLI::App& root, int& status);
void add_bench_command(CLI::App& root, int& status);
void add_plan_command(CLI::App& root, int& status);
void add_check_command(CLI::App& root, int& status);

}  // namespace hetmoe::cli
