// The Session API against every gotcha of the llama.cpp session-file guide.
#include <cstring>
#include <set>
#include <stdexcept>

#include "kvstash/session_file.h"
#include "test_util.h"

namespace kvstash {
namespace {

using testing::kPrefix;
using testing::SaveTinyPrefix;
using testing::TempDir;
using testing::TinyModel;

const char* kPrompts[] = {
    " Q: What is the capital of France? A:", " Q: Name a prime number larger than ten. A:",
    " Q: Translate 'good morning' into German. A:",
    "",  // nothing appended: sample straight after Open
};

SampleOptions Greedy(int n) {
  SampleOptions o;
  o.n_predict = n;
  o.temp = 0;
  return o;
}

bool BitEqual(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

class SessionTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    path_ = new std::string(TempDir() + "/session_test.kvs");
    saved_tokens_ = new std::vector<Token>(SaveTinyPrefix(*path_));
  }
  // The cold path: prefix and prompt decoded in separate calls, as save + run do.
  static std::unique_ptr<Session> Cold(const std::string& prompt) {
    auto s = Session::Create(TinyModel());
    if (!s.ok()) {
      ADD_FAILURE() << s.status().ToString();
      return nullptr;
    }
    EXPECT_TRUE((*s)->Append(kPrefix).ok());
    EXPECT_TRUE((*s)->Append(prompt).ok());
    return std::move(s.value());
  }
  static std::unique_ptr<Session> Warm(const SessionOptions& options = {}) {
    auto s = Session::Open(TinyModel(), *path_, options);
    EXPECT_TRUE(s.ok()) << s.status().ToString();
    return s.ok() ? std::move(s.value()) : nullptr;
  }
  static std::string* path_;
  static std::vector<Token>* saved_tokens_;
};
std::string* SessionTest::path_ = nullptr;
std::vector<Token>* SessionTest::saved_tokens_ = nullptr;

TEST_F(SessionTest, WarmLogitsAreBitEqualToColdForSeveralPrompts) {
  for (const char* prompt : kPrompts) {
    auto cold = Cold(prompt);
    auto warm = Warm();
    ASSERT_TRUE(warm);
    ASSERT_TRUE(warm->Append(prompt).ok());
    EXPECT_EQ(warm->tokens(), cold->tokens()) << prompt;
    auto cold_logits = cold->Logits();
    auto warm_logits = warm->Logits();
    ASSERT_TRUE(cold_logits.ok() && warm_logits.ok());
    EXPECT_TRUE(BitEqual(*warm_logits, *cold_logits)) << "prompt: '" << prompt << "'";
  }
}

TEST_F(SessionTest, WarmGreedyOutputEqualsColdAndVaries) {
  std::set<std::string> outputs;
  for (const char* prompt : kPrompts) {
    auto cold = Cold(prompt);
    auto warm = Warm();
    ASSERT_TRUE(warm->Append(prompt).ok());
    auto a = cold->Generate(Greedy(16));
    auto b = warm->Generate(Greedy(16));
    ASSERT_TRUE(a.ok() && b.ok());
    EXPECT_EQ(a->tokens, b->tokens) << prompt;
    EXPECT_EQ(a->text, b->text);
    EXPECT_EQ(a->tokens.size(), 16u);
    outputs.insert(a->text);
  }
  // Different prompts give different continuations: the comparison above is not vacuous.
  EXPECT_GE(outputs.size(), 3u);
}

TEST_F(SessionTest, ReopenedSessionHoldsTheSavedTokens) {
  auto warm = Warm();
  EXPECT_EQ(warm->tokens(), *saved_tokens_);
  EXPECT_EQ(warm->n_decoded_total(), 0u);  // loading decodes nothing
}

// Gotcha 1: passing the prefix again must not re-decode it.
TEST_F(SessionTest, SyncWithTheSavedPrefixDecodesNothing) {
  auto warm = Warm();
  auto synced = warm->Sync(*saved_tokens_);
  ASSERT_TRUE(synced.ok()) << synced.status().ToString();
  EXPECT_EQ(synced->n_decoded, 0u);
  EXPECT_EQ(synced->n_reused, saved_tokens_->size());
  EXPECT_EQ(warm->n_decoded_total(), 0u);

  // The whole prompt again (prefix + question) decodes only the question.
  auto question = TinyModel()->Tokenize(kPrompts[0], false);
  std::vector<Token> full = *saved_tokens_;
  full.insert(full.end(), question->begin(), question->end());
  synced = warm->Sync(full);
  ASSERT_TRUE(synced.ok());
  EXPECT_EQ(synced->n_reused, saved_tokens_->size());
  EXPECT_EQ(synced->n_decoded, question->size());
  auto cold = Cold(kPrompts[0]);
  EXPECT_TRUE(BitEqual(*warm->Logits(), *cold->Logits()));
}

TEST_F(SessionTest, SyncWithAChangedPrefixKeepsTheCommonPartAndIsCorrect) {
  auto warm = Warm();
  std::vector<Token> changed(saved_tokens_->begin(), saved_tokens_->begin() + 10);
  auto other = TinyModel()->Tokenize(" Something else entirely.", false);
  changed.insert(changed.end(), other->begin(), other->end());
  auto synced = warm->Sync(changed);
  ASSERT_TRUE(synced.ok());
  EXPECT_EQ(synced->n_reused, 10u);
  EXPECT_EQ(synced->n_decoded, other->size());
  EXPECT_EQ(warm->tokens(), changed);
  // Same groups as a cold run: the first 10 tokens, then the rest.
  auto cold = Session::Create(TinyModel());
  std::vector<Token> head(changed.begin(), changed.begin() + 10);
  ASSERT_TRUE((*cold)->AppendTokens(head).ok());
  ASSERT_TRUE((*cold)->AppendTokens(*other).ok());
  auto a = warm->Generate(Greedy(8));
  auto b = (*cold)->Generate(Greedy(8));
  EXPECT_EQ(a->tokens, b->tokens);
}

TEST_F(SessionTest, SyncToAShorterPrefixStillGivesLogits) {
  auto warm = Warm();
  std::vector<Token> shorter(saved_tokens_->begin(), saved_tokens_->begin() + 5);
  auto synced = warm->Sync(shorter);
  ASSERT_TRUE(synced.ok());
  EXPECT_EQ(warm->tokens(), shorter);
  EXPECT_EQ(synced->n_decoded, 1u);  // the last kept token, for its logits
  auto gen = warm->Generate(Greedy(4));
  ASSERT_TRUE(gen.ok());
  EXPECT_EQ(gen->tokens.size(), 4u);
}

// Gotchas 2 and 3: positions continue at the absolute position across appends and generations.
TEST_F(SessionTest, AbsolutePositionsAfterSeveralAppendsAndGenerations) {
  auto warm = Warm();
  auto cold = Session::Create(TinyModel());
  ASSERT_TRUE((*cold)->Append(kPrefix).ok());
  for (auto* s : {warm.get(), cold->get()}) {
    ASSERT_TRUE(s->Append(" Q: first?").ok());
  }
  for (int round = 0; round < 3; ++round) {
    auto a = warm->Generate(Greedy(5));
    auto b = (*cold)->Generate(Greedy(5));
    ASSERT_TRUE(a.ok() && b.ok());
    EXPECT_EQ(a->tokens, b->tokens) << "round " << round;
    ASSERT_TRUE(warm->Append(" And then?").ok());
    ASSERT_TRUE((*cold)->Append(" And then?").ok());
  }
  EXPECT_EQ(warm->tokens(), (*cold)->tokens());
  EXPECT_TRUE(BitEqual(*warm->Logits(), *(*cold)->Logits()));
}

// Gotcha 4: thread count and a larger context do not have to match the save.
TEST_F(SessionTest, OpensWithOtherThreadCountsAndALargerContext) {
  auto reference = Cold(kPrompts[1])->Generate(Greedy(12));
  ASSERT_TRUE(reference.ok());
  for (int threads : {1, 2, 3}) {
    for (uint32_t n_ctx : {0u, 8192u}) {
      SessionOptions options;
      options.n_threads = threads;
      options.n_ctx = n_ctx;
      auto warm = Warm(options);
      ASSERT_TRUE(warm);
      if (n_ctx) {
        EXPECT_GE(warm->n_ctx(), n_ctx);
      }
      ASSERT_TRUE(warm->Append(kPrompts[1]).ok());
      auto gen = warm->Generate(Greedy(12));
      ASSERT_TRUE(gen.ok());
      EXPECT_EQ(gen->tokens, reference->tokens) << threads << " threads, n_ctx " << n_ctx;
    }
  }
}

// Gotcha 5: there is no token buffer to size; a long session comes back whole.
TEST_F(SessionTest, LongSessionsComeBackWhole) {
  const std::string path = TempDir() + "/long.kvs";
  auto s = testing::SaveLongTinySession(path, 200);
  ASSERT_GT(s->tokens().size(), 1000u);
  auto warm = Session::Open(TinyModel(), path);
  ASSERT_TRUE(warm.ok());
  EXPECT_EQ((*warm)->tokens(), s->tokens());
}

TEST_F(SessionTest, OtherSeedModelOfTheSameShapeIsRefused) {
  auto other = TinyModel(/*seed=*/2);
  ASSERT_NE(other->fingerprint(), TinyModel()->fingerprint());
  auto opened = Session::Open(other, *path_);
  ASSERT_FALSE(opened.ok());
  EXPECT_EQ(opened.status().code(), Status::Code::kIncompatible);
  EXPECT_NE(opened.status().message().find("another model"), std::string::npos)
      << opened.status().message();
  EXPECT_NE(opened.status().message().find(*path_), std::string::npos);
}

TEST_F(SessionTest, EachIncompatibleParameterIsRefusedByName) {
  struct Case {
    SessionOptions options;
    std::string expect;
  };
  std::vector<Case> cases(6);
  cases[0].options.cache_type_k = "q8_0";
  cases[0].expect =
      "was saved with cache type K=f16, this context uses q8_0: open without --cache-type-k";
  cases[1].options.cache_type_v = "q4_0";
  cases[1].expect = "cache type V=f16, this context uses q4_0";
  cases[2].options.flash_attn = FlashAttention::kOff;
  cases[2].expect = "flash attention=on, this context uses off";
  cases[3].options.n_ctx = 16;
  cases[3].expect = "leaves no room; use -c";
  // Later tokens are grouped into decode calls by these: a warm run must group as a cold one.
  cases[4].options.n_batch = 1024;
  cases[4].expect = "batch size=2048, this context uses 1024: open without -b";
  cases[5].options.n_ubatch = 256;
  cases[5].expect = "micro-batch size=512, this context uses 256: open without -ub";
  for (const auto& c : cases) {
    auto opened = Session::Open(TinyModel(), *path_, c.options);
    ASSERT_FALSE(opened.ok()) << c.expect;
    EXPECT_NE(opened.status().message().find(c.expect), std::string::npos)
        << opened.status().message();
  }
}

// The options the file was saved with are accepted when given again (a micro-batch larger than the
// batch is the batch, as when the session was created).
TEST_F(SessionTest, TheSavedBatchSizesAreAccepted) {
  SessionOptions same;
  same.n_batch = 2048;
  same.n_ubatch = 512;
  same.flash_attn = FlashAttention::kOn;
  same.cache_type_k = "f16";
  EXPECT_TRUE(Session::Open(TinyModel(), *path_, same).ok());
  const std::string path = TempDir() + "/small_batch.kvs";
  SessionOptions small;
  small.n_batch = 64;
  small.n_ubatch = 128;
  testing::SaveTinyPrefix(path, small);
  auto opened = Session::Open(TinyModel(), path, small);
  ASSERT_TRUE(opened.ok()) << opened.status().ToString();
}

// Saves with `options`, opens without any, and expects logits bit-equal to a cold run with them.
void ExpectWarmEqualsColdWith(const SessionOptions& options, const std::string& path,
                              const char* prompt) {
  testing::SaveTinyPrefix(path, options);
  auto cold = Session::Create(TinyModel(), options);
  ASSERT_TRUE((*cold)->Append(kPrefix).ok());
  ASSERT_TRUE((*cold)->Append(prompt).ok());
  auto warm = Session::Open(TinyModel(), path);
  ASSERT_TRUE(warm.ok()) << warm.status().ToString();
  ASSERT_TRUE((*warm)->Append(prompt).ok());
  EXPECT_TRUE(BitEqual(*(*warm)->Logits(), *(*cold)->Logits()));
}

TEST_F(SessionTest, QuantizedCacheSessionsRoundTrip) {
  SessionOptions options;
  options.cache_type_k = "q8_0";
  options.cache_type_v = "q8_0";
  const std::string path = TempDir() + "/q8.kvs";
  ExpectWarmEqualsColdWith(options, path, kPrompts[2]);
  auto info = InspectSessionFile(path);
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->meta.type_k, "q8_0");
  EXPECT_EQ(info->meta.type_v, "q8_0");
}

TEST_F(SessionTest, FlashAttentionOffSessionsRoundTrip) {
  SessionOptions options;
  options.flash_attn = FlashAttention::kOff;
  const std::string path = TempDir() + "/nofa.kvs";
  ExpectWarmEqualsColdWith(options, path, kPrompts[0]);
  EXPECT_FALSE(InspectSessionFile(path)->meta.flash_attn);
}

TEST_F(SessionTest, InspectReadsBackWhatWasSaved) {
  auto info = InspectSessionFile(*path_);
  ASSERT_TRUE(info.ok()) << info.status().ToString();
  EXPECT_TRUE(info->checksums_verified);
  EXPECT_EQ(info->tokens, *saved_tokens_);
  EXPECT_EQ(info->meta.n_tokens, saved_tokens_->size());
  EXPECT_EQ(info->meta.model_fingerprint, TinyModel()->fingerprint());
  EXPECT_EQ(info->meta.n_vocab, TinyModel()->n_vocab());
  EXPECT_EQ(info->meta.type_k, "f16");
  EXPECT_TRUE(info->meta.flash_attn);
  EXPECT_TRUE(info->meta.has_logits);
  EXPECT_GE(info->meta.n_ctx, 4096u);
  EXPECT_NE(info->meta.preview.find("test assistant"), std::string::npos);
  EXPECT_GT(info->kv_bytes, 0u);
  // File overhead over KV + tokens stays small (the benchmark checks the 1% target on real shapes).
  EXPECT_LT(info->file_size, info->kv_bytes + info->tokens.size() * 4 + info->logits_bytes + 4096);
}

TEST_F(SessionTest, ContextFullIsAStatusNotACrash) {
  SessionOptions options;
  options.n_ctx = 256;
  auto s = Session::Create(TinyModel(), options);
  ASSERT_TRUE(s.ok());
  const uint32_t n_ctx = (*s)->n_ctx();
  std::string text;
  while (TinyModel()->Tokenize(text, true)->size() < n_ctx - 8) text += " word";
  ASSERT_TRUE((*s)->Append(text).ok());
  auto gen = (*s)->Generate(Greedy(-1));
  ASSERT_TRUE(gen.ok()) << gen.status().ToString();
  EXPECT_EQ(gen->stop_reason, StopReason::kContextFull);
  EXPECT_EQ((*s)->tokens().size(), n_ctx);
  Status more = (*s)->Append(" overflow");
  EXPECT_EQ(more.code(), Status::Code::kContextFull) << more.ToString();
  EXPECT_EQ((*s)->tokens().size(), n_ctx);  // the failed append left the session as it was
  Status too_long = Session::Create(TinyModel(), options).value()->Append(text + text);
  EXPECT_EQ(too_long.code(), Status::Code::kContextFull);
}

TEST_F(SessionTest, StopStringsEndTheTextBeforeTheMatch) {
  auto reference = Warm()->Generate(Greedy(24));
  ASSERT_TRUE(reference.ok());
  ASSERT_GT(reference->text.size(), 12u);
  const std::string stop = reference->text.substr(reference->text.size() / 2, 3);
  const size_t expected_end = reference->text.find(stop);
  SampleOptions options = Greedy(24);
  options.stop = {stop};
  std::string streamed;
  auto gen = Warm()->Generate(options, [&](std::string_view piece) {
    streamed.append(piece);
    return true;
  });
  ASSERT_TRUE(gen.ok());
  EXPECT_EQ(gen->stop_reason, StopReason::kStopString);
  EXPECT_EQ(gen->text, reference->text.substr(0, expected_end));
  EXPECT_EQ(streamed, gen->text);  // streaming held back the partial match
}

TEST_F(SessionTest, SamplingWithASeedIsReproducibleWarmAndCold) {
  SampleOptions options;
  options.n_predict = 16;
  options.temp = 0.9f;
  options.seed = 1234;
  auto warm = Warm();
  ASSERT_TRUE(warm->Append(kPrompts[0]).ok());
  auto a = warm->Generate(options);
  auto b = Cold(kPrompts[0])->Generate(options);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->tokens, b->tokens);
  EXPECT_EQ(a->tokens.size(), 16u);
}

TEST_F(SessionTest, CancelledByTheCallback) {
  int calls = 0;
  auto gen = Warm()->Generate(Greedy(50), [&](std::string_view) { return ++calls < 3; });
  ASSERT_TRUE(gen.ok());
  EXPECT_EQ(gen->stop_reason, StopReason::kCancelled);
  EXPECT_EQ(calls, 3);
}

TEST_F(SessionTest, EmptySessionsCannotGenerateOrSave) {
  auto s = Session::Create(TinyModel());
  auto gen = (*s)->Generate(Greedy(4));
  EXPECT_FALSE(gen.ok());
  EXPECT_NE(gen.status().message().find("append a prompt"), std::string::npos);
  Status saved = (*s)->Save(TempDir() + "/empty.kvs");
  EXPECT_FALSE(saved.ok());
  // Not the generation message: the session is empty, there is nothing to save.
  EXPECT_NE(saved.message().find("nothing to save"), std::string::npos) << saved.message();
  EXPECT_EQ(saved.message().find("generating"), std::string::npos) << saved.message();
}

// A Sync that cannot fit used to truncate the session to the common prefix first, so the retry
// re-decoded everything.
TEST_F(SessionTest, SyncThatDoesNotFitLeavesTheSessionUnchanged) {
  SessionOptions options;
  options.n_ctx = 256;
  auto s = Session::Create(TinyModel(), options);
  ASSERT_TRUE(s.ok());
  ASSERT_TRUE((*s)->Append(kPrefix).ok());
  const std::vector<Token> before = (*s)->tokens();
  const size_t decoded = (*s)->n_decoded_total();
  std::vector<Token> too_long(before.begin(), before.begin() + 5);
  too_long.resize((*s)->n_ctx() + 1, before[6]);
  auto synced = (*s)->Sync(too_long);
  ASSERT_FALSE(synced.ok());
  EXPECT_EQ(synced.status().code(), Status::Code::kContextFull) << synced.status().ToString();
  EXPECT_EQ((*s)->tokens(), before);
  EXPECT_EQ((*s)->n_decoded_total(), decoded);
  auto retry = (*s)->Sync(before);
  ASSERT_TRUE(retry.ok()) << retry.status().ToString();
  EXPECT_EQ(retry->n_decoded, 0u);
  EXPECT_EQ(retry->n_reused, before.size());
}

std::string LongText(int lines) {
  std::string text;
  for (int i = 0; i < lines; ++i) text += " line " + std::to_string(i) + " of the text.";
  return text;
}

// A throwing progress callback used to unwind through llama.cpp, leak the batch and leave tokens()
// out of step with the cache ("llama.cpp failed to decode" on the next Append).
TEST_F(SessionTest, ThrowingProgressCallbackUndoesTheAppend) {
  SessionOptions options;
  options.n_batch = 16;
  options.n_ubatch = 16;
  auto s = Session::Create(TinyModel(), options);
  ASSERT_TRUE(s.ok());
  ASSERT_TRUE((*s)->Append(kPrefix).ok());
  const std::vector<Token> before = (*s)->tokens();
  int calls = 0;
  (*s)->SetProgressCallback([&](uint64_t, uint64_t) {
    if (++calls == 2) throw std::runtime_error("user abort");
  });
  const std::string text = LongText(10);
  Status appended = (*s)->Append(text);
  ASSERT_FALSE(appended.ok());
  EXPECT_NE(appended.message().find("progress callback threw (user abort)"), std::string::npos)
      << appended.message();
  EXPECT_EQ((*s)->tokens(), before);
  (*s)->SetProgressCallback({});
  ASSERT_TRUE((*s)->Append(text).ok());
  auto cold = Session::Create(TinyModel(), options);
  ASSERT_TRUE(cold.ok());
  ASSERT_TRUE((*cold)->Append(kPrefix).ok());
  ASSERT_TRUE((*cold)->Append(text).ok());
  EXPECT_EQ((*s)->tokens(), (*cold)->tokens());
  auto a = (*s)->Logits();
  auto b = (*cold)->Logits();
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_TRUE(BitEqual(*a, *b));
}

// A progress callback makes DecodeGroup step by n_ubatch (so that a bar moves from the first
// physical batch); llama.cpp splits each call into the same ubatches, so the numbers are the ones
// a session without a callback computes, bit for bit.
TEST_F(SessionTest, ProgressDoesNotChangeLogits) {
  SessionOptions options;
  options.n_batch = 64;
  options.n_ubatch = 16;
  const std::string text = LongText(10);
  std::vector<std::pair<uint64_t, uint64_t>> calls;
  auto with = Session::Create(TinyModel(), options);
  auto without = Session::Create(TinyModel(), options);
  ASSERT_TRUE(with.ok() && without.ok());
  (*with)->SetProgressCallback([&](uint64_t done, uint64_t total) {
    calls.push_back({done, total});
  });
  for (auto* s : {with->get(), without->get()}) {
    ASSERT_TRUE(s->Append(kPrefix).ok());
    ASSERT_TRUE(s->Append(text).ok());
  }
  auto a = (*with)->Logits();
  auto b = (*without)->Logits();
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_TRUE(BitEqual(*a, *b));
  // The text's append reports at 0, then after every 16 tokens.
  const uint64_t n = (*with)->tokens().size();
  ASSERT_GE(calls.size(), 3u);
  EXPECT_EQ(calls.back().first, calls.back().second);
  EXPECT_EQ(calls[calls.size() - 1 - (calls.back().second + 15) / 16].first, 0u);
  EXPECT_LT(calls.back().second, n);
}

TEST_F(SessionTest, RepeatPenaltyAndIgnoreEosSample) {
  SampleOptions plain = Greedy(32);
  SampleOptions off = plain;
  off.repeat_penalty = 1.0f;
  off.repeat_last_n = 16;
  // The test model never repeats itself greedily: a bonus (< 1) shows the penalty is applied.
  SampleOptions penalized = plain;
  penalized.repeat_penalty = 0.5f;
  penalized.repeat_last_n = -1;
  SampleOptions no_eos = plain;
  no_eos.ignore_eos = true;
  std::vector<std::string> texts;
  for (const SampleOptions& o : {plain, off, penalized, no_eos}) {
    auto s = Cold(kPrompts[0]);
    ASSERT_TRUE(s);
    auto g = s->Generate(o);
    ASSERT_TRUE(g.ok()) << g.status().ToString();
    EXPECT_NE(g->stop_reason == StopReason::kEndOfGeneration && o.ignore_eos, true);
    texts.push_back(g->text);
  }
  EXPECT_EQ(texts[0], texts[1]);  // a penalty of 1 is off
  EXPECT_NE(texts[0], texts[2]);
}

TEST_F(SessionTest, ThrowingPieceCallbackUndoesTheGeneration) {
  auto reference = Warm()->Generate(Greedy(8));
  ASSERT_TRUE(reference.ok());
  auto warm = Warm();
  ASSERT_TRUE(warm);
  const std::vector<Token> before = warm->tokens();
  int calls = 0;
  auto gen = warm->Generate(Greedy(8), [&](std::string_view) -> bool {
    if (++calls == 2) throw std::runtime_error("client went away");
    return true;
  });
  ASSERT_FALSE(gen.ok());
  EXPECT_NE(gen.status().message().find("piece callback passed to Generate threw"),
            std::string::npos)
      << gen.status().message();
  EXPECT_EQ(warm->tokens(), before);
  auto again = warm->Generate(Greedy(8));
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_EQ(again->tokens, reference->tokens);
}

// The text stops before the match; the session used to keep every sampled token, so the next
// Append continued after text the caller never saw.
TEST_F(SessionTest, StopStringRollsTheSessionBackToTheReturnedText) {
  auto reference = Warm()->Generate(Greedy(24));
  ASSERT_TRUE(reference.ok());
  ASSERT_GT(reference->text.size(), 12u);
  const std::string stop = reference->text.substr(reference->text.size() / 2, 3);
  SampleOptions options = Greedy(24);
  options.stop = {stop};
  auto warm = Warm();
  ASSERT_TRUE(warm);
  auto gen = warm->Generate(options);
  ASSERT_TRUE(gen.ok());
  ASSERT_EQ(gen->stop_reason, StopReason::kStopString);
  std::vector<Token> expected = *saved_tokens_;
  expected.insert(expected.end(), gen->tokens.begin(), gen->tokens.end());
  EXPECT_EQ(warm->tokens(), expected);
  const std::string kept = TinyModel()->Detokenize(gen->tokens);
  EXPECT_EQ(gen->text.compare(0, kept.size(), kept), 0) << kept << " | " << gen->text;
  EXPECT_EQ(kept.find(stop), std::string::npos);
  // Only a token the match starts inside is missing from the session's text.
  ASSERT_LT(gen->tokens.size(), reference->tokens.size());
  EXPECT_LT(gen->text.size(),
            kept.size() + TinyModel()->TokenToPiece(reference->tokens[gen->tokens.size()]).size());
  ASSERT_TRUE(warm->Append(" Next.").ok());
  EXPECT_EQ(warm->tokens().size(),
            expected.size() + TinyModel()->Tokenize(" Next.", false)->size());
}

// A conversation continues with Sync(everything so far + the next turn). The token Generate left
// pending must be decoded in its own group, as Save does before writing it: otherwise a
// conversation continued in this process and one saved and continued in another decode different
// groups, and their answers part.
TEST_F(SessionTest, SyncAfterGenerateDecodesThePendingTokenAsSaveAndOpenDo) {
  for (FlashAttention fa : {FlashAttention::kOn, FlashAttention::kOff}) {
    SessionOptions options;
    options.flash_attn = fa;
    auto live = Session::Create(TinyModel(), options);
    ASSERT_TRUE(live.ok());
    ASSERT_TRUE((*live)->Append(kPrefix).ok());
    ASSERT_TRUE((*live)->Append(kPrompts[0]).ok());
    ASSERT_TRUE((*live)->Generate(Greedy(6)).ok());
    const std::string path = TempDir() + "/pending.kvs";
    ASSERT_TRUE((*live)->Save(path).ok());  // decodes the pending token, alone
    auto resumed = Session::Open(TinyModel(), path);
    ASSERT_TRUE(resumed.ok()) << resumed.status().ToString();

    auto again = Session::Create(TinyModel(), options);  // the same, never saved
    ASSERT_TRUE((*again)->Append(kPrefix).ok());
    ASSERT_TRUE((*again)->Append(kPrompts[0]).ok());
    ASSERT_TRUE((*again)->Generate(Greedy(6)).ok());

    std::vector<Token> next = (*again)->tokens();
    auto turn = TinyModel()->Tokenize(" Q: And the capital of Italy? A:", false);
    next.insert(next.end(), turn->begin(), turn->end());
    auto a = (*again)->Sync(next);
    auto b = (*resumed)->Sync(next);
    ASSERT_TRUE(a.ok() && b.ok());
    EXPECT_EQ(a->n_decoded, turn->size() + 1);  // the pending token counts where it is decoded
    EXPECT_EQ(b->n_decoded, turn->size());
    EXPECT_TRUE(BitEqual(*(*again)->Logits(), *(*resumed)->Logits()))
        << "flash attention " << int(fa);
  }
}

TEST_F(SessionTest, BadTokensAndCacheTypesAreRefused) {
  auto s = Session::Create(TinyModel());
  EXPECT_EQ((*s)->AppendTokens({1, -5}).code(), Status::Code::kInvalidArgument);
  EXPECT_EQ((*s)->AppendTokens({TinyModel()->n_vocab()}).code(), Status::Code::kInvalidArgument);
  EXPECT_TRUE((*s)->tokens().empty());
  SessionOptions threads;
  threads.n_threads = 100000;  // ggml's thread pool crashes beyond 512
  auto too_many = Session::Create(TinyModel(), threads);
  ASSERT_FALSE(too_many.ok());
  EXPECT_NE(too_many.status().message().find("more threads than llama.cpp supports"),
            std::string::npos);
  SessionOptions open_threads;
  open_threads.n_threads = 100000;
  EXPECT_FALSE(Session::Open(TinyModel(), *path_, open_threads).ok());
  SessionOptions batch;
  batch.n_batch = 0;
  auto no_batch = Session::Create(TinyModel(), batch);
  ASSERT_FALSE(no_batch.ok());
  EXPECT_NE(no_batch.status().message().find("at least 1 token"), std::string::npos);
  SessionOptions options;
  options.cache_type_k = "f17";
  auto bad = Session::Create(TinyModel(), options);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("unknown K cache type 'f17'"), std::string::npos);
}

}  // namespace
}  // namespace kvstash

namespace kvstash {
namespace {

// A cancel flag stops a decode inside llama.cpp (abort callback) and leaves the session as it was;
// with the flag cleared the same append then gives exactly the cold result.
TEST(SessionCancelTest, CancelledAppendLeavesTheSessionAsItWas) {
  auto s = Session::Create(testing::TinyModel());
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  ASSERT_TRUE((*s)->Append(testing::kPrefix).ok());
  const std::vector<Token> before = (*s)->tokens();
  std::atomic<bool> cancel{true};
  (*s)->SetCancelFlag(&cancel);
  Status cancelled = (*s)->Append(" Q: why? A:");
  ASSERT_FALSE(cancelled.ok());
  EXPECT_EQ(cancelled.code(), Status::Code::kCancelled) << cancelled.message();
  EXPECT_EQ((*s)->tokens(), before);
  cancel = false;
  ASSERT_TRUE((*s)->Append(" Q: why? A:").ok());
  auto warm = (*s)->Logits();
  ASSERT_TRUE(warm.ok());
  auto cold = Session::Create(testing::TinyModel());
  ASSERT_TRUE(cold.ok());
  ASSERT_TRUE((*cold)->Append(testing::kPrefix).ok());
  ASSERT_TRUE((*cold)->Append(" Q: why? A:").ok());
  auto cold_logits = (*cold)->Logits();
  ASSERT_TRUE(cold_logits.ok());
  EXPECT_EQ(*warm, *cold_logits);
  (*s)->SetCancelFlag(nullptr);
}

// Generate leaves its last sampled token pending (decoded by the next call). A cancelled append,
// sync, save, generate or logits call must keep it: the session is as it was before the call,
// and continuing gives exactly what an uncancelled session gives.
TEST(SessionCancelTest, CancelledCallsAfterAGenerationKeepItsLastToken) {
  SampleOptions sample;
  sample.n_predict = 3;
  auto reference = Session::Create(testing::TinyModel());
  ASSERT_TRUE(reference.ok()) << reference.status().ToString();
  ASSERT_TRUE((*reference)->Append(testing::kPrefix).ok());
  ASSERT_TRUE((*reference)->Generate(sample).ok());
  ASSERT_TRUE((*reference)->Append(" Q: why? A:").ok());
  auto want = (*reference)->Logits();
  ASSERT_TRUE(want.ok());

  auto s = Session::Create(testing::TinyModel());
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  ASSERT_TRUE((*s)->Append(testing::kPrefix).ok());
  ASSERT_TRUE((*s)->Generate(sample).ok());
  const std::vector<Token> before = (*s)->tokens();
  std::atomic<bool> cancel{true};
  (*s)->SetCancelFlag(&cancel);
  const std::string path = TempDir() + "/pending.kvs";
  const std::vector<Token> longer = [&] {
    auto t = before;
    t.push_back(before.front());
    return t;
  }();
  for (int call = 0; call < 5; ++call) {
    Status status;
    switch (call) {
      case 0:
        status = (*s)->Append(" Q: why? A:");
        break;
      case 1:
        status = (*s)->Sync(longer).status();
        break;
      case 2:
        status = (*s)->Save(path);
        break;
      case 3:
        status = (*s)->Generate(sample).status();
        break;
      case 4:
        status = (*s)->Logits().status();
        break;
    }
    EXPECT_EQ(status.code(), Status::Code::kCancelled)
        << "call " << call << ": " << status.ToString();
    EXPECT_EQ((*s)->tokens(), before) << "call " << call;
  }
  cancel = false;
  ASSERT_TRUE((*s)->Append(" Q: why? A:").ok());
  auto got = (*s)->Logits();
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(*got, *want);
  (*s)->SetCancelFlag(nullptr);
}

}  // namespace
}  // namespace kvstash
