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
#include <thread>

#include "format/session_format.h"
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
    EXPECT_TRUE((*cold)->Append(kPrefix).ok());
    EXPECT_TRUE((*cold)->Append(" Q: why? A:").ok());
    SampleOptions greedy;
    greedy.n_predict = 8;
    cold_tokens_ = new std::vector<Token>((*cold)->Generate(greedy)->tokens);
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
    EXPECT_EQ((*warm)->Generate(greedy)->tokens, *cold_tokens_);
  }

  // Re-encodes the good file after `mutate` changed its parts; checksums are valid again, so only
  // the semantic checks can catch the lie.
  static std::string Rebuild(const std::function<void(format::ParsedFile&, std::string&)>& mutate) {
    auto parsed = format::ParseFile(reinterpret_cast<const uint8_t*>(good_->data()), good_->size(),
                                    "good", true);
    EXPECT_TRUE(parsed.ok());
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
  ExpectRefused("", "empty");
  std::string bad = *good_;
  bad[1] = 'X';
  EXPECT_NE(ExpectRefused(bad, "magic").message().find("not a kvstash session"), std::string::npos);
  EXPECT_NE(
      ExpectRefused("GGSQ\x03\0\0\0", "llama.cpp file").message().find("llama.cpp sequence-state"),
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
  ExpectRefused(*good_ + std::string(1, '\0'), "one trailing byte");
  ExpectRefused(*good_ + *good_, "two files");
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
      ExpectRefused(bad, "header field @" + std::to_string(at));
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
        ExpectRefused(bad, "section " + std::to_string(i) + " field " + std::to_string(field));
      }
    }
  }
  ExpectProcessStillUsable();
}

TEST_F(HostileTest, MetaCountsZeroHugeAndOverflowing) {
  for (uint32_t v : {0u, 1u, 0x7FFFFFFFu, 0xFFFFFFFFu}) {
    ExpectRefused(Rebuild([&](format::ParsedFile& f, std::string&) { f.meta.n_tokens = v; }),
                  "n_tokens");
    ExpectRefused(
        Rebuild([&](format::ParsedFile& f, std::string&) { f.meta.n_vocab = int32_t(v); }),
        "n_vocab");
    ExpectRefused(
        Rebuild([&](format::ParsedFile& f, std::string&) { f.meta.n_layer = int32_t(v); }),
        "n_layer");
  }
  for (uint32_t v : {0u, 5u}) {
    ExpectRefused(Rebuild([&](format::ParsedFile& f, std::string&) { f.meta.n_ctx = v; }),
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
    EXPECT_NE(s.message().find("checksum"), std::string::npos) << r.name << ": " << s.message();
  }
  ExpectProcessStillUsable();
}

TEST_F(HostileTest, RecordedParametersThatDisagreeWithThePayload) {
  struct Lie {
    const char* name;
    std::function<void(format::ParsedFile&, std::string&)> mutate;
  } lies[] = {
      {"type_k",
       [](format::ParsedFile& f, std::string&) {
         f.meta.type_k = 8;
         f.meta.type_k_name = "q8_0";
       }},
      {"type_v",
       [](format::ParsedFile& f, std::string&) {
         f.meta.type_v = 0;
         f.meta.type_v_name = "f32";
       }},
      {"flash_attn", [](format::ParsedFile& f, std::string&) { f.meta.flash_attn = false; }},
      {"n_tokens",
       [](format::ParsedFile& f, std::string&) {
         f.meta.n_tokens -= 1;
         f.tokens.pop_back();
       }},
      {"n_embd_k_gqa", [](format::ParsedFile& f, std::string&) { f.meta.n_embd_k_gqa *= 2; }},
      {"logits", [](format::ParsedFile& f, std::string&) { f.logits.clear(); }},
      {"kv cells", [](format::ParsedFile&, std::string& kv) { kv[16] = 9; }},  // first cell's pos
      {"kv layer count",
       [](format::ParsedFile& f, std::string& kv) {
         const size_t at = 16 + 12 * f.meta.n_tokens + 4;
         kv[at] = 7;
       }},
      {"kv truncated", [](format::ParsedFile&, std::string& kv) { kv.resize(kv.size() - 2); }},
      {"kv longer", [](format::ParsedFile&, std::string& kv) { kv += "xx"; }},
      {"fingerprint",
       [](format::ParsedFile& f, std::string&) { f.meta.model_fingerprint.bytes[0] ^= 1; }},
      {"state version",
       [](format::ParsedFile& f, std::string&) { f.meta.llama_state_version = 2; }},
  };
  for (const auto& lie : lies) ExpectRefused(Rebuild(lie.mutate), lie.name);
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
    ExpectPathRefused(path, path);
  }
  unlink(sparse.c_str());
  ExpectProcessStillUsable();
}

// Another process (here: a thread) truncates and restores the file while it is being opened. Each
// open either succeeds with the right tokens or fails with a Status; none raises SIGBUS.
TEST_F(HostileTest, FileTruncatedWhileItIsBeingLoaded) {
  const std::string path = TempDir() + "/racing.kvs";
  auto s = testing::SaveLongTinySession(path, 400);
  const std::string bytes = ReadFile(path);
  std::atomic<bool> stop{false};
  std::thread truncator([&] {
    while (!stop.load()) {
      truncate(path.c_str(), static_cast<off_t>(bytes.size() / 3));
      std::this_thread::sleep_for(std::chrono::microseconds(300));
      WriteFile(path, bytes);  // same inode, rewritten in place
      std::this_thread::sleep_for(std::chrono::microseconds(300));
    }
  });
  int ok = 0, refused = 0;
  for (int i = 0; i < 300; ++i) {
    auto opened = Session::Open(TinyModel(), path);
    if (opened.ok()) {
      ++ok;
      EXPECT_EQ((*opened)->tokens(), s->tokens());
    } else {
      ++refused;
      EXPECT_NE(opened.status().message().find(path), std::string::npos);
    }
  }
  stop = true;
  truncator.join();
  RecordProperty("opens_ok", ok);
  RecordProperty("opens_refused", refused);
  EXPECT_GT(refused, 0);
  cases_ += refused;
  ExpectProcessStillUsable();
}

}  // namespace
}  // namespace kvstash
