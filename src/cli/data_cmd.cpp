// `hetmoe data prepare`: text files -> tokens.bin + index.json.
#include <chrono>
#include <memory>

#include "cli/commands.h"
#include "hetmoe/core/logging.h"
#include "hetmoe/data/dataset.h"

namespace hetmoe::cli {

void add_data_command(CLI::App& root, int& status) {
  CLI::App* data = root.add_subcommand("data", "Dataset tools");
  data->require_subcommand(1);
  auto opts = std::make_shared<PrepareOptions>();
  CLI::App* prep = data->add_subcommand(
      "prepare", "Tokenize text files (byte-level) into a binary token file and a JSON index");
  prep->add_option("-i,--input", opts->inputs, "Text files or directories (recursed)")
      ->required()
      ->type_name("PATH...");
  prep->add_option("-o,--out", opts->out_dir, "Output directory")->required()->type_name("DIR");
  prep->add_option("--val-fraction", opts->val_fraction,
                   "Fraction of documents held out for validation")
      ->default_val(0.05)
      ->check(finite_number())
      ->check(CLI::Range(0.0, 0.999));
  prep->add_option("--separator", opts->separator,
                   "A line with exactly this text separates documents inside a file (fortune "
                   "files: %); default: one document per file");
  prep->add_option("--seed", opts->seed, "Seed of the train/val assignment")->default_val(0);
  prep->callback([opts, &status] {
    const auto start = std::chrono::steady_clock::now();
    PrepareSummary s = prepare_dataset(*opts);
    HETMOE_LOG_INFO(
        "prepared %s: %lld files, %lld documents, %lld train + %lld val tokens in %.1f s",
        opts->out_dir.c_str(), static_cast<long long>(s.num_files),
        static_cast<long long>(s.num_documents), static_cast<long long>(s.train_tokens),
        static_cast<long long>(s.val_tokens),
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    status = 0;
  });
}

}  // namespace hetmoe::cli
