// Foundation: generated models load and decode with the AMX-free build; the generator and the
// fingerprint are deterministic and tell models apart.
#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>

#include "engine/fingerprint.h"
#include "engine/model_impl.h"
#include "format/meta_check.h"
#include "ggml.h"
#include "gguf.h"
#include "llama.h"
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

  SessionOptions room;
  room.n_room = 32;
  auto warm = Session::Open(*model, path, room);
  ASSERT_TRUE(warm.ok()) << warm.status().ToString();
  EXPECT_GT((*warm)->n_ctx(), 1024u);
  ASSERT_TRUE((*warm)->Append(" Question?").ok());
  auto warm_logits = (*warm)->Logits();
  ASSERT_TRUE(warm_logits.ok());
  EXPECT_EQ(*warm_logits, *cold_logits);

  SessionOptions small;
  small.n_ctx = 512;
  auto refused = Session::Open(*model, path, small);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), Status::Code::kIncompatible);
  EXPECT_NE(refused.status().message().find("LongRoPE"), std::string::npos);
}

}  // namespace
}  // namespace kvstash

namespace kvstash {
namespace {

// The families beyond plain attention: Session::Create still refuses them, so these tests drive a
// raw llama_context. What they check is the generator: llama.cpp loads each model as the family it
// claims to be, and a few hundred tokens (past any sliding window) decode to finite logits.

std::string WriteArchModel(TestArch arch, uint64_t seed = 1) {
  TestModelSpec spec;
  spec.arch = arch;
  spec.seed = seed;
  if (arch == TestArch::kQwen2) spec.vocab = TestVocab::kQwen2;
  const std::string path = testing::TempDir() + "/arch-" + std::to_string(int(arch)) + "-seed" +
                           std::to_string(seed) + ".gguf";
  Status status = WriteTestModel(spec, path);
  EXPECT_TRUE(status.ok()) << status.ToString();
  return path;
}

std::shared_ptr<Model> LoadArch(TestArch arch) {
  auto model = Model::Load(WriteArchModel(arch));
  EXPECT_TRUE(model.ok()) << model.status().ToString();
  return model.ok() ? *model : nullptr;
}

std::string MetaValue(const llama_model* model, const std::string& key) {
  char buf[256];
  const int32_t n = llama_model_meta_val_str(model, key.c_str(), buf, sizeof(buf));
  return n < 0 ? std::string() : std::string(buf);
}

// Real text, repeated up to n tokens (without BOS; the first decode call adds it).
std::vector<llama_token> TextTokens(const llama_vocab* vocab, size_t n) {
  std::string text;
  while (text.size() < n * 8) {
    text += "The quick brown fox jumps over the lazy dog 12345 times, and then it rests. ";
  }
  std::vector<llama_token> tokens(text.size() + 1);
  const int32_t got = llama_tokenize(vocab, text.c_str(), static_cast<int32_t>(text.size()),
                                     tokens.data(), static_cast<int32_t>(tokens.size()),
                                     /*add_special=*/true, /*parse_special=*/false);
  EXPECT_GT(got, 0);
  tokens.resize(std::min<size_t>(n, static_cast<size_t>(std::max(got, 0))));
  return tokens;
}

bool LastLogitsFinite(llama_context* ctx, int32_t n_vocab) {
  const float* logits = llama_get_logits_ith(ctx, -1);
  if (logits == nullptr) return false;
  for (int32_t i = 0; i < n_vocab; ++i) {
    if (!std::isfinite(logits[i])) return false;
  }
  return true;
}

struct RawDecode {
  size_t state_bytes_at_100 = 0;  // llama_state_seq_get_size after the first 100 tokens
  double ms = 0;
};

// Prefills n_prompt tokens in chunks of 50 (so every chunk boundary and the window are crossed),
// then generates 16 tokens one by one; every decode's last logits must be finite.
RawDecode DecodeRaw(const std::shared_ptr<Model>& model, size_t n_prompt) {
  RawDecode out;
  llama_model* m = ImplOf(*model)->model;
  const llama_vocab* vocab = llama_model_get_vocab(m);
  const int32_t n_vocab = llama_vocab_n_tokens(vocab);
  llama_context_params params = llama_context_default_params();
  params.n_ctx = 1024;
  params.n_batch = 512;
  params.n_ubatch = 512;
  params.n_seq_max = 1;
  params.n_threads = params.n_threads_batch = 2;
  llama_context* ctx = llama_init_from_model(m, params);
  EXPECT_NE(ctx, nullptr);
  if (ctx == nullptr) return out;
  const auto start = std::chrono::steady_clock::now();
  std::vector<llama_token> tokens = TextTokens(vocab, n_prompt);
  EXPECT_EQ(tokens.size(), n_prompt);
  for (size_t pos = 0; pos < tokens.size(); pos += 50) {
    const int32_t n = static_cast<int32_t>(std::min<size_t>(50, tokens.size() - pos));
    EXPECT_EQ(llama_decode(ctx, llama_batch_get_one(tokens.data() + pos, n)), 0) << pos;
    EXPECT_TRUE(LastLogitsFinite(ctx, n_vocab)) << "after " << pos + n << " tokens";
    if (pos + n == 100) out.state_bytes_at_100 = llama_state_seq_get_size(ctx, 0);
  }
  for (int i = 0; i < 16; ++i) {
    const float* logits = llama_get_logits_ith(ctx, -1);
    llama_token next =
        static_cast<llama_token>(std::max_element(logits, logits + n_vocab) - logits);
    EXPECT_EQ(llama_decode(ctx, llama_batch_get_one(&next, 1)), 0);
    EXPECT_TRUE(LastLogitsFinite(ctx, n_vocab)) << "generated token " << i;
  }
  out.ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  llama_free(ctx);
  return out;
}

void ReportState(const char* arch, const RawDecode& d) {
  std::printf("[ info ] %s tiny: state of 100 tokens %zu bytes, 316 tokens decoded in %.0f ms\n",
              arch, d.state_bytes_at_100, d.ms);
}

TEST(ArchModelTest, Gemma3SlidesA64TokenWindowEveryOtherLayer) {
  auto model = LoadArch(TestArch::kGemma3Swa);
  ASSERT_NE(model, nullptr);
  const llama_model* m = ImplOf(*model)->model;
  EXPECT_EQ(MetaValue(m, "general.architecture"), "gemma3");
  EXPECT_EQ(llama_model_n_swa(m), 64);
  EXPECT_FALSE(llama_model_is_recurrent(m));
  EXPECT_FALSE(llama_model_is_hybrid(m));
  const RawDecode d = DecodeRaw(model, 300);
  EXPECT_GT(d.state_bytes_at_100, 0u);
  ReportState("gemma3", d);
}

TEST(ArchModelTest, Gemma2TinyWindowIs64Tokens) {
  auto model = LoadArch(TestArch::kGemma2Swa);
  ASSERT_NE(model, nullptr);
  EXPECT_EQ(llama_model_n_swa(ImplOf(*model)->model), 64);
  ReportState("gemma2", DecodeRaw(model, 300));
}

TEST(ArchModelTest, Mamba2IsRecurrentAndStaysFinite) {
  auto model = LoadArch(TestArch::kMamba2);
  ASSERT_NE(model, nullptr);
  const llama_model* m = ImplOf(*model)->model;
  EXPECT_EQ(MetaValue(m, "general.architecture"), "mamba2");
  EXPECT_TRUE(llama_model_is_recurrent(m));
  EXPECT_FALSE(llama_model_is_hybrid(m));
  EXPECT_EQ(llama_model_n_swa(m), 0);
  const RawDecode d = DecodeRaw(model, 300);
  EXPECT_GT(d.state_bytes_at_100, 0u);
  ReportState("mamba2", d);
}

TEST(ArchModelTest, Lfm2IsHybrid) {
  auto model = LoadArch(TestArch::kLfm2Hybrid);
  ASSERT_NE(model, nullptr);
  const llama_model* m = ImplOf(*model)->model;
  EXPECT_EQ(MetaValue(m, "general.architecture"), "lfm2");
  EXPECT_TRUE(llama_model_is_hybrid(m));
  EXPECT_FALSE(llama_model_is_recurrent(m));
  EXPECT_EQ(llama_model_n_layer(m), 4);
  const RawDecode d = DecodeRaw(model, 300);
  EXPECT_GT(d.state_bytes_at_100, 0u);
  ReportState("lfm2", d);
}

TEST(ArchModelTest, Qwen3MoeRoutesTwoOfFourExperts) {
  auto model = LoadArch(TestArch::kQwen3Moe);
  ASSERT_NE(model, nullptr);
  const llama_model* m = ImplOf(*model)->model;
  EXPECT_EQ(MetaValue(m, "general.architecture"), "qwen3moe");
  EXPECT_EQ(MetaValue(m, "qwen3moe.expert_count"), "4");
  EXPECT_EQ(MetaValue(m, "qwen3moe.expert_used_count"), "2");
  EXPECT_FALSE(llama_model_is_recurrent(m));
  EXPECT_FALSE(llama_model_is_hybrid(m));
  ReportState("qwen3moe", DecodeRaw(model, 300));
}

// Size of each token's text: the qwen2 pre-tokenizer splits digits one by one, llama 3's keeps
// groups of up to three.
std::vector<size_t> PieceSizes(const std::shared_ptr<Model>& model, const std::string& text) {
  auto tokens = model->Tokenize(text, false);
  EXPECT_TRUE(tokens.ok()) << tokens.status().ToString();
  std::vector<size_t> sizes;
  if (!tokens.ok()) return sizes;
  for (Token t : *tokens) sizes.push_back(model->Detokenize({t}).size());
  return sizes;
}

TEST(ArchModelTest, Qwen2UsesTheQwen2PreTokenizer) {
  auto qwen = LoadArch(TestArch::kQwen2);
  ASSERT_NE(qwen, nullptr);
  EXPECT_EQ(MetaValue(ImplOf(*qwen)->model, "general.architecture"), "qwen2");
  EXPECT_EQ(MetaValue(ImplOf(*qwen)->model, "tokenizer.ggml.pre"), "qwen2");
  auto llama3 =
      Model::Load(testing::ModelPath(TestShape::kTiny, TestVocab::kBpe, TestWeightType::kF16, 1));
  ASSERT_TRUE(llama3.ok()) << llama3.status().ToString();
  const std::string text = "In 2024 we sold 1234567 apples.";
  const std::vector<size_t> q = PieceSizes(qwen, text), l = PieceSizes(*llama3, text);
  EXPECT_NE(q, l);
  EXPECT_EQ(PieceSizes(qwen, "1234567"), std::vector<size_t>(7, 1));
  EXPECT_EQ(PieceSizes(*llama3, "1234567"), (std::vector<size_t>{3, 3, 1}));
  ReportState("qwen2", DecodeRaw(qwen, 300));

  TestModelSpec spm_qwen;
  spm_qwen.arch = TestArch::kQwen2;
  Status refused = WriteTestModel(spm_qwen, testing::TempDir() + "/qwen2-spm.gguf");
  EXPECT_EQ(refused.code(), Status::Code::kInvalidArgument);
  EXPECT_NE(refused.message().find("--vocab qwen2"), std::string::npos) << refused.message();
}

TEST(ArchModelTest, EveryArchIsDeterministicAndSeedsDiffer) {
  for (TestArch arch : {TestArch::kGemma3Swa, TestArch::kMamba2, TestArch::kLfm2Hybrid,
                        TestArch::kQwen3Moe, TestArch::kQwen2}) {
    const std::string a = testing::ReadFile(WriteArchModel(arch, 7));
    const std::string b = testing::ReadFile(WriteArchModel(arch, 7));
    const std::string c = testing::ReadFile(WriteArchModel(arch, 8));
    EXPECT_EQ(a, b) << int(arch);
    EXPECT_EQ(a.size(), c.size()) << int(arch);
    EXPECT_NE(a, c) << int(arch);
  }
}

TEST(ArchModelTest, ParseTestArchNamesEveryArch) {
  for (const char* name :
       {"llama", "phi3", "gemma2", "gemma3", "mamba2", "lfm2", "qwen3moe", "qwen2"}) {
    EXPECT_TRUE(ParseTestArch(name).ok()) << name;
  }
  auto bad = ParseTestArch("rwkv");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("qwen3moe"), std::string::npos);
  EXPECT_TRUE(ParseTestVocab("qwen2").ok());
}

}  // namespace
}  // namespace kvstash
