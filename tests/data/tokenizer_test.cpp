// ByteTokenizer: bytes map to ids 0..255 and back; 256 is the end-of-document marker.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "hetmoe/data/tokenizer.h"

namespace hetmoe {
namespace {

TEST(ByteTokenizer, VocabSizeCoversBytesAndEndOfDocument) {
  ByteTokenizer tok;
  EXPECT_EQ(tok.vocab_size(), 257);
  EXPECT_EQ(ByteTokenizer::kVocabSize, 257);
  EXPECT_EQ(ByteTokenizer::kEndOfDocument, 256);
}

TEST(ByteTokenizer, EncodesAsciiAsByteValues) {
  ByteTokenizer tok;
  EXPECT_EQ(tok.encode("Hi!\n"), (std::vector<int32_t>{72, 105, 33, 10}));
  EXPECT_TRUE(tok.encode("").empty());
}

TEST(ByteTokenizer, EncodesHighBytesAsUnsigned) {
  ByteTokenizer tok;
  // "é" in UTF-8 is 0xC3 0xA9; "✓" is 0xE2 0x9C 0x93.
  EXPECT_EQ(tok.encode("\xC3\xA9\xE2\x9C\x93\xFF"),
            (std::vector<int32_t>{0xC3, 0xA9, 0xE2, 0x9C, 0x93, 0xFF}));
}

TEST(ByteTokenizer, RoundTripsEveryByteValue) {
  ByteTokenizer tok;
  std::string all;
  for (int b = 0; b < 256; ++b) all.push_back(static_cast<char>(b));
  const std::vector<int32_t> ids = tok.encode(all);
  ASSERT_EQ(ids.size(), 256u);
  for (int b = 0; b < 256; ++b) EXPECT_EQ(ids[b], b);
  EXPECT_EQ(tok.decode(ids), all);
}

TEST(ByteTokenizer, RoundTripsNonAsciiText) {
  ByteTokenizer tok;
  const std::string text = "na\xC3\xAFve caf\xC3\xA9 \xE2\x9C\x93 \xF0\x9F\x98\x80 \x80\xFE\n";
  EXPECT_EQ(tok.decode(tok.encode(text)), text);
}

TEST(ByteTokenizer, DecodeTurnsEndOfDocumentIntoNewlineAndSkipsInvalidIds) {
  ByteTokenizer tok;
  EXPECT_EQ(tok.decode({104, 105, ByteTokenizer::kEndOfDocument, 111, 107}), "hi\nok");
  EXPECT_EQ(tok.decode({-1, 97, 257, 98, 1000, 99}), "abc");
  EXPECT_EQ(tok.decode({}), "");
}

}  // namespace
}  // namespace hetmoe
