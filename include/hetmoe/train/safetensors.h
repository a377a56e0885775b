// Reader and writer for the safetensors format (8-byte little-endian header length, JSON header,
// raw little-endian tensor bytes), with no LibTorch dependency: checkpoints and weight exchange
// with the Python ecosystem go through here.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace hetmoe {

// dtype names as safetensors spells them: "F32", "F64", "BF16", "F16", "I64", "I32", "I16", "U8",
// ...
size_t safetensors_dtype_size(const std::string& dtype);  // throws on an unknown dtype

struct TensorView {
  std::string name;
  std::string dtype;
  std::vector<int64_t> shape;
  const void* data = nullptr;  // not owned
  size_t nbytes = 0;           // must equal product(shape) * dtype size
};

// Writes tensors (sorted by name in the file, offsets contiguous) plus optional string metadata
// ("__metadata__"). Writes to `path` directly; callers wanting atomicity write into a temporary
// directory and rename. Throws hetmoe::Error("[safetensors] <path>: ...") on I/O failure or an
// inconsistent view (nbytes vs shape, duplicate name).
void write_safetensors(const std::string& path, const std::vector<TensorView>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

// A whole safetensors file read into memory and validated: header length within the file, JSON
// well-formed, every entry with a known dtype, shape and data_offsets consistent with each other
// and with the byte buffer, offsets non-overlapping. Throws hetmoe::Error naming the file.
class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::string& path);
  // Parses an in-memory buffer (used by the fuzz target and tests); source names it in errors.
  SafetensorsFile(std::vector<uint8_t> bytes, const std::string& source);
  // The views point into the bytes: a move keeps them valid, a copy would not.
  SafetensorsFile(SafetensorsFile&&) = default;
  SafetensorsFile& operator=(SafetensorsFile&&) = default;
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  std::vector<std::string> names() const;  // sorted
  bool contains(const std::string& name) const;
  const TensorView& get(const std::string& name) const;  // throws naming the missing tensor
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  void parse(const std::string& source);
  std::vector<uint8_t> bytes_;
  std::map<std::string, TensorView> tensors_;
  std::map<std::string, std::string> metadata_;
  std::string source_;  // path or caller-given name, for error messages
};

}  // namespace hetmoe
