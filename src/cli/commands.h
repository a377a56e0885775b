// The hetmoe executable's subcommands; each file adds one to the root CLI11 app. A subcommand's
// callback stores its exit code in `status`; hetmoe::Error escapes to main, which prints it.
#pragma once

#include <CLI/CLI.hpp>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <string>

namespace hetmoe::cli {

// Flag checks CLI11 lacks: a value given but empty (`--out-dir ""` would otherwise mean "not
// given"), and a number that is NaN or infinite (CLI11's ranges let NaN through).
inline CLI::Validator non_empty() {
  return CLI::Validator(
      [](std::string& s) { return s.empty() ? std::string("must not be empty") : std::string(); },
      "NONEMPTY");
}
namespace detail {
// A check that the value is a finite number for which `ok` holds; `what` names the kind.
template <typename Ok>
CLI::Validator number_check(const char* what, const char* name, Ok ok) {
  return CLI::Validator(
      [what, ok](std::string& s) {
        // strtod, not stod: stod refuses a subnormal value (ERANGE) though it is finite.
        char* end = nullptr;
        const double v = s.empty() ? 0.0 : std::strtod(s.c_str(), &end);
        if (!s.empty() && end == s.c_str() + s.size() && std::isfinite(v) && ok(v))
          return std::string();
        return "'" + s + "' is not " + what;
      },
      name);
}
}  // namespace detail
inline CLI::Validator finite_number() {
  return detail::number_check("a finite number", "FINITE", [](double) { return true; });
}
// CLI11's PositiveNumber and NonNegativeNumber print their range with 300 digits.
inline CLI::Validator positive() {
  return detail::number_check("a finite number > 0", "POSITIVE", [](double v) { return v > 0; });
}
inline CLI::Validator non_negative() {
  return detail::number_check("a finite number >= 0", "NONNEGATIVE",
                              [](double v) { return v >= 0; });
}

// A seed: a whole number in [0, 2^64 - 1], in decimal. CLI11 would wrap -1 to 2^64 - 1 and
// clamp larger values to it, so two different seeds given would silently be the same.
inline CLI::Validator seed_value() {
  return CLI::Validator(
      [](std::string& s) {
        errno = 0;
        char* end = nullptr;
        const bool digits = !s.empty() && s.find_first_not_of("0123456789") == std::string::npos;
        if (digits) std::strtoull(s.c_str(), &end, 10);
        if (digits && errno == 0) return std::string();
        return "'" + s + "' is not a whole number in [0, 18446744073709551615]";
      },
      "SEED");
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
