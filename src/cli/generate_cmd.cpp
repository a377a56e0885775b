// `hetmoe generate`: sample a continuation of a prompt from a checkpoint.
#include <ATen/ATen.h>

#include <iostream>
#include <memory>

#include "cli/commands.h"
#include "hetmoe/core/error.h"
#include "hetmoe/core/logging.h"
#include "hetmoe/data/tokenizer.h"
#include "hetmoe/device/registry.h"
#include "hetmoe/train/checkpoint.h"
#include "hetmoe/train/generate.h"

namespace hetmoe::cli {
namespace {
struct GenerateArgs {
  std::string checkpoint, prompt, device;
  SampleOptions sample;
};

int run_generate(const GenerateArgs& a) {
  // Standard output is the text; warnings (a checkpoint fallen back from) go to standard error.
  init_logging(0, "info", false, /*to_stderr=*/true);
  // Any checkpoint, a multi-rank run's sharded ones included: the experts are gathered.
  LoadedCheckpoint ck = load_whole_model(a.checkpoint, TransformerImpl::is_expert_parameter);
  HETMOE_CHECK(ck.config.data.tokenizer == "byte", "generate", "'", ck.dir,
               "' was trained with data.tokenizer '", ck.config.data.tokenizer,
               "': generate turns text into bytes and back, so it needs 'byte'");
  Transformer model(ck.config.model, ck.config.moe);
  model->load_state_tensors(ck.model, ck.dir);
  c10::Device device = c10::kCPU;
  if (!a.device.empty()) {
    device = resolve_device(a.device);
  } else {
    try {
      device = resolve_device(ck.config.backend.device);
    } catch (const Error& e) {
      HETMOE_CHECK(false, "generate", "the checkpoint's backend.device '", ck.config.backend.device,
                   "' is not usable here (", e.what(), "); pass --device cpu to sample on the CPU");
    }
  }
  model->to(device);
  ByteTokenizer tok;
  SampleOptions opts = a.sample;
  opts.stop_token = ByteTokenizer::kEndOfDocument;
  opts.vocab_limit = tok.vocab_size();  // ids the byte tokenizer can turn back into text
  // The text as it comes: an interrupted run keeps what it printed.
  std::cout << a.prompt << std::flush;
  opts.on_token = [&tok](int32_t id) { std::cout << tok.decode({id}) << std::flush; };
  sample(model, tok.encode(a.prompt), ck.config.model.max_seq_len, opts);
  std::cout << std::endl;
  return 0;
}
}  // namespace

void add_generate_command(CLI::App& root, int& status) {
  auto a = std::make_shared<GenerateArgs>();
  CLI::App* cmd = root.add_subcommand("generate", "Sample text from a trained checkpoint");
  cmd->add_option("--checkpoint", a->checkpoint, "Run directory or checkpoint directory")
      ->required()
      ->type_name("DIR")
      ->check(non_empty());
  cmd->add_option("-p,--prompt", a->prompt, "Text to continue")->required()->check(non_empty());
  cmd->add_option("-n,--tokens", a->sample.max_new_tokens, "Tokens (bytes) to generate")
      ->default_val(200)
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 20));
  cmd->add_option("-t,--temperature", a->sample.temperature, "Sampling temperature; 0 is greedy")
      ->default_val(0.8)
      ->check(finite_number())
      ->check(CLI::Range(0.0, 100.0));
  cmd->add_option("-k,--top-k", a->sample.top_k, "Sample among the k likeliest tokens; 0: all")
      ->default_val(0)
      ->check(non_negative());
  cmd->add_option("--seed", a->sample.seed, "Sampling seed")->default_val(0)->check(seed_value());
  cmd->add_option("--device", a->device, "Device (default: the checkpoint's backend.device)")
      ->check(non_empty());
  cmd->callback([a, &status] { status = run_generate(*a); });
}

}  // namespace hetmoe::cli
