// Hostile and broken session files: each is refused with a Status naming the file and the cause,
// never a signal, and the process stays usable (a good file opens and matches a cold run after).
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <functional>
#include <limits>
#include <thread>

#include "engine/session_internals.h"
#include "env/env.h"
#include "format/session_format.h"
#include "llama.h"
#include "test_util.h"

namespace kvstash {
namespace {

using testing::kPrefix;
using testing::ReadFile;
using testing::TempDir;
using testing::TinyModel;
using testing::WriteFile;

class HostileTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    good_path_ = new std::string(TempDir() + "/good.kvs");
    testing::SaveTinyPrefix(*good_path_);
    good_ = new std::string(ReadFile(*good_path_));
    auto cold = Session::Create(TinyModel());
    ASSERT_TRUE(cold.ok()) << cold.status().ToString();
    ASSERT_TRUE((*cold)->Append(kPrefix).ok());
    ASSERT_TRUE((*cold)->Append(" Q: why? A:").ok());
    SampleOptions greedy;
    greedy.n_predict = 8;
    auto generated = (*cold)->Generate(greedy);
    ASSERT_TRUE(generated.ok()) << generated.status().ToString();
    cold_tokens_ = new std::vector<Token>(generated->tokens);
  }

  void TearDown() override { RecordProperty("hostile_cases", cases_); }

  // Opens `bytes` as a session file and expects a refusal that names the file.
  Status ExpectRefused(const std::string& bytes, const std::string& what) {
    const std::string path = TempDir() + "/hostile.kvs";
    WriteFile(path, bytes);
    return ExpectPathRefused(path, what);
  }
  Status ExpectPathRefused(const std::string& path, const std::string& what) {
    auto opened = Session::Open(TinyModel(), path);
    EXPECT_FALSE(opened.ok()) << what;
    if (opened.ok()) return Status::Ok();
    EXPECT_NE(opened.status().message().find(path), std::string::npos)
        << what << ": " << opened.status().message();
    ++cases_;
    return opened.status();
  }
  // A good file still opens and continues exactly like a cold run.
  void ExpectProcessStillUsable() {
    auto warm = Session::Open(TinyModel(), *good_path_);
    ASSERT_TRUE(warm.ok()) << warm.status().ToString();
    ASSERT_TRUE((*warm)->Append(" Q: why? A:").ok());
    SampleOptions greedy;
    greedy.n_predict = 8;
    auto generated = (*warm)->Generate(greedy);
    ASSERT_TRUE(generated.ok()) << generated.status().ToString();
    ASSERT_NE(cold_tokens_, nullptr);
    EXPECT_EQ(generated->tokens, *cold_tokens_);
  }

  // Re-encodes the good file after `mutate` changed its parts; checksums are valid again, so only
  // the semantic checks can catch the lie.
  static std::string Rebuild(const std::function<void(format::ParsedFile&, std::string&)>& mutate) {
    return RebuildFrom(*good_, mutate);
  }
  static std::string RebuildFrom(
      const std::string& file,
      const std::function<void(format::ParsedFile&, std::string&)>& mutate) {
    auto parsed =
        format::ParseFile(reinterpret_cast<const uint8_t*>(file.data()), file.size(), "good", true);
    if (!parsed.ok()) {
      ADD_FAILURE() << parsed.status().ToString();
      return "";
    }
    std::string kv(reinterpret_cast<const char*>(parsed->kv), parsed->kv_size);
    mutate(*parsed, kv);
    const uint64_t sum =
        format::SectionChecksum(reinterpret_cast<const uint8_t*>(kv.data()), kv.size());
    return format::EncodeFilePrefix(parsed->meta, parsed->tokens, parsed->logits, kv.size(), sum) +
           kv;
  }

  static void FixHeaderChecksum(std::string* bytes) {
    const uint64_t sum = XXH3_64bits(bytes->data(), 56);
    std::memcpy(&(*bytes)[56], &sum, 8);
  }
  static void FixTableChecksum(std::string* bytes) {
    uint32_t n;
    std::memcpy(&n, &(*bytes)[20], 4);
    const size_t table = 64, len = n * 32;
    const uint64_t sum = XXH3_64bits(bytes->data() + table, len);
    std::memcpy(&(*bytes)[table + len], &sum, 8);
  }

  int cases_ = 0;
  static std::string* good_path_;
  static std::string* good_;
  static std::vector<Token>* cold_tokens_;
};
std::string* HostileTest::good_path_ = nullptr;
std::string* HostileTest::good_ = nullptr;
std::vector<Token>* HostileTest::cold_tokens_ = nullptr;

TEST_F(HostileTest, EmptyBadMagicAndForeignFiles) {
  (void)ExpectRefused("", "empty");
  std::string bad = *good_;
  bad[1] = 'X';
  EXPECT_NE(ExpectRefused(bad, "magic").message().find("not a kvstash session"), std::string::npos);
  // llama.cpp writes its magics as little-endian u32s: the files start with "qsgg" / "nsgg".
  EXPECT_NE(ExpectRefused(std::string("qsgg\x02\0\0\0", 8), "llama.cpp seq file")
                .message()
                .find("llama.cpp sequence-state"),
            std::string::npos);
  EXPECT_NE(ExpectRefused(std::string("nsgg\x09\0\0\0", 8), "llama.cpp session file")
                .message()
                .find("llama.cpp session"),
            std::string::npos);
  EXPECT_NE(ExpectRefused(ReadFile(TinyModel()->path()).substr(0, 4096), "gguf")
                .message()
                .find("GGUF model"),
            std::string::npos);
  ExpectProcessStillUsable();
}

TEST_F(HostileTest, TruncatedAtEveryOffset) {
  const std::string path = TempDir() + "/truncated.kvs";
  int n = 0;
  for (size_t len = 0; len < good_->size(); ++len) {
    WriteFile(path, good_->substr(0, len));
    auto opened = Session::Open(TinyModel(), path);
    ASSERT_FALSE(opened.ok()) << "truncated at " << len;
    ASSERT_EQ(opened.status().code(), Status::Code::kCorruption) << opened.status().message();
    ++n;
    ++cases_;
  }
  RecordProperty("offsets_truncated", n);
  ExpectProcessStillUsable();
}

TEST_F(HostileTest, TruncatedLargeSessionAtSampledOffsets) {
  const std::string path = TempDir() + "/large.kvs";
  testing::SaveLongTinySession(path, 300);
  const std::string large = ReadFile(path);
  const std::string cut = TempDir() + "/large-cut.kvs";
  int n = 0;
  for (size_t len = 0; len < large.size(); len += 1 + (len * 7919) % 4093) {
    WriteFile(cut, large.substr(0, len));
    ASSERT_FALSE(Session::Open(TinyModel(), cut).ok()) << len;
    ++n;
    ++cases_;
  }
  EXPECT_GT(n, 200);
  RecordProperty("large_offsets_truncated", n);
  ExpectProcessStillUsable();
}

TEST_F(HostileTest, TrailingBytes) {
  (void)ExpectRefused(*good_ + std::string(1, '\0'), "one trailing byte");
  (void)ExpectRefused(*good_ + *good_, "two files");
}

TEST_F(HostileTest, OlderAndNewerFormatVersions) {
  std::string older = *good_;
  const uint32_t zero = 0;
  std::memcpy(&older[8], &zero, 4);
  FixHeaderChecksum(&older);
  EXPECT_EQ(ExpectRefused(older, "version 0").code(), Status::Code::kCorruption);
  std::string newer = *good_;
  const uint32_t future = 99;
  std::memcpy(&newer[8], &future, 4);
  std::memcpy(&newer[12], &future, 4);
  FixHeaderChecksum(&newer);
  Status s = ExpectRefused(newer, "needs reader 99");
  EXPECT_EQ(s.code(), Status::Code::kIncompatible);
  EXPECT_NE(s.message().find("upgrade kvstash"), std::string::npos);
  // A newer writer whose files old readers may still read is accepted.
  std::string compatible = *good_;
  std::memcpy(&compatible[8], &future, 4);
  FixHeaderChecksum(&compatible);
  WriteFile(TempDir() + "/compatible.kvs", compatible);
  EXPECT_TRUE(Session::Open(TinyModel(), TempDir() + "/compatible.kvs").ok());
}

TEST_F(HostileTest, HeaderAndTableFieldsZeroHugeAndOverflowing) {
  const uint64_t values[] = {
      0, 1, 0x7FFFFFFF, 0xFFFFFFFF, 0xFFFFFFFFFFFFFFF0ull, 0x8000000000000000ull};
  // Header: section count (u32 @20), file size (u64 @24), table offset (u64 @32).
  for (uint64_t v : values) {
    for (auto [at, width] : {std::pair{20, 4}, {24, 8}, {32, 8}, {16, 4}}) {
      std::string bad = *good_;
      std::memcpy(&bad[at], &v, width);
      if (bad == *good_) continue;
      FixHeaderChecksum(&bad);
      (void)ExpectRefused(bad, "header field @" + std::to_string(at));
    }
  }
  // Section table entries: offset (@+8) and size (@+16) of each section.
  uint32_t n_sections;
  std::memcpy(&n_sections, &(*good_)[20], 4);
  for (uint32_t i = 0; i < n_sections; ++i) {
    for (int field : {8, 16}) {
      for (uint64_t v : values) {
        std::string bad = *good_;
        std::memcpy(&bad[64 + i * 32 + field], &v, 8);
        if (bad == *good_) continue;
        FixTableChecksum(&bad);
        (void)ExpectRefused(bad,
                            "section " + std::to_string(i) + " field " + std::to_string(field));
      }
    }
  }
  ExpectProcessStillUsable();
}

TEST_F(HostileTest, MetaCountsZeroHugeAndOverflowing) {
  for (uint32_t v : {0u, 1u, 0x7FFFFFFFu, 0xFFFFFFFFu}) {
    (void)ExpectRefused(Rebuild([&](format::ParsedFile& f, std::string&) { f.meta.n_tokens = v; }),
                        "n_tokens");
    (void)ExpectRefused(
        Rebuild([&](format::ParsedFile& f, std::string&) { f.meta.n_vocab = int32_t(v); }),
        "n_vocab");
    (void)ExpectRefused(
        Rebuild([&](format::ParsedFile& f, std::string&) { f.meta.n_layer = int32_t(v); }),
        "n_layer");
  }
  for (uint32_t v : {0u, 5u}) {
    (void)ExpectRefused(Rebuild([&](format::ParsedFile& f, std::string&) { f.meta.n_ctx = v; }),
                        "n_ctx below n_tokens");
  }
  ExpectProcessStillUsable();
}

TEST_F(HostileTest, TokenIdsOutOfRange) {
  for (int32_t id : {-1, INT32_MIN, TinyModel()->n_vocab(), INT32_MAX}) {
    Status s = ExpectRefused(
        Rebuild([&](format::ParsedFile& f, std::string&) { f.tokens[3] = id; }), "token id");
    EXPECT_NE(s.message().find("outside the vocabulary"), std::string::npos) << s.message();
  }
  ExpectProcessStillUsable();
}

TEST_F(HostileTest, FlippedBitInEachRegionIsCaughtByAChecksum) {
  auto parsed =
      format::ParseFile(reinterpret_cast<const uint8_t*>(good_->data()), good_->size(), "g", true);
  ASSERT_TRUE(parsed.ok());
  const size_t kv_at = parsed->kv - reinterpret_cast<const uint8_t*>(good_->data());
  const size_t logits_at = kv_at - 4 * TinyModel()->n_vocab() - 64;  // inside LOGITS
  uint64_t meta_at;
  std::memcpy(&meta_at, &(*good_)[64 + 8], 8);  // section 0 is META
  struct Region {
    const char* name;
    size_t at;
  } regions[] = {{"header", 30},
                 {"table", 70},
                 {"meta", meta_at + 20},
                 {"logits", logits_at + 17},
                 {"kv start", kv_at + 3},
                 {"kv middle", kv_at + parsed->kv_size / 2},
                 {"kv end", good_->size() - 1}};
  for (const auto& r : regions) {
    std::string bad = *good_;
    bad[r.at] ^= 0x10;
    Status s = ExpectRefused(bad, r.name);
    EXPECT_EQ(s.code(), Status::Code::kCorruption) << r.name;
    // A flip in the KV payload's own headers is caught by the checksum or the structure check,
    // whichever runs first; everywhere else by a checksum.
    const bool kv_header = std::string(r.name) == "kv start";
    EXPECT_TRUE(s.message().find("checksum") != std::string::npos ||
                (kv_header && s.message().find("KV payload") != std::string::npos))
        << r.name << ": " << s.message();
  }
  ExpectProcessStillUsable();
}

// Each lie is refused for its own reason, named in the message (not by whichever check fires).
TEST_F(HostileTest, RecordedParametersThatDisagreeWithThePayload) {
  struct Lie {
    const char* name;
    const char* expected;  // in the refusal's message
    std::function<void(format::ParsedFile&, std::string&)> mutate;
  } lies[] = {
      {"type_k", "type_k",
       [](format::ParsedFile& f, std::string&) {
         f.meta.type_k = 8;
         f.meta.type_k_name = "q8_0";
       }},
      {"type_v", "type_v",
       [](format::ParsedFile& f, std::string&) {
         f.meta.type_v = 0;
         f.meta.type_v_name = "f32";
       }},
      {"flash_attn", "flash_attn",
       [](format::ParsedFile& f, std::string&) { f.meta.flash_attn = !f.meta.flash_attn; }},
      {"n_tokens", "n_tokens",
       [](format::ParsedFile& f, std::string&) {
         f.meta.n_tokens -= 1;
         f.tokens.pop_back();
       }},
      {"n_embd_k_gqa", "n_embd_k_gqa",
       [](format::ParsedFile& f, std::string&) { f.meta.n_embd_k_gqa *= 2; }},
      {"logits", "LOGITS", [](format::ParsedFile& f, std::string&) { f.logits.clear(); }},
      {"kv cells", "positions", [](format::ParsedFile&, std::string& kv) { kv[16] = 9; }},
      {"kv layer count", "KV payload",
       [](format::ParsedFile& f, std::string& kv) {
         const size_t at = 16 + 12 * f.meta.n_tokens + 4;
         kv[at] = 7;
       }},
      {"kv truncated", "cut short",
       [](format::ParsedFile&, std::string& kv) { kv.resize(kv.size() - 2); }},
      {"kv longer", "unexpected bytes", [](format::ParsedFile&, std::string& kv) { kv += "xx"; }},
      {"fingerprint", "another model",
       [](format::ParsedFile& f, std::string&) { f.meta.model_fingerprint.bytes[0] ^= 1; }},
      {"state version", "state version",
       [](format::ParsedFile& f, std::string&) { f.meta.llama_state_version = 2; }},
  };
  for (const auto& lie : lies) {
    Status s = ExpectRefused(Rebuild(lie.mutate), lie.name);
    EXPECT_NE(s.message().find(lie.expected), std::string::npos) << lie.name << ": " << s.message();
  }
  ExpectProcessStillUsable();
}

// Values a writer never produces, with every checksum recomputed: refused by name before llama.cpp
// sees them. On 0.1, n_batch = 0 aborted the process inside llama.cpp and NaN RoPE parameters gave
// an "ok" open with wrong text.
TEST_F(HostileTest, ValuesAWriterNeverProducesWithValidChecksums) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  struct Case {
    const char* field;
    std::function<void(format::ParsedFile&)> mutate;
  } cases[] = {
      {"n_batch", [](format::ParsedFile& f) { f.meta.n_batch = 0; }},
      {"n_ubatch", [](format::ParsedFile& f) { f.meta.n_ubatch = 0; }},
      {"rope_freq_base", [nan](format::ParsedFile& f) { f.meta.rope_freq_base = nan; }},
      {"rope_freq_base", [](format::ParsedFile& f) { f.meta.rope_freq_base = -1; }},
      {"rope_freq_scale", [nan](format::ParsedFile& f) { f.meta.rope_freq_scale = nan; }},
      {"yarn_attn_factor", [inf](format::ParsedFile& f) { f.meta.yarn_attn_factor = inf; }},
      {"rope_scaling_type", [](format::ParsedFile& f) { f.meta.rope_scaling_type = 99; }},
      {"kv_unified", [](format::ParsedFile& f) { f.meta.kv_unified = true; }},
      {"n_seq_max", [](format::ParsedFile& f) { f.meta.n_seq_max = 7; }},
      {"n_swa", [](format::ParsedFile& f) { f.meta.n_swa = 64; }},
      {"type_k", [](format::ParsedFile& f) { f.meta.type_k_name = "q8_0"; }},
      {"n_embd", [](format::ParsedFile& f) { f.meta.n_embd += 64; }},
      {"n_head", [](format::ParsedFile& f) { f.meta.n_head_kv = f.meta.n_head + 1; }},
      {"architecture", [](format::ParsedFile& f) { f.meta.model_arch = "gemma3"; }},
      {"n_ctx", [](format::ParsedFile& f) { f.meta.n_ctx = 1000; }},
      {"logit", [nan](format::ParsedFile& f) { f.logits[7] = nan; }},
  };
  for (const auto& c : cases) {
    Status s =
        ExpectRefused(Rebuild([&](format::ParsedFile& f, std::string&) { c.mutate(f); }), c.field);
    EXPECT_EQ(s.code(), Status::Code::kCorruption) << c.field << ": " << s.message();
    EXPECT_NE(s.message().find(c.field), std::string::npos) << c.field << ": " << s.message();
  }
  ExpectProcessStillUsable();
}

// META field 23 decides how the KV payload is walked. With every checksum recomputed, a kind no
// writer produces, or a plain (kKv) payload that claims another kind, is refused as corruption by
// the field or by the payload that lacks that kind's layout: by Open before llama.cpp sees a byte,
// and by the model-free reader (inspect), which has no model's n_swa to compare with.
TEST_F(HostileTest, MemoryKindOutOfRangeOrNotThePayloadsOwn) {
  struct Case {
    const char* name;
    uint32_t kind;
    int32_t n_swa;
    const char* open_expected;  // in Open's refusal
    const char* file_expected;  // in the model-free reader's
  } cases[] = {
      {"memory_kind 9", 9, 0, "META field memory_kind is 9, outside 0..3", nullptr},
      {"memory_kind 4", 4, 0, "META field memory_kind is 4, outside 0..3", nullptr},
      {"memory_kind 2^32-1", 0xffffffffu, 0, "META field memory_kind is 4294967295", nullptr},
      // iSWA needs a window: without one, META's range check refuses it by n_swa...
      {"iswa without a window", 1, 0, "META field n_swa is 0, outside 1..", nullptr},
      // ...with one, Open finds the model has none; the payload has a full-attention part and no
      // sliding-window part after it.
      {"iswa", 1, 64, "records n_swa=64 but its model",
       "KV payload: sliding-window cache: cut short"},
      {"recurrent", 2, 0, "KV payload: recurrent state", nullptr},
      {"hybrid", 3, 0, "KV payload: recurrent state: cut short", nullptr},
  };
  for (const auto& c : cases) {
    const std::string bytes = Rebuild([&](format::ParsedFile& f, std::string&) {
      f.meta.memory_kind = c.kind;
      f.meta.n_swa = c.n_swa;
    });
    Status s = ExpectRefused(bytes, c.name);
    EXPECT_EQ(s.code(), Status::Code::kCorruption) << c.name << ": " << s.message();
    EXPECT_NE(s.message().find(c.open_expected), std::string::npos)
        << c.name << ": " << s.message();
    auto parsed = format::ParseFile(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(),
                                    "crafted.kvs", /*verify_checksums=*/true);
    ASSERT_FALSE(parsed.ok()) << c.name;
    EXPECT_EQ(parsed.status().code(), Status::Code::kCorruption) << c.name;
    const char* file_expected = c.file_expected != nullptr ? c.file_expected : c.open_expected;
    EXPECT_NE(parsed.status().message().find("'crafted.kvs'"), std::string::npos)
        << c.name << ": " << parsed.status().message();
    EXPECT_NE(parsed.status().message().find(file_expected), std::string::npos)
        << c.name << ": " << parsed.status().message();
  }
  ExpectProcessStillUsable();
}

TEST_F(HostileTest, AValidFileFromAnotherModelOfTheSameShape) {
  auto other = Session::Create(TinyModel(/*seed=*/3));
  ASSERT_TRUE((*other)->Append(kPrefix).ok());
  const std::string path = TempDir() + "/other-model.kvs";
  ASSERT_TRUE((*other)->Save(path).ok());
  EXPECT_EQ(ExpectPathRefused(path, "other model").code(), Status::Code::kIncompatible);
  ExpectProcessStillUsable();
}

TEST_F(HostileTest, PathsThatAreNotFiles) {
  const std::string fifo = TempDir() + "/hostile-fifo";
  mkfifo(fifo.c_str(), 0600);
  const std::string loop = TempDir() + "/hostile-loop";
  symlink(loop.c_str(), loop.c_str());
  const std::string sparse = TempDir() + "/hostile-sparse";
  int fd = open(sparse.c_str(), O_CREAT | O_WRONLY, 0644);
  ASSERT_EQ(ftruncate(fd, off_t{200} << 30), 0);
  close(fd);
  for (const std::string& path : {TempDir(), fifo, loop, std::string("/dev/zero"), sparse,
                                  TempDir() + "/does-not-exist.kvs"}) {
    (void)ExpectPathRefused(path, path);
  }
  unlink(sparse.c_str());
  ExpectProcessStillUsable();
}

// NaN in the KV values passes every range check (they are data, not fields) but must not become
// silent garbage: the first decode over them is refused. On 0.1, `run` printed empty text.
TEST_F(HostileTest, NonFiniteKvValuesAreCaughtAtTheFirstDecode) {
  for (uint16_t bits : {uint16_t{0x7e00}, uint16_t{0x7c00}}) {  // f16 NaN, +inf
    const std::string bad = Rebuild([&](format::ParsedFile& f, std::string& kv) {
      const size_t k_data = 16 + 12 * size_t{f.meta.n_tokens} + 8 + 12;  // layer 0's K rows
      for (size_t i = 0; i < size_t(f.meta.n_embd_k_gqa) * 2 * f.meta.n_tokens; i += 2) {
        std::memcpy(&kv[k_data + i], &bits, 2);
      }
    });
    const std::string path = TempDir() + "/nan-kv.kvs";
    WriteFile(path, bad);
    auto opened = Session::Open(TinyModel(), path);
    ASSERT_TRUE(opened.ok()) << opened.status().ToString();  // well-formed: only values are bad
    Status appended = (*opened)->Append(" Q: why? A:");
    ASSERT_FALSE(appended.ok());
    EXPECT_EQ(appended.code(), Status::Code::kCorruption);
    EXPECT_NE(appended.message().find("non-finite"), std::string::npos) << appended.message();
    ++cases_;
  }
  ExpectProcessStillUsable();
}

// The KV bytes a session's cache holds now, as llama.cpp serializes them.
std::string CachedKv(Session& session) {
  llama_context* ctx = SessionInternals::Context(session);
  std::string kv(llama_state_seq_get_size(ctx, 0), '\0');
  llama_state_seq_get_data(ctx, reinterpret_cast<uint8_t*>(kv.data()), kv.size(), 0);
  return kv;
}

// Another writer (here: a thread; the kernel treats it like any other opener) rewrites the file in
// place, `cp`/`rsync --inplace` style, with a different valid session of the same size while it is
// being opened, and sometimes truncates it. Each open either fails with a Status, or holds exactly
// one of the two files: its KV *and* its logits. On 0.1 the checksums were verified over a mapping
// and llama.cpp read the pages again afterwards, so the KV of one file and the logits of the other
// loaded silently.
class RewriteWhileLoadingTest : public HostileTest, public ::testing::WithParamInterface<bool> {};

TEST_P(RewriteWhileLoadingTest, GivesOneWholeFileOrACleanError) {
  const bool leases = GetParam();
  Env::Default()->set_read_leases(leases);
  const std::string path = TempDir() + "/racing.kvs";
  auto s = testing::SaveLongTinySession(path, 400);
  ASSERT_NE(s, nullptr);
  const std::string a = ReadFile(path);
  const std::string a_kv = CachedKv(*s);
  std::vector<float> a_logits = *s->Logits();
  // B: the same tokens, other KV values and logits, valid checksums: the lowest mantissa bit of
  // f16 values at the payload's end (the last layer's V data; a flip further up may land in a
  // layer's header, which makes B a file every open refuses).
  std::string b_kv;
  std::vector<float> b_logits;
  const std::string b = RebuildFrom(a, [&](format::ParsedFile& f, std::string& kv) {
    for (size_t i = kv.size() - 512; i < kv.size(); i += 6) kv[i] ^= 0x01;
    f.logits[0] += 1.0f;
    b_kv = kv;
    b_logits = f.logits;
  });
  ASSERT_EQ(a.size(), b.size());
  {
    const std::string b_path = TempDir() + "/racing-b.kvs";
    WriteFile(b_path, b);
    auto opened = Session::Open(TinyModel(), b_path);
    ASSERT_TRUE(opened.ok()) << "B must be a valid session: " << opened.status().ToString();
    ASSERT_EQ(CachedKv(**opened), b_kv);
  }
  // Every 8th round the writer leaves a whole file alone until two opens have ended, so at least
  // one open ran start to end on a still file and must succeed, however the threads are scheduled.
  std::atomic<bool> stop{false};
  std::atomic<int> opens_ended{0}, still_windows{0};
  std::thread writer([&] {
    for (int round = 0; !stop.load(); ++round) {
      if (round % 8 == 7) truncate(path.c_str(), static_cast<off_t>(a.size() / 3));
      const std::string& bytes = round % 2 ? a : b;
      const int fd = open(path.c_str(), O_WRONLY);
      if (fd >= 0) {
        if (pwrite(fd, bytes.data(), bytes.size(), 0) != ssize_t(bytes.size())) ADD_FAILURE();
        close(fd);
      }
      if (round % 8 == 6) {
        const int seen = opens_ended.load();
        while (!stop.load() && opens_ended.load() < seen + 2) std::this_thread::yield();
        ++still_windows;
      }
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  });
  int ok = 0, refused = 0, leased = 0;
  std::string first_refusal;
  for (int i = 0; i < 200 || still_windows.load() == 0; ++i, ++opens_ended) {
    auto opened = Session::Open(TinyModel(), path);
    if (!opened.ok()) {
      ++refused;
      EXPECT_NE(opened.status().message().find(path), std::string::npos);
      if (first_refusal.empty()) first_refusal = opened.status().ToString();
      continue;
    }
    ++ok;
    leased += (*opened)->open_stats().leased;
    EXPECT_EQ((*opened)->tokens(), s->tokens());
    const std::string kv = CachedKv(**opened);
    const std::vector<float> logits = *(*opened)->Logits();
    const bool is_a = kv == a_kv && logits == a_logits;
    const bool is_b = kv == b_kv && logits == b_logits;
    EXPECT_TRUE(is_a || is_b) << "open " << i << " mixed two files (kv of a: " << (kv == a_kv)
                              << ", logits of a: " << (logits == a_logits) << ")";
  }
  stop = true;
  writer.join();
  Env::Default()->set_read_leases(true);
  RecordProperty("opens_ok", ok);
  RecordProperty("opens_refused", refused);
  RecordProperty("opens_leased", leased);
  EXPECT_GT(ok, 0) << "every open was refused; the first: " << first_refusal;
  if (!leases) {
    EXPECT_EQ(leased, 0);
  }
  cases_ += refused;
  ExpectProcessStillUsable();
}

INSTANTIATE_TEST_SUITE_P(LeaseOrCopy, RewriteWhileLoadingTest, ::testing::Bool(),
                         [](const auto& info) { return info.param ? "Lease" : "Copy"; });

}  // namespace
}  // namespace kvstash
