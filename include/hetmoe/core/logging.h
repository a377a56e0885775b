// Rank-aware logging through spdlog: info and above on rank 0, warnings and errors on every rank.
// The interface is printf-style and keeps spdlog (and its fmt) out of every other translation
// unit: LibTorch ships its own, newer fmt headers, and the two must never meet in one file.
#pragma once

#include <string>

namespace hetmoe {

enum class LogLevel { Debug, Info, Warn, Error };

// Configures the process-wide logger. level: trace|debug|info|warn|error. Ranks other than 0 log
// warnings and errors only, unless all_ranks. The log goes to standard output, or to standard
// error with to_stderr (for commands whose standard output is their result). Safe to call again.
void init_logging(int rank = 0, const std::string& level = "info", bool all_ranks = false,
                  bool to_stderr = false);

// The rank set by init_logging (0 before any call).
int log_rank();

void log_message(LogLevel level, const char* format, ...) __attribute__((format(printf, 2, 3)));

// "spdlog X.Y.Z (fmt A.B.C)", for `hetmoe version`.
std::string logging_library_version();

}  // namespace hetmoe

#define HETMOE_LOG_DEBUG(...) ::hetmoe::log_message(::hetmoe::LogLevel::Debug, __VA_ARGS__)
#define HETMOE_LOG_INFO(...) ::hetmoe::log_message(::hetmoe::LogLevel::Info, __VA_ARGS__)
#define HETMOE_LOG_WARN(...) ::hetmoe::log_message(::hetmoe::LogLevel::Warn, __VA_ARGS__)
#define HETMOE_LOG_ERROR(...) ::hetmoe::log_message(::hetmoe::LogLevel::Error, __VA_ARGS__)
