// Typed run configuration (model, moe, train, data, parallel, backend, run) and its strict YAML
// loader. Every value a run uses comes from here; every bad value is rejected with the key path
// that holds it.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace hetmoe {

struct ModelConfig {
  int64_t vocab_size = 257;  // byte tokenizer: 256 bytes + end-of-document
  int64_t d_model = 128;
  int64_t n_layers = 2;
  int64_t n_heads = 4;
  int64_t n_kv_heads = 4;  // grouped-query attention: n_heads % n_kv_heads == 0
  double rope_theta = 10000.0;
  int64_t max_seq_len = 256;
  bool norm_head = true;      // L2-normalised LM head rows (Ling's NormHead)
  int64_t first_k_dense = 0;  // the first k layers use a dense SwiGLU FFN instead of MoE
  int64_t dense_ffn_hidden = 512;
  double norm_eps = 1e-6;
  double init_std = 0.02;
  bool tie_embeddings = false;
};

struct MoEConfig {
  int64_t num_experts = 8;
  int64_t top_k = 2;
  int64_t expert_hidden = 256;
  int64_t num_shared_experts = 1;
  std::string score_func = "softmax";  // softmax | sigmoid
  bool renormalize = true;             // top-k weights renormalised to sum to 1
  double aux_loss_coef = 0.01;
  double z_loss_coef = 1e-4;
  bool dropless = true;  // when false, capacity_factor bounds tokens per expert
  double capacity_factor = 1.25;
  std::string aux_loss_type =
      "micro_batch";                // micro_batch | sequence (balance within each sequence)
  int64_t n_groups = 1;             // group-limited routing: experts in n_groups groups (1: off)
  int64_t topk_groups = 1;          // ... a token picks its experts in its topk_groups best groups
  int64_t group_score_members = 1;  // ... a group scores the sum of its best this-many (2: V3)
  double bias_update_rate = 0;      // aux-loss-free balancing: expert-bias step per update (0: off)
  int64_t routing_warmup_steps = 0;  // Ling's stochastic routing warmup over the first W steps
  double imbalance_warn = 4.0;      // warn when a layer's max/mean expert load exceeds this; 0: off
  int64_t dead_expert_steps = 100;  // warn when an expert gets no tokens this many steps; 0: off
};

struct TrainConfig {
  int64_t steps = 300;
  int64_t micro_batch = 16;
  int64_t seq_len = 128;
  int64_t grad_accum = 1;
  double lr = 3e-3;
  double min_lr = 3e-4;
  int64_t warmup = 30;
  std::string schedule = "cosine";  // cosine | wsd | constant
  double wsd_decay_fraction = 0.2;  // wsd: fraction of steps spent in the final decay
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double weight_decay = 0.1;
  double clip = 1.0;  // global gradient-norm clip; 0 disables
  int64_t seed = 1234;
  int64_t eval_every = 100;
  int64_t eval_batches = 8;
  int64_t save_every = 0;  // 0: only at the end
  int64_t keep_last = 0;   // checkpoints kept (newest); 0: all
  // Training health (hetmoe/train/health.h).
  int64_t max_bad_steps = 5;         // consecutive non-finite steps before stopping; 0: never
  double spike_threshold = 6.0;      // loss spike: > mean + threshold * std of recent; 0: off
  int64_t spike_window = 50;         // recent losses the spike test looks at
  double spike_lr_scale = 0.1;       // a spike right after a spike updates with lr * this
  int64_t spike_replay_after = 100;  // a spike's batch is trained again this many steps later
  bool save_final = true;  // checkpoint when the run ends (off for throughput measurements)
  int64_t log_every = 10;
  int64_t threads = 0;  // intra-op threads; 0: the cores this rank may use (docs/config.md)
};

struct DataConfig {
  std::string path = "data/fortunes";  // directory written by `hetmoe data prepare`
  std::string tokenizer = "byte";      // byte | none (ids straight from a DataSource)
  double val_fraction = 0.05;          // used by prepare when it is run from a config
};

struct ParallelConfig {
  int64_t expert_parallel = 1;
  bool overlap_shared_experts = true;  // run the shared experts while the dispatched rows travel
};

struct CommConfig {
  std::string backend = "auto";  // auto | mpi | nccl | local
  bool strict = false;           // a requested backend that is unavailable is an error
  double timeout_s = 300;        // deadline of every blocking collective
};

struct BackendConfig {
  std::string device = "auto";  // auto | cpu | cuda | rocm (optionally ":index")
  std::string dtype = "fp32";   // fp32 | bf16 (compute dtype; master weights stay fp32)
  double peak_tflops = 0;       // device peak for MFU in the compute dtype; 0: the device table
};

struct RunConfig {
  std::string out_dir = "runs/tiny";
  std::string log_level = "info";
  bool log_all_ranks = false;  // multi-rank runs: every rank logs (prefixed), not only rank 0
  // Trace training steps profile_start .. profile_start + profile_steps - 1 with LibTorch's
  // profiler (host operators, and device kernels on a GPU); 0: no trace.
  int64_t profile_start = 0;
  int64_t profile_steps = 2;
};

struct Config {
  ModelConfig model;
  MoEConfig moe;
  TrainConfig train;
  DataConfig data;
  ParallelConfig parallel;
  CommConfig comm;
  BackendConfig backend;
  RunConfig run;
};

// One `--set key.path=value` override, as given on the command line.
struct Override {
  std::string key;    // e.g. "moe.num_experts"
  std::string value;  // YAML scalar text, e.g. "4", "true", "cosine"
};

// Parses "a.b=v" into an Override. Throws hetmoe::Error("[config] ...") when there is no '='.
Override parse_override(const std::string& text);

// Loads a YAML file, applies the overrides in order, converts and validates.
// Throws hetmoe::Error with a one-line message naming the file, key path, line and rule on failure.
Config load_config(const std::string& path, const std::vector<Override>& overrides = {});

// Same as load_config but from YAML text (source_name appears in messages in place of a path).
Config parse_config(const std::string& yaml_text, const std::string& source_name,
                    const std::vector<Override>& overrides = {});

// Checks every cross-field and range rule; throws on the first violation. load/parse call it.
void validate(const Config& config);

// Serialises every field (defaults included) as YAML that parse_config reads back to an equal
// Config.
std::string to_yaml(const Config& config);

// Every valid key path ("model.d_model", ...) with a one-line description; for --help and docs.
std::vector<std::pair<std::string, std::string>> config_keys();

// Levenshtein-closest candidate to `key`, or "" when none is reasonably close.
std::string closest_match(const std::string& key, const std::vector<std::string>& candidates);

}  // namespace hetmoe
