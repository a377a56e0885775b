// The config key table and the scalar parsers/formatters it relies on.
#include "config_schema.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <type_traits>
#include <unordered_map>

namespace hetmoe::config_detail {
namespace {

template <typename Section, typename T>
KeySpec make_key(const char* section, const char* name, Section Config::*sec, T Section::*field,
                 const char* description, std::vector<std::string> choices = {},
                 std::vector<std::string> indexed_choices = {}) {
  KeySpec spec;
  spec.section = section;
  spec.name = name;
  spec.path = std::string(section) + "." + name;
  if constexpr (std::is_same_v<T, int64_t>) {
    spec.type = KeyType::kInt;
  } else if constexpr (std::is_same_v<T, double>) {
    spec.type = KeyType::kFloat;
  } else if constexpr (std::is_same_v<T, bool>) {
    spec.type = KeyType::kBool;
  } else {
    static_assert(std::is_same_v<T, std::string>,
                  "config fields are int64_t, double, bool or string");
    spec.type = KeyType::kString;
  }
  spec.choices = std::move(choices);
  spec.indexed_choices = std::move(indexed_choices);
  spec.description = description;
  spec.get = [sec, field](const Config& config) -> Value { return (config.*sec).*field; };
  spec.set = [sec, field](Config& config, const Value& value) {
    (config.*sec).*field = std::get<T>(value);
  };
  return spec;
}

// HETMOE_KEY(section, field, description[, choices[, indexed choices]]): the key "section.field"
// bound to Config::section.field, so a key's name is always its field's name.
#define HETMOE_KEY(section, field, ...) \
  make_key(#section, #field, &Config::section, &decltype(Config::section)::field, __VA_ARGS__)

std::vector<KeySpec> build_schema() {
  return {
      HETMOE_KEY(model, vocab_size,
                 "vocabulary size (byte tokenizer: 256 bytes + end-of-document = 257)"),
      HETMOE_KEY(model, d_model, "residual stream width"),
      HETMOE_KEY(model, n_layers, "number of transformer blocks"),
      HETMOE_KEY(model, n_heads,
                 "attention query heads; d_model / n_heads is the head dim (even, for RoPE)"),
      HETMOE_KEY(model, n_kv_heads,
                 "key/value heads (grouped-query attention); must divide n_heads"),
      HETMOE_KEY(model, rope_theta, "RoPE base frequency"),
      HETMOE_KEY(model, max_seq_len, "longest sequence the model accepts"),
      HETMOE_KEY(model, norm_head, "L2-normalise the LM head rows (NormHead)"),
      HETMOE_KEY(model, first_k_dense, "the first k blocks use a dense SwiGLU FFN instead of MoE"),
      HETMOE_KEY(model, dense_ffn_hidden, "hidden width of the dense SwiGLU FFN"),
      HETMOE_KEY(model, norm_eps, "RMSNorm epsilon"),
      HETMOE_KEY(model, init_std, "standard deviation of the normal weight initialisation"),
      HETMOE_KEY(model, tie_embeddings, "share the token embedding and LM head weights"),

      HETMOE_KEY(moe, num_experts, "routed experts per MoE layer"),
      HETMOE_KEY(moe, top_k, "routed experts per token"),
      HETMOE_KEY(moe, expert_hidden, "hidden width of each expert's SwiGLU FFN"),
      HETMOE_KEY(moe, num_shared_experts, "always-active shared experts per MoE layer (0: none)"),
      HETMOE_KEY(moe, score_func, "router scoring function", {"softmax", "sigmoid"}),
      HETMOE_KEY(moe, renormalize, "renormalise the top-k routing weights to sum to 1"),
      HETMOE_KEY(moe, aux_loss_coef,
                 "weight of the load-balancing auxiliary loss (E x sum_i f_i P_i per MoE layer, "
                 "averaged over the layers; sigmoid scores are normalised per token for P)"),
      HETMOE_KEY(moe, z_loss_coef,
                 "weight of the router z-loss (mean squared logsumexp of the logits, averaged over "
                 "the MoE layers)"),
      HETMOE_KEY(moe, dropless,
                 "route every token; false: capacity_factor bounds tokens per expert"),
      HETMOE_KEY(moe, capacity_factor,
                 "expert capacity as a multiple of the balanced load (dropless: false)"),
      HETMOE_KEY(moe, aux_loss_type,
                 "balance loss over the whole micro-batch or within each sequence (averaged)",
                 {"micro_batch", "sequence"}),
      HETMOE_KEY(moe, n_groups, "group-limited routing: experts form n_groups groups (1: off)"),
      HETMOE_KEY(moe, topk_groups, "group-limited routing: groups a token may choose experts in"),
      HETMOE_KEY(moe, group_score_members,
                 "group-limited routing: a group's score is the sum of its best this-many "
                 "(biased) scores (1: DeepSeek-V2; 2: DeepSeek-V3, Ling 2.0)"),
      HETMOE_KEY(moe, bias_update_rate,
                 "aux-loss-free balancing: per-step update of the selection-only expert bias "
                 "(0: off)"),
      HETMOE_KEY(moe, routing_warmup_steps,
                 "Ling's stochastic routing warmup: logits blend with noise for the first W steps "
                 "(0: off)"),
      HETMOE_KEY(
          moe, imbalance_warn,
          "warn when a layer's busiest expert gets more than this times the mean load (0: off)"),
      HETMOE_KEY(moe, dead_expert_steps,
                 "warn when an expert receives no tokens for this many steps in a row (0: off)"),

      HETMOE_KEY(train, steps, "optimizer steps"),
      HETMOE_KEY(train, micro_batch,
                 "sequences per micro-batch for the whole job (split evenly over the ranks)"),
      HETMOE_KEY(train, seq_len, "tokens per training sequence (<= model.max_seq_len)"),
      HETMOE_KEY(train, grad_accum, "micro-batches accumulated per optimizer step"),
      HETMOE_KEY(train, lr, "peak learning rate"),
      HETMOE_KEY(train, min_lr, "learning rate at the end of the cosine or wsd decay"),
      HETMOE_KEY(train, warmup, "linear warmup steps (< steps)"),
      HETMOE_KEY(train, schedule, "learning-rate schedule after warmup",
                 {"cosine", "wsd", "constant"}),
      HETMOE_KEY(train, wsd_decay_fraction,
                 "wsd: fraction of the steps after warmup spent in the final decay"),
      HETMOE_KEY(train, beta1, "AdamW beta1"),
      HETMOE_KEY(train, beta2, "AdamW beta2"),
      HETMOE_KEY(train, eps, "AdamW epsilon"),
      HETMOE_KEY(train, weight_decay, "AdamW decoupled weight decay"),
      HETMOE_KEY(train, clip, "global gradient-norm clip (0 disables)"),
      HETMOE_KEY(train, seed, "random seed for initialisation and data order"),
      HETMOE_KEY(train, eval_every, "evaluate every N steps"),
      HETMOE_KEY(train, eval_batches, "validation batches per evaluation"),
      HETMOE_KEY(train, save_every, "checkpoint every N steps (0: only at the end)"),
      HETMOE_KEY(train, keep_last, "keep only the newest N checkpoints (0: keep all)"),
      HETMOE_KEY(
          train, max_bad_steps,
          "consecutive steps with a non-finite loss or gradient before the run stops (0: never)"),
      HETMOE_KEY(
          train, spike_threshold,
          "loss spike: loss above the recent mean by this many standard deviations (0: off)"),
      HETMOE_KEY(train, spike_window, "recent losses the spike test uses"),
      HETMOE_KEY(train, spike_lr_scale,
                 "a spike right after a spike updates with the LR scaled by this (0: skip again)"),
      HETMOE_KEY(train, spike_replay_after,
                 "a spiking batch is trained again this many steps later (0: dropped)"),
      HETMOE_KEY(train, save_final, "write a checkpoint when the run ends"),
      HETMOE_KEY(train, log_every, "log training metrics every N steps"),
      HETMOE_KEY(train, threads, "intra-op CPU threads (0: the cores this rank may use)"),

      HETMOE_KEY(data, path, "prepared dataset directory (written by `hetmoe data prepare`)"),
      HETMOE_KEY(data, tokenizer,
                 "byte: text as bytes (vocab_size >= 257); none: ids as a DataSource of one's "
                 "own gives them, any vocab_size",
                 {"byte", "none"}),
      HETMOE_KEY(data, val_fraction,
                 "fraction of documents `hetmoe data prepare` holds out for validation"),

      HETMOE_KEY(parallel, expert_parallel,
                 "expert-parallel ranks; must divide moe.num_experts and the world size"),
      HETMOE_KEY(parallel, overlap_shared_experts,
                 "compute the shared experts while the expert-parallel all-to-all moves tokens"),

      HETMOE_KEY(
          comm, backend,
          "collective transport (auto: NCCL for CUDA, else MPI under a launcher, else local)",
          {"auto", "mpi", "nccl", "local"}),
      HETMOE_KEY(comm, strict, "an unavailable comm.backend is an error instead of a fallback"),
      HETMOE_KEY(comm, timeout_s,
                 "seconds a blocking collective waits before every rank fails with a named error"),

      HETMOE_KEY(backend, device, "compute device; cuda and rocm take an optional device index",
                 {"auto", "cpu", "cuda", "rocm"}, {"cuda", "rocm"}),
      HETMOE_KEY(backend, dtype, "compute dtype (master weights stay fp32)", {"fp32", "bf16"}),
      HETMOE_KEY(backend, peak_tflops,
                 "device peak TFLOP/s in the compute dtype, for MFU (0: hetmoe's device table)"),

      HETMOE_KEY(run, out_dir, "directory for checkpoints, logs and metrics"),
      HETMOE_KEY(run, log_level, "minimum log level", {"trace", "debug", "info", "warn", "error"}),
      HETMOE_KEY(run, log_all_ranks,
                 "multi-rank runs: every rank logs, prefixed with its rank (default: rank 0 only)"),
      HETMOE_KEY(run, profile_start,
                 "first training step to trace with LibTorch's profiler (0: no trace)"),
      HETMOE_KEY(run, profile_steps, "how many steps the trace covers"),
  };
}

#undef HETMOE_KEY

bool all_digits(const std::string& text, size_t begin) {
  if (begin >= text.size()) return false;
  for (size_t i = begin; i < text.size(); ++i) {
    if (text[i] < '0' || text[i] > '9') return false;
  }
  return true;
}

}  // namespace

const std::vector<KeySpec>& schema() {
  static const std::vector<KeySpec> table = build_schema();
  return table;
}

const std::vector<std::string>& section_names() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> out;
    for (const KeySpec& spec : schema()) {
      if (std::find(out.begin(), out.end(), spec.section) == out.end()) out.push_back(spec.section);
    }
    return out;
  }();
  return names;
}

const std::vector<std::string>& key_paths() {
  static const std::vector<std::string> paths = [] {
    std::vector<std::string> out;
    for (const KeySpec& spec : schema()) out.push_back(spec.path);
    return out;
  }();
  return paths;
}

const KeySpec* find_key(const std::string& path) {
  static const std::unordered_map<std::string, const KeySpec*> index = [] {
    std::unordered_map<std::string, const KeySpec*> out;
    for (const KeySpec& spec : schema()) out.emplace(spec.path, &spec);
    return out;
  }();
  auto it = index.find(path);
  return it == index.end() ? nullptr : it->second;
}

std::string choices_text(const KeySpec& spec) {
  std::string out;
  for (const std::string& choice : spec.choices) {
    if (!out.empty()) out += "|";
    out += choice;
    if (std::find(spec.indexed_choices.begin(), spec.indexed_choices.end(), choice) !=
        spec.indexed_choices.end()) {
      out += "[:<index>]";
    }
  }
  return out;
}

std::string expected_text(const KeySpec& spec) {
  if (!spec.choices.empty()) return "one of " + choices_text(spec);
  switch (spec.type) {
    case KeyType::kInt:
      return "an integer";
    case KeyType::kFloat:
      return "a number";
    case KeyType::kBool:
      return "a boolean (true or false)";
    case KeyType::kString:
      return "a string";
  }
  return "a value";
}

bool choice_allowed(const KeySpec& spec, const std::string& value) {
  if (spec.choices.empty()) return true;
  if (std::find(spec.choices.begin(), spec.choices.end(), value) != spec.choices.end()) return true;
  const size_t colon = value.find(':');
  if (colon == std::string::npos) return false;
  const std::string base = value.substr(0, colon);
  if (std::find(spec.indexed_choices.begin(), spec.indexed_choices.end(), base) ==
      spec.indexed_choices.end()) {
    return false;
  }
  // A device index: decimal digits, small enough for an int.
  return all_digits(value, colon + 1) && value.size() - colon - 1 <= 9;
}

bool parse_int(const std::string& text, int64_t* out) {
  const size_t begin = (!text.empty() && (text[0] == '-' || text[0] == '+')) ? 1 : 0;
  if (!all_digits(text, begin)) return false;
  // from_chars takes no '+'; keep the '-'.
  const char* first = text.data() + (text[0] == '+' ? 1 : 0);
  const char* last = text.data() + text.size();
  int64_t value = 0;
  auto [ptr, ec] = std::from_chars(first, last, value);
  if (ec != std::errc() || ptr != last) return false;
  *out = value;
  return true;
}

bool float_syntax(const std::string& text) {
  // [-+]? (digits [. digits?] | . digits) ([eE] [-+]? digits)?
  size_t i = 0;
  const size_t n = text.size();
  if (i < n && (text[i] == '-' || text[i] == '+')) ++i;
  size_t mantissa_digits = 0;
  while (i < n && text[i] >= '0' && text[i] <= '9') ++i, ++mantissa_digits;
  if (i < n && text[i] == '.') {
    ++i;
    while (i < n && text[i] >= '0' && text[i] <= '9') ++i, ++mantissa_digits;
  }
  if (mantissa_digits == 0) return false;
  if (i < n && (text[i] == 'e' || text[i] == 'E')) {
    ++i;
    if (i < n && (text[i] == '-' || text[i] == '+')) ++i;
    size_t exponent_digits = 0;
    while (i < n && text[i] >= '0' && text[i] <= '9') ++i, ++exponent_digits;
    if (exponent_digits == 0) return false;
  }
  return i == n;
}

bool parse_float(const std::string& text, double* out) {
  if (!float_syntax(text)) return false;
  // from_chars takes no '+' and, with chars_format::general, no hex or inf/nan.
  const char* first = text.data() + (text[0] == '+' ? 1 : 0);
  const char* last = text.data() + text.size();
  double value = 0.0;
  auto [ptr, ec] = std::from_chars(first, last, value, std::chars_format::general);
  if (ec != std::errc() || ptr != last || !std::isfinite(value)) return false;
  *out = value;
  return true;
}

bool parse_bool(const std::string& text, bool* out) {
  if (text == "true" || text == "True" || text == "TRUE") {
    *out = true;
    return true;
  }
  if (text == "false" || text == "False" || text == "FALSE") {
    *out = false;
    return true;
  }
  return false;
}

std::string format_float(double value) {
  if (std::isnan(value)) return ".nan";
  if (std::isinf(value)) return value > 0 ? ".inf" : "-.inf";
  char buffer[64];
  auto result = std::to_chars(buffer, buffer + sizeof(buffer), value);  // shortest round trip
  std::string text(buffer, result.ptr);
  const size_t e = text.find('e');
  std::string mantissa = text.substr(0, e);
  if (mantissa.find('.') == std::string::npos) mantissa += ".0";
  if (e == std::string::npos) return mantissa;
  // "e-06" -> "e-6", "e+20" -> "e+20".
  std::string exponent = text.substr(e + 1);
  char sign = '+';
  if (!exponent.empty() && (exponent[0] == '-' || exponent[0] == '+')) {
    sign = exponent[0];
    exponent.erase(0, 1);
  }
  while (exponent.size() > 1 && exponent[0] == '0') exponent.erase(0, 1);
  return mantissa + "e" + sign + exponent;
}

namespace {

// Whether `text` reads back as the same string when written as a plain YAML scalar, and does not
// look like another type to a reader.
bool plain_string_ok(const std::string& text) {
  if (text.empty()) return false;
  for (char c : text) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '_' || c == '.' || c == '/' || c == '-' || c == ':' || c == '+';
    if (!ok) return false;
  }
  const char first = text.front();
  if (first == '-' || first == ':' || first == '+') return false;
  if (text.back() == ':') return false;
  if (text == "null" || text == "Null" || text == "NULL") return false;
  int64_t i;
  double d;
  bool b;
  if (parse_int(text, &i) || parse_float(text, &d) || parse_bool(text, &b)) return false;
  const std::string lower = [&] {
    std::string s = text;
    for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return s;
  }();
  // YAML 1.1 booleans and special floats, so other YAML readers see a string as well.
  for (const char* word : {"y", "n", "yes", "no", "on", "off", ".inf", ".nan"}) {
    if (lower == word) return false;
  }
  return true;
}

std::string double_quoted(const std::string& text) {
  std::string out = "\"";
  for (char c : text) {
    const auto u = static_cast<unsigned char>(c);
    if (c == '"') {
      out += "\\\"";
    } else if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c == '\r') {
      out += "\\r";
    } else if (u < 0x20 || u == 0x7f) {
      char hex[8];
      std::snprintf(hex, sizeof(hex), "\\x%02x", u);
      out += hex;
    } else {
      out += c;
    }
  }
  return out + "\"";
}

}  // namespace

std::string format_value(const Value& value) {
  if (const auto* i = std::get_if<int64_t>(&value)) return std::to_string(*i);
  if (const auto* d = std::get_if<double>(&value)) return format_float(*d);
  if (const auto* b = std::get_if<bool>(&value)) return *b ? "true" : "false";
  const auto& s = std::get<std::string>(value);
  return plain_string_ok(s) ? s : double_quoted(s);
}

std::string show_value(const Value& value) {
  if (const auto* s = std::get_if<std::string>(&value)) return quote(*s);
  return format_value(value);
}

std::string quote(const std::string& text) {
  constexpr size_t kMaxShown = 100;
  std::string out = "'";
  size_t shown = 0;
  for (char c : text) {
    if (shown == kMaxShown) {
      out += "...";
      break;
    }
    const auto u = static_cast<unsigned char>(c);
    if (c == '\n') {
      out += "\\n";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c == '\r') {
      out += "\\r";
    } else if (u < 0x20 || u == 0x7f) {
      char hex[8];
      std::snprintf(hex, sizeof(hex), "\\x%02x", u);
      out += hex;
    } else {
      out += c;
    }
    ++shown;
  }
  return out + "'";
}

}  // namespace hetmoe::config_detail
