// Byte-level tokenizer: every byte is its own id, 256 is the end-of-document marker.
#include "hetmoe/data/tokenizer.h"

namespace hetmoe {

std::vector<int32_t> ByteTokenizer::encode(const std::string& text) const {
  std::vector<int32_t> ids;
  ids.reserve(text.size());
  for (char c : text) ids.push_back(static_cast<int32_t>(static_cast<unsigned char>(c)));
  return ids;
}

std::string ByteTokenizer::decode(const std::vector<int32_t>& ids) const {
  std::string text;
  text.reserve(ids.size());
  for (int32_t id : ids) {
    if (id >= 0 && id < 256) {
      text.push_back(static_cast<char>(static_cast<unsigned char>(id)));
    } else if (id == kEndOfDocument) {
      text.push_back('\n');
    }
  }
  return text;
}

}  // namespace hetmoe
