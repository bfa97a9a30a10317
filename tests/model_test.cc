// Foundation: generated models load and decode with the AMX-free build; the generator and the
// fingerprint are deterministic and tell models apart.
#include <cmath>

#include "engine/fingerprint.h"
#include "format/meta_check.h"
#include "ggml.h"
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
