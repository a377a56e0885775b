// Strict YAML loading, --set overrides, validation and serialisation of hetmoe::Config.
// Every key-specific fact (name, type, allowed values, description) lives in config_schema.cpp.
#include "hetmoe/config/config.h"

#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <initializer_list>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "config_schema.h"
#include "hetmoe/core/error.h"

namespace hetmoe {
namespace {

using config_detail::KeySpec;
using config_detail::KeyType;
using config_detail::quote;
using config_detail::Value;

constexpr const char* kComponent = "config";
constexpr int64_t kMaxThreads = 1024;

// `text` made safe for a one-line message, without the quotes.
std::string printable(const std::string& text) {
  const std::string quoted = quote(text);
  return quoted.substr(1, quoted.size() - 2);
}

std::string join(const std::vector<std::string>& items, const char* separator) {
  std::string out;
  for (const std::string& item : items) {
    if (!out.empty()) out += separator;
    out += item;
  }
  return out;
}

// " (did you mean 'x'?)" or "".
std::string suggestion(const std::string& key, const std::vector<std::string>& candidates) {
  const std::string match = closest_match(key, candidates);
  return match.empty() ? "" : " (did you mean '" + match + "'?)";
}

// Where values come from: the file (or text) name, and the --set overrides that replaced keys.
class Source {
 public:
  explicit Source(std::string name) : name_(std::move(name)) {}

  // "file:line", or "file" when the node has no position.
  std::string at(const YAML::Mark& mark) const {
    if (mark.is_null()) return name_;
    return name_ + ":" + std::to_string(mark.line + 1);
  }

  // Where a key's value came from: the last --set that gave it, else its line in the file.
  std::string at_key(const std::string& path, const YAML::Mark& mark) const {
    auto it = overrides_.find(path);
    return it == overrides_.end() ? at(mark) : it->second;
  }

  void record_override(const std::string& path, const std::string& origin) {
    overrides_[path] = origin;
  }

  const std::string& name() const { return name_; }

 private:
  std::string name_;
  std::map<std::string, std::string> overrides_;  // key path -> "--set key=value"
};

// A node as a message shows it: 'abc', the quoted string '128', a map, a list, an empty value.
std::string describe(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Null:
      return "an empty value";
    case YAML::NodeType::Sequence:
      return "a list";
    case YAML::NodeType::Map:
      return "a map";
    case YAML::NodeType::Scalar: {
      // yaml-cpp tags quoted and block scalars "!"; plain ones "?"; others keep their tag.
      const std::string& tag = node.Tag();
      if (tag == "!") return "the quoted string " + quote(node.Scalar());
      if (tag == "?" || tag.empty()) return quote(node.Scalar());  // "": built by --set
      static const std::string kCore = "tag:yaml.org,2002:";
      return quote(node.Scalar()) + " tagged " +
             (tag.rfind(kCore, 0) == 0 ? "!!" + tag.substr(kCore.size()) : quote(tag));
    }
    case YAML::NodeType::Undefined:
      break;
  }
  return "an undefined value";
}

// A plain scalar, or one explicitly tagged with one of the given core-schema tags.
bool untyped_or_tagged(const YAML::Node& node, std::initializer_list<const char*> tags) {
  if (node.Tag() == "?") return true;
  for (const char* tag : tags) {
    if (node.Tag() == std::string("tag:yaml.org,2002:") + tag) return true;
  }
  return false;
}

// Converts one value node for `spec`; `where` is "file:line" or "--set key=value".
Value convert_value(const KeySpec& spec, const YAML::Node& node, const std::string& where) {
  auto fail = [&](const std::string& note) {
    HETMOE_FAIL(kComponent, where, ": ", spec.path, ": expected ",
                config_detail::expected_text(spec), ", got ", describe(node), note);
  };
  if (!node.IsScalar()) fail("");
  const std::string& text = node.Scalar();
  switch (spec.type) {
    case KeyType::kInt: {
      int64_t value = 0;
      if (untyped_or_tagged(node, {"int"}) && config_detail::parse_int(text, &value)) return value;
      const bool digits = text.find_first_not_of("+-0123456789") == std::string::npos &&
                          text.find_first_of("0123456789") != std::string::npos;
      // Out of range only when it is a plain (or !!int) number: '64' tagged !!str is a string.
      fail(untyped_or_tagged(node, {"int"}) && digits ? " (out of range for a 64-bit integer)"
                                                      : "");
      break;
    }
    case KeyType::kFloat: {
      double value = 0.0;
      if (untyped_or_tagged(node, {"float", "int"}) && config_detail::parse_float(text, &value)) {
        return value;
      }
      fail(untyped_or_tagged(node, {"float", "int"}) && config_detail::float_syntax(text)
               ? " (out of range)"
               : "");
      break;
    }
    case KeyType::kBool: {
      bool value = false;
      if (untyped_or_tagged(node, {"bool"}) && config_detail::parse_bool(text, &value))
        return value;
      fail("");
      break;
    }
    case KeyType::kString: {
      if (!config_detail::choice_allowed(spec, text)) {
        fail(suggestion(text.substr(0, text.find(':')), spec.choices));
      }
      return text;
    }
  }
  fail("");
  return {};
}

// Counts documents (stopping at the second) and remembers where the second begins. yaml-cpp
// 0.7's LoadAll can loop forever, allocating, on some malformed input (found by the config fuzz
// target), so documents are counted with a capped loop and only the first is loaded.
class DocumentCounter final : public YAML::EventHandler {
 public:
  void OnDocumentStart(const YAML::Mark& mark) override {
    if (++documents == 2) second = mark;
  }
  void OnDocumentEnd() override {}
  void OnNull(const YAML::Mark&, YAML::anchor_t) override {}
  void OnAlias(const YAML::Mark&, YAML::anchor_t) override {}
  void OnScalar(const YAML::Mark&, const std::string&, YAML::anchor_t,
                const std::string&) override {}
  void OnSequenceStart(const YAML::Mark&, const std::string&, YAML::anchor_t,
                       YAML::EmitterStyle::value) override {}
  void OnSequenceEnd() override {}
  void OnMapStart(const YAML::Mark&, const std::string&, YAML::anchor_t,
                  YAML::EmitterStyle::value) override {}
  void OnMapEnd() override {}
  int documents = 0;
  YAML::Mark second = YAML::Mark::null_mark();
};

// Parses the text as exactly one YAML document (an empty text is an empty document).
YAML::Node load_document(const std::string& text, const Source& source) {
  std::vector<YAML::Node> documents;
  try {
    std::istringstream in(text);
    YAML::Parser parser(in);
    DocumentCounter counter;
    while (counter.documents < 2 && parser.HandleNextDocument(counter)) {
    }
    if (counter.documents > 1)
      HETMOE_FAIL(kComponent, source.at(counter.second), ": expected one YAML document, found 2");
    if (counter.documents == 1) documents.push_back(YAML::Load(text));
  } catch (const YAML::ParserException& e) {
    HETMOE_FAIL(kComponent, source.at(e.mark), ": invalid YAML",
                e.mark.is_null() ? "" : " at column " + std::to_string(e.mark.column + 1), ": ",
                printable(e.msg));
  } catch (const YAML::Exception& e) {
    HETMOE_FAIL(kComponent, source.name(), ": invalid YAML: ", printable(e.msg));
  }
  if (documents.empty()) return YAML::Node();
  YAML::Node root = documents.front();
  if (!root.IsNull() && !root.IsMap()) {
    HETMOE_FAIL(kComponent, source.at(root.Mark()), ": expected a map of sections (",
                join(config_detail::section_names(), ", "), ") at the top level, got ",
                describe(root));
  }
  return root;
}

void fail_section_not_map(const YAML::Node& key, const YAML::Node& value, const Source& source) {
  HETMOE_FAIL(kComponent, source.at(key.Mark()), ": section '", printable(key.Scalar()),
              "' must be a map of keys, got ", describe(value));
}

// Writes one --set override into the document, replacing the file's value.
void apply_override(YAML::Node& root, const Override& override_, Source& source) {
  const std::string origin = "--set " + printable(override_.key + "=" + override_.value);
  const KeySpec* spec = config_detail::find_key(override_.key);
  if (spec == nullptr) {
    HETMOE_FAIL(kComponent, origin, ": unknown key '", printable(override_.key), "'",
                suggestion(override_.key, config_detail::key_paths()));
  }
  // Numbers and booleans are YAML scalars ("4", "1e-3", "true"). A string key takes the text
  // verbatim, so paths such as "runs/exp #3" or "a: b" survive; quote it to use YAML escapes.
  const std::string& text = override_.value;
  const bool quoted = !text.empty() && (text.front() == '"' || text.front() == '\'');
  YAML::Node value;
  if (spec->type == KeyType::kString && !quoted) {
    value = YAML::Node(text);
  } else {
    try {
      value = YAML::Load(text);
    } catch (const YAML::Exception& e) {
      HETMOE_FAIL(kComponent, origin, ": invalid YAML value: ", printable(e.msg));
    }
  }
  for (auto it = root.begin(); it != root.end(); ++it) {
    if (it->first.IsScalar() && it->first.Scalar() == spec->section) {
      if (!it->second.IsNull() && !it->second.IsMap()) {
        fail_section_not_map(it->first, it->second, source);
      }
      break;
    }
  }
  root[spec->section][spec->name] = value;
  source.record_override(spec->path, origin);
}

std::string unknown_top_level_hint(const std::string& key) {
  if (const KeySpec* spec = config_detail::find_key(key)) {
    return " (dotted paths are for --set; in a file write '" + spec->name + ":' under '" +
           spec->section + ":')";
  }
  // A key written without its section, e.g. "d_model:" at the top level.
  std::vector<std::string> owners;
  for (const KeySpec& spec : config_detail::schema()) {
    if (spec.name == key) owners.push_back(spec.path);
  }
  if (owners.size() == 1) return " (did you mean '" + owners.front() + "'?)";
  return suggestion(key, config_detail::section_names());
}

// Converts the document into a Config: rejects unknown and duplicate keys and wrong types.
Config convert(const YAML::Node& root, const Source& source) {
  Config config;
  if (root.IsNull()) return config;
  std::map<std::string, int> section_lines;
  for (auto section = root.begin(); section != root.end(); ++section) {
    const YAML::Node section_key = section->first;  // a copy: the iterator yields a proxy
    if (!section_key.IsScalar()) {
      HETMOE_FAIL(kComponent, source.at(section_key.Mark()), ": expected a section name, got ",
                  describe(section_key));
    }
    const std::string& section_name = section_key.Scalar();
    const auto& sections = config_detail::section_names();
    if (std::find(sections.begin(), sections.end(), section_name) == sections.end()) {
      HETMOE_FAIL(kComponent, source.at(section_key.Mark()), ": unknown key '",
                  printable(section_name), "'", unknown_top_level_hint(section_name));
    }
    auto [first, inserted] = section_lines.emplace(section_name, section_key.Mark().line + 1);
    if (!inserted) {
      HETMOE_FAIL(kComponent, source.at(section_key.Mark()), ": duplicate section '", section_name,
                  "' (first at line ", first->second, ")");
    }
    const YAML::Node body = section->second;
    if (body.IsNull()) continue;  // "model:" with nothing under it: all defaults
    if (!body.IsMap()) fail_section_not_map(section_key, body, source);

    std::map<std::string, int> key_lines;
    for (auto entry = body.begin(); entry != body.end(); ++entry) {
      const YAML::Node key = entry->first;
      if (!key.IsScalar()) {
        HETMOE_FAIL(kComponent, source.at(key.Mark()), ": expected a key name in section '",
                    section_name, "', got ", describe(key));
      }
      const std::string path = section_name + "." + key.Scalar();
      const KeySpec* spec = config_detail::find_key(path);
      if (spec == nullptr) {
        HETMOE_FAIL(kComponent, source.at(key.Mark()), ": unknown key '", printable(path), "'",
                    suggestion(path, config_detail::key_paths()));
      }
      auto [previous, fresh] = key_lines.emplace(path, key.Mark().line + 1);
      if (!fresh) {
        HETMOE_FAIL(kComponent, source.at(key.Mark()), ": duplicate key '", path,
                    "' (first at line ", previous->second, ")");
      }
      spec->set(config, convert_value(*spec, entry->second, source.at_key(path, key.Mark())));
    }
  }
  return config;
}

// --- validation helpers: each names the key, its value and the rule ---

std::string show(int64_t value) {
  return std::to_string(value);
}
std::string show(double value) {
  return config_detail::format_float(value);
}

template <typename T>
void require_positive(const char* key, T value) {
  if (!(value > 0)) HETMOE_FAIL(kComponent, key, " (", show(value), ") must be > 0");
}

template <typename T>
void require_non_negative(const char* key, T value) {
  if (!(value >= 0)) HETMOE_FAIL(kComponent, key, " (", show(value), ") must be >= 0");
}

// value in [0, 1)
void require_unit_interval(const char* key, double value) {
  if (!(value >= 0.0 && value < 1.0)) {
    HETMOE_FAIL(kComponent, key, " (", show(value), ") must be in [0, 1)");
  }
}

template <typename T>
void require_divisible(const char* key, T value, const char* divisor_key, T divisor) {
  if (value % divisor != 0) {
    HETMOE_FAIL(kComponent, key, " (", show(value), ") must be divisible by ", divisor_key, " (",
                show(divisor), ")");
  }
}

void require_non_empty(const char* key, const std::string& value) {
  if (value.empty()) HETMOE_FAIL(kComponent, key, " must not be empty");
}

}  // namespace

std::string closest_match(const std::string& key, const std::vector<std::string>& candidates) {
  if (key.empty()) return "";
  const size_t limit = std::max<size_t>(2, key.size() / 3);
  std::string best;
  size_t best_distance = limit + 1;
  std::vector<size_t> previous(key.size() + 1), current(key.size() + 1);
  for (const std::string& candidate : candidates) {
    // Levenshtein distance, one row at a time.
    for (size_t i = 0; i <= key.size(); ++i) previous[i] = i;
    for (size_t j = 1; j <= candidate.size(); ++j) {
      current[0] = j;
      for (size_t i = 1; i <= key.size(); ++i) {
        const size_t substitution = previous[i - 1] + (key[i - 1] == candidate[j - 1] ? 0 : 1);
        current[i] = std::min({previous[i] + 1, current[i - 1] + 1, substitution});
      }
      std::swap(previous, current);
    }
    const size_t distance = previous[key.size()];
    if (distance < best_distance) {
      best_distance = distance;
      best = candidate;
    }
  }
  return best;
}

Override parse_override(const std::string& text) {
  const size_t equals = text.find('=');
  std::string key;
  if (equals != std::string::npos) {
    key = text.substr(0, equals);
    const size_t begin = key.find_first_not_of(" \t");
    const size_t end = key.find_last_not_of(" \t");
    key = begin == std::string::npos ? "" : key.substr(begin, end - begin + 1);
  }
  if (key.empty()) HETMOE_FAIL(kComponent, "--set ", quote(text), ": expected key=value");
  return Override{key, text.substr(equals + 1)};
}

Config parse_config(const std::string& yaml_text, const std::string& source_name,
                    const std::vector<Override>& overrides) {
  Source source(source_name);
  YAML::Node root = load_document(yaml_text, source);
  for (const Override& override_ : overrides) apply_override(root, override_, source);
  Config config = convert(root, source);
  validate(config);
  return config;
}

Config load_config(const std::string& path, const std::vector<Override>& overrides) {
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> file(std::fopen(path.c_str(), "rb"),
                                                       &std::fclose);
  if (!file) {
    HETMOE_FAIL(kComponent, "cannot read config file '", path, "': ", std::strerror(errno));
  }
  std::string text;
  char buffer[1 << 16];
  size_t n = 0;
  while ((n = std::fread(buffer, 1, sizeof(buffer), file.get())) > 0) text.append(buffer, n);
  if (std::ferror(file.get())) {
    const int error = errno;
    HETMOE_FAIL(kComponent, "cannot read config file '", path, "': ", std::strerror(error));
  }
  file.reset();
  return parse_config(text, path, overrides);
}

namespace {

// Parameter counts, memory and FLOP estimates are 64-bit integers (and doubles) products of the
// sizes: beyond these magnitudes they overflow and `plan` printed negative parameters. Far above
// any trainable model (Ling-Plus has 2.9e11 parameters), far below the overflow.
constexpr long double kMaxParameters = 1e15L, kMaxActivations = 1e16L;

void check_magnitudes(const Config& c) {
  const ModelConfig& m = c.model;
  const MoEConfig& e = c.moe;
  const long double d = m.d_model, layers = m.n_layers;
  const long double experts = static_cast<long double>(e.num_experts) + e.num_shared_experts;
  const long double ffn = std::max<long double>(experts * 3 * e.expert_hidden + e.num_experts,
                                                3.0L * m.dense_ffn_hidden);
  const long double params = layers * d * (4 * d + ffn) + 2.0L * m.vocab_size * d;
  if (params > kMaxParameters)
    HETMOE_FAIL(kComponent, "model and moe sizes give about ", static_cast<double>(params),
                " parameters, more than the ", static_cast<double>(kMaxParameters),
                " hetmoe can account for (model.d_model ", m.d_model, ", model.n_layers ",
                m.n_layers, ", moe.num_experts ", e.num_experts, ", moe.expert_hidden ",
                e.expert_hidden, ", model.vocab_size ", m.vocab_size, ")");
  const long double tokens = static_cast<long double>(c.train.micro_batch) * c.train.seq_len;
  const long double activations =
      tokens * (layers * (d * 16 + static_cast<long double>(e.top_k) * (d + e.expert_hidden) * 4) +
                m.vocab_size);
  if (activations > kMaxActivations)
    HETMOE_FAIL(kComponent, "train.micro_batch x train.seq_len (", c.train.micro_batch, " x ",
                c.train.seq_len, ") with these model sizes gives about ",
                static_cast<double>(activations), " activation values per micro-batch, more than ",
                "the ", static_cast<double>(kMaxActivations), " hetmoe can account for");
}

}  // namespace

void validate(const Config& c) {
  // Table-driven: every number finite, every enum value allowed.
  for (const KeySpec& spec : config_detail::schema()) {
    const Value value = spec.get(c);
    if (spec.type == KeyType::kFloat && !std::isfinite(std::get<double>(value))) {
      HETMOE_FAIL(kComponent, spec.path, " (", config_detail::show_value(value),
                  ") must be a finite number");
    }
    if (!spec.choices.empty() &&
        !config_detail::choice_allowed(spec, std::get<std::string>(value))) {
      HETMOE_FAIL(kComponent, spec.path, " (", config_detail::show_value(value),
                  ") must be one of ", config_detail::choices_text(spec));
    }
  }

  const ModelConfig& m = c.model;
  const MoEConfig& e = c.moe;
  const TrainConfig& t = c.train;

  // Sizes and counts first, so the divisibility rules below never divide by zero.
  require_positive("model.vocab_size", m.vocab_size);
  require_positive("model.d_model", m.d_model);
  require_positive("model.n_layers", m.n_layers);
  require_positive("model.n_heads", m.n_heads);
  require_positive("model.n_kv_heads", m.n_kv_heads);
  require_positive("model.max_seq_len", m.max_seq_len);
  require_positive("model.dense_ffn_hidden", m.dense_ffn_hidden);
  require_positive("moe.num_experts", e.num_experts);
  require_positive("moe.top_k", e.top_k);
  require_positive("moe.expert_hidden", e.expert_hidden);
  require_positive("train.steps", t.steps);
  require_positive("train.micro_batch", t.micro_batch);
  require_positive("train.seq_len", t.seq_len);
  require_positive("train.grad_accum", t.grad_accum);
  require_positive("train.eval_batches", t.eval_batches);
  require_positive("train.log_every", t.log_every);
  require_positive("train.eval_every", t.eval_every);
  require_positive("parallel.expert_parallel", c.parallel.expert_parallel);

  // model
  if (c.data.tokenizer == "byte" && m.vocab_size < 257) {
    HETMOE_FAIL(kComponent, "model.vocab_size (", m.vocab_size,
                ") must be >= 257 when data.tokenizer is 'byte' (256 bytes + end-of-document)");
  }
  if (m.first_k_dense < 0 || m.first_k_dense > m.n_layers) {
    HETMOE_FAIL(kComponent, "model.first_k_dense (", m.first_k_dense,
                ") must be in [0, model.n_layers (", m.n_layers, ")]");
  }
  require_divisible("model.d_model", m.d_model, "model.n_heads", m.n_heads);
  if ((m.d_model / m.n_heads) % 2 != 0) {
    HETMOE_FAIL(kComponent, "model.d_model / model.n_heads (", m.d_model, " / ", m.n_heads, " = ",
                m.d_model / m.n_heads, ") must be even: it is the head dim and RoPE rotates pairs");
  }
  require_divisible("model.n_heads", m.n_heads, "model.n_kv_heads", m.n_kv_heads);
  require_positive("model.rope_theta", m.rope_theta);
  require_positive("model.norm_eps", m.norm_eps);
  require_positive("model.init_std", m.init_std);

  // moe
  require_non_negative("moe.num_shared_experts", e.num_shared_experts);
  if (e.top_k > e.num_experts) {
    HETMOE_FAIL(kComponent, "moe.top_k (", e.top_k, ") must be <= moe.num_experts (", e.num_experts,
                ")");
  }
  require_non_negative("moe.aux_loss_coef", e.aux_loss_coef);
  require_non_negative("moe.z_loss_coef", e.z_loss_coef);
  require_positive("moe.capacity_factor", e.capacity_factor);
  require_positive("moe.n_groups", e.n_groups);
  require_divisible("moe.num_experts", e.num_experts, "moe.n_groups", e.n_groups);
  if (e.n_groups > 64) HETMOE_FAIL(kComponent, "moe.n_groups (", e.n_groups, ") must be <= 64");
  if (e.topk_groups < 1 || e.topk_groups > e.n_groups) {
    HETMOE_FAIL(kComponent, "moe.topk_groups (", e.topk_groups, ") must be in [1, moe.n_groups (",
                e.n_groups, ")]");
  }
  if (e.group_score_members < 1 || e.group_score_members > e.num_experts / e.n_groups) {
    HETMOE_FAIL(kComponent, "moe.group_score_members (", e.group_score_members,
                ") must be in [1, experts per group (", e.num_experts / e.n_groups, ")]");
  }
  if (e.n_groups > 1 && e.top_k > e.topk_groups * (e.num_experts / e.n_groups)) {
    HETMOE_FAIL(kComponent, "moe.top_k (", e.top_k,
                ") must be <= moe.topk_groups x experts per "
                "group (",
                e.topk_groups * (e.num_experts / e.n_groups), ")");
  }
  require_non_negative("moe.bias_update_rate", e.bias_update_rate);
  require_non_negative("moe.routing_warmup_steps", e.routing_warmup_steps);

  // train
  if (t.seq_len > m.max_seq_len) {
    HETMOE_FAIL(kComponent, "train.seq_len (", t.seq_len, ") must be <= model.max_seq_len (",
                m.max_seq_len, ")");
  }
  require_positive("train.lr", t.lr);
  require_non_negative("train.min_lr", t.min_lr);
  if (t.min_lr > t.lr) {
    HETMOE_FAIL(kComponent, "train.min_lr (", show(t.min_lr), ") must be <= train.lr (", show(t.lr),
                ")");
  }
  require_non_negative("train.warmup", t.warmup);
  if (t.warmup >= t.steps) {
    HETMOE_FAIL(kComponent, "train.warmup (", t.warmup, ") must be < train.steps (", t.steps, ")");
  }
  if (!(t.wsd_decay_fraction > 0.0 && t.wsd_decay_fraction <= 1.0)) {
    HETMOE_FAIL(kComponent, "train.wsd_decay_fraction (", show(t.wsd_decay_fraction),
                ") must be in (0, 1]");
  }
  require_unit_interval("train.beta1", t.beta1);
  require_unit_interval("train.beta2", t.beta2);
  require_positive("train.eps", t.eps);
  require_non_negative("train.weight_decay", t.weight_decay);
  require_non_negative("train.clip", t.clip);
  require_non_negative("train.save_every", t.save_every);
  require_non_negative("train.keep_last", t.keep_last);
  require_non_negative("train.max_bad_steps", t.max_bad_steps);
  require_non_negative("train.spike_threshold", t.spike_threshold);
  require_non_negative("train.spike_replay_after", t.spike_replay_after);
  HETMOE_CHECK(t.spike_window >= 2, kComponent, "train.spike_window (", t.spike_window,
               ") must be >= 2");
  HETMOE_CHECK(t.spike_lr_scale >= 0 && t.spike_lr_scale <= 1, kComponent, "train.spike_lr_scale (",
               t.spike_lr_scale, ") must be in [0, 1]");
  require_non_negative("moe.imbalance_warn", c.moe.imbalance_warn);
  require_non_negative("moe.dead_expert_steps", c.moe.dead_expert_steps);
  require_non_negative("backend.peak_tflops", c.backend.peak_tflops);
  require_positive("comm.timeout_s", c.comm.timeout_s);
  require_non_negative("train.threads", t.threads);
  // LibTorch starts them all at once: a typo of 100000 would spend minutes and gigabytes first.
  if (t.threads > kMaxThreads)
    HETMOE_FAIL(kComponent, "train.threads (", t.threads, ") must be <= ", kMaxThreads,
                " (0: the cores this rank may use)");

  // data, parallel, run
  require_non_empty("data.path", c.data.path);
  require_unit_interval("data.val_fraction", c.data.val_fraction);
  require_divisible("moe.num_experts", e.num_experts, "parallel.expert_parallel",
                    c.parallel.expert_parallel);
  require_non_empty("run.out_dir", c.run.out_dir);
  check_magnitudes(c);
  require_non_negative("run.profile_start", c.run.profile_start);
  require_positive("run.profile_steps", c.run.profile_steps);
  if (c.run.profile_start > t.steps) {
    HETMOE_FAIL(kComponent, "run.profile_start (", c.run.profile_start,
                ") is after the last step (train.steps ", t.steps, ")");
  }
}

std::string to_yaml(const Config& config) {
  std::ostringstream out;
  out << "# hetmoe configuration: every key, defaults included (reference: docs/config.md)\n";
  for (const std::string& section : config_detail::section_names()) {
    std::vector<std::pair<std::string, const KeySpec*>> lines;
    size_t width = 0;
    for (const KeySpec& spec : config_detail::schema()) {
      if (spec.section != section) continue;
      lines.emplace_back("  " + spec.name + ": " + config_detail::format_value(spec.get(config)),
                         &spec);
      width = std::max(width, lines.back().first.size());
    }
    out << "\n" << section << ":\n";
    for (const auto& [text, spec] : lines) {
      out << text << std::string(width - text.size() + 2, ' ') << "# " << spec->description << "\n";
    }
  }
  return out.str();
}

std::vector<std::pair<std::string, std::string>> config_keys() {
  static const Config defaults;
  std::vector<std::pair<std::string, std::string>> keys;
  for (const KeySpec& spec : config_detail::schema()) {
    std::string type;
    if (!spec.choices.empty()) {
      type = config_detail::choices_text(spec);
    } else {
      switch (spec.type) {
        case KeyType::kInt:
          type = "int";
          break;
        case KeyType::kFloat:
          type = "float";
          break;
        case KeyType::kBool:
          type = "bool";
          break;
        case KeyType::kString:
          type = "string";
          break;
      }
    }
    keys.emplace_back(spec.path, spec.description + " (" + type + ", default " +
                                     config_detail::format_value(spec.get(defaults)) + ")");
  }
  return keys;
}

}  // namespace hetmoe
