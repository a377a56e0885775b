// Autoregressive sampling from a trained model.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "hetmoe/model/transformer.h"

namespace hetmoe {

struct SampleOptions {
  // Called with each new id as soon as it is drawn (print as you go); optional.
  std::function<void(int32_t)> on_token;
  int64_t max_new_tokens = 200;
  double temperature = 0.8;  // 0: greedy
  int64_t top_k = 0;         // 0: the whole vocabulary
  uint64_t seed = 0;
  int64_t stop_token = -1;  // stop after emitting this id (-1: never)
  int64_t vocab_limit = 0;  // sample only ids below this (0: all the model's), e.g. what a
                            // tokenizer can decode when model.vocab_size is larger
};

// Continues `prompt` (token ids) and returns only the new ids. The context is truncated to the
// model's max_seq_len from the left. Throws hetmoe::Error("[generate] ...") for an empty prompt,
// a prompt id outside the vocabulary, a negative option or max_seq_len < 1, and when the model's
// logits are not finite (NaN or infinite weights).
std::vector<int32_t> sample(Transformer& model, const std::vector<int32_t>& prompt,
                            int64_t max_seq_len, const SampleOptions& options);

}  // namespace hetmoe
