#include "hetmoe/bench/catalog.h"

#include <dlfcn.h>

#include <yaml-cpp/yaml.h>

#include <unistd.h>
#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <set>
#include <sstream>

#include "hetmoe/core/error.h"

namespace hetmoe {
namespace {

constexpr const char* kComponent = "catalog";

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

// "file:line" of a node.
std::string where(const std::string& source, const YAML::Node& node) {
  const YAML::Mark m = node.Mark();
  return m.is_null() ? source : source + ":" + std::to_string(m.line + 1);
}

class EntryReader {
 public:
  EntryReader(const std::string& source, const YAML::Node& node, size_t index)
      : source_(source), node_(node) {
    label_ = "devices[" + std::to_string(index) + "]";
    HETMOE_CHECK(node.IsMap(), kComponent, where(source, node), ": ", label_,
                 " must be a mapping of name, peak_tflops, memory_gb, price_per_hour, ...");
    if (node["name"] && node["name"].IsScalar()) label_ += " '" + node["name"].Scalar() + "'";
    for (const auto& kv : node) {
      const std::string key = kv.first.Scalar();
      HETMOE_CHECK(kKeys.count(key), kComponent, where(source, kv.first), ": ", label_,
                   ": unknown key '", key,
                   "' (known: name, description, match, peak_tflops, memory_gb, price_per_hour, "
                   "currency, fp8)");
    }
  }

  std::string text(const char* key, bool required) const {
    const YAML::Node v = node_[key];
    if (!v) {
      HETMOE_CHECK(!required, kComponent, where(source_, node_), ": ", label_, ": missing '", key,
                   "'");
      return "";
    }
    HETMOE_CHECK(v.IsScalar() && !v.Scalar().empty(), kComponent, where(source_, v), ": ", label_,
                 ": '", key, "' must be a non-empty string");
    return v.Scalar();
  }

  double number(const YAML::Node& v, const std::string& key, double min_exclusive) const {
    double x = 0;
    HETMOE_CHECK(v.IsScalar(), kComponent, where(source_, v), ": ", label_, ": '", key,
                 "' must be a number");
    try {
      x = v.as<double>();
    } catch (const YAML::Exception&) {
      HETMOE_FAIL(kComponent, where(source_, v), ": ", label_, ": '", key,
                  "' must be a number, not '", v.Scalar(), "'");
    }
    HETMOE_CHECK(std::isfinite(x) && x > min_exclusive, kComponent, where(source_, v), ": ", label_,
                 ": '", key, "' must be ", min_exclusive < 0 ? ">= 0" : "> 0", ", not ",
                 v.Scalar());
    return x;
  }

  double number(const char* key, double min_exclusive) const {
    const YAML::Node v = node_[key];
    HETMOE_CHECK(v, kComponent, where(source_, node_), ": ", label_, ": missing '", key, "'");
    return number(v, key, min_exclusive);
  }

  std::vector<std::string> strings(const char* key) const {
    std::vector<std::string> out;
    const YAML::Node v = node_[key];
    if (!v) return out;
    HETMOE_CHECK(v.IsSequence(), kComponent, where(source_, v), ": ", label_, ": '", key,
                 "' must be a list of strings");
    for (const auto& s : v) {
      HETMOE_CHECK(s.IsScalar() && !s.Scalar().empty(), kComponent, where(source_, s), ": ", label_,
                   ": '", key, "' entries must be non-empty strings");
      out.push_back(s.Scalar());
    }
    return out;
  }

  // peak_tflops: {bf16: X, fp32: Y}, at least one of them.
  void peaks(CatalogDevice& d) const {
    const YAML::Node v = node_["peak_tflops"];
    HETMOE_CHECK(v, kComponent, where(source_, node_), ": ", label_, ": missing 'peak_tflops'");
    HETMOE_CHECK(v.IsMap() && v.size() > 0, kComponent, where(source_, v), ": ", label_,
                 ": 'peak_tflops' must map a dtype (bf16, fp32) to TFLOP/s, e.g. {bf16: 989}");
    for (const auto& kv : v) {
      const std::string dtype = kv.first.Scalar();
      const std::string key = "peak_tflops." + dtype;
      if (dtype == "bf16")
        d.peak_bf16_tflops = number(kv.second, key, 0);
      else if (dtype == "fp32")
        d.peak_fp32_tflops = number(kv.second, key, 0);
      else
        HETMOE_FAIL(kComponent, where(source_, kv.first), ": ", label_, ": unknown dtype '", dtype,
                    "' in peak_tflops (known: bf16, fp32)");
    }
  }

  const std::string& label() const { return label_; }

 private:
  static inline const std::set<std::string> kKeys = {"name",        "description", "match",
                                                     "peak_tflops", "memory_gb",   "price_per_hour",
                                                     "currency",    "fp8"};
  const std::string& source_;
  const YAML::Node& node_;
  std::string label_;
};

}  // namespace

double CatalogDevice::peak_tflops(const std::string& dtype) const {
  return dtype == "bf16" ? peak_bf16_tflops : dtype == "fp32" ? peak_fp32_tflops : 0.0;
}

NominalPeak nominal_peak(const DeviceCatalog* catalog, const std::string& device_name,
                         const std::string& dtype, double table_tflops) {
  if (const CatalogDevice* entry = catalog ? catalog->match(device_name) : nullptr)
    if (entry->peak_tflops(dtype) > 0)
      return {entry->peak_tflops(dtype), "catalog entry " + entry->name};
  return {table_tflops, "device table"};
}

bool CatalogDevice::matches(const std::string& device_name) const {
  if (match.empty()) return false;
  const std::string n = lower(device_name);
  for (const std::string& m : match)
    if (n.find(lower(m)) == std::string::npos) return false;
  return true;
}

const CatalogDevice* DeviceCatalog::find(const std::string& name) const {
  for (const CatalogDevice& d : devices)
    if (d.name == name) return &d;
  return nullptr;
}

const CatalogDevice* DeviceCatalog::match(const std::string& device_name) const {
  for (const CatalogDevice& d : devices)
    if (d.matches(device_name)) return &d;
  return nullptr;
}

DeviceCatalog parse_device_catalog(const std::string& yaml_text, const std::string& source) {
  YAML::Node root;
  try {
    root = YAML::Load(yaml_text);
  } catch (const YAML::Exception& e) {
    HETMOE_FAIL(kComponent, source, ":", e.mark.line + 1, ": not valid YAML: ", e.msg);
  }
  HETMOE_CHECK(root.IsMap() && root["devices"], kComponent, source,
               ": a device catalog is a mapping with a 'devices' list (see configs/devices.yaml)");
  for (const auto& kv : root) {
    const std::string key = kv.first.Scalar();
    HETMOE_CHECK(key == "devices" || key == "schema", kComponent, where(source, kv.first),
                 ": unknown top-level key '", key, "' (known: schema, devices)");
  }
  if (root["schema"])
    HETMOE_CHECK(root["schema"].IsScalar() && root["schema"].Scalar() == "hetmoe-devices/1",
                 kComponent, where(source, root["schema"]), ": schema '",
                 root["schema"].IsScalar() ? root["schema"].Scalar() : "?",
                 "' is not one this hetmoe reads (hetmoe-devices/1)");
  const YAML::Node list = root["devices"];
  HETMOE_CHECK(list.IsSequence() && list.size() > 0, kComponent, where(source, list),
               ": 'devices' must be a non-empty list");
  DeviceCatalog catalog;
  catalog.source = source;
  for (size_t i = 0; i < list.size(); ++i) {
    const YAML::Node node = list[i];
    EntryReader r(source, node, i);
    CatalogDevice d;
    d.name = r.text("name", true);
    HETMOE_CHECK(!catalog.find(d.name), kComponent, where(source, node), ": ", r.label(),
                 ": the name is used twice");
    d.description = r.text("description", false);
    d.match = r.strings("match");
    r.peaks(d);
    d.memory_gb = r.number("memory_gb", 0);
    d.price_per_hour = r.number("price_per_hour", -1);
    d.currency = r.text("currency", true);
    if (node["fp8"])
      HETMOE_CHECK(node["fp8"].IsScalar() &&
                       (node["fp8"].Scalar() == "true" || node["fp8"].Scalar() == "false"),
                   kComponent, where(source, node["fp8"]), ": ", r.label(),
                   ": 'fp8' must be true or false");
    catalog.devices.push_back(std::move(d));
  }
  return catalog;
}

DeviceCatalog load_device_catalog(const std::string& path) {
  std::ifstream in(path);
  HETMOE_CHECK(in.good(), kComponent, "cannot read device catalog '", path,
               "' (name one: hetmoe's --catalog FILE, or the HETMOE_DEVICES variable)");
  std::stringstream text;
  text << in.rdbuf();
  return parse_device_catalog(text.str(), path);
}

std::string default_catalog_path() {
  if (const char* env = std::getenv("HETMOE_DEVICES"); env && *env) return env;
  std::vector<std::string> candidates = {"configs/devices.yaml"};
  auto beside = [&](const std::string& file) {  // <prefix>/{bin,lib}/file -> <prefix>/share/...
    const std::string dir = file.substr(0, file.rfind('/'));
    candidates.push_back(dir + "/../share/hetmoe/configs/devices.yaml");
  };
  char exe[4096];
  const ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n > 0) beside(std::string(exe, static_cast<size_t>(n)));
  // A program that embeds hetmoe lives anywhere; libhetmoe.so lives in the install prefix.
  Dl_info info{};
  if (dladdr(reinterpret_cast<void*>(&default_catalog_path), &info) != 0 && info.dli_fname &&
      std::string(info.dli_fname).find('/') != std::string::npos)
    beside(info.dli_fname);
  for (const std::string& c : candidates)
    if (std::ifstream(c).good()) return c;
  return candidates.front();
}

}  // namespace hetmoe
