// Internal to the config layer: the one table of config keys. Every key path ("model.d_model")
// appears here once, with its type, allowed values, accessors and description; this table drives
// YAML conversion, unknown-key detection, config_keys(), to_yaml(), overrides and enum validation.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <variant>
#include <vector>

#include "hetmoe/config/config.h"

namespace hetmoe::config_detail {

enum class KeyType { kInt, kFloat, kBool, kString };

// A field's value; the alternative always matches the key's KeyType.
using Value = std::variant<int64_t, double, bool, std::string>;

struct KeySpec {
  std::string path;     // "model.d_model"
  std::string section;  // "model"
  std::string name;     // "d_model"
  KeyType type = KeyType::kInt;
  std::vector<std::string> choices;          // non-empty: a string enum
  std::vector<std::string> indexed_choices;  // choices that may carry ":<index>" (backend.device)
  std::string description;                   // one line, no trailing period
  std::function<Value(const Config&)> get;
  std::function<void(Config&, const Value&)> set;
};

// Every key, grouped by section in declaration order.
const std::vector<KeySpec>& schema();

// The section names, in order ("model", "moe", ...).
const std::vector<std::string>& section_names();

// Every key path, in schema order.
const std::vector<std::string>& key_paths();

// The spec for `path`, or nullptr when it is not a key.
const KeySpec* find_key(const std::string& path);

// "an integer", "a number", "a boolean (true or false)", "a string", "one of softmax|sigmoid".
std::string expected_text(const KeySpec& spec);

// "softmax|sigmoid", "auto|cpu|cuda[:<index>]|rocm[:<index>]".
std::string choices_text(const KeySpec& spec);

// Whether `value` is allowed for an enum key (always true for keys without choices).
bool choice_allowed(const KeySpec& spec, const std::string& value);

// Strict scalar parsers (YAML 1.2 core forms); false when `text` is not exactly such a value.
bool parse_int(const std::string& text, int64_t* out);
bool parse_float(const std::string& text, double* out);  // finite values only
bool float_syntax(const std::string& text);  // parse_float's syntax alone, range not checked
bool parse_bool(const std::string& text, bool* out);

// Shortest text that parses back to exactly `value`, always with a '.' in the mantissa and a
// signed exponent when there is one (so YAML 1.1 readers see a float too): 0.003, 1.0e-6, 10000.0.
std::string format_float(double value);

// A value as YAML text that convert reads back to the same value (strings quoted when needed).
std::string format_value(const Value& value);

// A value for a message: numbers as in YAML, strings in single quotes.
std::string show_value(const Value& value);

// `text` in single quotes for a one-line message: control characters escaped, long text cut.
std::string quote(const std::string& text);

}  // namespace hetmoe::config_detail
