#include "kvstash/runner.h"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>

#include "engine/model_impl.h"
#include "env/env.h"
#include "format/compat.h"
#include "format/session_format.h"

namespace kvstash {
namespace {

using Clock = std::chrono::steady_clock;
double MsBetween(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

// The most bytes of text one token of `model` stands for (special tokens by their text, as the
// tokenizer matches them). 0 when no bound holds: the Unigram (T5) normalizer folds runs of
// whitespace, so there a text can be longer than all its tokens' texts.
// One pass over the vocabulary (~10 ms for 128k tokens), so it is remembered per model content.
size_t LongestTokenBytes(const Model& model) {
  static std::mutex mu;
  static std::map<std::string, size_t> known;
  const std::string key = model.fingerprint().Hex();
  {
    std::lock_guard<std::mutex> lock(mu);
    auto it = known.find(key);
    if (it != known.end()) return it->second;
  }
  const llama_vocab* vocab = model.impl()->vocab;
  size_t longest = 1;
  char buf[512];
  for (int32_t t = 0; t < model.n_vocab(); ++t) {
    const int32_t n = llama_token_to_piece(vocab, t, buf, sizeof(buf), 0, /*special=*/true);
    longest = std::max(longest, n < 0 ? static_cast<size_t>(-n) : static_cast<size_t>(n));
  }
  if (llama_vocab_type(vocab) == LLAMA_VOCAB_TYPE_UGM) longest = 0;
  std::lock_guard<std::mutex> lock(mu);
  known[key] = longest;
  return longest;
}

// Refuses `bytes` of text that cannot fit in `n_ctx` tokens, before it is tokenized: a 47 MB file
// would otherwise take a minute and gigabytes before "context is full".
Status CheckTextCanFit(const Model& model, uint64_t bytes, uint32_t n_ctx, const char* what) {
  if (bytes <= n_ctx) return Status::Ok();  // then at_least <= bytes <= n_ctx below
  const size_t longest = LongestTokenBytes(model);
  if (longest == 0) return Status::Ok();
  const uint64_t at_least = (bytes + longest - 1) / longest;
  if (at_least <= n_ctx) return Status::Ok();
  const std::string size = "the " + std::string(what) + " is " + std::to_string(bytes) +
                           " bytes, at least " + std::to_string(at_least) +
                           " tokens for this model (its longest token is " +
                           std::to_string(longest) + " bytes)";
  if (at_least > format::kMaxTokens) {
    return Status::ContextFull(size + ", more than any context holds (at most " +
                               std::to_string(format::kMaxTokens) + " tokens): split the text");
  }
  return Status::ContextFull(size + ", more than the " + std::to_string(n_ctx) +
                             "-token context: use a larger -c (at least " +
                             std::to_string(at_least) + ") or a shorter text");
}

}  // namespace

Result<SaveReport> SavePrefix(std::shared_ptr<const Model> model, const std::string& prefix,
                              const std::string& path, const SessionOptions& options,
                              const SaveOptions& save_options, const ProgressFn& progress) {
  if (prefix.empty()) {
    return Status::InvalidArgument("the prefix is empty: pass --prefix TEXT or --prefix-file FILE");
  }
  auto session = Session::Create(model, options);
  if (!session.ok()) return session.status();
  KVSTASH_RETURN_IF_ERROR(CheckTextCanFit(*model, prefix.size(), (*session)->n_ctx(), "prefix"));
  auto tokens = model->Tokenize(prefix, /*add_bos=*/true);
  if (!tokens.ok()) return tokens.status();
  SaveReport report;
  report.n_tokens = tokens->size();
  report.n_ctx = (*session)->n_ctx();
  // A signal during the model load: do not start a prefill that may take minutes.
  if (save_options.cancel != nullptr && save_options.cancel->load()) {
    return Status::Cancelled("saving '" + path + "' was cancelled; '" + path +
                             "' was left as it was");
  }
  const auto t0 = Clock::now();
  (*session)->SetProgressCallback(progress);
  (*session)->SetCancelFlag(save_options.cancel);  // a signal stops the prefill, not only the write
  KVSTASH_RETURN_IF_ERROR((*session)->AppendTokens(*tokens));
  const auto t1 = Clock::now();
  KVSTASH_RETURN_IF_ERROR((*session)->Save(path, save_options));
  const auto t2 = Clock::now();
  report.prefill_ms = MsBetween(t0, t1);
  report.save_ms = MsBetween(t1, t2);
  auto info = Env::Default()->Stat(path);
  if (info.ok()) report.bytes = info->size;
  return report;
}

Result<PublishReport> PublishPrefix(std::shared_ptr<const Model> model, const std::string& prefix,
                                    Store& store, const SessionOptions& options,
                                    const std::atomic<bool>* cancel, const ProgressFn& progress) {
  if (prefix.empty()) {
    return Status::InvalidArgument("the prefix is empty: pass --prefix TEXT or --prefix-file FILE");
  }
  const uint32_t n_ctx = format::CreatedContextSize(options.n_ctx, model->n_ctx_train());
  KVSTASH_RETURN_IF_ERROR(CheckTextCanFit(*model, prefix.size(), n_ctx, "prefix"));
  auto tokens = model->Tokenize(prefix, /*add_bos=*/true);
  if (!tokens.ok()) return tokens.status();
  if (cancel != nullptr && cancel->load())
    return Status::Cancelled("publishing the prefix was cancelled before its prefill");
  const auto t0 = Clock::now();
  StoreSyncOptions sync;
  sync.progress = progress;
  sync.cancel = cancel;
  SyncResult synced;
  auto session = Session::Create(model, options, *tokens, store, sync, &synced);
  if (!session.ok()) return session.status();
  const auto t1 = Clock::now();
  PublishReport report;
  report.n_ctx = (*session)->n_ctx();
  session->reset();  // hands its new chunks to the writer (they wait for a first token otherwise)
  store.WaitForWrites();
  report.n_tokens = tokens->size();
  report.n_reused = synced.n_reused;
  report.n_decoded = synced.n_decoded;
  report.n_published = synced.n_published;
  report.prefill_ms = MsBetween(t0, t1);
  report.publish_ms = MsBetween(t1, Clock::now());
  return report;
}

namespace {

// tokens(prefix, BOS) + tokens(prompt), the prompt with BOS only when there is no prefix.
Result<std::vector<Token>> PromptTokens(const Model& model, const RunRequest& request) {
  std::vector<Token> tokens;
  if (request.prefix) {
    auto prefix = model.Tokenize(*request.prefix, /*add_bos=*/true);
    if (!prefix.ok()) return prefix.status();
    tokens = std::move(prefix.value());
  }
  auto prompt = model.Tokenize(request.prompt, /*add_bos=*/tokens.empty());
  if (!prompt.ok()) return prompt.status();
  tokens.insert(tokens.end(), prompt->begin(), prompt->end());
  return tokens;
}

// A session holding the whole prompt, through the store (the chunks fetched while the context is
// created); fills the report's token counts.
Result<std::unique_ptr<Session>> CreateThroughStore(std::shared_ptr<const Model> model,
                                                    const RunRequest& request,
                                                    const ProgressFn& progress, RunReport* report) {
  const uint32_t n_ctx = format::CreatedContextSize(request.create.n_ctx, model->n_ctx_train());
  KVSTASH_RETURN_IF_ERROR(
      CheckTextCanFit(*model, (request.prefix ? request.prefix->size() : 0) + request.prompt.size(),
                      n_ctx, request.prefix ? "prefix and prompt" : "prompt"));
  auto tokens = PromptTokens(*model, request);
  if (!tokens.ok()) return tokens.status();
  StoreSyncOptions sync;
  sync.progress = progress;
  sync.cancel = request.cancel;
  SyncResult synced;
  auto session = Session::Create(model, request.create, *tokens, *request.store, sync, &synced);
  if (!session.ok()) return session.status();
  report->n_ctx = (*session)->n_ctx();
  report->n_prompt_tokens = tokens->size();
  report->n_reused_tokens = synced.n_reused;
  report->n_decoded_prompt_tokens = synced.n_decoded;
  report->n_published_tokens = synced.n_published;
  report->load_ms = synced.restore_ms;
  return session;
}

// Samples the answer and fills the report's timings.
Result<RunReport> Generate(Session& session, const RunRequest& request,
                           const PieceCallback& on_piece, Clock::time_point t_start,
                           Clock::time_point t_prompt, RunReport* out) {
  RunReport& report = *out;
  const auto t_generate = Clock::now();
  report.prompt_ms = MsBetween(t_prompt, t_generate);

  bool first = true;
  auto t_first = t_generate;
  auto generation = session.Generate(request.sample, [&](std::string_view piece) {
    if (first) {
      t_first = Clock::now();
      first = false;
    }
    return on_piece ? on_piece(piece) : true;
  });
  if (!generation.ok()) return generation.status();
  const auto t_end = Clock::now();
  if (first) t_first = t_end;
  report.ttft_ms = MsBetween(t_start, t_first);
  report.generate_ms = MsBetween(t_generate, t_end);
  report.generation = std::move(generation.value());
  return std::move(report);
}

}  // namespace

Result<RunReport> RunPrompt(std::shared_ptr<const Model> model, const RunRequest& request,
                            const PieceCallback& on_piece, const ProgressFn& progress) {
  RunReport report;
  if (request.store && request.session_path) {
    return Status::InvalidArgument("a run uses a session file or a prefix store, not both: drop " +
                                   std::string("--session or --cache-dir"));
  }
  const auto t_start = Clock::now();
  if (request.store) {
    auto session = CreateThroughStore(model, request, progress, &report);
    if (!session.ok()) return session.status();
    return Generate(**session, request, on_piece, t_start, t_start, &report);
  }
  std::unique_ptr<Session> session;
  if (request.session_path) {
    OpenOptions open = request.open;
    if (open.n_ctx == 0 && request.sample.n_predict >= 0) {
      // Room for everything this run may add, so that the context is sized to the run (cheaper to
      // create than the saved size). Bounded from the texts' sizes, before tokenizing them: a
      // token stands for at least one byte of text, besides BOS and a leading space some
      // tokenizers add.
      const uint64_t text_bytes =
          (request.prefix ? request.prefix->size() : 0) + request.prompt.size();
      const uint64_t room = text_bytes + 8 + uint64_t(request.sample.n_predict);
      open.n_room = static_cast<uint32_t>(std::min<uint64_t>(room, UINT32_MAX));
    }
    auto opened = Session::Open(model, *request.session_path, open);
    if (!opened.ok()) return opened.status();
    session = std::move(opened.value());
  } else {
    auto created = Session::Create(model, request.create);
    if (!created.ok()) return created.status();
    session = std::move(created.value());
  }
  const auto t_prompt = Clock::now();
  if (request.session_path) report.load_ms = MsBetween(t_start, t_prompt);
  session->SetProgressCallback(progress);
  session->SetCancelFlag(request.cancel);
  report.n_ctx = session->n_ctx();
  KVSTASH_RETURN_IF_ERROR(
      CheckTextCanFit(*model, (request.prefix ? request.prefix->size() : 0) + request.prompt.size(),
                      session->n_ctx(), request.prefix ? "prefix and prompt" : "prompt"));
  std::vector<Token> prefix_tokens;
  if (request.prefix) {
    auto tokens = model->Tokenize(*request.prefix, /*add_bos=*/true);
    if (!tokens.ok()) return tokens.status();
    prefix_tokens = std::move(tokens.value());
  }

  if (request.session_path && request.prefix) {
    auto synced = session->Sync(prefix_tokens);
    if (!synced.ok()) return synced.status();
    report.n_reused_tokens = synced->n_reused;
  } else if (request.session_path) {
    report.n_reused_tokens = session->tokens().size();
  } else if (!prefix_tokens.empty()) {
    KVSTASH_RETURN_IF_ERROR(session->AppendTokens(prefix_tokens));
  }
  auto prompt_tokens = model->Tokenize(request.prompt, /*add_bos=*/session->tokens().empty());
  if (!prompt_tokens.ok()) return prompt_tokens.status();
  KVSTASH_RETURN_IF_ERROR(session->AppendTokens(*prompt_tokens));
  // Open decodes nothing, so everything this session decoded was decoded by this run (including a
  // prefix token Sync may decode again for its logits).
  report.n_decoded_prompt_tokens = session->n_decoded_total();
  report.n_prompt_tokens = session->tokens().size();
  return Generate(*session, request, on_piece, t_start, t_prompt, &report);
}

}  // namespace kvstash
