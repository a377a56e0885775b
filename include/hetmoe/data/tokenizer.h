// Byte-level tokenizer: ids 0..255 are bytes, 256 marks the end of a document.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace hetmoe {

class ByteTokenizer {
 public:
  static constexpr int32_t kEndOfDocument = 256;
  static constexpr int64_t kVocabSize = 257;

  std::vector<int32_t> encode(const std::string& text) const;
  // Bytes back to text; the end-of-document id becomes "\n" and ids out of range are skipped.
  std::string decode(const std::vector<int32_t>& ids) const;
  int64_t vocab_size() const { return kVocabSize; }
};

}  // namespace hetmoe
