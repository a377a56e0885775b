// `hetmoe data prepare`: text files -> tokens.bin + index.json, set by flags or by a run config's
// data section (--config), the flags winning.
#include <chrono>
#include <memory>

#include "cli/commands.h"
#include "hetmoe/config/config.h"
#include "hetmoe/core/error.h"
#include "hetmoe/core/logging.h"
#include "hetmoe/data/dataset.h"

namespace hetmoe::cli {
namespace {
struct PrepareArgs {
  PrepareOptions options;
  std::string config;
  // Set when parsed: whether a flag was given, so that it wins over the config.
  const CLI::Option* out = nullptr;
  const CLI::Option* val_fraction = nullptr;
};

// The options with the config's data.path, data.tokenizer and data.val_fraction filled in where
// no flag gave them.
PrepareOptions resolve_options(const PrepareArgs& a) {
  PrepareOptions o = a.options;
  if (!a.config.empty()) {
    const Config c = load_config(a.config);
    if (a.out->count() == 0) o.out_dir = c.data.path;
    if (a.val_fraction->count() == 0) o.val_fraction = c.data.val_fraction;
    HETMOE_CHECK(c.data.tokenizer == "byte", "config", a.config, ": data.tokenizer is '",
                 c.data.tokenizer,
                 "', but `hetmoe data prepare` writes byte-level datasets (data.tokenizer: byte)");
    o.tokenizer = c.data.tokenizer;
  }
  HETMOE_CHECK(!o.out_dir.empty(), "usage", "data prepare needs --out DIR or --config FILE");
  return o;
}

int run_prepare(const PrepareArgs& a) {
  const auto start = std::chrono::steady_clock::now();
  const PrepareOptions o = resolve_options(a);
  const PrepareSummary s = prepare_dataset(o);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::string split;
  if (s.val_tokens == 0) {
    split = std::to_string(s.train_tokens) +
            " train tokens and no validation split (val fraction 0; `hetmoe train` evaluates "
            "on one, so prepare with a val fraction > 0 to train on it)";
  } else {
    split =
        std::to_string(s.train_tokens) + " train + " + std::to_string(s.val_tokens) + " val tokens";
    if (s.val_inside_document) split += " (one document, so val is its last tokens)";
  }
  HETMOE_LOG_INFO("prepared %s: %lld files, %lld documents, %s in %.1f s", o.out_dir.c_str(),
                  static_cast<long long>(s.num_files), static_cast<long long>(s.num_documents),
                  split.c_str(), seconds);
  return 0;
}
}  // namespace

void add_data_command(CLI::App& root, int& status) {
  CLI::App* data = root.add_subcommand("data", "Dataset tools");
  data->require_subcommand(1);
  auto args = std::make_shared<PrepareArgs>();
  PrepareOptions& opts = args->options;
  CLI::App* prep = data->add_subcommand(
      "prepare", "Tokenize text files (byte-level) into a binary token file and a JSON index");
  prep->add_option("-i,--input", opts.inputs, "Text files or directories (recursed)")
      ->required()
      ->type_name("PATH...")
      ->check(non_empty());
  args->out = prep->add_option("-o,--out", opts.out_dir,
                               "Output directory (default: data.path of --config)")
                  ->type_name("DIR")
                  ->check(non_empty());
  prep->add_option(
          "-c,--config", args->config,
          "Run config giving data.path, data.tokenizer and data.val_fraction (docs/data.md); "
          "flags override it")
      ->type_name("FILE")
      ->check(CLI::ExistingFile);
  args->val_fraction =
      prep->add_option("--val-fraction", opts.val_fraction,
                       "Fraction of documents held out for validation (0: no validation split; "
                       "default: data.val_fraction, else 0.05)")
          ->default_val(0.05)
          ->check(finite_number())
          ->check(CLI::Range(0.0, 0.999));
  prep->add_option("--separator", opts.separator,
                   "A line with exactly this text separates documents inside a file (fortune "
                   "files: %); default: one document per file")
      ->check(non_empty());
  prep->add_option("--seed", opts.seed, "Seed of the train/val assignment")
      ->default_val(0)
      ->check(seed_value());
  prep->add_flag("--overwrite", opts.overwrite,
                 "Replace the index.json and tokens.bin that the output directory already holds");
  prep->callback([args, &status] { status = run_prepare(*args); });
}

}  // namespace hetmoe::cli
