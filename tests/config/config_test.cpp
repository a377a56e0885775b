// Tests for the config layer: strict YAML conversion, error messages (key path, line, rule),
// --set overrides, every validation rule, to_yaml round trips and the key list.
#include <gtest/gtest.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <set>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "hetmoe/config/config.h"
#include "hetmoe/core/error.h"
#include "support/temp_dir.h"

namespace hetmoe {
namespace {

// The message of the hetmoe::Error that `fn` throws, or "<no error>".
std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    EXPECT_EQ(e.component(), "config") << e.what();
    return e.what();
  }
  return "<no error>";
}

std::vector<Override> sets(const std::vector<std::string>& texts) {
  std::vector<Override> out;
  for (const std::string& text : texts) out.push_back(parse_override(text));
  return out;
}

std::string parse_error(const std::string& yaml, const std::vector<std::string>& overrides = {}) {
  return error_of([&] { parse_config(yaml, "test.yaml", sets(overrides)); });
}

std::string override_error(const std::vector<std::string>& overrides) {
  return parse_error("", overrides);
}

// Every key path, in declaration order; kept here so a key cannot silently disappear.
const std::vector<std::string> kAllKeys = {
    "model.vocab_size",
    "model.d_model",
    "model.n_layers",
    "model.n_heads",
    "model.n_kv_heads",
    "model.rope_theta",
    "model.max_seq_len",
    "model.norm_head",
    "model.first_k_dense",
    "model.dense_ffn_hidden",
    "model.norm_eps",
    "model.init_std",
    "model.tie_embeddings",
    "moe.num_experts",
    "moe.top_k",
    "moe.expert_hidden",
    "moe.num_shared_experts",
    "moe.score_func",
    "moe.renormalize",
    "moe.aux_loss_coef",
    "moe.z_loss_coef",
    "moe.dropless",
    "moe.capacity_factor",
    "moe.aux_loss_type",
    "moe.n_groups",
    "moe.topk_groups",
    "moe.group_score_members",
    "moe.bias_update_rate",
    "moe.routing_warmup_steps",
    "moe.imbalance_warn",
    "moe.dead_expert_steps",
    "train.steps",
    "train.micro_batch",
    "train.seq_len",
    "train.grad_accum",
    "train.lr",
    "train.min_lr",
    "train.warmup",
    "train.schedule",
    "train.wsd_decay_fraction",
    "train.beta1",
    "train.beta2",
    "train.eps",
    "train.weight_decay",
    "train.clip",
    "train.seed",
    "train.eval_every",
    "train.eval_batches",
    "train.save_every",
    "train.keep_last",
    "train.max_bad_steps",
    "train.spike_threshold",
    "train.spike_window",
    "train.spike_lr_scale",
    "train.spike_replay_after",
    "train.save_final",
    "train.log_every",
    "train.threads",
    "data.path",
    "data.tokenizer",
    "data.val_fraction",
    "parallel.expert_parallel",
    "parallel.overlap_shared_experts",
    "comm.backend",
    "comm.strict",
    "comm.timeout_s",
    "backend.device",
    "backend.dtype",
    "backend.peak_tflops",
    "run.out_dir",
    "run.log_level",
    "run.log_all_ranks",
    "run.profile_start",
    "run.profile_steps",
};

// Field-by-field equality (Config has no operator==).
void expect_same(const Config& a, const Config& b) {
  EXPECT_EQ(a.model.vocab_size, b.model.vocab_size);
  EXPECT_EQ(a.model.d_model, b.model.d_model);
  EXPECT_EQ(a.model.n_layers, b.model.n_layers);
  EXPECT_EQ(a.model.n_heads, b.model.n_heads);
  EXPECT_EQ(a.model.n_kv_heads, b.model.n_kv_heads);
  EXPECT_EQ(a.model.rope_theta, b.model.rope_theta);
  EXPECT_EQ(a.model.max_seq_len, b.model.max_seq_len);
  EXPECT_EQ(a.model.norm_head, b.model.norm_head);
  EXPECT_EQ(a.model.first_k_dense, b.model.first_k_dense);
  EXPECT_EQ(a.model.dense_ffn_hidden, b.model.dense_ffn_hidden);
  EXPECT_EQ(a.model.norm_eps, b.model.norm_eps);
  EXPECT_EQ(a.model.init_std, b.model.init_std);
  EXPECT_EQ(a.model.tie_embeddings, b.model.tie_embeddings);
  EXPECT_EQ(a.moe.num_experts, b.moe.num_experts);
  EXPECT_EQ(a.moe.top_k, b.moe.top_k);
  EXPECT_EQ(a.moe.expert_hidden, b.moe.expert_hidden);
  EXPECT_EQ(a.moe.num_shared_experts, b.moe.num_shared_experts);
  EXPECT_EQ(a.moe.score_func, b.moe.score_func);
  EXPECT_EQ(a.moe.renormalize, b.moe.renormalize);
  EXPECT_EQ(a.moe.aux_loss_coef, b.moe.aux_loss_coef);
  EXPECT_EQ(a.moe.z_loss_coef, b.moe.z_loss_coef);
  EXPECT_EQ(a.moe.dropless, b.moe.dropless);
  EXPECT_EQ(a.moe.capacity_factor, b.moe.capacity_factor);
  EXPECT_EQ(a.train.steps, b.train.steps);
  EXPECT_EQ(a.train.micro_batch, b.train.micro_batch);
  EXPECT_EQ(a.train.seq_len, b.train.seq_len);
  EXPECT_EQ(a.train.grad_accum, b.train.grad_accum);
  EXPECT_EQ(a.train.lr, b.train.lr);
  EXPECT_EQ(a.train.min_lr, b.train.min_lr);
  EXPECT_EQ(a.train.warmup, b.train.warmup);
  EXPECT_EQ(a.train.schedule, b.train.schedule);
  EXPECT_EQ(a.train.wsd_decay_fraction, b.train.wsd_decay_fraction);
  EXPECT_EQ(a.train.beta1, b.train.beta1);
  EXPECT_EQ(a.train.beta2, b.train.beta2);
  EXPECT_EQ(a.train.eps, b.train.eps);
  EXPECT_EQ(a.train.weight_decay, b.train.weight_decay);
  EXPECT_EQ(a.train.clip, b.train.clip);
  EXPECT_EQ(a.train.seed, b.train.seed);
  EXPECT_EQ(a.train.eval_every, b.train.eval_every);
  EXPECT_EQ(a.train.eval_batches, b.train.eval_batches);
  EXPECT_EQ(a.train.save_every, b.train.save_every);
  EXPECT_EQ(a.train.log_every, b.train.log_every);
  EXPECT_EQ(a.train.threads, b.train.threads);
  EXPECT_EQ(a.data.path, b.data.path);
  EXPECT_EQ(a.data.tokenizer, b.data.tokenizer);
  EXPECT_EQ(a.data.val_fraction, b.data.val_fraction);
  EXPECT_EQ(a.parallel.expert_parallel, b.parallel.expert_parallel);
  EXPECT_EQ(a.parallel.overlap_shared_experts, b.parallel.overlap_shared_experts);
  EXPECT_EQ(a.backend.device, b.backend.device);
  EXPECT_EQ(a.backend.dtype, b.backend.dtype);
  EXPECT_EQ(a.run.out_dir, b.run.out_dir);
  EXPECT_EQ(a.run.log_level, b.run.log_level);
  EXPECT_EQ(a.run.profile_start, b.run.profile_start);
  EXPECT_EQ(a.run.profile_steps, b.run.profile_steps);
}

// A valid config whose every field differs from the default.
Config non_default_config() {
  Config c;
  c.model.vocab_size = 300;
  c.model.d_model = 96;
  c.model.n_layers = 3;
  c.model.n_heads = 6;
  c.model.n_kv_heads = 2;
  c.model.rope_theta = 500000.0;
  c.model.max_seq_len = 512;
  c.model.norm_head = false;
  c.model.first_k_dense = 1;
  c.model.dense_ffn_hidden = 384;
  c.model.norm_eps = 1e-5;
  c.model.init_std = 0.1 + 0.2;  // 0.30000000000000004
  c.model.tie_embeddings = true;
  c.moe.num_experts = 16;
  c.moe.top_k = 4;
  c.moe.expert_hidden = 128;
  c.moe.num_shared_experts = 0;
  c.moe.score_func = "sigmoid";
  c.moe.renormalize = false;
  c.moe.aux_loss_coef = 1.0 / 3.0;
  c.moe.z_loss_coef = 0.0;
  c.moe.dropless = false;
  c.moe.capacity_factor = 2.0;
  c.moe.n_groups = 4;
  c.moe.topk_groups = 2;
  c.moe.group_score_members = 2;
  c.train.steps = 1000;
  c.train.micro_batch = 4;
  c.train.seq_len = 512;
  c.train.grad_accum = 8;
  c.train.lr = 6.02214076e-4;
  c.train.min_lr = 5e-324;  // smallest denormal
  c.train.warmup = 0;
  c.train.schedule = "wsd";
  c.train.wsd_decay_fraction = 1.0;
  c.train.beta1 = 0.0;
  c.train.beta2 = 0.999;
  c.train.eps = 1e-300;
  c.train.weight_decay = 0.0;
  c.train.clip = 0.0;
  c.train.seed = -42;
  c.train.eval_every = 7;
  c.train.eval_batches = 1;
  c.train.save_every = 250;
  c.train.log_every = 1;
  c.train.threads = 3;
  c.data.path = "data/my corpus #1";
  c.data.tokenizer = "byte";
  c.data.val_fraction = 0.0;
  c.parallel.expert_parallel = 4;
  c.parallel.overlap_shared_experts = false;
  c.backend.device = "cuda:1";
  c.backend.dtype = "bf16";
  c.run.out_dir = "runs/it's \"quoted\"";
  c.run.log_level = "debug";
  c.run.profile_start = 3;
  c.run.profile_steps = 4;
  return c;
}

// --- defaults and plain parsing ---

TEST(ConfigTest, DefaultsAreValid) {
  EXPECT_NO_THROW(validate(Config{}));
}

TEST(ConfigTest, EmptyDocumentsGiveDefaults) {
  const std::string defaults = to_yaml(Config{});
  for (const char* text :
       {"", "\n", "# only a comment\n", "---\n", "~\n", "model:\n", "model: {}\nmoe:\n"}) {
    SCOPED_TRACE(text);
    Config c;
    ASSERT_NO_THROW(c = parse_config(text, "empty.yaml"));
    expect_same(c, Config{});
    EXPECT_EQ(to_yaml(c), defaults);
  }
}

TEST(ConfigTest, ParsesEverySection) {
  const Config c = parse_config(R"(
model:
  vocab_size: 300
  d_model: 64
  n_layers: 4
  n_heads: 8
  n_kv_heads: 2
  rope_theta: 1e6
  norm_head: false
  first_k_dense: 1
  norm_eps: 1.0e-5
moe:
  num_experts: 4
  top_k: 1
  score_func: sigmoid
  dropless: false
  capacity_factor: 1.5
train:
  steps: 50
  lr: 0.01
  min_lr: 0
  warmup: 5
  schedule: wsd
  seed: -7
data:
  path: /tmp/data
  val_fraction: 0.1
parallel:
  expert_parallel: 2
backend:
  device: cuda:1
  dtype: bf16
run:
  out_dir: runs/x
  log_level: debug
)",
                                "full.yaml");
  EXPECT_EQ(c.model.vocab_size, 300);
  EXPECT_EQ(c.model.d_model, 64);
  EXPECT_EQ(c.model.n_layers, 4);
  EXPECT_EQ(c.model.n_heads, 8);
  EXPECT_EQ(c.model.n_kv_heads, 2);
  EXPECT_EQ(c.model.rope_theta, 1e6);
  EXPECT_FALSE(c.model.norm_head);
  EXPECT_EQ(c.model.first_k_dense, 1);
  EXPECT_EQ(c.model.norm_eps, 1e-5);
  EXPECT_EQ(c.moe.num_experts, 4);
  EXPECT_EQ(c.moe.top_k, 1);
  EXPECT_EQ(c.moe.score_func, "sigmoid");
  EXPECT_FALSE(c.moe.dropless);
  EXPECT_EQ(c.moe.capacity_factor, 1.5);
  EXPECT_EQ(c.train.steps, 50);
  EXPECT_EQ(c.train.lr, 0.01);
  EXPECT_EQ(c.train.min_lr, 0.0);
  EXPECT_EQ(c.train.warmup, 5);
  EXPECT_EQ(c.train.schedule, "wsd");
  EXPECT_EQ(c.train.seed, -7);
  EXPECT_EQ(c.data.path, "/tmp/data");
  EXPECT_EQ(c.data.val_fraction, 0.1);
  EXPECT_EQ(c.parallel.expert_parallel, 2);
  EXPECT_EQ(c.backend.device, "cuda:1");
  EXPECT_EQ(c.backend.dtype, "bf16");
  EXPECT_EQ(c.run.out_dir, "runs/x");
  EXPECT_EQ(c.run.log_level, "debug");
  // Untouched keys keep their defaults.
  EXPECT_EQ(c.model.max_seq_len, Config{}.model.max_seq_len);
  EXPECT_EQ(c.train.beta2, Config{}.train.beta2);
}

TEST(ConfigTest, AcceptedScalarForms) {
  Config c = parse_config(
      "model:\n  d_model: +64\n  rope_theta: 5000\n  init_std: .5\n  norm_eps: 1E-3\n"
      "  norm_head: False\n  tie_embeddings: TRUE\n  n_layers: !!int 3\n"
      "run:\n  out_dir: 2024\ndata:\n  path: 'quoted/path'\n",
      "forms.yaml");
  EXPECT_EQ(c.model.d_model, 64);
  EXPECT_EQ(c.model.rope_theta, 5000.0);  // an integer is a valid number
  EXPECT_EQ(c.model.init_std, 0.5);
  EXPECT_EQ(c.model.norm_eps, 1e-3);
  EXPECT_FALSE(c.model.norm_head);
  EXPECT_TRUE(c.model.tie_embeddings);
  EXPECT_EQ(c.model.n_layers, 3);
  EXPECT_EQ(c.run.out_dir, "2024");  // any scalar is a string
  EXPECT_EQ(c.data.path, "quoted/path");
}

// --- unknown keys ---

TEST(ConfigTest, UnknownNestedKeySuggestsClosest) {
  EXPECT_EQ(parse_error("model:\n  d_model: 64\n  d_modle: 3\n"),
            "[config] test.yaml:3: unknown key 'model.d_modle' (did you mean 'model.d_model'?)");
  EXPECT_EQ(parse_error("train:\n  warmpu: 3\n"),
            "[config] test.yaml:2: unknown key 'train.warmpu' (did you mean 'train.warmup'?)");
}

TEST(ConfigTest, UnknownKeyInWrongSectionSuggestsOtherSection) {
  EXPECT_EQ(parse_error("model:\n  num_experts: 4\n"),
            "[config] test.yaml:2: unknown key 'model.num_experts' (did you mean "
            "'moe.num_experts'?)");
}

TEST(ConfigTest, UnknownKeyWithoutCloseMatchHasNoSuggestion) {
  EXPECT_EQ(parse_error("moe:\n  top_k: 2\n  flux_capacitor: 1\n"),
            "[config] test.yaml:3: unknown key 'moe.flux_capacitor'");
}

TEST(ConfigTest, UnknownKeyInEverySectionIsRejected) {
  for (const char* section :
       {"model", "moe", "train", "data", "parallel", "comm", "backend", "run"}) {
    EXPECT_EQ(parse_error(std::string(section) + ":\n  zzzzzzzzzzzz: 1\n"),
              std::string("[config] test.yaml:2: unknown key '") + section + ".zzzzzzzzzzzz'");
  }
}

TEST(ConfigTest, UnknownTopLevelSectionSuggestsSection) {
  EXPECT_EQ(parse_error("modle:\n  d_model: 3\n"),
            "[config] test.yaml:1: unknown key 'modle' (did you mean 'model'?)");
  EXPECT_EQ(parse_error("model: {}\ntrian:\n  steps: 3\n"),
            "[config] test.yaml:2: unknown key 'trian' (did you mean 'train'?)");
  EXPECT_EQ(parse_error("optimizer:\n  lr: 3\n"), "[config] test.yaml:1: unknown key 'optimizer'");
}

TEST(ConfigTest, TopLevelKeyWithoutSectionSuggestsFullPath) {
  EXPECT_EQ(parse_error("d_model: 3\n"),
            "[config] test.yaml:1: unknown key 'd_model' (did you mean 'model.d_model'?)");
  EXPECT_EQ(parse_error("model.d_model: 3\n"),
            "[config] test.yaml:1: unknown key 'model.d_model' (dotted paths are for --set; in a "
            "file write 'd_model:' under 'model:')");
}

TEST(ConfigTest, DuplicateKeysAreRejected) {
  EXPECT_EQ(parse_error("model:\n  d_model: 64\n  d_model: 32\n"),
            "[config] test.yaml:3: duplicate key 'model.d_model' (first at line 2)");
  EXPECT_EQ(parse_error("model: {}\nmoe: {}\nmodel:\n  d_model: 64\n"),
            "[config] test.yaml:3: duplicate section 'model' (first at line 1)");
}

TEST(ConfigTest, ErrorLinesCountCommentsAndBlankLines) {
  const std::string text =
      "# tiny config\n"        // 1
      "\n"                     // 2
      "model:\n"               // 3
      "  d_model: 64  # ok\n"  // 4
      "\n"                     // 5
      "  n_layers: 2\n"        // 6
      "moe:\n"                 // 7
      "  # routing\n"          // 8
      "  top_kk: 3\n";         // 9
  EXPECT_EQ(parse_error(text),
            "[config] test.yaml:9: unknown key 'moe.top_kk' (did you mean 'moe.top_k'?)");
  EXPECT_EQ(parse_error("\n\n\ntrain:\n  steps: 10\n  lr: high\n"),
            "[config] test.yaml:6: train.lr: expected a number, got 'high'");
  EXPECT_EQ(parse_error("model: {d_model: 64, n_heads: x}\n"),
            "[config] test.yaml:1: model.n_heads: expected an integer, got 'x'");
}

// --- wrong types ---

TEST(ConfigTest, WrongTypesNameKeyLineExpectedTypeAndValue) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"model:\n  d_model: abc\n",
       "[config] test.yaml:2: model.d_model: expected an integer, got 'abc'"},
      {"model:\n  d_model: 1.5\n",
       "[config] test.yaml:2: model.d_model: expected an integer, got '1.5'"},
      {"model:\n  d_model: 1e3\n",
       "[config] test.yaml:2: model.d_model: expected an integer, got '1e3'"},
      {"model:\n  d_model: \"128\"\n",
       "[config] test.yaml:2: model.d_model: expected an integer, got the quoted string '128'"},
      {"model:\n  d_model:\n    width: 3\n",
       "[config] test.yaml:2: model.d_model: expected an integer, got a map"},
      {"model:\n  d_model: [1, 2]\n",
       "[config] test.yaml:2: model.d_model: expected an integer, got a list"},
      {"model:\n  d_model:\n",
       "[config] test.yaml:2: model.d_model: expected an integer, got an empty value"},
      {"train:\n  seed: 99999999999999999999\n",
       "[config] test.yaml:2: train.seed: expected an integer, got '99999999999999999999' (out of "
       "range for a 64-bit integer)"},
      // An explicit tag is named, and a string-tagged number is not "out of range".
      {"model:\n  d_model: !!str 64\n",
       "[config] test.yaml:2: model.d_model: expected an integer, got '64' tagged !!str"},
      {"train:\n  lr: !!str 0.1\n",
       "[config] test.yaml:2: train.lr: expected a number, got '0.1' tagged !!str"},
      {"train:\n  lr: fast\n", "[config] test.yaml:2: train.lr: expected a number, got 'fast'"},
      {"train:\n  lr: .inf\n", "[config] test.yaml:2: train.lr: expected a number, got '.inf'"},
      {"train:\n  lr: .nan\n", "[config] test.yaml:2: train.lr: expected a number, got '.nan'"},
      {"train:\n  lr: 1e999\n",
       "[config] test.yaml:2: train.lr: expected a number, got '1e999' (out of range)"},
      {"train:\n  lr: 0x10\n", "[config] test.yaml:2: train.lr: expected a number, got '0x10'"},
      {"train:\n  lr: [0.1]\n", "[config] test.yaml:2: train.lr: expected a number, got a list"},
      {"model:\n  norm_head: yes\n",
       "[config] test.yaml:2: model.norm_head: expected a boolean (true or false), got 'yes'"},
      {"model:\n  norm_head: 1\n",
       "[config] test.yaml:2: model.norm_head: expected a boolean (true or false), got '1'"},
      {"model:\n  norm_head: \"true\"\n",
       "[config] test.yaml:2: model.norm_head: expected a boolean (true or false), got the quoted "
       "string 'true'"},
      {"data:\n  path: [a, b]\n", "[config] test.yaml:2: data.path: expected a string, got a list"},
      {"run:\n  out_dir: {a: 1}\n",
       "[config] test.yaml:2: run.out_dir: expected a string, got a map"},
      {"run:\n  out_dir:\n",
       "[config] test.yaml:2: run.out_dir: expected a string, got an empty value"},
  };
  for (const auto& [yaml, expected] : cases) {
    SCOPED_TRACE(yaml);
    EXPECT_EQ(parse_error(yaml), expected);
  }
}

TEST(ConfigTest, SectionThatIsNotAMap) {
  EXPECT_EQ(parse_error("model: 5\n"),
            "[config] test.yaml:1: section 'model' must be a map of keys, got '5'");
  EXPECT_EQ(parse_error("model: {}\nmoe:\n  - 1\n  - 2\n"),
            "[config] test.yaml:2: section 'moe' must be a map of keys, got a list");
}

TEST(ConfigTest, DocumentThatIsNotAMap) {
  EXPECT_EQ(parse_error("- model\n- moe\n"),
            "[config] test.yaml:1: expected a map of sections (model, moe, train, data, parallel, "
            "comm, backend, run) at the top level, got a list");
  EXPECT_EQ(parse_error("\nhello\n"),
            "[config] test.yaml:2: expected a map of sections (model, moe, train, data, parallel, "
            "comm, backend, run) at the top level, got 'hello'");
}

TEST(ConfigTest, NonScalarKeysAreRejected) {
  EXPECT_EQ(parse_error("? [a, b]\n: 1\n"),
            "[config] test.yaml:1: expected a section name, got a list");
  EXPECT_EQ(parse_error("model:\n  ? {a: 1}\n  : 1\n"),
            "[config] test.yaml:2: expected a key name in section 'model', got a map");
}

TEST(ConfigTest, YamlSyntaxErrorsNameFileAndLine) {
  EXPECT_EQ(parse_error("model:\n  d_model: [1,\n  n_layers: 2\n"),
            "[config] test.yaml:4: invalid YAML at column 1: end of sequence flow not found");
  EXPECT_EQ(parse_error("model:\n  d_model: 1\n n_layers: 2\n"),
            "[config] test.yaml:3: invalid YAML at column 2: end of map not found");
  const std::string message = parse_error("model:\n  d_model: {a: 1\n");
  EXPECT_EQ(message.rfind("[config] test.yaml:", 0), 0u) << message;
  EXPECT_NE(message.find("invalid YAML"), std::string::npos) << message;
  EXPECT_EQ(message.find('\n'), std::string::npos) << message;
}

TEST(ConfigTest, MultipleDocumentsAreRejected) {
  EXPECT_EQ(parse_error("model: {}\n---\nmoe: {}\n"),
            "[config] test.yaml:2: expected one YAML document, found 2");
}

// --- enums ---

TEST(ConfigTest, EveryEnumValueIsAccepted) {
  const std::vector<std::pair<std::string, std::vector<std::string>>> enums = {
      {"moe.score_func", {"softmax", "sigmoid"}},
      {"train.schedule", {"cosine", "wsd", "constant"}},
      {"data.tokenizer", {"byte", "none"}},
      {"backend.dtype", {"fp32", "bf16"}},
      {"backend.device", {"auto", "cpu", "cuda", "rocm"}},
      {"run.log_level", {"trace", "debug", "info", "warn", "error"}},
  };
  for (const auto& [key, values] : enums) {
    for (const std::string& value : values) {
      SCOPED_TRACE(key + "=" + value);
      EXPECT_EQ(override_error({key + "=" + value}), "<no error>");
    }
  }
  EXPECT_EQ(parse_config("", "x", sets({"moe.score_func=sigmoid"})).moe.score_func, "sigmoid");
  EXPECT_EQ(parse_config("", "x", sets({"train.schedule=constant"})).train.schedule, "constant");
  EXPECT_EQ(parse_config("", "x", sets({"backend.dtype=bf16"})).backend.dtype, "bf16");
  EXPECT_EQ(parse_config("", "x", sets({"run.log_level=trace"})).run.log_level, "trace");
  // Without the byte tokenizer any vocabulary size is fine: the ids come from a DataSource.
  EXPECT_EQ(
      parse_config("", "x", sets({"data.tokenizer=none", "model.vocab_size=64"})).model.vocab_size,
      64);
}

TEST(ConfigTest, BadEnumValuesListTheChoices) {
  EXPECT_EQ(
      parse_error("moe:\n  score_func: softmx\n"),
      "[config] test.yaml:2: moe.score_func: expected one of softmax|sigmoid, got 'softmx' (did "
      "you mean 'softmax'?)");
  EXPECT_EQ(parse_error("moe:\n  score_func: Softmax\n"),
            "[config] test.yaml:2: moe.score_func: expected one of softmax|sigmoid, got 'Softmax' "
            "(did you mean 'softmax'?)");
  EXPECT_EQ(override_error({"train.schedule=linear"}),
            "[config] --set train.schedule=linear: train.schedule: expected one of "
            "cosine|wsd|constant, got 'linear'");
  EXPECT_EQ(
      override_error({"data.tokenizer=bpe"}),
      "[config] --set data.tokenizer=bpe: data.tokenizer: expected one of byte|none, got 'bpe' "
      "(did you mean 'byte'?)");
  EXPECT_EQ(
      override_error({"backend.dtype=fp16"}),
      "[config] --set backend.dtype=fp16: backend.dtype: expected one of fp32|bf16, got 'fp16' "
      "(did you mean 'fp32'?)");
  EXPECT_EQ(override_error({"run.log_level=verbose"}),
            "[config] --set run.log_level=verbose: run.log_level: expected one of "
            "trace|debug|info|warn|error, got 'verbose'");
  EXPECT_EQ(
      override_error({"moe.score_func=1"}),
      "[config] --set moe.score_func=1: moe.score_func: expected one of softmax|sigmoid, got '1'");
}

TEST(ConfigTest, DeviceTakesAnOptionalIndexForCudaAndRocm) {
  for (const char* device : {"cuda:0", "cuda:1", "cuda:15", "rocm:0", "rocm:3"}) {
    SCOPED_TRACE(device);
    EXPECT_EQ(parse_config("", "x", sets({std::string("backend.device=") + device})).backend.device,
              device);
  }
  EXPECT_EQ(parse_config("backend:\n  device: cuda:1\n", "x").backend.device, "cuda:1");
  const std::string choices = "auto|cpu|cuda[:<index>]|rocm[:<index>]";
  for (const char* device : {"gpu", "cuda:", "cuda:x", "cuda:-1", "cuda:1:2", "cpu:0", "auto:1",
                             "CUDA", "cuda:1234567890"}) {
    SCOPED_TRACE(device);
    // Quoted, since "cuda:" is a one-key map in YAML.
    const std::string message = parse_error(std::string("backend:\n  device: '") + device + "'\n");
    EXPECT_EQ(message.rfind("[config] test.yaml:2: backend.device: expected one of " + choices +
                                ", got the quoted string '" + device + "'",
                            0),
              0u)
        << message;
  }
  EXPECT_EQ(override_error({"backend.device=cuda:"}),
            "[config] --set backend.device=cuda:: backend.device: expected one of " + choices +
                ", got 'cuda:' (did you mean 'cuda'?)");
}

// --- overrides ---

TEST(ConfigTest, ParseOverrideSplitsAtFirstEquals) {
  Override o = parse_override("moe.num_experts=4");
  EXPECT_EQ(o.key, "moe.num_experts");
  EXPECT_EQ(o.value, "4");
  o = parse_override("run.out_dir=a=b");
  EXPECT_EQ(o.key, "run.out_dir");
  EXPECT_EQ(o.value, "a=b");
  o = parse_override("run.out_dir=");
  EXPECT_EQ(o.key, "run.out_dir");
  EXPECT_EQ(o.value, "");
  o = parse_override("  train.lr =1e-3");
  EXPECT_EQ(o.key, "train.lr");
  EXPECT_EQ(o.value, "1e-3");
}

TEST(ConfigTest, ParseOverrideRejectsMissingKeyOrEquals) {
  EXPECT_EQ(error_of([] { parse_override("xyz"); }), "[config] --set 'xyz': expected key=value");
  EXPECT_EQ(error_of([] { parse_override("=4"); }), "[config] --set '=4': expected key=value");
  EXPECT_EQ(error_of([] { parse_override("  =4"); }), "[config] --set '  =4': expected key=value");
  EXPECT_EQ(error_of([] { parse_override(""); }), "[config] --set '': expected key=value");
}

TEST(ConfigTest, OverridesReplaceFileValuesAsTypedScalars) {
  const Config c = parse_config(
      "model:\n  d_model: 64\ntrain:\n  steps: 100\n", "base.yaml",
      sets({"model.d_model=256", "train.lr=1e-3", "model.norm_head=false", "moe.score_func=sigmoid",
            "backend.device=cuda:1", "run.out_dir=runs/with space", "train.seed=-5"}));
  EXPECT_EQ(c.model.d_model, 256);
  EXPECT_EQ(c.train.steps, 100);  // from the file
  EXPECT_EQ(c.train.lr, 1e-3);
  EXPECT_FALSE(c.model.norm_head);
  EXPECT_EQ(c.moe.score_func, "sigmoid");
  EXPECT_EQ(c.backend.device, "cuda:1");
  EXPECT_EQ(c.run.out_dir, "runs/with space");
  EXPECT_EQ(c.train.seed, -5);
}

TEST(ConfigTest, StringOverridesTakeTheTextVerbatimUnlessQuoted) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"runs/exp #3", "runs/exp #3"},  // not a YAML comment
      {"runs/a: b", "runs/a: b"},      // not a map
      {"[x]", "[x]"},
      {"~", "~"},
      {"null", "null"},
      {"123", "123"},
      {"  padded ", "  padded "},
      {R"("quoted \"x\"")", R"(quoted "x")"},  // a quoted value is a YAML scalar
      {"'single ''x'''", "single 'x'"},
  };
  for (const auto& [value, expected] : cases) {
    SCOPED_TRACE(value);
    EXPECT_EQ(parse_config("", "x", {Override{"run.out_dir", value}}).run.out_dir, expected);
  }
  EXPECT_EQ(override_error({"run.out_dir="}), "[config] run.out_dir must not be empty");
  EXPECT_EQ(override_error({"data.path=\"unterminated"}),
            "[config] --set data.path=\"unterminated: invalid YAML value: illegal EOF in scalar");
}

TEST(ConfigTest, LaterOverrideWins) {
  const Config c = parse_config("", "x", sets({"moe.top_k=1", "moe.top_k=3"}));
  EXPECT_EQ(c.moe.top_k, 3);
}

TEST(ConfigTest, OverrideCreatesMissingAndEmptySections) {
  EXPECT_EQ(parse_config("", "x", sets({"parallel.expert_parallel=2"})).parallel.expert_parallel,
            2);
  EXPECT_EQ(parse_config("model:\n", "x", sets({"model.n_layers=5"})).model.n_layers, 5);
  EXPECT_EQ(parse_config("model: {}\n", "x", sets({"moe.top_k=1"})).moe.top_k, 1);
}

TEST(ConfigTest, ValidationRunsAfterAllOverrides) {
  // Alone, the file breaks moe.top_k <= moe.num_experts; the override repairs it.
  const std::string file = "moe:\n  top_k: 10\n";
  EXPECT_EQ(parse_error(file), "[config] moe.top_k (10) must be <= moe.num_experts (8)");
  EXPECT_EQ(parse_config(file, "x", sets({"moe.num_experts=16"})).moe.top_k, 10);
  // An intermediate invalid state between two overrides is fine.
  EXPECT_EQ(override_error({"moe.top_k=12", "moe.num_experts=12"}), "<no error>");
}

TEST(ConfigTest, UnknownOverrideKeyNamesTheSet) {
  EXPECT_EQ(override_error({"moe.num_expert=4"}),
            "[config] --set moe.num_expert=4: unknown key 'moe.num_expert' (did you mean "
            "'moe.num_experts'?)");
  EXPECT_EQ(override_error({"model.d_model.x=4"}),
            "[config] --set model.d_model.x=4: unknown key 'model.d_model.x' (did you mean "
            "'model.d_model'?)");
  EXPECT_EQ(override_error({"optimizer.zzzzzzzz=1"}),
            "[config] --set optimizer.zzzzzzzz=1: unknown key 'optimizer.zzzzzzzz'");
}

TEST(ConfigTest, BadOverrideValuesNameTheSet) {
  EXPECT_EQ(override_error({"train.steps=abc"}),
            "[config] --set train.steps=abc: train.steps: expected an integer, got 'abc'");
  EXPECT_EQ(parse_error("train:\n  steps: 100\n", {"train.steps=1.5"}),
            "[config] --set train.steps=1.5: train.steps: expected an integer, got '1.5'");
  EXPECT_EQ(override_error({"model.norm_head=maybe"}),
            "[config] --set model.norm_head=maybe: model.norm_head: expected a boolean (true or "
            "false), got 'maybe'");
  EXPECT_EQ(override_error({"model.d_model=[1, 2]"}),
            "[config] --set model.d_model=[1, 2]: model.d_model: expected an integer, got a list");
  EXPECT_EQ(override_error({"model.d_model=a: b"}),
            "[config] --set model.d_model=a: b: model.d_model: expected an integer, got a map");
  EXPECT_EQ(override_error({"model.d_model=[1"}),
            "[config] --set model.d_model=[1: invalid YAML value: end of sequence flow not found");
}

TEST(ConfigTest, FileErrorsKeepTheirLinesNextToOverrides) {
  EXPECT_EQ(parse_error("train:\n  steps: 100\n  lr: x\n", {"train.steps=5"}),
            "[config] test.yaml:3: train.lr: expected a number, got 'x'");
  EXPECT_EQ(parse_error("model: 3\n", {"model.d_model=64"}),
            "[config] test.yaml:1: section 'model' must be a map of keys, got '3'");
}

// --- validation rules ---

TEST(ConfigTest, EverySizeMustBePositive) {
  const std::vector<std::string> keys = {
      "model.vocab_size",       "model.d_model",    "model.n_layers",
      "model.n_heads",          "model.n_kv_heads", "model.max_seq_len",
      "model.dense_ffn_hidden", "moe.num_experts",  "moe.top_k",
      "moe.expert_hidden",      "train.steps",      "train.micro_batch",
      "train.seq_len",          "train.grad_accum", "train.eval_batches",
      "train.log_every",        "train.eval_every", "parallel.expert_parallel",
  };
  for (const std::string& key : keys) {
    SCOPED_TRACE(key);
    EXPECT_EQ(override_error({key + "=0"}), "[config] " + key + " (0) must be > 0");
    EXPECT_EQ(override_error({key + "=-3"}), "[config] " + key + " (-3) must be > 0");
  }
}

TEST(ConfigTest, EveryRangeAndCrossFieldRule) {
  // (overrides on the defaults, exact message)
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
      {{"moe.num_shared_experts=-1"}, "moe.num_shared_experts (-1) must be >= 0"},
      {{"model.first_k_dense=3"}, "model.first_k_dense (3) must be in [0, model.n_layers (2)]"},
      {{"model.first_k_dense=-1"}, "model.first_k_dense (-1) must be in [0, model.n_layers (2)]"},
      {{"model.d_model=130"}, "model.d_model (130) must be divisible by model.n_heads (4)"},
      {{"model.d_model=12"},
       "model.d_model / model.n_heads (12 / 4 = 3) must be even: it is the head dim and RoPE "
       "rotates pairs"},
      {{"model.n_kv_heads=3"}, "model.n_heads (4) must be divisible by model.n_kv_heads (3)"},
      {{"moe.top_k=10"}, "moe.top_k (10) must be <= moe.num_experts (8)"},
      {{"train.lr=0"}, "train.lr (0.0) must be > 0"},
      {{"train.lr=-1e-3"}, "train.lr (-0.001) must be > 0"},
      {{"train.min_lr=-1e-4"}, "train.min_lr (-1.0e-4) must be >= 0"},
      {{"train.min_lr=0.1"}, "train.min_lr (0.1) must be <= train.lr (0.003)"},
      {{"train.warmup=-1"}, "train.warmup (-1) must be >= 0"},
      {{"train.warmup=300"}, "train.warmup (300) must be < train.steps (300)"},
      {{"train.steps=10"}, "train.warmup (30) must be < train.steps (10)"},
      {{"train.beta1=1"}, "train.beta1 (1.0) must be in [0, 1)"},
      {{"train.beta1=-0.1"}, "train.beta1 (-0.1) must be in [0, 1)"},
      {{"train.beta2=1.5"}, "train.beta2 (1.5) must be in [0, 1)"},
      {{"train.eps=0"}, "train.eps (0.0) must be > 0"},
      {{"train.weight_decay=-0.1"}, "train.weight_decay (-0.1) must be >= 0"},
      {{"train.clip=-1"}, "train.clip (-1.0) must be >= 0"},
      {{"moe.aux_loss_coef=-0.01"}, "moe.aux_loss_coef (-0.01) must be >= 0"},
      {{"moe.z_loss_coef=-1e-4"}, "moe.z_loss_coef (-1.0e-4) must be >= 0"},
      {{"moe.capacity_factor=0"}, "moe.capacity_factor (0.0) must be > 0"},
      {{"moe.n_groups=0"}, "moe.n_groups (0) must be > 0"},
      {{"moe.n_groups=3"}, "moe.num_experts (8) must be divisible by moe.n_groups (3)"},
      {{"moe.n_groups=4", "moe.topk_groups=5"},
       "moe.topk_groups (5) must be in [1, moe.n_groups (4)]"},
      {{"moe.n_groups=4", "moe.topk_groups=1", "moe.top_k=3"},
       "moe.top_k (3) must be <= moe.topk_groups x experts per group (2)"},
      {{"moe.n_groups=4", "moe.topk_groups=2", "moe.group_score_members=3"},
       "moe.group_score_members (3) must be in [1, experts per group (2)]"},
      {{"moe.bias_update_rate=-0.001"}, "moe.bias_update_rate (-0.001) must be >= 0"},
      {{"moe.routing_warmup_steps=-1"}, "moe.routing_warmup_steps (-1) must be >= 0"},
      {{"train.seq_len=512"}, "train.seq_len (512) must be <= model.max_seq_len (256)"},
      {{"data.val_fraction=1"}, "data.val_fraction (1.0) must be in [0, 1)"},
      {{"data.val_fraction=-0.5"}, "data.val_fraction (-0.5) must be in [0, 1)"},
      {{"model.rope_theta=0"}, "model.rope_theta (0.0) must be > 0"},
      {{"model.norm_eps=-1e-6"}, "model.norm_eps (-1.0e-6) must be > 0"},
      {{"model.init_std=0"}, "model.init_std (0.0) must be > 0"},
      {{"train.save_every=-1"}, "train.save_every (-1) must be >= 0"},
      {{"train.threads=-2"}, "train.threads (-2) must be >= 0"},
      {{"train.threads=100000"},
       "train.threads (100000) must be <= 1024 (0: the cores this rank may use)"},
      // Sizes whose products overflow the 64-bit counts (plan printed negative parameters).
      {{"model.d_model=4000000000", "model.n_heads=1", "model.n_kv_heads=1"},
       "model and moe sizes give about 1.28e+20 parameters, more than the 1e+15 hetmoe can "
       "account for (model.d_model 4000000000, model.n_layers 2, moe.num_experts 8, "
       "moe.expert_hidden 256, model.vocab_size 257)"},
      {{"moe.num_experts=4611686018427387904"},
       "model and moe sizes give about 9.07875e+23 parameters, more than the 1e+15 hetmoe can "
       "account for (model.d_model 128, model.n_layers 2, moe.num_experts 4611686018427387904, "
       "moe.expert_hidden 256, model.vocab_size 257)"},
      {{"train.micro_batch=1000000000000"},
       "train.micro_batch x train.seq_len (1000000000000 x 128) with these model sizes gives "
       "about 1.34362e+18 activation values per micro-batch, more than the 1e+16 hetmoe can "
       "account for"},
      {{"train.wsd_decay_fraction=0"}, "train.wsd_decay_fraction (0.0) must be in (0, 1]"},
      {{"train.wsd_decay_fraction=1.5"}, "train.wsd_decay_fraction (1.5) must be in (0, 1]"},
      {{"parallel.expert_parallel=3"},
       "moe.num_experts (8) must be divisible by parallel.expert_parallel (3)"},
      {{"data.path=\"\""}, "data.path must not be empty"},
      {{"run.out_dir=''"}, "run.out_dir must not be empty"},
      {{"run.profile_steps=0"}, "run.profile_steps (0) must be > 0"},
      {{"run.profile_start=-1"}, "run.profile_start (-1) must be >= 0"},
      {{"run.profile_start=999999"},
       "run.profile_start (999999) is after the last step (train.steps 300)"},
      {{"model.vocab_size=256"},
       "model.vocab_size (256) must be >= 257 when data.tokenizer is 'byte' (256 bytes + "
       "end-of-document)"},
  };
  for (const auto& [overrides, expected] : cases) {
    SCOPED_TRACE(overrides.front());
    EXPECT_EQ(override_error(overrides), "[config] " + expected);
  }
}

TEST(ConfigTest, BoundaryValuesAreValid) {
  const std::vector<std::vector<std::string>> cases = {
      {"model.first_k_dense=0"},
      {"model.first_k_dense=2"},
      {"moe.num_shared_experts=0"},
      {"moe.top_k=8"},
      {"train.min_lr=0"},
      {"train.min_lr=0.003"},
      {"train.warmup=0"},
      {"train.warmup=299"},
      {"train.beta1=0", "train.beta2=0.999999"},
      {"train.weight_decay=0", "train.clip=0"},
      {"moe.aux_loss_coef=0", "moe.z_loss_coef=0"},
      {"train.seq_len=256"},
      {"data.val_fraction=0"},
      {"train.save_every=0", "train.threads=0"},
      {"train.wsd_decay_fraction=1"},
      {"parallel.expert_parallel=8"},
      {"model.vocab_size=257"},
      {"model.d_model=8", "model.n_heads=4", "model.n_kv_heads=1"},  // head dim 2
  };
  for (const auto& overrides : cases) {
    SCOPED_TRACE(overrides.front());
    EXPECT_EQ(override_error(overrides), "<no error>");
  }
}

TEST(ConfigTest, ValidateChecksProgrammaticConfigs) {
  Config c;
  c.moe.score_func = "relu";
  EXPECT_EQ(error_of([&] { validate(c); }),
            "[config] moe.score_func ('relu') must be one of softmax|sigmoid");
  c = Config{};
  c.backend.device = "cuda:x";
  EXPECT_EQ(
      error_of([&] { validate(c); }),
      "[config] backend.device ('cuda:x') must be one of auto|cpu|cuda[:<index>]|rocm[:<index>]");
  c = Config{};
  c.train.lr = std::numeric_limits<double>::quiet_NaN();
  EXPECT_EQ(error_of([&] { validate(c); }), "[config] train.lr (.nan) must be a finite number");
  c = Config{};
  c.model.rope_theta = std::numeric_limits<double>::infinity();
  EXPECT_EQ(error_of([&] { validate(c); }),
            "[config] model.rope_theta (.inf) must be a finite number");
  c = Config{};
  c.data.path.clear();
  EXPECT_EQ(error_of([&] { validate(c); }), "[config] data.path must not be empty");
  EXPECT_NO_THROW(validate(non_default_config()));
}

// --- to_yaml ---

TEST(ConfigTest, ToYamlRoundTripsDefaults) {
  const std::string text = to_yaml(Config{});
  const Config back = parse_config(text, "defaults");
  expect_same(back, Config{});
  EXPECT_EQ(to_yaml(back), text);
}

TEST(ConfigTest, ToYamlRoundTripsEveryFieldExactly) {
  const Config c = non_default_config();
  const std::string text = to_yaml(c);
  Config back;
  ASSERT_NO_THROW(back = parse_config(text, "round_trip")) << text;
  expect_same(back, c);
  EXPECT_EQ(to_yaml(back), text);
}

TEST(ConfigTest, ToYamlRoundTripsAwkwardStrings) {
  for (const char* s : {"runs/my run",
                        "null",
                        "Null",
                        "~",
                        "true",
                        "no",
                        "yes",
                        "123",
                        "1.5",
                        "1e3",
                        ".inf",
                        "a: b",
                        "#x",
                        "x #y",
                        "-x",
                        "- x",
                        "x:",
                        ":x",
                        "it's \"quoted\"",
                        "tab\there",
                        "new\nline",
                        "back\\slash",
                        " leading",
                        "trailing ",
                        "[a]",
                        "{a}",
                        "*alias",
                        "&anchor",
                        "!tag",
                        "%dir",
                        "@at",
                        "`tick`",
                        "|",
                        ">",
                        "caf\xc3\xa9",
                        "bell\x07",
                        "'single'"}) {
    SCOPED_TRACE(s);
    Config c;
    c.run.out_dir = s;
    c.data.path = std::string("data/") + s;
    Config back;
    ASSERT_NO_THROW(back = parse_config(to_yaml(c), "strings")) << to_yaml(c);
    EXPECT_EQ(back.run.out_dir, s);
    EXPECT_EQ(back.data.path, std::string("data/") + s);
  }
}

TEST(ConfigTest, ToYamlRoundTripsAwkwardDoubles) {
  for (double lr : {0.1 + 0.2, 1.0 / 3.0, 1e-300, 4.9406564584124654e-324, 2.2250738585072014e-308,
                    1.7976931348623157e308, 123456789.123456789, 1e16, 1e15, 3e-3, 100.0, 0.5}) {
    SCOPED_TRACE(lr);
    Config c;
    c.train.lr = lr;
    c.train.min_lr = 0.0;
    const Config back = parse_config(to_yaml(c), "doubles");
    EXPECT_EQ(back.train.lr, lr);
  }
}

TEST(ConfigTest, ToYamlIsGroupedAndListsEveryKey) {
  const std::string text = to_yaml(Config{});
  const YAML::Node root = YAML::Load(text);
  ASSERT_TRUE(root.IsMap());
  EXPECT_EQ(root.size(), 8u);
  for (const std::string& key : kAllKeys) {
    const std::string section = key.substr(0, key.find('.'));
    const std::string name = key.substr(key.find('.') + 1);
    ASSERT_TRUE(root[section].IsMap()) << section;
    EXPECT_TRUE(root[section][name].IsScalar()) << key;
  }
  // Readable: sections at column 0 in order, floats look like floats, descriptions as comments.
  EXPECT_LT(text.find("\nmodel:\n"), text.find("\nmoe:\n"));
  EXPECT_LT(text.find("\nmoe:\n"), text.find("\ntrain:\n"));
  EXPECT_LT(text.find("\ntrain:\n"), text.find("\ndata:\n"));
  EXPECT_LT(text.find("\ndata:\n"), text.find("\nparallel:\n"));
  EXPECT_LT(text.find("\nparallel:\n"), text.find("\nbackend:\n"));
  EXPECT_LT(text.find("\nbackend:\n"), text.find("\nrun:\n"));
  EXPECT_NE(text.find("  d_model: 128  "), std::string::npos) << text;
  EXPECT_NE(text.find("  rope_theta: 10000.0  "), std::string::npos) << text;
  EXPECT_NE(text.find("  norm_eps: 1.0e-6  "), std::string::npos) << text;
  EXPECT_NE(text.find("  lr: 0.003  "), std::string::npos) << text;
  EXPECT_NE(text.find("  score_func: softmax  "), std::string::npos) << text;
  EXPECT_NE(text.find("# residual stream width\n"), std::string::npos) << text;
}

TEST(ConfigTest, ToYamlQuotesEmptyStrings) {
  Config c;
  c.run.out_dir = "";
  const std::string text = to_yaml(c);
  EXPECT_NE(text.find("  out_dir: \"\"  "), std::string::npos) << text;
  EXPECT_EQ(parse_error(text), "[config] run.out_dir must not be empty");
}

// --- key list ---

TEST(ConfigTest, ConfigKeysListsEveryKeyOnceWithADescription) {
  const auto keys = config_keys();
  std::vector<std::string> paths;
  for (const auto& [path, description] : keys) {
    paths.push_back(path);
    EXPECT_FALSE(description.empty()) << path;
    EXPECT_EQ(description.find('\n'), std::string::npos) << path;
  }
  EXPECT_EQ(paths, kAllKeys);
  EXPECT_EQ(std::set<std::string>(paths.begin(), paths.end()).size(), paths.size());
  // The description states the type and default.
  for (const auto& [path, description] : keys) {
    if (path == "model.d_model") {
      EXPECT_NE(description.find("(int, default 128)"), std::string::npos);
    }
    if (path == "moe.score_func") {
      EXPECT_NE(description.find("(softmax|sigmoid, default softmax)"), std::string::npos);
    }
  }
}

TEST(ConfigTest, EveryKeyIsSettableWithItsDefault) {
  const YAML::Node defaults = YAML::Load(to_yaml(Config{}));
  const std::string expected = to_yaml(Config{});
  for (const auto& [path, description] : config_keys()) {
    SCOPED_TRACE(path);
    const std::string section = path.substr(0, path.find('.'));
    const std::string name = path.substr(path.find('.') + 1);
    const std::string value = defaults[section][name].Scalar();
    Config c;
    ASSERT_NO_THROW(c = parse_config("", "x", {Override{path, value}}));
    EXPECT_EQ(to_yaml(c), expected);
    // And a file that sets only this key.
    ASSERT_NO_THROW(c = parse_config(section + ":\n  " + name + ": " + value + "\n", "x"));
    EXPECT_EQ(to_yaml(c), expected);
  }
}

// --- closest_match ---

TEST(ConfigTest, ClosestMatchUsesLevenshteinWithALengthBound) {
  std::vector<std::string> paths;
  for (const auto& [path, description] : config_keys()) paths.push_back(path);
  EXPECT_EQ(closest_match("model.d_modle", paths), "model.d_model");
  EXPECT_EQ(closest_match("moe.numexperts", paths), "moe.num_experts");
  EXPECT_EQ(closest_match("zzz", paths), "");
  // Bound: max(2, len / 3).
  EXPECT_EQ(closest_match("ab", {"abcd"}), "abcd");                   // distance 2, bound 2
  EXPECT_EQ(closest_match("ab", {"abcde"}), "");                      // distance 3, bound 2
  EXPECT_EQ(closest_match("abcdefghi", {"abcdefXYZ"}), "abcdefXYZ");  // distance 3, bound 3
  EXPECT_EQ(closest_match("abcdefghi", {"abcdeWXYZ"}), "");           // distance 4, bound 3
  // Closest wins; ties go to the first candidate.
  EXPECT_EQ(closest_match("abcdef", {"abcxyz", "abcdez", "abcdey"}), "abcdez");
  EXPECT_EQ(closest_match("x", {}), "");
  EXPECT_EQ(closest_match("", {"a"}), "");
}

// --- files ---

using test_support::TempDir;

TEST(ConfigTest, LoadsAFileAndAppliesOverrides) {
  const TempDir dir;
  const std::string path =
      dir.write("tiny.yaml", "model:\n  d_model: 64\nmoe:\n  num_experts: 4\n");
  const Config c = load_config(path, sets({"moe.top_k=4"}));
  EXPECT_EQ(c.model.d_model, 64);
  EXPECT_EQ(c.moe.num_experts, 4);
  EXPECT_EQ(c.moe.top_k, 4);
}

TEST(ConfigTest, ErrorsNameTheFilePath) {
  const TempDir dir;
  const std::string path = dir.write("bad.yaml", "model:\n  d_model: 64\n  d_modle: 3\n");
  EXPECT_EQ(error_of([&] { load_config(path); }),
            "[config] " + path + ":3: unknown key 'model.d_modle' (did you mean 'model.d_model'?)");
  const std::string syntax = dir.write("syntax.yaml", "model:\n  d_model: [1,\n  n_layers: 2\n");
  EXPECT_EQ(error_of([&] { load_config(syntax); }),
            "[config] " + syntax + ":4: invalid YAML at column 1: end of sequence flow not found");
}

TEST(ConfigTest, EmptyFileGivesDefaults) {
  const TempDir dir;
  const std::string path = dir.write("empty.yaml", "");
  expect_same(load_config(path), Config{});
}

TEST(ConfigTest, MissingOrUnreadableFile) {
  const TempDir dir;
  const std::string missing = (dir.path() / "missing.yaml").string();
  EXPECT_EQ(error_of([&] { load_config(missing); }),
            "[config] cannot read config file '" + missing + "': No such file or directory");
  EXPECT_EQ(error_of([&] { load_config(dir.path().string()); }),
            "[config] cannot read config file '" + dir.path().string() + "': Is a directory");
}

TEST(ConfigTest, RepoConfigsLoad) {
#ifdef HETMOE_SOURCE_DIR
  const std::filesystem::path dir = std::filesystem::path(HETMOE_SOURCE_DIR) / "configs";
  if (!std::filesystem::is_directory(dir)) GTEST_SKIP() << "no " << dir;
  int loaded = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    const std::string ext = entry.path().extension().string();
    if (!entry.is_regular_file() || (ext != ".yaml" && ext != ".yml")) continue;
    // The device catalog is not a run config (tests/bench/catalog_test.cpp loads it).
    if (entry.path().filename() == "devices.yaml") continue;
    SCOPED_TRACE(entry.path().string());
    EXPECT_EQ(error_of([&] { load_config(entry.path().string()); }), "<no error>");
    ++loaded;
  }
  if (loaded == 0) GTEST_SKIP() << "no *.yaml in " << dir;
#else
  GTEST_SKIP() << "HETMOE_SOURCE_DIR is not defined";
#endif
}

}  // namespace
}  // namespace hetmoe

namespace hetmoe {
namespace {

// Found by the config fuzz target: yaml-cpp's LoadAll looped forever, allocating, on this input.
// It must be refused (or accepted) promptly with a normal error.
TEST(ConfigFuzzRegressionTest, MalformedInputThatHungLoadAllIsRefused) {
  std::ifstream in(
      std::string(HETMOE_SOURCE_DIR) + "/tests/fuzz/seeds/config/regression-loadall-loop.yaml",
      std::ios::binary);
  ASSERT_TRUE(in);
  const std::string text((std::istreambuf_iterator<char>(in)), {});
  EXPECT_THROW(parse_config(text, "fuzz.yaml"), Error);
}

}  // namespace
}  // namespace hetmoe
