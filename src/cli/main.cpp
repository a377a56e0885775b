// `hetmoe`: train, prepare data, generate, report devices and versions, benchmark, plan and
// check numerical alignment.
// Exit codes: 0 success, 1 a runtime error (bad config, data, checkpoint...), 2 a usage error.
#include <c10/util/Exception.h>

#include <cstdio>
#include <exception>
#include <filesystem>
#include <string>

#include "cli/commands.h"
#include "hetmoe/comm/communicator.h"
#include "hetmoe/core/error.h"
#include "hetmoe/core/host_memory.h"
#include "hetmoe/core/logging.h"
#include "hetmoe/train/signals.h"

namespace {
// A runtime error: said once, with the rank in multi-rank jobs, and then the whole job ends so
// no other rank is left waiting in a collective.
int fail(const std::string& what, int code = 1) {
  if (hetmoe::launched_by_mpi())
    std::fprintf(stderr, "hetmoe: error: rank %d: %s\n", hetmoe::launcher_rank(), what.c_str());
  else
    std::fprintf(stderr, "hetmoe: error: %s\n", what.c_str());
  std::fflush(stderr);
  hetmoe::abort_job(code);
  return code;
}
}  // namespace

int main(int argc, char** argv) {
  // Before the first large allocation: freed training buffers stay mapped (core/host_memory.h).
  if (const hetmoe::HostMallocStatus m = hetmoe::keep_freed_host_memory(); !m.error.empty()) {
    std::fprintf(stderr, "hetmoe: error: %s\n", m.error.c_str());
    return 2;
  }
  // Before any thread exists, so none of them ever runs a signal handler (train/signals.h).
  hetmoe::install_signal_watcher();
  CLI::App app{"hetmoe: Mixture-of-Experts training on heterogeneous accelerators", "hetmoe"};
  app.require_subcommand(1);
  int status = 0;
  hetmoe::cli::add_train_command(app, status);
  hetmoe::cli::add_data_command(app, status);
  hetmoe::cli::add_generate_command(app, status);
  hetmoe::cli::add_devices_command(app, status);
  hetmoe::cli::add_version_command(app, status);
  hetmoe::cli::add_bench_command(app, status);
  hetmoe::cli::add_plan_command(app, status);
  hetmoe::cli::add_check_command(app, status);
  // Under a launcher, ranks other than 0 speak only for warnings and errors, with their rank,
  // from the first line on (the trainer sets its grid's rank again once MPI is up).
  hetmoe::init_logging(hetmoe::launcher_rank(), "info");
  // CLI11 calls an unknown command a missing one ("A subcommand is required").
  if (argc > 1 && argv[1][0] != '-') {
    std::string known;
    bool found = false;
    for (const CLI::App* sub : app.get_subcommands([](CLI::App*) { return true; })) {
      found = found || sub->get_name() == argv[1];
      known += (known.empty() ? "" : ", ") + sub->get_name();
    }
    if (!found) {
      std::fprintf(stderr, "hetmoe: error: unknown command '%s' (commands: %s)\n", argv[1],
                   known.c_str());
      return 2;
    }
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "hetmoe: error: %s (see --help)\n", e.what());
    return 2;
  } catch (const hetmoe::Error& e) {
    // "[usage]": a flag's value that the CLI checks itself (exit 2, as CLI11's own checks).
    return fail(e.what(), e.component() == "usage" ? 2 : 1);
  } catch (const c10::Error& e) {
    return fail(std::string("[libtorch] ") + e.what_without_backtrace());
  } catch (const std::filesystem::filesystem_error& e) {
    // A path operation nothing above turned into a named error (a name too long for the file
    // system, say): the path, and what the system said.
    return fail(std::string("[fs] ") + e.code().message() + ": '" + e.path1().string() + "'");
  } catch (const std::exception& e) {
    return fail(e.what());
  }
  return status;
}
