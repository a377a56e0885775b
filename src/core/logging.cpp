// The only translation unit that includes spdlog (see hetmoe/core/logging.h for why).
#include "hetmoe/core/logging.h"

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <cstdarg>
#include <cstdio>
#include <memory>
#include <utility>
#include <vector>

namespace hetmoe {
namespace {
std::atomic<int> g_rank{0};
}

void init_logging(int rank, const std::string& level, bool all_ranks, bool to_stderr) {
  g_rank = rank;
  spdlog::sink_ptr sink;
  if (to_stderr)
    sink = std::make_shared<spdlog::sinks::stderr_color_sink_mt>();
  else
    sink = std::make_shared<spdlog::sinks::stdout_color_sink_mt>();
  auto logger = std::make_shared<spdlog::logger>("hetmoe", std::move(sink));
  logger->set_pattern(rank == 0 ? std::string("[%H:%M:%S] %^%l%$ %v")
                                : "[%H:%M:%S] [rank " + std::to_string(rank) + "] %^%l%$ %v");
  auto lvl = spdlog::level::from_str(level);
  // Ranks other than 0 only speak when something is wrong.
  if (rank != 0 && !all_ranks && lvl < spdlog::level::warn) lvl = spdlog::level::warn;
  logger->set_level(lvl);
  spdlog::set_default_logger(logger);
}

int log_rank() {
  return g_rank;
}

void log_message(LogLevel level, const char* format, ...) {
  va_list args;
  va_start(args, format);
  va_list copy;
  va_copy(copy, args);
  const int n = std::vsnprintf(nullptr, 0, format, copy);
  va_end(copy);
  std::vector<char> buf(n > 0 ? n + 1 : 1);
  std::vsnprintf(buf.data(), buf.size(), format, args);
  va_end(args);
  const spdlog::level::level_enum lvl = level == LogLevel::Debug  ? spdlog::level::debug
                                        : level == LogLevel::Info ? spdlog::level::info
                                        : level == LogLevel::Warn ? spdlog::level::warn
                                                                  : spdlog::level::err;
  spdlog::log(lvl, "{}", buf.data());
}

std::string logging_library_version() {
  return "spdlog " + std::to_string(SPDLOG_VER_MAJOR) + "." + std::to_string(SPDLOG_VER_MINOR) +
         "." + std::to_string(SPDLOG_VER_PATCH) + " (fmt " + std::to_string(FMT_VERSION / 10000) +
         "." + std::to_string(FMT_VERSION / 100 % 100) + "." + std::to_string(FMT_VERSION % 100) +
         ")";
}

}  // namespace hetmoe
