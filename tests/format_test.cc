// The file format alone: encode/parse round trips and refusals, no model involved.
#include <gtest/gtest.h>

#include <cstring>

#include "format/llama_state.h"
#include "format/session_format.h"

namespace kvstash::format {
namespace {

SessionMeta SampleMeta(uint32_t n_tokens) {
  SessionMeta m;
  m.writer = "kvstash test";
  m.llama_build = "abc";
  m.llama_state_version = 3;
  m.model_description = "llama test";
  m.model_arch = "llama";
  m.n_vocab = 100;
  m.n_layer = 2;
  m.n_ctx = 256;
  m.type_k_name = "f16";
  m.type_v_name = "f16";
  m.n_tokens = n_tokens;
  m.has_logits = true;
  m.preview = "hello";
  m.model_fingerprint.bytes[3] = 7;
  m.rope_freq_base = 10000.5f;
  return m;
}

// A valid llama seq-state payload: n cells, 2 layers, K and V rows of 8 bytes, V not transposed.
std::string SamplePayload(uint32_t n) {
  std::string p;
  auto put = [&](const void* v, size_t s) { p.append(static_cast<const char*>(v), s); };
  const uint32_t magic = kLlamaSeqStateMagic, n_stream = 1, v_trans = 0, n_layer = 2;
  const int32_t seq = 0, type = 1;
  const uint64_t row = 8;
  put(&magic, 4);
  put(&seq, 4);
  put(&n_stream, 4);
  put(&n, 4);
  for (uint32_t i = 0; i < n; ++i) {
    const int32_t pos = static_cast<int32_t>(i);
    const uint32_t one = 1;
    put(&pos, 4);
    put(&one, 4);
    put(&seq, 4);
  }
  put(&v_trans, 4);
  put(&n_layer, 4);
  for (int kv = 0; kv < 2; ++kv) {
    for (uint32_t l = 0; l < n_layer; ++l) {
      put(&type, 4);
      put(&row, 8);
      p.append(n * row, static_cast<char>('a' + l));
    }
  }
  return p;
}

std::string SampleFile(uint32_t n = 5) {
  std::vector<int32_t> tokens(n);
  for (uint32_t i = 0; i < n; ++i) tokens[i] = static_cast<int32_t>(i * 3);
  std::vector<float> logits(100, 0.5f);
  const std::string kv = SamplePayload(n);
  const uint64_t sum = SectionChecksum(reinterpret_cast<const uint8_t*>(kv.data()), kv.size());
  return EncodeFilePrefix(SampleMeta(n), tokens, logits, kv.size(), sum) + kv;
}

Result<ParsedFile> Parse(const std::string& bytes) {
  return ParseFile(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), "t.kvs", true, 2);
}

TEST(FormatTest, RoundTrip) {
  const std::string file = SampleFile();
  auto parsed = Parse(file);
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  EXPECT_TRUE(parsed->checksums_verified);
  EXPECT_EQ(parsed->meta.writer, "kvstash test");
  EXPECT_EQ(parsed->meta.rope_freq_base, 10000.5f);
  EXPECT_EQ(parsed->meta.model_fingerprint.bytes[3], 7);
  EXPECT_EQ(parsed->tokens, (std::vector<int32_t>{0, 3, 6, 9, 12}));
  EXPECT_EQ(parsed->logits.size(), 100u);
  auto layout = ParseLlamaSeqState(parsed->kv, parsed->kv_size, "t.kvs");
  ASSERT_TRUE(layout.ok()) << layout.status().ToString();
  EXPECT_EQ(layout->cell_count, 5u);
  EXPECT_EQ(layout->n_layer, 2u);
  EXPECT_EQ(layout->k_row_bytes, 8u);
  EXPECT_EQ(0, std::memcmp(file.data(), "\x89KVS\r\n\x1a\n", 8));
}

TEST(FormatTest, ChecksumDoesNotDependOnThreads) {
  std::string big(5 * kChecksumBlock + 123, 'x');
  for (size_t i = 0; i < big.size(); i += 4099) big[i] = static_cast<char>(i);
  const auto* p = reinterpret_cast<const uint8_t*>(big.data());
  EXPECT_EQ(SectionChecksum(p, big.size(), 1), SectionChecksum(p, big.size(), 2));
  EXPECT_EQ(SectionChecksum(p, big.size(), 1), SectionChecksum(p, big.size(), 8));
  big[3 * kChecksumBlock + 5] ^= 1;
  EXPECT_NE(SectionChecksum(p, big.size(), 1), SectionChecksum(p, big.size() - 1, 1));
}

TEST(FormatTest, EveryTruncationIsRefused) {
  const std::string file = SampleFile();
  for (size_t n = 0; n < file.size(); ++n) {
    auto parsed = Parse(file.substr(0, n));
    ASSERT_FALSE(parsed.ok()) << "truncated to " << n;
  }
  EXPECT_FALSE(Parse(file + "x").ok());
}

TEST(FormatTest, EveryFlippedBitIsCaught) {
  const std::string file = SampleFile();
  for (size_t i = 0; i < file.size(); ++i) {
    for (int bit : {0, 7}) {
      std::string bad = file;
      bad[i] = static_cast<char>(bad[i] ^ (1 << bit));
      auto parsed = Parse(bad);
      if (parsed.ok()) {
        // Padding bytes between sections carry no meaning; everything else must be caught.
        auto layout = ParseLlamaSeqState(parsed->kv, parsed->kv_size, "t");
        ASSERT_TRUE(layout.ok());
        EXPECT_EQ(parsed->tokens, Parse(file)->tokens) << "byte " << i;
      }
    }
  }
}

TEST(FormatTest, NewerReaderVersionIsIncompatibleNotCorrupt) {
  std::string file = SampleFile();
  const uint32_t newer = kFormatVersion + 1;
  std::memcpy(&file[12], &newer, 4);
  auto parsed = Parse(file);  // header checksum now fails first: corruption, as it should
  EXPECT_EQ(parsed.status().code(), Status::Code::kCorruption);
}

TEST(FormatTest, MetaRecordsAreCheckedOneByOne) {
  const std::string meta = EncodeMeta(SampleMeta(5));
  auto decoded = DecodeMeta(reinterpret_cast<const uint8_t*>(meta.data()), meta.size(), "m");
  ASSERT_TRUE(decoded.ok());
  EXPECT_EQ(decoded->preview, "hello");
  // A record claiming more bytes than remain.
  std::string bad = meta;
  const uint32_t huge = 0xFFFFFFF0u;
  std::memcpy(&bad[4], &huge, 4);
  EXPECT_FALSE(DecodeMeta(reinterpret_cast<const uint8_t*>(bad.data()), bad.size(), "m").ok());
  // An unknown critical field is refused with an upgrade hint; an unknown optional one is skipped.
  std::string unknown = meta;
  const char critical[] = {char(0xE7), 0x03, 1, 0, 0, 0, 0, 0};
  unknown.append(critical, 8);
  auto u = DecodeMeta(reinterpret_cast<const uint8_t*>(unknown.data()), unknown.size(), "m");
  ASSERT_FALSE(u.ok());
  EXPECT_NE(u.status().message().find("upgrade kvstash"), std::string::npos);
  std::string optional = meta;
  const char skippable[] = {char(0xE7), 0x03, 0, 0, 2, 0, 0, 0, 'h', 'i'};
  optional.append(skippable, 10);
  EXPECT_TRUE(
      DecodeMeta(reinterpret_cast<const uint8_t*>(optional.data()), optional.size(), "m").ok());
  // A missing required field.
  const size_t first_record = 8 + SampleMeta(5).writer.size();
  EXPECT_FALSE(DecodeMeta(reinterpret_cast<const uint8_t*>(meta.data()) + first_record,
                          meta.size() - first_record, "m")
                   .ok());
}

TEST(FormatTest, LlamaPayloadRefusals) {
  const std::string good = SamplePayload(4);
  auto parse = [](const std::string& p) {
    return ParseLlamaSeqState(reinterpret_cast<const uint8_t*>(p.data()), p.size(), "t");
  };
  ASSERT_TRUE(parse(good).ok());
  for (size_t n = 0; n < good.size(); ++n) EXPECT_FALSE(parse(good.substr(0, n)).ok()) << n;
  EXPECT_FALSE(parse(good + "z").ok());
  std::string dup = good;  // two cells at position 0
  const int32_t zero = 0;
  std::memcpy(&dup[16 + 12], &zero, 4);
  EXPECT_FALSE(parse(dup).ok());
  std::string huge_cells = good;
  const uint32_t many = 0xFFFFFFFFu;
  std::memcpy(&huge_cells[12], &many, 4);
  EXPECT_FALSE(parse(huge_cells).ok());
}

}  // namespace
}  // namespace kvstash::format
