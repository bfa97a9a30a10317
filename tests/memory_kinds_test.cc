// Sessions of every kind of model memory (format/llama_state.h): a plain KV cache, interleaved
// sliding-window attention, a recurrent state, and hybrids. For each: warm == cold (bit-equal
// logits and answers on CPU), extending a saved session decodes only the tail, diverging inside it
// reuses only what the memory can be cut back to (and gives the cold answer), a file of another
// model or with a crafted payload is refused, and a cancelled append leaves the session whole.
#include <atomic>
#include <cstring>
#include <functional>

#include "format/llama_state.h"
#include "format/session_format.h"
#include "test_util.h"

namespace kvstash {
namespace {

using format::MemoryKind;
using testing::ReadFile;
using testing::TempDir;
using testing::WriteFile;

struct Family {
  const char* name;
  TestArch arch;
  MemoryKind kind;
};

std::ostream& operator<<(std::ostream& os, const Family& f) { return os << f.name; }

// The tiny model of a family (seed 1, or another seed for the wrong-model case), written and
// loaded once per process.
std::shared_ptr<Model> FamilyModel(const Family& family, uint64_t seed = 1) {
  static std::map<std::string, std::shared_ptr<Model>> models;
  const std::string key = std::string(family.name) + "-" + std::to_string(seed);
  auto& m = models[key];
  if (!m) {
    TestModelSpec spec;
    spec.arch = family.arch;
    spec.seed = seed;
    if (family.arch == TestArch::kQwen2) spec.vocab = TestVocab::kQwen2;
    const std::string path = TempDir() + "/family-" + key + ".gguf";
    Status written = WriteTestModel(spec, path);
    if (!written.ok()) {
      ADD_FAILURE() << written.ToString();
      return nullptr;
    }
    auto loaded = Model::Load(path);
    if (!loaded.ok()) {
      ADD_FAILURE() << loaded.status().ToString();
      return nullptr;
    }
    m = *loaded;
  }
  return m;
}

// `n` tokens of numbered sentences (after BOS), the same for every call.
std::vector<Token> Prompt(const Model& model, size_t n, const std::string& word = "sentence") {
  std::string text;
  for (int i = 0; text.size() < n * 8; ++i) text += " " + word + " " + std::to_string(i) + ".";
  auto tokens = model.Tokenize(text, /*add_bos=*/true);
  EXPECT_TRUE(tokens.ok());
  if (!tokens.ok() || tokens->size() < n) {
    ADD_FAILURE() << "the prompt is too short";
    return {};
  }
  tokens->resize(n);
  return *tokens;
}

std::vector<Token> Concat(std::vector<Token> a, const std::vector<Token>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

SessionOptions Options() {
  SessionOptions options;
  options.n_ctx = 2048;
  options.n_batch = 256;  // several ubatches per prompt, so a cancel can land between them
  options.n_ubatch = 64;
  return options;
}

class MemoryKindTest : public ::testing::TestWithParam<Family> {
 protected:
  void SetUp() override {
    model_ = FamilyModel(GetParam());
    ASSERT_NE(model_, nullptr);
    // Longer than every test model's window, so that the window has moved.
    prompt_ = Prompt(*model_, 700);
    tail_ = Prompt(*model_, 40, "question");
    tail_.erase(tail_.begin());  // no second BOS
    ASSERT_FALSE(prompt_.empty());
  }

  std::unique_ptr<Session> Cold(const std::vector<std::vector<Token>>& groups) {
    auto s = Session::Create(model_, Options());
    EXPECT_TRUE(s.ok()) << s.status().ToString();
    if (!s.ok()) return nullptr;
    for (const auto& g : groups) {
      Status appended = (*s)->AppendTokens(g);
      EXPECT_TRUE(appended.ok()) << appended.ToString();
    }
    return std::move(s.value());
  }

  // Saves a cold session of `tokens` and returns the file's path.
  std::string Saved(const std::vector<Token>& tokens, const std::string& name) {
    auto s = Cold({tokens});
    if (s == nullptr) return "";
    const std::string path = TempDir() + "/" + GetParam().name + "-" + name + ".kvs";
    Status saved = s->Save(path);
    EXPECT_TRUE(saved.ok()) << saved.ToString();
    return path;
  }

  std::unique_ptr<Session> Warm(const std::string& path) {
    SessionOptions options;
    options.n_threads = Options().n_threads;
    auto s = Session::Open(model_, path, options);
    EXPECT_TRUE(s.ok()) << s.status().ToString();
    return s.ok() ? std::move(s.value()) : nullptr;
  }

  static std::vector<Token> Greedy(Session& s) {
    SampleOptions greedy;
    greedy.n_predict = 8;
    auto g = s.Generate(greedy);
    EXPECT_TRUE(g.ok()) << g.status().ToString();
    return g.ok() ? g->tokens : std::vector<Token>{};
  }

  static std::vector<float> LogitsOf(Session& s) {
    auto l = s.Logits();
    EXPECT_TRUE(l.ok()) << l.status().ToString();
    return l.ok() ? *l : std::vector<float>{};
  }

  std::shared_ptr<Model> model_;
  std::vector<Token> prompt_, tail_;
};

TEST_P(MemoryKindTest, WarmEqualsCold) {
  const std::string path = Saved(prompt_, "warm");
  auto cold = Cold({prompt_, tail_});
  auto warm = Warm(path);
  ASSERT_NE(cold, nullptr);
  ASSERT_NE(warm, nullptr);
  EXPECT_EQ(warm->tokens(), prompt_);
  ASSERT_TRUE(warm->AppendTokens(tail_).ok());
  EXPECT_EQ(LogitsOf(*warm), LogitsOf(*cold));  // bit-equal
  EXPECT_EQ(Greedy(*warm), Greedy(*cold));
  EXPECT_EQ(warm->n_decoded_total(), tail_.size() + 7);  // the tail and 7 generated tokens
}

TEST_P(MemoryKindTest, ExtendingASavedSessionDecodesOnlyTheTail) {
  const std::string path = Saved(prompt_, "extend");
  auto warm = Warm(path);
  ASSERT_NE(warm, nullptr);
  auto synced = warm->Sync(Concat(prompt_, tail_));
  ASSERT_TRUE(synced.ok()) << synced.status().ToString();
  EXPECT_EQ(synced->n_reused, prompt_.size());
  EXPECT_EQ(synced->n_decoded, tail_.size());
  auto cold = Cold({prompt_, tail_});
  EXPECT_EQ(LogitsOf(*warm), LogitsOf(*cold));
}

// Diverging 100 tokens before the end of a saved 700-token session: an attention cache keeps the
// common 600; a moved window or a recurrent state cannot go back there and decodes from the start,
// which then is exactly the cold run.
TEST_P(MemoryKindTest, DivergingInsideReusesOnlyWhatCanBeCut) {
  const std::string path = Saved(prompt_, "diverge");
  auto warm = Warm(path);
  ASSERT_NE(warm, nullptr);
  std::vector<Token> common(prompt_.begin(), prompt_.end() - 100);
  const std::vector<Token> other = Concat(common, tail_);
  auto synced = warm->Sync(other);
  ASSERT_TRUE(synced.ok()) << synced.status().ToString();
  EXPECT_EQ(warm->tokens(), other);
  if (GetParam().kind == MemoryKind::kKv) {
    EXPECT_EQ(synced->n_reused, common.size());
    auto cold = Cold({common, tail_});
    EXPECT_EQ(Greedy(*warm), Greedy(*cold));
    return;
  }
  EXPECT_EQ(synced->n_reused, 0u);
  EXPECT_EQ(synced->n_decoded, other.size());
  auto cold = Cold({other});
  EXPECT_EQ(LogitsOf(*warm), LogitsOf(*cold));
  EXPECT_EQ(Greedy(*warm), Greedy(*cold));
}

// Within the window nothing was dropped yet, so an iSWA cache can be cut anywhere; a recurrent
// state still cannot.
TEST_P(MemoryKindTest, DivergingInsideAShortSession) {
  const std::vector<Token> short_prompt(prompt_.begin(), prompt_.begin() + 50);
  const std::string path = Saved(short_prompt, "short");
  auto warm = Warm(path);
  ASSERT_NE(warm, nullptr);
  const std::vector<Token> common(short_prompt.begin(), short_prompt.begin() + 30);
  auto synced = warm->Sync(Concat(common, tail_));
  ASSERT_TRUE(synced.ok()) << synced.status().ToString();
  const bool cuttable = GetParam().kind == MemoryKind::kKv || GetParam().kind == MemoryKind::kIswa;
  EXPECT_EQ(synced->n_reused, cuttable ? common.size() : 0u);
  auto cold = cuttable ? Cold({common, tail_}) : Cold({Concat(common, tail_)});
  EXPECT_EQ(Greedy(*warm), Greedy(*cold));
}

TEST_P(MemoryKindTest, AnotherModelsFileIsRefused) {
  const std::string path = Saved(prompt_, "wrong-model");
  auto other = FamilyModel(GetParam(), /*seed=*/2);
  ASSERT_NE(other, nullptr);
  auto opened = Session::Open(other, path);
  ASSERT_FALSE(opened.ok());
  EXPECT_EQ(opened.status().code(), Status::Code::kIncompatible) << opened.status().message();
  // And a file of another family, whatever its shape.
  const Family plain{"llama", TestArch::kLlama, MemoryKind::kKv};
  const Family swa{"gemma2", TestArch::kGemma2Swa, MemoryKind::kIswa};
  auto foreign = Session::Open(FamilyModel(GetParam().kind == MemoryKind::kKv ? swa : plain), path);
  ASSERT_FALSE(foreign.ok());
  EXPECT_NE(foreign.status().message().find(path), std::string::npos);
}

// Crafted payloads with valid checksums: each lie about the memory's layout is refused with a
// Corruption naming the file, and never reaches llama.cpp.
TEST_P(MemoryKindTest, CraftedPayloadsAreRefused) {
  const std::string path = Saved(prompt_, "crafted");
  const std::string good = ReadFile(path);
  auto parsed =
      format::ParseFile(reinterpret_cast<const uint8_t*>(good.data()), good.size(), path, true);
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  const format::SeqLayout layout = parsed->layout;
  EXPECT_EQ(layout.kind, GetParam().kind);
  struct Case {
    const char* what;
    std::function<void(format::ParsedFile&, std::string&)> mutate;
  };
  std::vector<Case> cases = {
      {"another memory kind",
       [&](format::ParsedFile& f, std::string&) {
         f.meta.memory_kind = (f.meta.memory_kind + 1) % 4;
       }},
      {"one byte short", [](format::ParsedFile&, std::string& kv) { kv.pop_back(); }},
      {"one byte more", [](format::ParsedFile&, std::string& kv) { kv.push_back(0); }},
  };
  const size_t tail = layout.first_part_end;  // the trailing part, if any
  if (layout.kind == MemoryKind::kIswa) {
    // The window's first cell moved one position up: a window that does not end where it must.
    cases.push_back({"window cell position", [tail](format::ParsedFile&, std::string& kv) {
                       int32_t pos;
                       std::memcpy(&pos, &kv[tail + 8], 4);
                       pos += static_cast<int32_t>(kv.size());  // far outside
                       std::memcpy(&kv[tail + 8], &pos, 4);
                     }});
    cases.push_back(
        {"window size", [](format::ParsedFile& f, std::string&) { f.meta.n_swa += 1; }});
  }
  if (layout.kind == MemoryKind::kRecurrent || layout.kind == MemoryKind::kHybrid) {
    const size_t rs = layout.kind == MemoryKind::kHybrid ? tail : format::kSeqStateHeaderBytes;
    cases.push_back({"state position", [rs](format::ParsedFile&, std::string& kv) {
                       int32_t pos;
                       std::memcpy(&pos, &kv[rs + 4], 4);
                       --pos;
                       std::memcpy(&kv[rs + 4], &pos, 4);
                     }});
    cases.push_back({"state cell count", [rs](format::ParsedFile&, std::string& kv) {
                       const uint32_t two = 2;
                       std::memcpy(&kv[rs], &two, 4);
                     }});
    // The last S record gone: R and S records no longer come in pairs.
    const size_t s_record = 12 + layout.rs.s_row_bytes;
    cases.push_back({"state layer records", [s_record](format::ParsedFile&, std::string& kv) {
                       kv.resize(kv.size() - s_record);
                     }});
  }
  for (const auto& c : cases) {
    std::string kv(reinterpret_cast<const char*>(parsed->kv), parsed->kv_size);
    format::ParsedFile f = *parsed;
    c.mutate(f, kv);
    const uint64_t sum =
        format::SectionChecksum(reinterpret_cast<const uint8_t*>(kv.data()), kv.size());
    const std::string bad_path = TempDir() + "/crafted-" + GetParam().name + ".kvs";
    WriteFile(bad_path, format::EncodeFilePrefix(f.meta, f.tokens, f.logits, kv.size(), sum) + kv);
    auto opened = Session::Open(model_, bad_path);
    ASSERT_FALSE(opened.ok()) << c.what;
    EXPECT_NE(opened.status().message().find(bad_path), std::string::npos)
        << c.what << ": " << opened.status().message();
  }
  // The good file still opens and answers like a cold run.
  auto warm = Warm(path);
  ASSERT_NE(warm, nullptr);
  ASSERT_TRUE(warm->AppendTokens(tail_).ok());
  auto cold = Cold({prompt_, tail_});
  EXPECT_EQ(Greedy(*warm), Greedy(*cold));
}

// A prompt cancelled after its first ubatch: the window or state it had advanced is put back, so
// the session continues exactly as if the append had never started.
TEST_P(MemoryKindTest, ACancelledAppendLeavesTheSessionWhole) {
  const std::string path = Saved(prompt_, "cancel");
  auto warm = Warm(path);
  ASSERT_NE(warm, nullptr);
  std::atomic<bool> cancel{false};
  warm->SetCancelFlag(&cancel);
  warm->SetProgressCallback([&cancel](uint64_t done, uint64_t) {
    if (done > 0) cancel = true;
  });
  const std::vector<Token> long_tail = Prompt(*model_, 300, "detour");
  Status appended = warm->AppendTokens(
      std::vector<Token>(long_tail.begin() + 1, long_tail.end()));  // no second BOS
  ASSERT_FALSE(appended.ok());
  EXPECT_EQ(appended.code(), Status::Code::kCancelled) << appended.message();
  EXPECT_EQ(warm->tokens(), prompt_);
  cancel = false;
  warm->SetProgressCallback(nullptr);
  ASSERT_TRUE(warm->AppendTokens(tail_).ok());
  auto cold = Cold({prompt_, tail_});
  EXPECT_EQ(LogitsOf(*warm), LogitsOf(*cold));
}

// Through a prefix store (chunks of 32 tokens): a second session restores what the first one
// published and answers bit-equal to a cold run through an empty store; diverging inside restores
// up to the last chunk boundary the memory can be restored at (every boundary for attention and
// iSWA, whose chunks keep their own window cells; boundaries with a snapshot for recurrent
// states).
struct StoreRun {
  SyncResult sync;
  std::vector<float> logits;
  std::vector<Token> greedy;
};

StoreRun SyncThrough(const std::shared_ptr<Model>& model, Store& store,
                     const std::vector<Token>& tokens) {
  StoreRun out;
  auto s = Session::Create(model, Options());
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
  greedy.n_predict = 8;
  auto g = (*s)->Generate(greedy);
  EXPECT_TRUE(g.ok()) << g.status().ToString();
  if (g.ok()) out.greedy = g->tokens;
  s->reset();  // hands its new chunks to the writer
  store.WaitForWrites();
  return out;
}

TEST_P(MemoryKindTest, TheStoreServesOtherSessionsWhereTheMemoryAllows) {
  // Half the tiny iSWA models' window: a window is gathered from two chunks.
  constexpr uint32_t kChunk = 32;
  auto store = testing::NewTestStore(std::string("family-") + GetParam().name, kChunk);
  ASSERT_NE(store, nullptr);
  const std::vector<Token> full = Concat(prompt_, tail_);
  const StoreRun first = SyncThrough(model_, *store, prompt_);
  EXPECT_EQ(first.sync.n_restored, 0u);
  EXPECT_GT(first.sync.n_published, 0u);

  auto empty = testing::NewTestStore(std::string("family-cold-") + GetParam().name, kChunk);
  ASSERT_NE(empty, nullptr);
  const StoreRun cold = SyncThrough(model_, *empty, full);
  const StoreRun warm = SyncThrough(model_, *store, full);
  // Chunks of the first prompt, all but the one holding its last token... and for a recurrent
  // state, those up to the last snapshot (every chunk for these small states).
  const size_t stored = (prompt_.size() - 1) / kChunk;
  EXPECT_EQ(warm.sync.n_restored, stored * kChunk);
  EXPECT_EQ(warm.logits, cold.logits);  // bit-equal
  EXPECT_EQ(warm.greedy, cold.greedy);

  // Diverging inside chunk 5: chunks 1..4 are restored.
  const std::vector<Token> other =
      Concat(std::vector<Token>(prompt_.begin(), prompt_.begin() + 4 * kChunk + 10), tail_);
  auto empty2 = testing::NewTestStore(std::string("family-cold2-") + GetParam().name, kChunk);
  const StoreRun cold2 = SyncThrough(model_, *empty2, other);
  const StoreRun warm2 = SyncThrough(model_, *store, other);
  EXPECT_EQ(warm2.sync.n_restored, 4 * kChunk);
  EXPECT_EQ(warm2.logits, cold2.logits);
  EXPECT_EQ(warm2.greedy, cold2.greedy);
}

const Family kFamilies[] = {
    {"llama", TestArch::kLlama, MemoryKind::kKv},
    {"qwen2", TestArch::kQwen2, MemoryKind::kKv},
    {"qwen3moe", TestArch::kQwen3Moe, MemoryKind::kKv},
    {"phi3", TestArch::kPhi3LongRope, MemoryKind::kKv},
    {"gemma2", TestArch::kGemma2Swa, MemoryKind::kIswa},
    {"gemma3", TestArch::kGemma3Swa, MemoryKind::kIswa},
    {"mamba2", TestArch::kMamba2, MemoryKind::kRecurrent},
    {"lfm2", TestArch::kLfm2Hybrid, MemoryKind::kHybrid},
};

INSTANTIATE_TEST_SUITE_P(Families, MemoryKindTest, ::testing::ValuesIn(kFamilies),
                         [](const auto& info) { return std::string(info.param.name); });

}  // namespace
}  // namespace kvstash

namespace kvstash {
namespace {

// Real shapes (mamba2-130m's, q8_0): a state of ~19 MB, more than the bound Open used to allow
// for a file (it left the state out), and a snapshot every 3 chunks (P = 3 for 16-token chunks):
// a store holding fewer chunks than that is a miss (such a lookup crashed: it restored chunks it
// had found but not assembled), and one holding more restores up to the last snapshot, with the
// cold run's logits.
TEST(MemoryKindRealShapeTest, RecurrentSessionsOpenAndTheStoreRestoresAtSnapshots) {
  TestModelSpec spec;
  spec.arch = TestArch::kMamba2;
  spec.shape = TestShape::kSmall;
  spec.type = TestWeightType::kQ8_0;
  const std::string path = testing::TempDir() + "/mamba2-small.gguf";
  ASSERT_TRUE(WriteTestModel(spec, path).ok());
  auto model = Model::Load(path);
  ASSERT_TRUE(model.ok()) << model.status().ToString();
  const std::vector<Token> prompt = Prompt(**model, 100);
  ASSERT_FALSE(prompt.empty());
  SessionOptions options;
  options.n_ctx = 256;
  {
    auto s = Session::Create(*model, options);
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    ASSERT_TRUE((*s)->AppendTokens(prompt).ok());
    ASSERT_TRUE((*s)->Save(testing::TempDir() + "/mamba2-small.kvs").ok());
  }
  auto opened = Session::Open(*model, testing::TempDir() + "/mamba2-small.kvs");
  ASSERT_TRUE(opened.ok()) << opened.status().ToString();
  EXPECT_EQ((*opened)->tokens(), prompt);

  auto store = testing::NewTestStore("mamba2-small", 16);
  ASSERT_NE(store, nullptr);
  auto sync = [&](const std::vector<Token>& tokens, size_t want_restored) {
    auto s = Session::Create(*model, options);
    EXPECT_TRUE(s.ok());
    if (!s.ok()) return std::vector<float>{};
    auto synced = (*s)->Sync(tokens, *store);
    EXPECT_TRUE(synced.ok()) << synced.status().ToString();
    if (!synced.ok()) return std::vector<float>{};
    EXPECT_EQ(synced->n_restored, want_restored) << tokens.size() << " tokens";
    auto logits = (*s)->Logits();
    EXPECT_TRUE(logits.ok());
    s->reset();
    store->WaitForWrites();
    return logits.ok() ? *logits : std::vector<float>{};
  };
  // 40 tokens: 2 whole chunks stored, none with a snapshot (the first is at chunk 3).
  const std::vector<Token> short_prompt(prompt.begin(), prompt.begin() + 40);
  const std::vector<float> short_cold = sync(short_prompt, 0);
  EXPECT_EQ(sync(short_prompt, 0), short_cold);
  // 100 tokens: decoded from the start (chunks 1-2 are there, but no snapshot), chunks 3-6
  // published with snapshots at 3 and 6; the next run restores all 6 (96 tokens).
  const std::vector<float> cold = sync(prompt, 0);
  EXPECT_EQ(sync(prompt, 96), cold);
}

}  // namespace
}  // namespace kvstash
