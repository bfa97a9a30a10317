// One sequence engine, three paths: the same prompts through Session (one group per append),
// Session + prefix store (chunk-aligned groups, cold and warm) and BatchEngine (1 and 4 slots,
// prompts together, with and without a store) give bit-equal logits after each prompt and the
// same greedy tokens, for every model family. Flash attention is off: an invariant context.
#include <gtest/gtest.h>

#include <cstring>
#include <map>
#include <random>

#include "engine/batch_engine.h"
#include "kvstash/store.h"
#include "test_util.h"

namespace kvstash {
namespace {

using engine::BatchEngine;
using engine::BatchEngineOptions;
using testing::TempDir;

constexpr uint32_t kChunk = 32;
constexpr int kGenerate = 4;

struct Family {
  const char* name;
  TestArch arch;
};

std::shared_ptr<Model> FamilyModel(const Family& family) {
  static std::map<std::string, std::shared_ptr<Model>> models;
  auto& m = models[family.name];
  if (m) return m;
  TestModelSpec spec;
  spec.arch = family.arch;
  if (family.arch == TestArch::kQwen2) spec.vocab = TestVocab::kQwen2;
  const std::string path = TempDir() + "/paths-" + family.name + ".gguf";
  Status written = WriteTestModel(spec, path);
  EXPECT_TRUE(written.ok()) << written.ToString();
  ModelOptions load;
  load.repack_weights = false;  // one kernel for every batch size (an invariant context)
  auto loaded = Model::Load(path, load);
  EXPECT_TRUE(loaded.ok()) << loaded.status().ToString();
  if (loaded.ok()) m = *loaded;
  return m;
}

std::vector<Token> RandomTokens(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<Token> out(n);
  for (auto& t : out) t = 100 + static_cast<Token>(rng() % 200);
  return out;
}

// What one path gives for one prompt.
struct Answer {
  std::vector<float> logits;  // after the prompt
  std::vector<Token> greedy;  // the next kGenerate tokens, or up to end of generation
  bool ended = false;
};

SessionOptions Options() {
  SessionOptions o;
  o.n_ctx = 512;
  o.flash_attn = FlashAttention::kOff;
  return o;
}

Answer FromSession(Session& s) {
  Answer a;
  auto logits = s.Logits();
  EXPECT_TRUE(logits.ok()) << logits.status().ToString();
  if (logits.ok()) a.logits = *logits;
  SampleOptions greedy;
  greedy.temp = 0;
  greedy.n_predict = kGenerate;
  auto gen = s.Generate(greedy);
  EXPECT_TRUE(gen.ok()) << gen.status().ToString();
  if (gen.ok()) a.greedy = gen->tokens;
  return a;
}

Answer Plain(std::shared_ptr<Model> model, const std::vector<Token>& prompt) {
  auto s = Session::Create(model, Options());
  EXPECT_TRUE(s.ok()) << s.status().ToString();
  if (!s.ok()) return {};
  EXPECT_TRUE((*s)->AppendTokens(prompt).ok());
  return FromSession(**s);
}

Answer ThroughStore(std::shared_ptr<Model> model, Store& store, const std::vector<Token>& prompt,
                    size_t* restored) {
  auto s = Session::Create(model, Options());
  EXPECT_TRUE(s.ok()) << s.status().ToString();
  if (!s.ok()) return {};
  auto synced = (*s)->Sync(prompt, store);
  EXPECT_TRUE(synced.ok()) << synced.status().ToString();
  if (synced.ok()) *restored += synced->n_restored;
  Answer a = FromSession(**s);
  s->reset();  // the session's end hands its chunks over
  store.WaitForWrites();
  return a;
}

// All prompts begun together on an engine of `n_slots` slots (more prompts than slots: in waves).
std::vector<Answer> Batched(std::shared_ptr<Model> model, uint32_t n_slots,
                            std::shared_ptr<Store> store,
                            const std::vector<std::vector<Token>>& prompts) {
  BatchEngineOptions o;
  o.n_slots = n_slots;
  o.n_ctx_slot = 512;
  o.chunk_tokens = kChunk;
  auto engine = BatchEngine::Create(model, o, store);
  EXPECT_TRUE(engine.ok()) << engine.status().ToString();
  std::vector<Answer> answers(prompts.size());
  if (!engine.ok()) return answers;
  BatchEngine& e = **engine;
  EXPECT_TRUE(e.batch_invariant()) << e.Describe();
  SampleOptions greedy;
  greedy.temp = 0;
  for (size_t first = 0; first < prompts.size(); first += n_slots) {
    std::map<int, size_t> prompt_of;
    for (size_t p = first; p < std::min(prompts.size(), first + n_slots); ++p) {
      const int slot = static_cast<int>(p - first);
      e.Begin(slot, prompts[p], greedy);
      prompt_of[slot] = p;
    }
    std::vector<int> ready, failed;
    while (e.HasWork()) {
      const Status status = e.Step(&ready, &failed);
      EXPECT_TRUE(status.ok()) << status.ToString();
      if (!status.ok()) return answers;
      for (int slot : ready) {
        Answer& a = answers[prompt_of[slot]];
        const float* logits = e.Logits(slot);
        EXPECT_NE(logits, nullptr);
        if (logits == nullptr) return answers;
        if (a.logits.empty()) a.logits.assign(logits, logits + model->n_vocab());
        if (a.ended || a.greedy.size() == kGenerate) continue;
        const Token t = e.Sample(slot);
        a.ended = model->IsEndOfGeneration(t);
        if (!a.ended) a.greedy.push_back(t);
      }
    }
    for (const auto& entry : prompt_of) e.End(entry.first);
  }
  if (store) store->WaitForWrites();
  return answers;
}

void ExpectSame(const Answer& got, const Answer& want, const std::string& what) {
  ASSERT_EQ(got.logits.size(), want.logits.size()) << what;
  EXPECT_EQ(std::memcmp(got.logits.data(), want.logits.data(), want.logits.size() * 4), 0)
      << what << ": logits differ";
  EXPECT_EQ(got.greedy, want.greedy) << what;
}

class EnginePathsTest : public ::testing::TestWithParam<Family> {};

TEST_P(EnginePathsTest, EveryPathGivesTheSameLogits) {
  auto model = FamilyModel(GetParam());
  ASSERT_TRUE(model);
  const std::vector<Token> base = RandomTokens(5 * kChunk + 9, 1);
  const std::vector<std::vector<Token>> prompts = {
      base,
      std::vector<Token>(base.begin(), base.begin() + 3 * kChunk),  // ends on a boundary
      [&] {                                                         // diverges inside chunk 3
        std::vector<Token> p(base.begin(), base.begin() + 2 * kChunk + 7);
        const std::vector<Token> tail = RandomTokens(40, 2);
        p.insert(p.end(), tail.begin(), tail.end());
        return p;
      }(),
      RandomTokens(kChunk - 3, 3),  // shorter than a chunk
      base,                         // again: the slot's own cache or the warm store
  };
  std::vector<Answer> reference;
  for (const auto& p : prompts) reference.push_back(Plain(model, p));

  auto store = testing::NewTestStore(std::string("paths-") + GetParam().name, kChunk);
  ASSERT_TRUE(store);
  size_t restored = 0;
  for (int round = 0; round < 2; ++round) {  // cold, then warm
    for (size_t p = 0; p < prompts.size(); ++p) {
      ExpectSame(
          ThroughStore(model, *store, prompts[p], &restored), reference[p],
          "Session + store, round " + std::to_string(round) + ", prompt " + std::to_string(p));
    }
  }
  EXPECT_GT(restored, 0u) << "the warm round restored nothing";

  for (uint32_t n_slots : {1u, 4u}) {
    for (bool with_store : {false, true}) {
      const auto answers = Batched(model, n_slots, with_store ? store : nullptr, prompts);
      for (size_t p = 0; p < prompts.size(); ++p) {
        ExpectSame(answers[p], reference[p],
                   "BatchEngine " + std::to_string(n_slots) + " slot(s)" +
                       (with_store ? " + store" : "") + ", prompt " + std::to_string(p));
      }
    }
  }
}

const Family kFamilies[] = {
    {"llama", TestArch::kLlama},       {"qwen2", TestArch::kQwen2},
    {"qwen3moe", TestArch::kQwen3Moe}, {"phi3", TestArch::kPhi3LongRope},
    {"gemma2", TestArch::kGemma2Swa},  {"gemma3", TestArch::kGemma3Swa},
    {"mamba2", TestArch::kMamba2},     {"lfm2", TestArch::kLfm2Hybrid},
};

INSTANTIATE_TEST_SUITE_P(Families, EnginePathsTest, ::testing::ValuesIn(kFamilies),
                         [](const auto& info) { return std::string(info.param.name); });

}  // namespace
}  // namespace kvstash
