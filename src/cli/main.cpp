// `hetmoe`: train, prepare data, generate, and report devices and versions.
// Exit codes: 0 success, 1 a runtime error (bad config, data, checkpoint...), 2 a usage error.
#include <c10/util/Exception.h>

#include <cstdio>
#include <exception>

#include "cli/commands.h"
#include "hetmoe/core/error.h"
#include "hetmoe/core/logging.h"

int main(int argc, char** argv) {
  CLI::App app{"hetmoe: Mixture-of-Experts training on heterogeneous accelerators", "hetmoe"};
  app.require_subcommand(1);
  int status = 0;
  hetmoe::cli::add_train_command(app, status);
  hetmoe::cli::add_data_command(app, status);
  hetmoe::cli::add_generate_command(app, status);
  hetmoe::cli::add_devices_command(app, status);
  hetmoe::cli::add_version_command(app, status);
  hetmoe::init_logging(0, "info");
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "hetmoe: error: %s\nRun with --help for usage.\n", e.what());
    return 2;
  } catch (const hetmoe::Error& e) {
    std::fprintf(stderr, "hetmoe: error: %s\n", e.what());
    return 1;
  } catch (const c10::Error& e) {
    std::fprintf(stderr, "hetmoe: error: [libtorch] %s\n", e.what_without_backtrace());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "hetmoe: error: %s\n", e.what());
    return 1;
  }
  return status;
}
