// libFuzzer target: opening a prepared dataset (index.json + tokens.bin) and sampling from it.
// Input layout: 2 bytes little-endian N, then N bytes of index.json, then tokens.bin.
// Accept or refuse with hetmoe::Error; reads must stay inside the mapped file.
#include <sys/stat.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "hetmoe/core/error.h"
#include "hetmoe/data/dataset.h"

namespace {
const std::string& work_dir() {
  static const std::string dir = [] {
    std::string d = "/tmp/hetmoe-dataset-fuzz-" + std::to_string(::getpid());
    mkdir(d.c_str(), 0755);
    return d;
  }();
  return dir;
}

void write_file(const std::string& path, const uint8_t* data, size_t size) {
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) __builtin_trap();
  if (size) std::fwrite(data, 1, size, f);
  std::fclose(f);
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  const size_t n = std::min<size_t>(size - 2, data[0] | (data[1] << 8));
  write_file(work_dir() + "/index.json", data + 2, n);
  write_file(work_dir() + "/tokens.bin", data + 2 + n, size - 2 - n);
  try {
    hetmoe::TokenDataset ds(work_dir(), /*verify_checksum=*/false);  // reach the reads
    for (hetmoe::Split s : {hetmoe::Split::Train, hetmoe::Split::Val}) {
      const int64_t len = std::min<int64_t>(ds.split_size(s), 8);
      if (len < 1) continue;
      std::vector<int32_t> out(static_cast<size_t>(2 * len));
      ds.sample_windows(s, 2, len, 1, 3, out.data());
      for (int32_t id : out)
        if (id < 0 || id >= ds.vocab_size()) __builtin_trap();
    }
  } catch (const hetmoe::Error&) {
  }
  return 0;
}
