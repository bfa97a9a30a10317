// BatchEngine, the server's decoding core: answers do not depend on what else is decoded in the
// same steps, nor on whether the prompt came from a slot's cache, the store, or was decoded cold,
// nor on which slot (KV stream) it lands in.
#include "engine/batch_engine.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <map>
#include <random>

#include "engine/sequence.h"
#include "kvstash/store.h"
#include "test_util.h"

namespace kvstash::engine {
namespace {

using testing::TempDir;

std::vector<Token> RandomTokens(size_t n, uint32_t seed, int32_t n_vocab) {
  std::mt19937 rng(seed);
  std::vector<Token> t(n);
  for (auto& x : t) x = static_cast<Token>(3 + rng() % (n_vocab - 3));
  return t;
}

std::shared_ptr<Store> OpenStore(const std::string& name) {
  return testing::NewTestStore(name, 64);
}

// A model loaded as the server loads it (no weight repacking).
std::shared_ptr<Model> ServerModelOf(TestWeightType weights) {
  ModelOptions options;
  options.repack_weights = false;
  auto loaded =
      Model::Load(testing::ModelPath(TestShape::kTiny, TestVocab::kSpm, weights, 1), options);
  EXPECT_TRUE(loaded.ok()) << loaded.status().ToString();
  return loaded.ok() ? *loaded : nullptr;
}

// The tiny f16 model, loaded once.
std::shared_ptr<Model> ServerModel() {
  static std::shared_ptr<Model> model = ServerModelOf(TestWeightType::kF16);
  return model;
}

std::unique_ptr<BatchEngine> MakeEngine(uint32_t slots, std::shared_ptr<Store> store) {
  BatchEngineOptions options;
  options.n_slots = slots;
  options.n_ctx_slot = 1024;
  options.n_threads = 2;
  options.chunk_tokens = 64;
  auto engine = BatchEngine::Create(ServerModel(), options, std::move(store));
  EXPECT_TRUE(engine.ok()) << engine.status().ToString();
  return engine.ok() ? std::move(*engine) : nullptr;
}

struct Request {
  std::vector<Token> prompt;
  size_t n_generate = 12;
};

// Runs `requests` on `engine`, all started at once (each on its own slot, requests[i] on the slot
// PickSlot gives), greedy, and returns each one's generated tokens and prompt report.
std::vector<std::vector<Token>> RunTogether(BatchEngine& engine,
                                            const std::vector<Request>& requests,
                                            std::vector<SlotReport>* reports = nullptr,
                                            std::vector<std::vector<uint64_t>>* logits = nullptr) {
  std::vector<int> slot_of(requests.size(), -1);
  std::vector<bool> busy(engine.n_slots());
  SampleOptions greedy;
  greedy.temp = 0;
  for (size_t r = 0; r < requests.size(); ++r) {
    slot_of[r] = engine.PickSlot(requests[r].prompt, busy);
    EXPECT_GE(slot_of[r], 0);
    busy[slot_of[r]] = true;
    engine.Begin(slot_of[r], requests[r].prompt, greedy);
  }
  std::map<int, size_t> request_of;
  for (size_t r = 0; r < requests.size(); ++r) request_of[slot_of[r]] = r;
  std::vector<std::vector<Token>> out(requests.size());
  std::vector<bool> done(requests.size());
  if (reports) reports->resize(requests.size());
  if (logits) logits->assign(requests.size(), {});
  const size_t n_vocab = static_cast<size_t>(engine.model().n_vocab());
  std::vector<int> ready, failed;
  for (int guard = 0; guard < 10000 && engine.HasWork(); ++guard) {
    const Status status = engine.Step(&ready, &failed);
    EXPECT_TRUE(status.ok()) << status.ToString();
    for (int slot : ready) {
      const size_t r = request_of[slot];
      if (logits) {
        const float* l = engine.Logits(slot);
        EXPECT_NE(l, nullptr);
        uint64_t h = 1469598103934665603ull;
        const auto* bytes = reinterpret_cast<const unsigned char*>(l);
        for (size_t i = 0; l != nullptr && i < n_vocab * sizeof(float); ++i) {
          h = (h ^ bytes[i]) * 1099511628211ull;
        }
        (*logits)[r].push_back(h);
      }
      out[r].push_back(engine.Sample(slot));
      if (out[r].size() == requests[r].n_generate) {
        if (reports) (*reports)[r] = engine.report(slot);
        engine.End(slot);
        done[r] = true;
      }
    }
  }
  for (size_t r = 0; r < requests.size(); ++r) EXPECT_TRUE(done[r]) << "request " << r;
  return out;
}

// FNV-1a of each ready step's logits, per request: equal hashes are equal bits.
using LogitsTrace = std::vector<std::vector<uint64_t>>;

// With flash attention off and one matmul path for every number of rows (kvstash's patched
// llamafile), a sequence's logits are the same bits alone and next to 1..7 others with prompts of
// other lengths, for f16 and q8_0 weights and f16 and q8_0 K caches (a q8_0 V cache needs flash
// attention). On an upstream llamafile build one-row products take vec_dot, and this fails.
class BatchInvarianceTest
    : public ::testing::TestWithParam<std::tuple<TestWeightType, const char*>> {};

TEST_P(BatchInvarianceTest, LogitsDoNotDependOnTheBatch) {
  const auto [weights, cache_k] = GetParam();
  auto model = ServerModelOf(weights);
  ASSERT_NE(model, nullptr);
  const int32_t nv = model->n_vocab();
  const std::vector<Request> requests = {
      {RandomTokens(300, 1, nv), 6}, {RandomTokens(45, 2, nv), 20}, {RandomTokens(170, 3, nv), 4},
      {RandomTokens(7, 4, nv), 16},  {RandomTokens(520, 5, nv), 3}, {RandomTokens(90, 6, nv), 12},
      {RandomTokens(1, 7, nv), 10},  {RandomTokens(260, 8, nv), 8}};
  auto make = [&](uint32_t slots) {
    BatchEngineOptions options;
    options.n_slots = slots;
    options.n_ctx_slot = 1024;
    options.n_threads = 2;
    options.chunk_tokens = 64;
    options.cache_type_k = cache_k;
    auto engine = BatchEngine::Create(model, options, nullptr);
    EXPECT_TRUE(engine.ok()) << engine.status().ToString();
    return engine.ok() ? std::move(*engine) : nullptr;
  };
  std::vector<std::vector<uint64_t>> alone;
  for (const Request& r : requests) {
    auto engine = make(1);
    ASSERT_NE(engine, nullptr);
    EXPECT_TRUE(engine->batch_invariant()) << engine->Describe();
    LogitsTrace trace;
    RunTogether(*engine, {r}, nullptr, &trace);
    alone.push_back(trace[0]);
  }
  for (uint32_t n = 2; n <= requests.size(); ++n) {
    auto engine = make(n);
    ASSERT_NE(engine, nullptr);
    LogitsTrace together;
    RunTogether(*engine, {requests.begin(), requests.begin() + n}, nullptr, &together);
    for (uint32_t r = 0; r < n; ++r) {
      EXPECT_EQ(together[r], alone[r]) << "request " << r << " next to " << n - 1 << " others";
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    WeightsAndKCache, BatchInvarianceTest,
    ::testing::Combine(::testing::Values(TestWeightType::kF16, TestWeightType::kQ8_0),
                       ::testing::Values("f16", "q8_0")),
    [](const auto& info) {
      return std::string(std::get<0>(info.param) == TestWeightType::kF16 ? "F16" : "Q8_0") +
             "Weights" + (std::string(std::get<1>(info.param)) == "f16" ? "F16" : "Q8_0") + "K";
    });

// Invariance is claimed only where it holds: a model loaded with weight repacking allowed (whose
// kernels split by row count for some quantized types) is not batch-invariant.
TEST(BatchEngineTest, InvarianceNeedsUnrepackedWeights) {
  BatchEngineOptions options;
  options.n_ctx_slot = 256;
  auto engine = BatchEngine::Create(testing::TinyModel(), options, nullptr);
  ASSERT_TRUE(engine.ok()) << engine.status().ToString();
  EXPECT_FALSE((*engine)->batch_invariant());
  EXPECT_NE((*engine)->Describe().find("repacked"), std::string::npos) << (*engine)->Describe();
  options.flash_attn = FlashAttention::kOn;
  auto flash = BatchEngine::Create(ServerModel(), options, nullptr);
  ASSERT_TRUE(flash.ok()) << flash.status().ToString();
  EXPECT_FALSE((*flash)->batch_invariant());
  EXPECT_NE((*flash)->Describe().find("flash attention is on"), std::string::npos);
}

// What a store primed with `primed` (and, unless `first`, with `asked` itself: its request's tails)
// restores of `asked`, for chunks of 64 tokens. A batch-invariant engine restores to the exact
// token (the common prefix; all but the last token of a prompt asked before), else the whole
// chunks of the common prefix.
size_t ExpectedRestore(const BatchEngine& engine, const Request& primed, const Request& asked,
                       bool first) {
  const size_t limit = asked.prompt.size() - 1;
  const size_t common = first ? CommonPrefix(primed.prompt, asked.prompt, limit) : limit;
  return engine.batch_invariant() ? common : common / 64 * 64;
}

// A prompt restored from the store, into any slot of an engine with any number of slots, answers
// as the cold prompt does; the slot's own cache does too on the next request. In a batch-invariant
// engine the store restores to the exact token (tails); else whole chunks.
TEST(BatchEngineTest, WarmFromStoreOrSlotEqualsCold) {
  auto model = ServerModel();
  ASSERT_NE(model, nullptr);
  const int32_t nv = model->n_vocab();
  const std::vector<Token> system = RandomTokens(200, 7, nv);
  auto with = [&](uint32_t seed) {
    Request r{system};
    const auto q = RandomTokens(20, seed, nv);
    r.prompt.insert(r.prompt.end(), q.begin(), q.end());
    return r;
  };
  auto cold_engine = MakeEngine(1, nullptr);
  ASSERT_NE(cold_engine, nullptr);
  const auto cold1 = RunTogether(*cold_engine, {with(11)});
  auto fresh = MakeEngine(1, nullptr);
  const auto cold2 = RunTogether(*fresh, {with(12)});

  auto store = OpenStore("warm");
  ASSERT_NE(store, nullptr);
  {
    auto primer = MakeEngine(3, store);
    std::vector<SlotReport> reports;
    // Two busy slots first, so that the primed prompt lands in slot 2 (the third KV stream).
    auto other = RandomTokens(30, 99, nv);
    EXPECT_EQ(RunTogether(*primer, {{other}, {other}, with(11)}, &reports)[2], cold1[0]);
    EXPECT_EQ(reports[2].n_reused, 0u);
    store->WaitForWrites();
    EXPECT_GT(store->writer_stats().chunks_written, 0u);
  }
  for (uint32_t slots : {1u, 4u}) {
    auto engine = MakeEngine(slots, store);
    ASSERT_NE(engine, nullptr);
    std::vector<SlotReport> reports;
    EXPECT_EQ(RunTogether(*engine, {with(12)}, &reports)[0], cold2[0]) << slots << " slots";
    EXPECT_EQ(reports[0].n_restored, ExpectedRestore(*engine, with(11), with(12), slots == 1))
        << slots << " slots";
    // The slot's own cache: the same prompt again reuses all but the last token.
    EXPECT_EQ(RunTogether(*engine, {with(12)}, &reports)[0], cold2[0]);
    EXPECT_EQ(reports[0].n_reused, with(12).prompt.size() - 1);
    EXPECT_EQ(reports[0].n_restored, 0u);
  }
}

// The tail files of `store`, by path.
std::vector<std::string> TailFiles(const Store& store) {
  std::vector<std::string> out;
  std::error_code ec;
  for (const auto& e : std::filesystem::recursive_directory_iterator(store.dir() + "/tails", ec))
    if (e.is_regular_file()) out.push_back(e.path().string());
  std::sort(out.begin(), out.end());
  return out;
}

// After a restart (a new engine on the same store), a batch-invariant engine restores a prompt to
// the exact token it shares with earlier requests, not to the floor of a 64-token chunk: inside
// an earlier prompt's tail, at a chunk boundary, before the first whole chunk, and after an
// earlier answer (the next turn of a conversation). A damaged tail is a miss, then replaced.
// Every answer's logits are those of a store-less engine.
TEST(BatchEngineTest, RestartIsTokenExact) {
  auto model = ServerModel();
  ASSERT_NE(model, nullptr);
  const int32_t nv = model->n_vocab();
  auto store = OpenStore("exact");
  ASSERT_NE(store, nullptr);
  const std::vector<Token> base = RandomTokens(5 * 64 + 9, 31, nv);
  auto part = [&](size_t n, uint32_t seed, size_t extra) {
    Request r{std::vector<Token>(base.begin(), base.begin() + n)};
    const auto more = RandomTokens(extra, seed, nv);
    r.prompt.insert(r.prompt.end(), more.begin(), more.end());
    return r;
  };
  std::vector<Token> answer;
  {
    auto primer = MakeEngine(2, store);
    ASSERT_NE(primer, nullptr);
    if (!primer->batch_invariant()) GTEST_SKIP() << "tails need a batch-invariant build";
    answer = RunTogether(*primer, {{base}, part(25, 0, 0)})[0];
    store->WaitForWrites();
  }
  auto stats = store->Stats();
  ASSERT_TRUE(stats.ok());
  EXPECT_GE(stats->tails, 2u) << "the prompts' and the answer's tails";
  // The next turn: the prompt, the answer's decoded tokens (the last one was sampled only), more.
  Request next{base};
  next.prompt.insert(next.prompt.end(), answer.begin(), answer.end() - 1);
  const size_t turn = next.prompt.size();
  const auto more = RandomTokens(10, 43, nv);
  next.prompt.insert(next.prompt.end(), more.begin(), more.end());
  struct Case {
    const char* what;
    Request request;
    size_t want;
  };
  const std::vector<Case> cases = {
      {"diverging inside the tail", part(5 * 64 + 4, 41, 10), 5 * 64 + 4},
      {"the same prompt", {base}, base.size() - 1},
      {"ending on a chunk boundary", part(3 * 64, 0, 0), 3 * 64 - 1},
      {"shorter than a chunk", part(12, 42, 8), 12},
      {"the next turn", next, turn},
  };
  for (const Case& c : cases) {
    auto cold = MakeEngine(1, nullptr);
    std::vector<std::vector<uint64_t>> want_logits, got_logits;
    const auto want = RunTogether(*cold, {c.request}, nullptr, &want_logits)[0];
    auto engine = MakeEngine(1, store);  // a restart: nothing of its own
    ASSERT_NE(engine, nullptr);
    std::vector<SlotReport> reports;
    EXPECT_EQ(RunTogether(*engine, {c.request}, &reports, &got_logits)[0], want) << c.what;
    EXPECT_EQ(got_logits, want_logits) << c.what;
    EXPECT_EQ(reports[0].n_restored, c.want) << c.what;
    EXPECT_EQ(reports[0].n_reused, c.want) << c.what;
    store->WaitForWrites();
  }
  // Damage every tail: lookups fall back to whole chunks (same answer), and publish good ones.
  for (const std::string& path : TailFiles(*store)) {
    std::string bytes = testing::ReadFile(path);
    ASSERT_GT(bytes.size(), 300u);
    bytes[bytes.size() - 3] ^= 0x10;
    testing::WriteFile(path, bytes);
  }
  const Case& inside = cases[0];
  // It was asked before: its own request's tail, once replaced, holds all but its last token.
  for (size_t want : {size_t{5 * 64}, inside.request.prompt.size() - 1}) {
    auto engine = MakeEngine(1, store);
    ASSERT_NE(engine, nullptr);
    std::vector<SlotReport> reports;
    auto cold = MakeEngine(1, nullptr);
    EXPECT_EQ(RunTogether(*engine, {inside.request}, &reports)[0],
              RunTogether(*cold, {inside.request})[0]);
    EXPECT_EQ(reports[0].n_restored, want) << "a damaged tail is a miss, then replaced";
    store->WaitForWrites();
  }
  auto verify = store->Verify();
  ASSERT_TRUE(verify.ok());
  EXPECT_FALSE(verify->bad.empty()) << "the other damaged tails are listed";

  // A slot that holds every whole chunk of a prompt already asks the store for a tail only: it
  // takes one that goes further than its own cache, and keeps its own when none does.
  const Request q1 = part(base.size(), 51, 6), q2 = part(base.size(), 52, 6),
                q3 = part(base.size(), 53, 6);
  auto slot = MakeEngine(1, store);
  auto other = MakeEngine(1, store);
  ASSERT_NE(slot, nullptr);
  ASSERT_NE(other, nullptr);
  RunTogether(*slot, {q1});
  RunTogether(*other, {q2});  // q2's tails
  store->WaitForWrites();
  std::vector<SlotReport> reports;
  auto cold = MakeEngine(1, nullptr);
  EXPECT_EQ(RunTogether(*slot, {q2}, &reports)[0], RunTogether(*cold, {q2})[0]);
  EXPECT_EQ(reports[0].n_restored, q2.prompt.size() - 1) << "the store's tail beats the slot's own";
  EXPECT_EQ(RunTogether(*slot, {q3}, &reports)[0], RunTogether(*cold, {q3})[0]);
  EXPECT_EQ(reports[0].n_restored, 0u) << "no stored tail beats the slot's own";
  EXPECT_EQ(reports[0].n_reused, base.size());
}

// A damaged chunk is a miss (decoded cold, same answer) and the publish replaces it.
TEST(BatchEngineTest, DamagedChunkIsAMiss) {
  auto model = ServerModel();
  ASSERT_NE(model, nullptr);
  const Request request{RandomTokens(150, 21, model->n_vocab())};
  auto store = OpenStore("damaged");
  ASSERT_NE(store, nullptr);
  std::vector<Token> first;
  {
    auto engine = MakeEngine(2, store);
    first = RunTogether(*engine, {request})[0];
    store->WaitForWrites();
  }
  auto chunks = store->List();
  ASSERT_TRUE(chunks.ok());
  ASSERT_EQ(chunks->size(), 2u);
  for (const auto& c : *chunks) {
    if (c.index != 1) continue;
    std::string bytes = testing::ReadFile(c.path);
    bytes[bytes.size() - 100] ^= 0x40;
    testing::WriteFile(c.path, bytes);
  }
  auto engine = MakeEngine(2, store);
  std::vector<SlotReport> reports;
  EXPECT_EQ(RunTogether(*engine, {request}, &reports)[0], first);
  EXPECT_EQ(reports[0].n_restored, 0u);
  store->WaitForWrites();
  auto verify = store->Verify();
  ASSERT_TRUE(verify.ok());
  EXPECT_TRUE(verify->bad.empty()) << verify->bad[0];
}

// Every memory kind (tests/memory_kinds_test.cc has the sessions): a prompt restored from the
// store into any slot answers as the cold prompt does, and so does the slot's own cache, which a
// sliding window or a recurrent state can give back only whole (else the store restores it).
struct ServedFamily {
  const char* name;
  TestArch arch;
  bool cut_anywhere;  // a plain KV cache: the slot keeps all but the last prompt token
};

class BatchEngineFamilyTest : public ::testing::TestWithParam<ServedFamily> {};

TEST_P(BatchEngineFamilyTest, WarmFromStoreOrSlotEqualsCold) {
  TestModelSpec spec;
  spec.arch = GetParam().arch;
  const std::string path = TempDir() + "/served-" + GetParam().name + ".gguf";
  ASSERT_TRUE(WriteTestModel(spec, path).ok());
  ModelOptions load;
  load.repack_weights = false;
  auto model = Model::Load(path, load);
  ASSERT_TRUE(model.ok()) << model.status().ToString();
  auto make = [&](uint32_t slots, std::shared_ptr<Store> store) {
    BatchEngineOptions options;
    options.n_slots = slots;
    options.n_ctx_slot = 1024;
    options.n_threads = 2;
    options.chunk_tokens = 64;
    auto engine = BatchEngine::Create(*model, options, std::move(store));
    EXPECT_TRUE(engine.ok()) << engine.status().ToString();
    return engine.ok() ? std::move(*engine) : nullptr;
  };
  const int32_t nv = (*model)->n_vocab();
  const std::vector<Token> system = RandomTokens(200, 7, nv);
  auto with = [&](uint32_t seed) {
    Request r{system};
    const auto q = RandomTokens(20, seed, nv);
    r.prompt.insert(r.prompt.end(), q.begin(), q.end());
    return r;
  };
  auto cold_engine = make(1, nullptr);
  ASSERT_NE(cold_engine, nullptr);
  const auto cold1 = RunTogether(*cold_engine, {with(11)});
  auto fresh = make(1, nullptr);
  const auto cold2 = RunTogether(*fresh, {with(12)});

  auto store = OpenStore(std::string("served-") + GetParam().name);
  ASSERT_NE(store, nullptr);
  {
    auto primer = make(3, store);
    ASSERT_NE(primer, nullptr);
    std::vector<SlotReport> reports;
    auto other = RandomTokens(30, 99, nv);
    EXPECT_EQ(RunTogether(*primer, {{other}, {other}, with(11)}, &reports)[2], cold1[0]);
    store->WaitForWrites();
    EXPECT_GT(store->writer_stats().chunks_written, 0u);
  }
  for (uint32_t slots : {1u, 4u}) {
    auto engine = make(slots, store);
    ASSERT_NE(engine, nullptr);
    std::vector<SlotReport> reports;
    EXPECT_EQ(RunTogether(*engine, {with(12)}, &reports)[0], cold2[0]) << slots << " slots";
    EXPECT_EQ(reports[0].n_restored, GetParam().cut_anywhere
                                         ? ExpectedRestore(*engine, with(11), with(12), slots == 1)
                                         : 192u)
        << slots << " slots";
    EXPECT_EQ(RunTogether(*engine, {with(12)}, &reports)[0], cold2[0]);
    if (GetParam().cut_anywhere) {
      EXPECT_EQ(reports[0].n_reused, with(12).prompt.size() - 1);
    } else {
      // The slot holds the answer's tokens too: its window or state cannot go back into the
      // prompt, so the store gives the prefix again.
      EXPECT_EQ(reports[0].n_restored, 192u);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Families, BatchEngineFamilyTest,
                         ::testing::Values(ServedFamily{"qwen3moe", TestArch::kQwen3Moe, true},
                                           ServedFamily{"gemma2", TestArch::kGemma2Swa, false},
                                           ServedFamily{"gemma3", TestArch::kGemma3Swa, false},
                                           ServedFamily{"mamba2", TestArch::kMamba2, false},
                                           ServedFamily{"lfm2", TestArch::kLfm2Hybrid, false}),
                         [](const auto& info) { return std::string(info.param.name); });

}  // namespace
}  // namespace kvstash::engine
