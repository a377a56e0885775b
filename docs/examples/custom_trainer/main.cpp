// Example: hetmoe::Trainer driven from code, with a data source of one's own and callbacks that
// log the loss and the expert load. The config is built in code and validated by the same rules
// as a YAML file; the run goes to a temporary directory. It checks its own outcome (the number of
// steps, the expert load of every step, a falling loss) and exits 1 otherwise
// (docs/embedding.md).
#include <hetmoe/hetmoe.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <fstream>
#include <iterator>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

namespace {

constexpr int64_t kVocab = 64;   // token ids the stream produces: 0 .. 63
constexpr int64_t kStride = 37;  // odd, so counting by 37 mod 64 visits every id
constexpr int64_t kOffset = 5;
constexpr int64_t kTrainTokens = int64_t{1} << 20;
constexpr int64_t kValTokens = int64_t{1} << 16;

// splitmix64's finaliser: a well-mixed 64-bit hash, enough to scatter window starts.
uint64_t mix(uint64_t z) {
  z += 0x9e3779b97f4a7c15ULL;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

// A virtual token stream that counts in steps of 37 modulo 64: token(p) = (37 p + 5) mod 64 at
// stream position p (the train split's positions first, then the val split's). Nothing is
// stored; a window is computed from its start. Each token determines the next, so a model that
// learns the 64 transitions drives the loss towards 0.
class CountingStream final : public hetmoe::DataSource {
 public:
  int64_t vocab_size() const override { return kVocab; }

  int64_t split_size(hetmoe::Split split) const override {
    return split == hetmoe::Split::Train ? kTrainTokens : kValTokens;
  }

  // The contract: window first + b of global batch `step` depends on (split, seed, step,
  // first + b) and nothing else: no state, no counter. A rank of a data-parallel job asks for its
  // slice of the batch through `first`, a resumed run asks again for the batches after its
  // checkpoint, and both must get exactly the windows a single uninterrupted run gets.
  void sample_windows(hetmoe::Split split, int64_t batch, int64_t len, uint64_t seed, uint64_t step,
                      int32_t* out, int64_t first) const override {
    const int64_t size = split_size(split);
    HETMOE_CHECK(batch >= 0 && first >= 0 && len >= 1 && len <= size, "data", describe(),
                 ": cannot draw ", batch, " windows of ", len, " tokens from a split of ", size);
    const bool train = split == hetmoe::Split::Train;
    const int64_t base = train ? 0 : kTrainTokens;
    // Different streams of starts for the two splits, and for every seed.
    const uint64_t split_stream = mix(mix(seed) ^ (train ? 0x747261696eULL : 0x76616cULL));
    const uint64_t starts = static_cast<uint64_t>(size - len + 1);
    for (int64_t b = 0; b < batch; ++b) {
      const uint64_t h = mix(mix(split_stream ^ step) ^ static_cast<uint64_t>(first + b));
      const int64_t start = base + static_cast<int64_t>(h % starts);
      int32_t* window = out + b * len;  // window b of this call
      for (int64_t i = 0; i < len; ++i) window[i] = token_at(start + i);
    }
  }

  std::string describe() const override { return "synthetic stream counting by 37 mod 64"; }

 private:
  static int32_t token_at(int64_t pos) {
    return static_cast<int32_t>((kStride * pos + kOffset) % kVocab);
  }
};

// The run, in code. The same Config could come from YAML: hetmoe::load_config("run.yaml",
// {{"train.steps", "60"}}) or hetmoe::parse_config(text, "inline") read a file or a string with
// `--set`-style overrides, and both end in hetmoe::validate, the call at the end of this
// function. A config built in code obeys exactly the rules a file does (docs/config.md).
hetmoe::Config make_config(const std::string& out_dir) {
  hetmoe::Config c;
  // Token ids come straight from the data source, not from text: no byte tokenizer, and a
  // vocabulary of exactly the stream's 64 ids (the trainer checks vocab_size() against it).
  c.data.tokenizer = "none";
  c.model.vocab_size = kVocab;
  c.model.d_model = 64;
  c.model.n_layers = 2;
  c.model.n_heads = 4;
  c.model.n_kv_heads = 2;
  c.model.max_seq_len = 64;
  c.model.first_k_dense = 0;  // both blocks are MoE blocks
  c.moe.num_experts = 4;
  c.moe.top_k = 2;
  c.moe.expert_hidden = 64;
  c.moe.num_shared_experts = 1;
  c.train.steps = 60;
  c.train.micro_batch = 8;
  c.train.seq_len = 32;
  c.train.warmup = 5;
  c.train.lr = 3e-3;
  c.train.eval_every = 20;
  c.train.eval_batches = 2;
  c.train.log_every = 20;
  c.train.threads = 2;  // the trainer sets LibTorch's intra-op threads (process-wide) to this
  c.train.save_final = false;
  c.backend.device = "cpu";
  c.run.out_dir = out_dir;
  // data.path keeps its default: TrainerOptions::data replaces the dataset it names, unopened.
  hetmoe::validate(c);
  return c;
}

// What validation says about a bad value: one line, "[config] ...", naming the keys.
void show_a_validation_error(const hetmoe::Config& good) {
  hetmoe::Config bad = good;
  bad.moe.top_k = 5;
  try {
    hetmoe::validate(bad);
  } catch (const hetmoe::Error& e) {
    std::printf("validation of moe.top_k = 5 (component '%s'): %s\n", e.component().c_str(),
                e.what());
  }
}

// The registry: every backend built into this hetmoe (CPU last) and the devices it sees.
void print_backends() {
  std::printf("hetmoe %s, backends built in: %s\n", HETMOE_VERSION_STRING, HETMOE_BACKENDS);
  for (const hetmoe::Backend* b : hetmoe::backends()) {
    std::printf("  %s: %s\n", b->name().c_str(),
                b->available() ? "available" : "built in, no device visible");
    for (const hetmoe::DeviceInfo& d : b->devices())
      std::printf("    %s:%d  %s  (%.1f GiB)\n", b->name().c_str(), d.index, d.name.c_str(),
                  static_cast<double>(d.memory_bytes) / (1024.0 * 1024.0 * 1024.0));
  }
}

// "[130 126 121 135]"
std::string format_load(const std::vector<int64_t>& load) {
  std::string s = "[";
  for (size_t i = 0; i < load.size(); ++i) s += (i ? " " : "") + std::to_string(load[i]);
  return s + "]";
}

int run() {
  // The trainer logs its own progress at info level (the resolved config, a line every
  // train.log_every steps). This example prints its lines from the callbacks instead, so it keeps
  // hetmoe's warnings and errors only. Logging is process-wide; set it once, at the start.
  hetmoe::init_logging(0, "warn");
  print_backends();

  // Removed with everything in it when `tmp` goes: after the trainer, which is declared later.
  hetmoe::TempDir tmp("hetmoe-custom-trainer");
  const hetmoe::Config config = make_config(tmp.path() + "/run");
  show_a_validation_error(config);

  const auto& t = config.train;
  const int64_t moe_layers = config.model.n_layers - config.model.first_k_dense;
  // Every token takes top_k slots and a dropless layer keeps them all, so each MoE layer's load
  // adds up to the step's tokens times top_k. A step trains grad_accum micro-batches (1 here);
  // a batch replayed after a loss spike would add more, but replays come train.spike_replay_after
  // (100) steps after the spike, beyond this 60-step run.
  const int64_t slots_per_step = t.grad_accum * t.micro_batch * t.seq_len * config.moe.top_k;

  std::vector<double> losses;  // StepMetrics::loss of every on_step call
  std::string load_error;      // the first step whose load did not add up ("" when none)

  hetmoe::TrainerOptions opts;
  opts.data = std::make_shared<CountingStream>();
  // Called after every optimizer step, on every rank of a multi-rank job (one here). An
  // exception thrown here would stop the run and come out of trainer.run().
  opts.on_step = [&](const hetmoe::StepMetrics& m) {
    losses.push_back(m.loss);
    if (static_cast<int64_t>(m.expert_load.size()) != moe_layers && load_error.empty())
      load_error = "step " + std::to_string(m.step) + ": load of " +
                   std::to_string(m.expert_load.size()) + " MoE layers, expected " +
                   std::to_string(moe_layers);
    for (size_t layer = 0; layer < m.expert_load.size(); ++layer) {
      const std::vector<int64_t>& load = m.expert_load[layer];
      const int64_t total = std::accumulate(load.begin(), load.end(), int64_t{0});
      if (total != slots_per_step && load_error.empty())
        load_error = "step " + std::to_string(m.step) + ", layer " + std::to_string(layer) +
                     ": load " + format_load(load) + " adds up to " + std::to_string(total) +
                     ", expected " + std::to_string(slots_per_step);
    }
    if (m.step != 1 && m.step % 20 != 0) return;
    std::printf("step %3lld | loss %.4f | aux %.4f | z %.4f | lr %.2e | %.0f tok/s%s\n",
                static_cast<long long>(m.step), m.loss, m.aux_loss, m.z_loss, m.lr, m.tokens_per_s,
                m.skipped ? " | skipped" : "");
    for (size_t layer = 0; layer < m.expert_load.size(); ++layer) {
      const std::vector<int64_t>& load = m.expert_load[layer];
      const int64_t total = std::accumulate(load.begin(), load.end(), int64_t{0});
      const double mean = static_cast<double>(total) / static_cast<double>(load.size());
      const int64_t busiest = *std::max_element(load.begin(), load.end());
      std::printf("  layer %zu: %s  max/mean %.2f\n", layer, format_load(load).c_str(),
                  static_cast<double>(busiest) / mean);
    }
  };
  // Called after each evaluation (every train.eval_every steps and at the end) with the mean
  // cross-entropy over train.eval_batches fixed validation batches.
  opts.on_eval = [](int64_t step, double val_loss) {
    std::printf("step %3lld | val loss %.4f\n", static_cast<long long>(step), val_loss);
  };

  // The constructor checks everything (config, run directory, data, device) before any training.
  hetmoe::Trainer trainer(config, opts);
  const hetmoe::ParameterCount params = trainer.model()->parameter_count();
  std::printf("model: %.2fM parameters, %.2fM active per token; data: %s\n", params.total / 1e6,
              params.active_per_token / 1e6, opts.data->describe().c_str());
  const hetmoe::TrainResult r = trainer.run();

  // The trainer also wrote metrics.jsonl (every log_every steps and at each evaluation).
  std::ifstream metrics(config.run.out_dir + "/metrics.jsonl");
  const auto metric_lines =
      std::count(std::istreambuf_iterator<char>(metrics), std::istreambuf_iterator<char>(), '\n');
  std::printf(
      "%lld steps in %.1f s (%.0f tok/s), final val loss %.4f, %lld skipped; "
      "metrics.jsonl: %lld lines\n",
      static_cast<long long>(r.steps), r.seconds, r.tokens_per_s, r.final_val_loss,
      static_cast<long long>(r.skipped_steps), static_cast<long long>(metric_lines));

  // The checks.
  std::vector<std::string> failures;
  if (static_cast<int64_t>(losses.size()) != t.steps || r.steps != t.steps)
    failures.push_back("on_step ran " + std::to_string(losses.size()) + " times and the result " +
                       "says " + std::to_string(r.steps) + " steps; expected " +
                       std::to_string(t.steps));
  if (!load_error.empty()) failures.push_back(load_error);
  if (losses.size() >= 10) {
    // The model has 64 outputs, so the first loss is about ln 64 = 4.16 (a little more: the
    // initial logits are spread). Learning the +37 rule takes it far lower, since the next token
    // is certain and all 64 transitions occur in every batch. A run that learns the rule clears
    // the 0.75 bar by a wide margin; one that does not update, diverges or produces NaN fails.
    const double first = losses.front();
    const double last10 = std::accumulate(losses.end() - 10, losses.end(), 0.0) / 10.0;
    std::printf("first loss %.4f, mean of the last 10 steps %.4f\n", first, last10);
    if (!(last10 < 0.75 * first))  // written this way so that a NaN fails too
      failures.push_back("the mean loss of the last 10 steps (" + std::to_string(last10) +
                         ") is not below 0.75 x the first (" + std::to_string(first) + ")");
  }
  // The device catalog an installed hetmoe carries (configs/devices.yaml, found from
  // libhetmoe.so's prefix wherever this program runs): peaks and prices for cost estimates.
  const hetmoe::DeviceCatalog catalog = hetmoe::load_device_catalog(hetmoe::default_catalog_path());
  if (const hetmoe::CatalogDevice* h100 = catalog.find("nvidia-h100-sxm"))
    std::printf("catalog %s: %s, %.0f TFLOP/s bf16 peak\n", catalog.source.c_str(),
                h100->description.c_str(), h100->peak_bf16_tflops);
  else
    failures.push_back("the installed device catalog has no nvidia-h100-sxm entry");
  for (const std::string& f : failures)
    std::fprintf(stderr, "custom_trainer_example: FAILED: %s\n", f.c_str());
  if (!failures.empty()) return 1;
  std::printf("custom_trainer_example: OK\n");
  return 0;
}

}  // namespace

int main() {
  // Before any thread exists: Ctrl-C then stops the run cleanly, and never lands inside a GEMM.
  hetmoe::install_signal_watcher();
  // CPU training: freed activation and gradient buffers stay in malloc's heap for the next step.
  hetmoe::keep_freed_host_memory();
  try {
    return run();
  } catch (const hetmoe::Error& e) {
    // hetmoe's messages are one line with a "[component]" prefix, e.g. "[train] ...".
    std::fprintf(stderr, "custom_trainer_example: %s\n", e.what());
  } catch (const std::exception& e) {
    // LibTorch's c10::Error and everything else.
    std::fprintf(stderr, "custom_trainer_example: error: %s\n", e.what());
  }
  return 1;
}
