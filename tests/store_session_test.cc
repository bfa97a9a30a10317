// Session::Sync through a prefix store, against llama.cpp: a warm store gives bit-identical logits
// and text to an empty one, wherever the prompt ends or diverges, with either V layout; bad chunks
// are misses.
#include <gtest/gtest.h>

#include <cstring>
#include <random>

#include "engine/context.h"
#include "kvstash/store.h"
#include "test_util.h"

namespace kvstash {
namespace {

using testing::TempDir;
using testing::TinyModel;

constexpr uint32_t kChunk = 16;

std::vector<Token> RandomTokens(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<Token> out(n);
  for (auto& t : out) t = 100 + static_cast<Token>(rng() % 20000);
  return out;
}

std::vector<Token> Concat(std::vector<Token> a, const std::vector<Token>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

std::shared_ptr<Store> NewStore(const std::string& name, uint32_t chunk = kChunk) {
  return testing::NewTestStore(name, chunk);
}

struct Outcome {
  SyncResult sync;
  std::vector<float> logits;
  std::string greedy;
  std::string seeded;
};

// A fresh session synced to `tokens` through `store`, then its logits and two generations (each
// from the synced state: the session is synced again in between, which decodes nothing new).
Outcome SyncAndGenerate(Store& store, const std::vector<Token>& tokens,
                        SessionOptions options = {}) {
  Outcome out;
  options.n_ctx = 1024;
  auto s = Session::Create(TinyModel(), options);
  EXPECT_TRUE(s.ok()) << s.status().ToString();
  if (!s.ok()) return out;
  auto synced = (*s)->Sync(tokens, store);
  EXPECT_TRUE(synced.ok()) << synced.status().ToString();
  if (!synced.ok()) return out;
  out.sync = *synced;
  auto logits = (*s)->Logits();
  EXPECT_TRUE(logits.ok());
  if (logits.ok()) out.logits = *logits;
  SampleOptions greedy;
  greedy.temp = 0;
  greedy.n_predict = 12;
  auto g = (*s)->Generate(greedy);
  EXPECT_TRUE(g.ok());
  if (g.ok()) out.greedy = g->text;
  EXPECT_TRUE((*s)->Sync(tokens).ok());
  SampleOptions seeded;
  seeded.temp = 0.8f;
  seeded.seed = 42;
  seeded.n_predict = 12;
  auto r = (*s)->Generate(seeded);
  EXPECT_TRUE(r.ok());
  if (r.ok()) out.seeded = r->text;
  store.WaitForWrites();
  return out;
}

void ExpectSame(const Outcome& warm, const Outcome& cold, const std::string& what) {
  ASSERT_EQ(warm.logits.size(), cold.logits.size()) << what;
  ASSERT_FALSE(warm.logits.empty()) << what;
  EXPECT_EQ(std::memcmp(warm.logits.data(), cold.logits.data(), warm.logits.size() * 4), 0)
      << what << ": logits differ";
  EXPECT_EQ(warm.greedy, cold.greedy) << what;
  EXPECT_EQ(warm.seeded, cold.seeded) << what;
}

class StoreSessionTest : public ::testing::TestWithParam<FlashAttention> {
 protected:
  SessionOptions Options() const {
    SessionOptions o;
    o.flash_attn = GetParam();
    return o;
  }
};

// Prompts shorter than a chunk, ending exactly on a boundary, ending inside a chunk, and diverging
// inside a cached chunk: each warm run (store filled by an earlier prompt) equals the cold run of
// the same tokens (empty store), bit for bit.
TEST_P(StoreSessionTest, WarmEqualsColdWhereverThePromptEnds) {
  const std::vector<Token> base = RandomTokens(5 * kChunk + 7, 1);
  auto warm_store = NewStore("warm");
  ASSERT_TRUE(warm_store);
  const Outcome first = SyncAndGenerate(*warm_store, base, Options());
  EXPECT_EQ(first.sync.n_reused, 0u);
  EXPECT_EQ(first.sync.n_decoded, base.size());
  EXPECT_EQ(first.sync.n_published, 5 * kChunk);

  struct Case {
    std::string name;
    std::vector<Token> tokens;
    size_t expect_restored;
  };
  const std::vector<Token> diverged =
      Concat(std::vector<Token>(base.begin(), base.begin() + 2 * kChunk + 5), RandomTokens(40, 2));
  const std::vector<Case> cases = {
      {"shorter than a chunk", std::vector<Token>(base.begin(), base.begin() + kChunk - 3), 0},
      {"exactly on a boundary", std::vector<Token>(base.begin(), base.begin() + 3 * kChunk),
       2 * kChunk},  // the chunk holding the last token is decoded, for its logits
      {"inside a chunk", std::vector<Token>(base.begin(), base.begin() + 4 * kChunk + 3),
       4 * kChunk},
      {"the same prompt", base, 5 * kChunk},
      {"diverging inside a cached chunk", diverged, 2 * kChunk},
      {"extending the prompt", Concat(base, RandomTokens(50, 3)), 5 * kChunk},
  };
  for (const Case& c : cases) {
    const Outcome warm = SyncAndGenerate(*warm_store, c.tokens, Options());
    auto cold_store = NewStore("cold");
    ASSERT_TRUE(cold_store);
    const Outcome cold = SyncAndGenerate(*cold_store, c.tokens, Options());
    EXPECT_EQ(cold.sync.n_restored, 0u) << c.name;
    EXPECT_EQ(warm.sync.n_restored, c.expect_restored) << c.name;
    EXPECT_EQ(warm.sync.n_reused + warm.sync.n_decoded, c.tokens.size()) << c.name;
    ExpectSame(warm, cold, c.name);
  }
}

// One session over several turns: what it keeps of its own cache is what a cold aligned decode
// would have computed (whole chunks decoded aligned, or every token in an invariant context), so
// turn k equals a fresh cold run of turn k's tokens.
TEST_P(StoreSessionTest, TurnsInOneSessionEqualFreshColdRuns) {
  auto store = NewStore("turns");
  ASSERT_TRUE(store);
  auto s = Session::Create(TinyModel(), [&] {
    SessionOptions o = Options();
    o.n_ctx = 1024;
    return o;
  }());
  ASSERT_TRUE(s.ok());
  std::vector<Token> conversation = RandomTokens(3 * kChunk + 4, 7);
  for (int turn = 0; turn < 3; ++turn) {
    auto synced = (*s)->Sync(conversation, *store);
    ASSERT_TRUE(synced.ok()) << synced.status().ToString();
    // Without invariance only whole chunks decoded aligned are kept; an invariant context (flash
    // attention off here) keeps every token it decoded, generated ones included.
    if (GetParam() != FlashAttention::kOff) {
      EXPECT_EQ(synced->n_reused % kChunk, 0u);
    }
    if (turn > 0) {
      EXPECT_GT(synced->n_reused, 0u);
    }
    auto logits = (*s)->Logits();
    ASSERT_TRUE(logits.ok());
    auto cold_store = NewStore("turns-cold");
    ASSERT_TRUE(cold_store);
    const Outcome cold = SyncAndGenerate(*cold_store, conversation, Options());
    ASSERT_EQ(logits->size(), cold.logits.size());
    EXPECT_EQ(std::memcmp(logits->data(), cold.logits.data(), logits->size() * 4), 0)
        << "turn " << turn;
    SampleOptions greedy;
    greedy.temp = 0;
    greedy.n_predict = 6;
    auto answer = (*s)->Generate(greedy);
    ASSERT_TRUE(answer.ok());
    // The next turn: the conversation so far, the answer, a new question.
    conversation = Concat(Concat(conversation, answer->tokens), RandomTokens(20, 100 + turn));
  }
}

// Create(model, options, tokens, store): the chunks fetched while the context is created give the
// same session as Create + Sync.
TEST_P(StoreSessionTest, CreateThroughStoreEqualsCreateThenSync) {
  auto store = NewStore("create");
  ASSERT_TRUE(store);
  const std::vector<Token> tokens = RandomTokens(4 * kChunk + 9, 21);
  const Outcome cold = SyncAndGenerate(*store, tokens, Options());
  for (int round = 0; round < 2; ++round) {  // the second: the flash attention guess remembered
    SessionOptions o = Options();
    o.n_ctx = 1024;
    SyncResult r;
    auto s = Session::Create(TinyModel(), o, tokens, *store, {}, &r);
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    EXPECT_EQ(r.n_restored, 4 * kChunk);
    EXPECT_EQ((*s)->tokens(), tokens);
    auto logits = (*s)->Logits();
    ASSERT_TRUE(logits.ok());
    ASSERT_EQ(logits->size(), cold.logits.size());
    EXPECT_EQ(std::memcmp(logits->data(), cold.logits.data(), logits->size() * 4), 0);
  }
}

INSTANTIATE_TEST_SUITE_P(VLayouts, StoreSessionTest,
                         ::testing::Values(FlashAttention::kOn, FlashAttention::kOff,
                                           FlashAttention::kAuto),
                         [](const ::testing::TestParamInfo<FlashAttention>& info) {
                           return info.param == FlashAttention::kOn    ? std::string("FlashOn")
                                  : info.param == FlashAttention::kOff ? std::string("FlashOff")
                                                                       : std::string("Auto");
                         });

// Flash attention "auto" is resolved by kvstash before the context exists (so a store's namespace
// is known without a probe decode), and the V layout llama.cpp then keeps is the one resolved.
TEST(StoreSessionFaultTest, FlashAttentionAutoIsResolvedBeforeTheContext) {
  EXPECT_TRUE(engine::ResolveFlashAttn(*TinyModel(), FlashAttention::kAuto));
  auto s = Session::Create(TinyModel());
  ASSERT_TRUE(s.ok());
  ASSERT_TRUE((*s)->Append("The V layout of one token tells.").ok());
  const std::string path = TempDir() + "/fa-auto.kvs";
  ASSERT_TRUE((*s)->Save(path).ok());
  auto info = InspectSessionFile(path);
  ASSERT_TRUE(info.ok());
  EXPECT_TRUE(info->meta.flash_attn) << "llama.cpp kept V transposed: flash attention was off";
}

// A session restored from a file holds KV this context did not compute (another build may have):
// decoding after it, even in a batch-invariant context, makes none of it exact, so a later sync
// through a store decodes the prompt itself rather than reuse and publish the file's cells.
TEST(StoreSessionFaultTest, RestoredCellsNeverBecomeExact) {
  ModelOptions load;
  load.repack_weights = false;
  auto model = Model::Load(
      testing::ModelPath(TestShape::kTiny, TestVocab::kSpm, TestWeightType::kF16, 1), load);
  ASSERT_TRUE(model.ok()) << model.status().ToString();
  SessionOptions options;
  options.n_ctx = 1024;
  options.flash_attn = FlashAttention::kOff;
  const std::vector<Token> prompt = RandomTokens(3 * kChunk + 5, 61);
  const std::string path = TempDir() + "/restored.kvs";
  {
    auto a = Session::Create(*model, options);
    ASSERT_TRUE(a.ok()) << a.status().ToString();
    ASSERT_TRUE((*a)->Sync(prompt).ok());
    ASSERT_TRUE((*a)->Save(path).ok());
  }
  auto b = Session::Open(*model, path, options);
  ASSERT_TRUE(b.ok()) << b.status().ToString();
  ASSERT_TRUE((*b)->Sync(Concat(prompt, RandomTokens(3, 62))).ok());  // decodes 3 more, no store
  auto store = NewStore("restored");
  auto synced = (*b)->Sync(Concat(prompt, RandomTokens(9, 62)), *store);
  ASSERT_TRUE(synced.ok()) << synced.status().ToString();
  EXPECT_EQ(synced->n_reused, 0u) << "the file's cells were reused as exact";
}

// A damaged chunk is a miss: the answer is the cold one, and the next publish replaces the file.
TEST(StoreSessionFaultTest, DamagedChunkIsAMissAndIsReplaced) {
  auto store = NewStore("damaged");
  ASSERT_TRUE(store);
  const std::vector<Token> tokens = RandomTokens(4 * kChunk + 2, 11);
  const Outcome cold = SyncAndGenerate(*store, tokens);
  auto chunks = store->List();
  ASSERT_TRUE(chunks.ok());
  ASSERT_EQ(chunks->size(), 4u);
  const ChunkInfo* second = nullptr;
  for (const auto& c : *chunks)
    if (c.index == 2) second = &c;
  ASSERT_NE(second, nullptr);
  std::string bytes = testing::ReadFile(second->path);
  ASSERT_GT(bytes.size(), 1000u);
  bytes[bytes.size() - 100] ^= 0x40;
  testing::WriteFile(second->path, bytes);
  auto verify = store->Verify();
  ASSERT_TRUE(verify.ok());
  EXPECT_EQ(verify->bad.size(), 1u);

  const Outcome warm = SyncAndGenerate(*store, tokens);
  EXPECT_EQ(warm.sync.n_restored, kChunk);  // chunk 1 only
  ExpectSame(warm, cold, "damaged chunk 2");
  verify = store->Verify();
  ASSERT_TRUE(verify.ok());
  EXPECT_TRUE(verify->bad.empty()) << verify->bad.front();
  EXPECT_EQ(SyncAndGenerate(*store, tokens).sync.n_restored, 4 * kChunk);
}

// The new chunks are copied out after the answer's first token, not before it: a store Sync
// leaves them pending, Generate's first token hands them over, and so does the session's end.
TEST(StoreSessionFaultTest, NewChunksAreHandedOverAfterTheFirstToken) {
  auto store = NewStore("deferred");
  ASSERT_TRUE(store);
  const std::vector<Token> tokens = RandomTokens(3 * kChunk + 5, 31);
  auto s = Session::Create(TinyModel());
  ASSERT_TRUE(s.ok());
  auto synced = (*s)->Sync(tokens, *store);
  ASSERT_TRUE(synced.ok());
  EXPECT_EQ(synced->n_published, 3 * kChunk);
  store->WaitForWrites();
  EXPECT_EQ(store->Stats()->chunks, 0u) << "copied out before the first token";
  SampleOptions one;
  one.temp = 0;
  one.n_predict = 1;
  ASSERT_TRUE((*s)->Generate(one).ok());
  store->WaitForWrites();
  EXPECT_EQ(store->Stats()->chunks, 3u);
  // Without a Generate: at the session's end; and a changed prompt first hands over the last one.
  const std::vector<Token> other = RandomTokens(2 * kChunk + 1, 32);
  ASSERT_TRUE((*s)->Sync(other, *store).ok());
  ASSERT_TRUE((*s)->Sync(Concat(other, RandomTokens(kChunk, 33)), *store).ok());
  store->WaitForWrites();
  EXPECT_EQ(store->Stats()->chunks, 5u);
  s->reset();
  store->WaitForWrites();
  EXPECT_EQ(store->Stats()->chunks, 6u);
  // What was handed over is right: a fresh run restores it and equals a cold one.
  const auto longer = Concat(other, RandomTokens(kChunk, 33));
  auto cold_store = NewStore("deferred-cold");
  const Outcome cold = SyncAndGenerate(*cold_store, longer);
  const Outcome warm = SyncAndGenerate(*store, longer);
  EXPECT_EQ(warm.sync.n_restored, 3 * kChunk);
  ExpectSame(warm, cold, "deferred chunks");
}

// Other cache types and another model's weights (same shape) live in other namespaces: no hits.
TEST(StoreSessionFaultTest, OtherSettingsAndModelsDoNotHit) {
  auto store = NewStore("namespaces");
  ASSERT_TRUE(store);
  const std::vector<Token> tokens = RandomTokens(3 * kChunk + 1, 12);
  SyncAndGenerate(*store, tokens);
  SessionOptions q8;
  q8.cache_type_k = "q8_0";
  EXPECT_EQ(SyncAndGenerate(*store, tokens, q8).sync.n_restored, 0u);
  SessionOptions ub;
  ub.n_ubatch = 8;  // smaller than a chunk: a chunk is decoded in two micro-batches
  EXPECT_EQ(SyncAndGenerate(*store, tokens, ub).sync.n_restored, 0u);
  auto other = Session::Create(TinyModel(9));
  ASSERT_TRUE(other.ok());
  auto synced = (*other)->Sync(tokens, *store);
  ASSERT_TRUE(synced.ok());
  EXPECT_EQ(synced->n_restored, 0u);
  EXPECT_EQ(SyncAndGenerate(*store, tokens).sync.n_restored, 3 * kChunk);
  other->reset();  // a session hands its new chunks over after a first token, or when it ends
  store->WaitForWrites();
  auto stats = store->Stats();
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->namespaces.size(), 4u);
}

}  // namespace
}  // namespace kvstash
