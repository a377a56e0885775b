// A data source of one's own for tests: token ids straight from code, no prepared dataset.
#pragma once

#include <cstdint>
#include <string>

#include "hetmoe/data/dataset.h"

namespace hetmoe::test_support {

// Deterministic windows of a repeating ramp 0, 1, ..., period-1: easy to learn.
class RampSource final : public DataSource {
 public:
  explicit RampSource(int64_t vocab) : vocab_(vocab) {}
  int64_t vocab_size() const override { return vocab_; }
  int64_t split_size(Split s) const override { return s == Split::Train ? 1 << 20 : 1 << 12; }
  void sample_windows(Split, int64_t batch, int64_t len, uint64_t seed, uint64_t step, int32_t* out,
                      int64_t first) const override {
    for (int64_t b = 0; b < batch; ++b) {
      const uint64_t start = (seed * 31 + step * 7 + static_cast<uint64_t>(first + b) * 13) %
                             static_cast<uint64_t>(vocab_);
      for (int64_t i = 0; i < len; ++i)
        out[b * len + i] = static_cast<int32_t>((start + static_cast<uint64_t>(i)) %
                                                static_cast<uint64_t>(vocab_));
    }
  }
  std::string describe() const override { return "ramp source"; }

 private:
  int64_t vocab_;
};

}  // namespace hetmoe::test_support
