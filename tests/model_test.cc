// Foundation: generated models load and decode with the AMX-free build; the generator and the
// fingerprint are deterministic and tell models apart.
#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmath>

#include "engine/fingerprint.h"
#include "format/meta_check.h"
#include "ggml.h"
#include "gguf.h"
#include "test_util.h"

namespace kvstash {
namespace {

using testing::ModelPath;
using testing::ReadFile;
using testing::TempDir;

// Tokenize, decode, generate; the logits must be finite and two runs identical.
std::vector<float> DecodeOnce(const std::shared_ptr<Model>& model, std::vector<Token>* generated) {
  auto s = Session::Create(model);
  if (!s.ok()) {
    ADD_FAILURE() << s.status().ToString();
    return {};
  }
  EXPECT_TRUE((*s)->Append("Hello world, this is a test of the generated model.").ok());
  auto logits = (*s)->Logits();
  if (!logits.ok()) {
    ADD_FAILURE() << logits.status().ToString();
    return {};
  }
  for (float v : *logits) EXPECT_TRUE(std::isfinite(v));
  SampleOptions greedy;
  greedy.n_predict = 8;
  auto gen = (*s)->Generate(greedy);
  if (!gen.ok()) {
    ADD_FAILURE() << gen.status().ToString();
    return {};
  }
  *generated = gen->tokens;
  return *logits;
}

TEST(ModelTest, TinyModelTokenizesAndDecodesDeterministically) {
  auto model = Model::Load(ModelPath(TestShape::kTiny, TestVocab::kSpm, TestWeightType::kF16, 1));
  ASSERT_TRUE(model.ok()) << model.status().ToString();
  auto tokens = (*model)->Tokenize("Hello world", true);
  ASSERT_TRUE(tokens.ok());
  EXPECT_EQ((*tokens)[0], 1);  // BOS of the llama spm vocabulary
  EXPECT_EQ((*model)->Detokenize({tokens->begin() + 1, tokens->end()}), " Hello world");
  std::vector<Token> gen1, gen2;
  auto a = DecodeOnce(*model, &gen1);
  auto b = DecodeOnce(*model, &gen2);
  EXPECT_EQ(a, b);
  EXPECT_EQ(gen1, gen2);
  EXPECT_EQ(gen1.size(), 8u);
}

// The AMX build of ggml crashes on q8_0 weights; these run q8_0 and f16 models of the small shape.
TEST(ModelTest, SmallQ8_0AndF16ModelsDecode) {
  for (auto type : {TestWeightType::kQ8_0, TestWeightType::kF16}) {
    for (auto vocab : {TestVocab::kSpm, TestVocab::kBpe}) {
      if (type == TestWeightType::kF16 && vocab == TestVocab::kBpe) continue;  // covered by spm
      auto model = Model::Load(ModelPath(TestShape::kSmall, vocab, type, 1));
      ASSERT_TRUE(model.ok()) << model.status().ToString();
      std::vector<Token> generated;
      DecodeOnce(*model, &generated);
      EXPECT_EQ(generated.size(), 8u);
    }
  }
}

TEST(ModelTest, GeneratorIsDeterministicAndSeedsDiffer) {
  const std::string a = TempDir() + "/gen-a.gguf", b = TempDir() + "/gen-b.gguf",
                    c = TempDir() + "/gen-c.gguf";
  TestModelSpec spec;
  spec.seed = 7;
  ASSERT_TRUE(WriteTestModel(spec, a).ok());
  ASSERT_TRUE(WriteTestModel(spec, b).ok());
  spec.seed = 8;
  ASSERT_TRUE(WriteTestModel(spec, c).ok());
  const std::string bytes_a = ReadFile(a), bytes_b = ReadFile(b), bytes_c = ReadFile(c);
  EXPECT_EQ(bytes_a, bytes_b);
  EXPECT_EQ(bytes_a.size(), bytes_c.size());
  EXPECT_NE(bytes_a, bytes_c);
}

TEST(ModelTest, FingerprintFollowsContentNotPath) {
  const std::string original =
      ModelPath(TestShape::kTiny, TestVocab::kSpm, TestWeightType::kF16, 1);
  const std::string copy = TempDir() + "/copied-model.gguf";
  testing::WriteFile(copy, ReadFile(original));
  auto a = engine::FingerprintGguf(original);
  auto b = engine::FingerprintGguf(copy);
  auto c = engine::FingerprintGguf(
      ModelPath(TestShape::kTiny, TestVocab::kSpm, TestWeightType::kF16, 2));
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  EXPECT_EQ(*a, *b);
  EXPECT_NE(*a, *c);
  // Same shape, other seed, q8_0 vs f16, spm vs bpe: all distinct.
  auto d = engine::FingerprintGguf(
      ModelPath(TestShape::kTiny, TestVocab::kSpm, TestWeightType::kQ8_0, 1));
  ASSERT_TRUE(d.ok());
  EXPECT_NE(*a, *d);
}

std::string WriteModel(const std::string& name, const TestModelSpec& spec) {
  const std::string path = TempDir() + "/" + name;
  Status status = WriteTestModel(spec, path);
  EXPECT_TRUE(status.ok()) << status.ToString();
  return path;
}

// Offset in the file of byte `fraction` of tensor `name`'s data, via ggml's own GGUF reader.
uint64_t TensorByteOffset(const std::string& path, const char* name, double fraction) {
  gguf_init_params params = {/*no_alloc=*/true, /*ctx=*/nullptr};
  gguf_context* ctx = gguf_init_from_file(path.c_str(), params);
  EXPECT_NE(ctx, nullptr);
  if (ctx == nullptr) return 0;
  const int64_t id = gguf_find_tensor(ctx, name);
  EXPECT_GE(id, 0);
  const uint64_t offset = gguf_get_data_offset(ctx) + gguf_get_tensor_offset(ctx, id) +
                          static_cast<uint64_t>(fraction * gguf_get_tensor_size(ctx, id));
  gguf_free(ctx);
  return offset;
}

// Flips one byte in place: same inode, same size.
void FlipByte(const std::string& path, uint64_t offset) {
  const int fd = open(path.c_str(), O_RDWR);
  ASSERT_GE(fd, 0);
  unsigned char b = 0;
  ASSERT_EQ(pread(fd, &b, 1, static_cast<off_t>(offset)), 1);
  b ^= 0x5a;
  ASSERT_EQ(pwrite(fd, &b, 1, static_cast<off_t>(offset)), 1);
  close(fd);
}

// The usual "fix untrained tokens" edit changes rows in the middle of token_embd, away from the
// three 4 KiB samples the old fingerprint hashed: such a model must not pass for the original.
TEST(ModelTest, EditingARowInTheMiddleOfTokenEmbdChangesTheFingerprint) {
  const std::string path = WriteModel("edited-embd.gguf", TestModelSpec{});
  auto before = engine::FingerprintGguf(path);
  ASSERT_TRUE(before.ok()) << before.status().ToString();
  FlipByte(path, TensorByteOffset(path, "token_embd.weight", 0.3));
  auto after = engine::FingerprintGguf(path);
  ASSERT_TRUE(after.ok()) << after.status().ToString();
  EXPECT_NE(*before, *after);
}

// Loads with the fingerprint cache in a directory of the test's own.
Result<std::shared_ptr<Model>> LoadWithCache(const std::string& path, const std::string& cache) {
  setenv("XDG_CACHE_HOME", cache.c_str(), 1);
  auto model = Model::Load(path);
  unsetenv("XDG_CACHE_HOME");
  return model;
}

TEST(ModelTest, CachedFingerprintIsReusedOnlyForTheSameFileVersion) {
  const std::string cache = TempDir() + "/xdg-cache";
  const std::string path = WriteModel("cached.gguf", TestModelSpec{});
  auto first = LoadWithCache(path, cache);
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  EXPECT_FALSE((*first)->fingerprint_from_cache());
  EXPECT_EQ((*first)->fingerprint(), *engine::FingerprintGguf(path));
  auto second = LoadWithCache(path, cache);
  ASSERT_TRUE(second.ok());
  EXPECT_TRUE((*second)->fingerprint_from_cache());
  EXPECT_EQ((*second)->fingerprint(), (*first)->fingerprint());

  // Edit in place and put the old mtime back: same inode, size and mtime, only ctime differs.
  struct stat st;
  ASSERT_EQ(stat(path.c_str(), &st), 0);
  usleep(20000);  // let the clock move past the ctime the cache recorded
  FlipByte(path, TensorByteOffset(path, "token_embd.weight", 0.6));
  const struct timespec times[2] = {st.st_atim, st.st_mtim};
  ASSERT_EQ(utimensat(AT_FDCWD, path.c_str(), times, 0), 0);
  auto edited = LoadWithCache(path, cache);
  ASSERT_TRUE(edited.ok());
  EXPECT_FALSE((*edited)->fingerprint_from_cache());
  EXPECT_NE((*edited)->fingerprint(), (*first)->fingerprint());
  EXPECT_EQ((*edited)->fingerprint(), *engine::FingerprintGguf(path));
}

TEST(ModelTest, DamagedCacheEntriesAreIgnored) {
  const std::string cache = TempDir() + "/xdg-cache-damaged";
  const std::string path = WriteModel("cached-damaged.gguf", TestModelSpec{});
  ASSERT_TRUE(LoadWithCache(path, cache).ok());
  const std::string dir = cache + "/kvstash/fingerprints";
  struct stat st;
  ASSERT_EQ(stat(path.c_str(), &st), 0);
  const std::string entry = dir + "/" + std::to_string(st.st_dev) + "-" + std::to_string(st.st_ino);
  std::string bytes = ReadFile(entry);
  ASSERT_FALSE(bytes.empty());
  for (const std::string& damaged :
       {bytes.substr(0, bytes.size() / 2), bytes + "x", std::string(bytes.size(), '\0'),
        bytes.substr(0, 48) + std::string(16, '\x11') + bytes.substr(64)}) {
    testing::WriteFile(entry, damaged);
    auto model = LoadWithCache(path, cache);
    ASSERT_TRUE(model.ok()) << model.status().ToString();
    EXPECT_FALSE((*model)->fingerprint_from_cache());
    EXPECT_EQ((*model)->fingerprint(), *engine::FingerprintGguf(path));
  }
}

// Model::Load hashes through the descriptor it opened before llama.cpp's load and then checks that
// the path still names that file: a model replaced or edited meanwhile is an error, not a
// fingerprint of bytes llama.cpp never loaded.
TEST(ModelTest, ModelFileNoticesAReplacedOrEditedFile) {
  const std::string path = WriteModel("replaced.gguf", TestModelSpec{});
  auto file = engine::ModelFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  EXPECT_TRUE((*file)->CheckPathUnchanged().ok());
  TestModelSpec other;
  other.seed = 2;
  ASSERT_TRUE(WriteTestModel(other, path).ok());  // renamed over: a new inode at the same path
  Status replaced = (*file)->CheckPathUnchanged();
  EXPECT_EQ(replaced.code(), Status::Code::kIOError);
  EXPECT_NE(replaced.message().find("changed while kvstash loaded it"), std::string::npos)
      << replaced.message();
  // Unlinking the old file changed its ctime too, so hashing through the descriptor refuses as
  // well (conservative: Load has already failed on the path by then).
  EXPECT_FALSE(engine::FingerprintModelFile(**file, "").ok());

  auto edited = engine::ModelFile::Open(path);
  ASSERT_TRUE(edited.ok());
  usleep(20000);
  FlipByte(path, TensorByteOffset(path, "token_embd.weight", 0.5));
  EXPECT_EQ((*edited)->CheckFdUnchanged().code(), Status::Code::kIOError);
  EXPECT_FALSE(engine::FingerprintModelFile(**edited, "").ok());
}

// Vocabularies with add_eos made add_special append EOS: a saved prefix ended in an EOS nobody
// wrote, and a one-byte text needed 4 tokens in a buffer of 3.
TEST(ModelTest, TokenizeNeverAppendsEosAndFitsBosPlusByteTokens) {
  TestModelSpec spec;
  spec.add_eos = true;
  auto model = Model::Load(WriteModel("add-eos.gguf", spec));
  ASSERT_TRUE(model.ok()) << model.status().ToString();
  auto tokens = (*model)->Tokenize("Hello world", true);
  ASSERT_TRUE(tokens.ok()) << tokens.status().ToString();
  ASSERT_GE(tokens->size(), 2u);
  EXPECT_EQ(tokens->front(), 1);  // BOS
  EXPECT_NE(tokens->back(), 2);   // EOS of the llama spm vocabulary
  auto one_byte = (*model)->Tokenize("\x01", true);
  ASSERT_TRUE(one_byte.ok()) << one_byte.status().ToString();
  EXPECT_NE(one_byte->back(), 2);
  auto s = Session::Create(*model);
  ASSERT_TRUE(s.ok());
  ASSERT_TRUE((*s)->Append("A prefix to save.").ok());
  ASSERT_FALSE((*s)->tokens().empty());
  EXPECT_NE((*s)->tokens().back(), 2);
  // An EOS the user did write stays.
  auto written = (*model)->Tokenize("end</s>", false);
  ASSERT_TRUE(written.ok());
  ASSERT_FALSE(written->empty());
  EXPECT_EQ(written->back(), 2);
}

std::vector<float> LogitsWithContext(const std::shared_ptr<Model>& model, uint32_t n_ctx) {
  SessionOptions options;
  options.n_ctx = n_ctx;
  auto s = Session::Create(model, options);
  EXPECT_TRUE(s.ok()) << s.status().ToString();
  if (!s.ok()) return {};
  EXPECT_TRUE((*s)->Append("Hello world, this is a test of LongRoPE.").ok());
  auto logits = (*s)->Logits();
  EXPECT_TRUE(logits.ok());
  return logits.ok() ? *logits : std::vector<float>{};
}

// The phi3 test model has LongRoPE factors; the engine reports them and the line where llama.cpp
// switches, and the switch is real: the same tokens give other logits on the other side.
TEST(ModelTest, LongRopeModelsReportTheirRegimeLine) {
  TestModelSpec spec;
  spec.arch = TestArch::kPhi3LongRope;
  auto model = Model::Load(WriteModel("phi3-longrope.gguf", spec));
  ASSERT_TRUE(model.ok()) << model.status().ToString();
  EXPECT_TRUE((*model)->uses_long_rope());
  EXPECT_EQ((*model)->n_ctx_orig(), 1024u);
  EXPECT_EQ((*model)->n_ctx_train(), 4096);
  EXPECT_FALSE(testing::TinyModel()->uses_long_rope());
  const auto short_a = LogitsWithContext(*model, 512);
  const auto short_b = LogitsWithContext(*model, 1024);
  const auto long_a = LogitsWithContext(*model, 2048);
  ASSERT_FALSE(short_a.empty());
  EXPECT_EQ(short_a, short_b);
  EXPECT_NE(short_a, long_a);
}

TEST(ModelTest, MissingAndBogusModelsGiveClearErrors) {
  auto missing = Model::Load(TempDir() + "/nope.gguf");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), Status::Code::kNotFound);
  EXPECT_NE(missing.status().message().find("does not exist"), std::string::npos);
  const std::string bogus = TempDir() + "/bogus.gguf";
  testing::WriteFile(bogus, "this is not a model");
  auto bad = Model::Load(bogus);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("cannot load model"), std::string::npos);
  auto dir = Model::Load(TempDir());
  ASSERT_FALSE(dir.ok());
  EXPECT_NE(dir.status().message().find("not a regular file"), std::string::npos);
}

}  // namespace
}  // namespace kvstash

namespace kvstash {
namespace {

// format/meta_check.h keeps its own table of KV cache types (src/format has no ggml.h): it must
// agree with ggml on every id, name and block geometry.
TEST(CacheTypeTableTest, AgreesWithGgml) {
  for (const format::CacheType& t : format::kCacheTypes) {
    const auto type = static_cast<ggml_type>(t.id);
    EXPECT_STREQ(ggml_type_name(type), t.name) << t.id;
    EXPECT_EQ(ggml_blck_size(type), int64_t(t.block_elems)) << t.name;
    EXPECT_EQ(ggml_type_size(type), size_t(t.block_bytes)) << t.name;
    EXPECT_EQ(ggml_is_quantized(type), t.quantized) << t.name;
  }
}

}  // namespace
}  // namespace kvstash

namespace kvstash {
namespace {

// A LongRoPE session saved above the model's regime line: a run sized to its room stays above the
// line and matches a cold run; a -c below the line is refused instead of mixing rotations.
TEST(LongRopeSessionTest, OpenKeepsOrRefusesTheRegime) {
  TestModelSpec spec;
  spec.arch = TestArch::kPhi3LongRope;
  const std::string model_path = testing::TempDir() + "/phi3-session.gguf";
  ASSERT_TRUE(WriteTestModel(spec, model_path).ok());
  auto model = Model::Load(model_path);
  ASSERT_TRUE(model.ok()) << model.status().ToString();
  ASSERT_EQ((*model)->n_ctx_orig(), 1024u);
  SessionOptions options;
  options.n_ctx = 2048;  // long factors
  auto cold = Session::Create(*model, options);
  ASSERT_TRUE(cold.ok()) << cold.status().ToString();
  ASSERT_TRUE((*cold)->Append("A system prompt for a LongRoPE model.").ok());
  const std::string path = testing::TempDir() + "/phi3.kvs";
  ASSERT_TRUE((*cold)->Save(path).ok());
  ASSERT_TRUE((*cold)->Append(" Question?").ok());
  auto cold_logits = (*cold)->Logits();
  ASSERT_TRUE(cold_logits.ok());

  OpenOptions room;
  room.n_room = 32;
  auto warm = Session::Open(*model, path, room);
  ASSERT_TRUE(warm.ok()) << warm.status().ToString();
  EXPECT_GT((*warm)->n_ctx(), 1024u);
  ASSERT_TRUE((*warm)->Append(" Question?").ok());
  auto warm_logits = (*warm)->Logits();
  ASSERT_TRUE(warm_logits.ok());
  EXPECT_EQ(*warm_logits, *cold_logits);

  OpenOptions small;
  small.n_ctx = 512;
  auto refused = Session::Open(*model, path, small);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), Status::Code::kIncompatible);
  EXPECT_NE(refused.status().message().find("LongRoPE"), std::string::npos);
}

}  // namespace
}  // namespace kvstash
