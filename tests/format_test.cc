// The file format alone: encode/parse round trips and refusals, no model involved.
#include <gtest/gtest.h>
#include <xxhash.h>

#include <cstring>
#include <functional>
#include <limits>

#include "format/coding.h"
#include "format/compat.h"
#include "format/llama_state.h"
#include "format/meta_check.h"
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
  m.model_n_params = 1000;
  m.n_vocab = 100;
  m.n_layer = 2;
  m.n_embd = 8;
  m.n_head = 2;
  m.n_head_kv = 1;
  m.n_embd_k_gqa = 4;  // f16 rows of 8 bytes, as in SamplePayload
  m.n_embd_v_gqa = 4;
  m.n_ctx = 256;
  m.n_batch = 2048;
  m.n_ubatch = 512;
  m.type_k = 1;
  m.type_v = 1;
  m.type_k_name = "f16";
  m.type_v_name = "f16";
  m.flash_attn = true;  // V not transposed
  m.rope_scaling_type = -1;
  m.yarn_ext_factor = -1;
  m.yarn_attn_factor = -1;
  m.yarn_beta_fast = -1;
  m.yarn_beta_slow = -1;
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

TEST(FormatTest, ByteReaderNeverReadsPastTheEnd) {
  std::string bytes;
  PutFixed32(&bytes, 0xaf143cd8);
  PutFixed16(&bytes, 7);
  ASSERT_EQ(bytes.size(), 6u);
  EXPECT_EQ(static_cast<uint8_t>(bytes[0]), 0xd8);  // little-endian
  EXPECT_EQ(DecodeFixed32(reinterpret_cast<const uint8_t*>(bytes.data())), 0xaf143cd8u);
  ByteReader r(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
  uint32_t u32 = 0;
  uint64_t u64 = 0;
  ASSERT_TRUE(r.ReadU32(&u32));
  EXPECT_EQ(u32, 0xaf143cd8u);
  EXPECT_FALSE(r.ReadU64(&u64));  // 2 bytes left: nothing read, nothing moved
  EXPECT_FALSE(r.Skip(3));
  EXPECT_FALSE(r.Skip(std::numeric_limits<uint64_t>::max(), 2));  // count * unit overflows
  EXPECT_EQ(r.position(), 4u);
  EXPECT_TRUE(r.Skip(1, 2));
  EXPECT_EQ(r.remaining(), 0u);
  EXPECT_TRUE(r.Skip(std::numeric_limits<uint64_t>::max(), 0));
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

// No byte of a file is without meaning: padding and reserved fields must be zero, so a flipped bit
// anywhere is refused, checksums or not.
TEST(FormatTest, EveryFlippedBitIsCaught) {
  const std::string file = SampleFile();
  for (size_t i = 0; i < file.size(); ++i) {
    for (int bit : {0, 7}) {
      std::string bad = file;
      bad[i] = static_cast<char>(bad[i] ^ (1 << bit));
      EXPECT_FALSE(Parse(bad).ok()) << "byte " << i << " bit " << bit;
    }
  }
}

void FixHeaderChecksum(std::string* file) {
  const uint64_t sum = XXH3_64bits(file->data(), 56);
  std::memcpy(&(*file)[56], &sum, 8);
}

TEST(FormatTest, NewerReaderVersionIsIncompatibleNotCorrupt) {
  std::string file = SampleFile();
  const uint32_t newer = kFormatVersion + 1;
  std::memcpy(&file[8], &newer, 4);
  std::memcpy(&file[12], &newer, 4);
  FixHeaderChecksum(&file);  // a real newer file has a valid header checksum
  auto parsed = Parse(file);
  ASSERT_FALSE(parsed.ok());
  EXPECT_EQ(parsed.status().code(), Status::Code::kIncompatible) << parsed.status().message();
  EXPECT_NE(parsed.status().message().find("upgrade kvstash"), std::string::npos);
}

TEST(FormatTest, LlamaCppFilesAreNamed) {
  for (const char* magic : {"qsgg", "nsgg"}) {
    std::string file = std::string(magic) + std::string(60, '\0');
    auto parsed = Parse(file);
    ASSERT_FALSE(parsed.ok());
    EXPECT_NE(parsed.status().message().find("llama.cpp"), std::string::npos) << magic;
  }
}

// Every META field outside what a writer produces is refused by ValidateMeta, naming the field.
TEST(FormatTest, MetaRangesNameTheField) {
  ASSERT_TRUE(ValidateMeta(SampleMeta(5), "m").ok()) << ValidateMeta(SampleMeta(5), "m").ToString();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  struct Case {
    const char* field;
    std::function<void(SessionMeta&)> mutate;
  } cases[] = {
      {"n_batch", [](SessionMeta& m) { m.n_batch = 0; }},
      {"n_ubatch", [](SessionMeta& m) { m.n_ubatch = 0; }},
      {"n_ubatch", [](SessionMeta& m) { m.n_ubatch = m.n_batch + 1; }},
      {"n_ctx", [](SessionMeta& m) { m.n_ctx = 300; }},
      {"n_ctx", [](SessionMeta& m) { m.n_ctx = (1u << 24) + 256; }},
      {"n_seq_max", [](SessionMeta& m) { m.n_seq_max = 7; }},
      {"rope_freq_base", [nan](SessionMeta& m) { m.rope_freq_base = nan; }},
      {"rope_freq_base", [](SessionMeta& m) { m.rope_freq_base = -1; }},
      {"rope_freq_scale", [nan](SessionMeta& m) { m.rope_freq_scale = nan; }},
      {"yarn_attn_factor", [inf](SessionMeta& m) { m.yarn_attn_factor = inf; }},
      {"yarn_ext_factor", [](SessionMeta& m) { m.yarn_ext_factor = -2; }},
      {"yarn_beta_fast", [](SessionMeta& m) { m.yarn_beta_fast = 1e30f; }},
      {"rope_scaling_type", [](SessionMeta& m) { m.rope_scaling_type = 99; }},
      {"kv_unified", [](SessionMeta& m) { m.kv_unified = true; }},
      {"n_swa", [](SessionMeta& m) { m.n_swa = 4; }},
      {"type_k", [](SessionMeta& m) { m.type_k_name = "q8_0"; }},
      {"type_v", [](SessionMeta& m) { m.type_v = 12; }},
      {"type_v",
       [](SessionMeta& m) {
         m.type_v = 8;
         m.type_v_name = "q8_0";
         m.flash_attn = false;
       }},
      {"n_head_kv", [](SessionMeta& m) { m.n_head_kv = m.n_head + 1; }},
      {"n_layer", [](SessionMeta& m) { m.n_layer = 5000; }},
      {"n_embd_k_gqa", [](SessionMeta& m) { m.n_embd_k_gqa = 0; }},
      {"writer", [](SessionMeta& m) { m.writer.clear(); }},
      {"model_arch", [](SessionMeta& m) { m.model_arch = std::string(300, 'a'); }},
      {"n_tokens", [](SessionMeta& m) { m.n_tokens = m.n_ctx + 1; }},
      {"model_n_params", [](SessionMeta& m) { m.model_n_params = 0; }},
  };
  for (const auto& c : cases) {
    SessionMeta m = SampleMeta(5);
    c.mutate(m);
    Status s = ValidateMeta(m, "m.kvs");
    ASSERT_FALSE(s.ok()) << c.field;
    EXPECT_EQ(s.code(), Status::Code::kCorruption) << c.field;
    EXPECT_NE(s.message().find(std::string("field ") + c.field), std::string::npos)
        << c.field << ": " << s.message();
  }
}

// A file whose checksums were recomputed after a lie: refused by the semantic checks, not by luck.
TEST(FormatTest, ValidChecksumsDoNotMakeBadValuesValid) {
  const std::string kv = SamplePayload(5);
  const uint64_t sum = SectionChecksum(reinterpret_cast<const uint8_t*>(kv.data()), kv.size());
  std::vector<int32_t> tokens = {0, 3, 6, 9, 12};
  SessionMeta meta = SampleMeta(5);
  meta.n_batch = 0;
  EXPECT_FALSE(
      Parse(EncodeFilePrefix(meta, tokens, std::vector<float>(100, 0.5f), kv.size(), sum) + kv)
          .ok());
  for (float bad :
       {std::numeric_limits<float>::quiet_NaN(), -std::numeric_limits<float>::infinity()}) {
    std::vector<float> logits(100, 0.5f);
    logits[42] = bad;
    auto parsed = Parse(EncodeFilePrefix(SampleMeta(5), tokens, logits, kv.size(), sum) + kv);
    ASSERT_FALSE(parsed.ok());
    EXPECT_NE(parsed.status().message().find("logit 42"), std::string::npos);
  }
}

// Reserved header fields, section flags, alignment and padding: only what a writer writes.
TEST(FormatTest, ReservedFieldsAndLayoutAreChecked) {
  const std::string good = SampleFile();
  auto fix_table = [](std::string* f) {
    uint32_t n;
    std::memcpy(&n, &(*f)[20], 4);
    const uint64_t sum = XXH3_64bits(f->data() + 64, n * 32);
    std::memcpy(&(*f)[64 + n * 32], &sum, 8);
  };
  for (size_t at : {40, 48, 55}) {  // header flags and reserved
    std::string bad = good;
    bad[at] = 1;
    FixHeaderChecksum(&bad);
    auto parsed = Parse(bad);
    ASSERT_FALSE(parsed.ok()) << at;
    EXPECT_NE(parsed.status().message().find("reserved"), std::string::npos);
  }
  std::string flags = good;  // flags of section 1
  flags[64 + 32 + 4] = 1;
  fix_table(&flags);
  EXPECT_FALSE(Parse(flags).ok());
  // Section 1 moved by 8 bytes: no longer at a multiple of 64 after section 0.
  std::string unaligned = good;
  uint64_t off;
  std::memcpy(&off, &unaligned[64 + 32 + 8], 8);
  off += 8;
  std::memcpy(&unaligned[64 + 32 + 8], &off, 8);
  fix_table(&unaligned);
  EXPECT_FALSE(Parse(unaligned).ok());
  // A non-zero byte in the padding after the section table.
  uint32_t n;
  std::memcpy(&n, &good[20], 4);
  std::string padding = good;
  padding[64 + n * 32 + 8] = 'x';
  auto parsed = Parse(padding);
  ASSERT_FALSE(parsed.ok());
  EXPECT_NE(parsed.status().message().find("padding"), std::string::npos);
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
  // The memory kind: absent for a plain cache (0.1's bytes), written for the other kinds, and an
  // explicit 0, which no writer produces, refused.
  EXPECT_EQ(meta.find(std::string("\x17\x00\x01\x00", 4)), std::string::npos);
  std::string with_kind = meta;
  const char zero_kind[] = {0x17, 0x00, 0x01, 0x00, 4, 0, 0, 0, 0, 0, 0, 0};
  with_kind.append(zero_kind, 12);
  auto z = DecodeMeta(reinterpret_cast<const uint8_t*>(with_kind.data()), with_kind.size(), "m");
  ASSERT_FALSE(z.ok());
  EXPECT_NE(z.status().message().find("memory_kind"), std::string::npos) << z.status().message();
  SessionMeta iswa = SampleMeta(5);
  iswa.memory_kind = 1;
  const std::string iswa_meta = EncodeMeta(iswa);
  auto k = DecodeMeta(reinterpret_cast<const uint8_t*>(iswa_meta.data()), iswa_meta.size(), "m");
  ASSERT_TRUE(k.ok()) << k.status().ToString();
  EXPECT_EQ(k->memory_kind, 1u);
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

namespace kvstash::format {
namespace {

ModelFacts FactsFor(const SessionMeta& m) {
  ModelFacts f;
  f.path = "model.gguf";
  f.fingerprint = m.model_fingerprint;
  f.arch = m.model_arch;
  f.n_vocab = m.n_vocab;
  f.n_layer = m.n_layer;
  f.n_embd = m.n_embd;
  f.n_head = m.n_head;
  f.n_head_kv = m.n_head_kv;
  f.n_embd_k_gqa = m.n_embd_k_gqa;
  f.n_embd_v_gqa = m.n_embd_v_gqa;
  f.n_swa = m.n_swa;
  f.n_ctx_train = m.n_ctx_train;
  f.llama_state_version = m.llama_state_version;
  return f;
}

TEST(CompatTest, EveryRecordedDimensionIsComparedWithTheModel) {
  const SessionMeta meta = SampleMeta(5);
  ASSERT_TRUE(CheckSessionFitsModel(meta, FactsFor(meta), "s.kvs").ok());
  const std::vector<std::pair<const char*, std::function<void(ModelFacts&)>>> cases = {
      {"fingerprint", [](ModelFacts& f) { f.fingerprint.bytes[0] ^= 1; }},
      {"state version", [](ModelFacts& f) { f.llama_state_version += 1; }},
      {"n_vocab", [](ModelFacts& f) { f.n_vocab += 1; }},
      {"n_embd", [](ModelFacts& f) { f.n_embd += 1; }},
      {"n_head_kv", [](ModelFacts& f) { f.n_head_kv += 1; }},
      {"n_swa", [](ModelFacts& f) { f.n_swa = 128; }},
      {"n_ctx_train", [](ModelFacts& f) { f.n_ctx_train += 1; }},
      {"architecture", [](ModelFacts& f) { f.arch = "gemma3"; }},
  };
  for (const auto& [what, mutate] : cases) {
    ModelFacts facts = FactsFor(meta);
    mutate(facts);
    Status s = CheckSessionFitsModel(meta, facts, "s.kvs");
    ASSERT_FALSE(s.ok()) << what;
    EXPECT_NE(s.message().find("s.kvs"), std::string::npos) << s.message();
  }
}

TEST(CompatTest, SessionsOfTheOldFingerprintAreToldToResave) {
  SessionMeta meta = SampleMeta(5);
  meta.writer = "kvstash 0.1.0";
  ModelFacts facts = FactsFor(meta);
  facts.fingerprint.bytes[0] ^= 1;
  Status s = CheckSessionFitsModel(meta, facts, "old.kvs");
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("re-save"), std::string::npos) << s.message();
  EXPECT_EQ(s.message().find("another model"), std::string::npos) << s.message();
}

TEST(CompatTest, ContextIsSizedToTheRunUnlessAsked) {
  SessionMeta meta = SampleMeta(200);
  meta.n_ctx = 4096;
  OpenRequest options;
  EXPECT_EQ(*ResolveOpenContext(meta, options, FactsFor(meta), "s"), 4096u);  // as saved
  options.n_room = 40;
  EXPECT_EQ(*ResolveOpenContext(meta, options, FactsFor(meta), "s"), 256u);  // 240 rounded up
  options.n_room = 57;
  EXPECT_EQ(*ResolveOpenContext(meta, options, FactsFor(meta), "s"), 512u);
  options.n_room = 100000;
  EXPECT_EQ(*ResolveOpenContext(meta, options, FactsFor(meta), "s"),
            4096u);  // never more than saved unless asked
  options.n_ctx = 8192;
  EXPECT_EQ(*ResolveOpenContext(meta, options, FactsFor(meta), "s"), 8192u);
  options.n_ctx = 200;
  EXPECT_FALSE(ResolveOpenContext(meta, options, FactsFor(meta), "s").ok());
  options = {};
  options.cache_type_k = "q8_0";
  EXPECT_EQ(ResolveOpenContext(meta, options, FactsFor(meta), "s").status().code(),
            Status::Code::kIncompatible);
  options = {};
  options.flash_attn = false;  // the sample was saved with flash attention
  EXPECT_EQ(ResolveOpenContext(meta, options, FactsFor(meta), "s").status().code(),
            Status::Code::kIncompatible);
}

// A LongRoPE session saved above the regime line keeps a context above it when sized to the run,
// and a caller's -c across the line is refused.
TEST(CompatTest, RoomSizingKeepsTheLongRopeRegime) {
  SessionMeta meta = SampleMeta(200);
  meta.n_ctx = 4096;
  ModelFacts facts = FactsFor(meta);
  facts.long_rope = true;
  facts.n_ctx_orig = 1024;
  OpenRequest options;
  options.n_room = 40;
  EXPECT_EQ(*ResolveOpenContext(meta, options, facts, "s"), 1280u);  // not 256: stays long
  options.n_ctx = 512;
  auto refused = ResolveOpenContext(meta, options, facts, "s");
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.status().message().find("LongRoPE"), std::string::npos);
  meta.n_ctx = 512;  // saved below the line: room sizing stays below it by itself
  options = {};
  options.n_room = 40;
  EXPECT_EQ(*ResolveOpenContext(meta, options, facts, "s"), 256u);
}

TEST(StatusTest, ResultContractsStopTheProgram) {
  EXPECT_DEATH({ Result<int> r(Status::Ok()); }, "ok Status");
  EXPECT_DEATH(
      {
        Result<int> r(Status::Internal("x"));
        std::printf("%d", r.value());
      },
      "failed Result");
  Result<int> fine(3);
  EXPECT_EQ(*fine, 3);
}

}  // namespace
}  // namespace kvstash::format

namespace kvstash::format {
namespace {

TEST(PrintableTest, ControlCharactersAreEscaped) {
  EXPECT_EQ(Printable("llama 1B"), "llama 1B");
  EXPECT_EQ(Printable("\x1b]0;pwned\x07\x1b[2Jx\x7f"), "\\x1b]0;pwned\\x07\\x1b[2Jx\\x7f");
  EXPECT_EQ(Printable("caf\xc3\xa9"), "caf\xc3\xa9");  // UTF-8 stays
}

TEST(FormatTest, SubnormalRopeParametersAreRefused) {
  SessionMeta m = SampleMeta(5);
  m.rope_freq_base = 1e-45f;
  EXPECT_FALSE(ValidateMeta(m, "m").ok());
  m = SampleMeta(5);
  m.rope_scaling_type = 2;
  m.rope_freq_scale = 1e-40f;
  EXPECT_FALSE(ValidateMeta(m, "m").ok());
  m = SampleMeta(5);
  m.yarn_attn_factor = 1e-42f;
  EXPECT_FALSE(ValidateMeta(m, "m").ok());
  m = SampleMeta(5);
  m.rope_freq_base = 500000.0f;
  m.rope_freq_scale = 0.25f;
  EXPECT_TRUE(ValidateMeta(m, "m").ok());
}

// A file that is no session, or a huge one whose header says another size, is refused from its
// first bytes, before a reader maps or copies the rest.
TEST(FormatTest, FileHeadIsCheckedAlone) {
  const std::string file = SampleFile();
  const auto* p = reinterpret_cast<const uint8_t*>(file.data());
  EXPECT_TRUE(CheckFileHead(p, std::min<size_t>(file.size(), 4096), file.size(), "f").ok());
  EXPECT_FALSE(CheckFileHead(p, std::min<size_t>(file.size(), 4096), uint64_t{2} << 30, "f").ok());
  const std::string zeros(4096, '\0');
  EXPECT_FALSE(
      CheckFileHead(reinterpret_cast<const uint8_t*>(zeros.data()), 4096, uint64_t{2} << 30, "f")
          .ok());
  EXPECT_FALSE(CheckFileHead(p, 40, 40, "f").ok());
}

}  // namespace
}  // namespace kvstash::format
