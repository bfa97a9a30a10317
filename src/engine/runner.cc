#include "kvstash/runner.h"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
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
// One pass over the vocabulary, so it is remembered per model content.
size_t LongestTokenBytes(const Model& model) {
  static std::mutex mu;
  static std::map<std::string, size_t> known;
  const std::string key = model.fingerprint().Hex();
  {
    std::lock_guard<std::mutex> lock(mu);
    auto it = known.find(key);
    if (it != known.end()) return it->second;
  }
  const llama_vocab* vocab = ImplOf(model)->vocab;
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
  const uint32_t n_ctx = format::CreatedContextSize(
      options.n_ctx.value_or(SessionOptions::kDefaultContext), model->n_ctx_train());
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
  const uint32_t n_ctx = format::CreatedContextSize(
      request.context.n_ctx.value_or(SessionOptions::kDefaultContext), model->n_ctx_train());
  KVSTASH_RETURN_IF_ERROR(
      CheckTextCanFit(*model, (request.prefix ? request.prefix->size() : 0) + request.prompt.size(),
                      n_ctx, request.prefix ? "prefix and prompt" : "prompt"));
  auto tokens = PromptTokens(*model, request);
  if (!tokens.ok()) return tokens.status();
  StoreSyncOptions sync;
  sync.progress = progress;
  sync.cancel = request.cancel;
  SyncResult synced;
  auto session = Session::Create(model, request.context, *tokens, *request.store, sync, &synced);
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

namespace {

// Warm runs: room for everything this run may add, so that the context is sized to the run
// (cheaper to create than the saved size). Bounded from the texts' sizes, before tokenizing them: a
// token stands for at least one byte of text, besides BOS and a leading space some tokenizers add.
SessionOptions SizedOpenOptions(const RunRequest& request) {
  SessionOptions open = request.context;
  if (open.n_ctx.value_or(0) == 0 && request.sample.n_predict >= 0) {
    const uint64_t text_bytes =
        (request.prefix ? request.prefix->size() : 0) + request.prompt.size();
    const uint64_t room = text_bytes + 8 + uint64_t(request.sample.n_predict);
    open.n_room = static_cast<uint32_t>(std::min<uint64_t>(room, UINT32_MAX));
  }
  return open;
}

// Whether `path` starts with llama.cpp's session magic ('ggsn' as a little-endian uint32), as
// llama-completion's own --prompt-cache files do.
bool IsLlamaSessionFile(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) return false;
  char magic[4] = {};
  const bool read = std::fread(magic, 1, sizeof(magic), f) == sizeof(magic);
  std::fclose(f);
  return read && std::memcmp(magic, "nsgg", 4) == 0;
}

// The --prompt-cache file's session; a fresh one when there is no file or an empty one (as
// llama-completion treats them). *replace_empty: the file exists and is empty.
Result<std::unique_ptr<Session>> OpenPromptCache(std::shared_ptr<const Model> model,
                                                 const RunRequest& request, bool* replace_empty) {
  const std::string& path = request.prompt_cache->path;
  auto info = Env::Default()->Stat(path);
  *replace_empty = info.ok() && info->type == FileInfo::Type::kRegular && info->size == 0;
  if (!info.ok() && info.status().code() == Status::Code::kNotFound) {
    return Session::Create(model, request.context);
  }
  if (*replace_empty) return Session::Create(model, request.context);
  // The context a cold run creates (-c, else 4096), not one sized to the file: a cache saved by a
  // run sized to its own prompt records that small context, which would cap the next prompt.
  SessionOptions options = request.context;
  if (!options.n_ctx) options.n_ctx = SessionOptions::kDefaultContext;
  auto opened = Session::Open(model, path, options);
  if (!opened.ok() && IsLlamaSessionFile(path)) {
    return Status::Incompatible("prompt cache '" + path + "' is a llama.cpp session file, which " +
                                "kvstash does not read; convert it with 'kvstash import', or " +
                                "pass --prompt-cache a new file name");
  }
  return opened;
}

Status SavePromptCache(Session& session, const RunRequest& request, bool replace_empty,
                       RunReport* report) {
  const auto t0 = Clock::now();
  SaveOptions save;
  save.cancel = request.cancel;
  save.replace_any = replace_empty;
  KVSTASH_RETURN_IF_ERROR(session.Save(request.prompt_cache->path, save));
  report->prompt_cache_saved = true;
  report->save_ms += MsBetween(t0, Clock::now());
  return Status::Ok();
}

// Whether `prompt` (tokenized with BOS) is the session's tokens and more: the whole prompt passed
// again. The last session token may differ (a text that goes on can merge into it).
bool RepeatsSession(const std::vector<Token>& prompt, const std::vector<Token>& session) {
  if (session.size() < 2 || prompt.size() < session.size()) return false;
  size_t common = 0;
  while (common < session.size() && prompt[common] == session[common]) ++common;
  return common + 1 >= session.size();
}

// What every path does to its session before the prompt: progress, cancellation, and a prompt
// that cannot fit refused before it is tokenized.
Status PrepareSession(const Model& model, const RunRequest& request, const ProgressFn& progress,
                      Session* session, RunReport* report) {
  session->SetProgressCallback(progress);
  session->SetCancelFlag(request.cancel);
  report->n_ctx = session->n_ctx();
  return CheckTextCanFit(model,
                         (request.prefix ? request.prefix->size() : 0) + request.prompt.size(),
                         session->n_ctx(), request.prefix ? "prefix and prompt" : "prompt");
}

// --prompt-cache: sync the whole sequence with the file's session, save it, generate.
Result<RunReport> RunWithPromptCache(std::shared_ptr<const Model> model, const RunRequest& request,
                                     const PieceCallback& on_piece, const ProgressFn& progress) {
  RunReport report;
  const auto t_start = Clock::now();
  bool replace_empty = false;
  auto session = OpenPromptCache(model, request, &replace_empty);
  if (!session.ok()) return session.status();
  Session& s = **session;
  const bool loaded = !s.tokens().empty();
  const auto t_prompt = Clock::now();
  if (loaded) report.load_ms = MsBetween(t_start, t_prompt);
  KVSTASH_RETURN_IF_ERROR(PrepareSession(*model, request, progress, &s, &report));
  auto tokens = PromptTokens(*model, request);
  if (!tokens.ok()) return tokens.status();
  auto synced = s.Sync(*tokens);
  if (!synced.ok()) return synced.status();
  report.n_reused_tokens = synced->n_reused;
  report.n_decoded_prompt_tokens = s.n_decoded_total();
  report.n_prompt_tokens = tokens->size();
  if (report.n_reused_tokens > 0) report.reused_from = "prompt cache";
  const auto& cache = *request.prompt_cache;
  // As llama-completion: written when the prompt is not all in the file already.
  if (!cache.read_only && (!loaded || report.n_reused_tokens < tokens->size())) {
    KVSTASH_RETURN_IF_ERROR(SavePromptCache(s, request, replace_empty, &report));
  }
  const double saved_ms = report.save_ms;
  auto answer = Generate(s, request, on_piece, t_start, t_prompt, &report);
  if (!answer.ok()) return answer;
  answer->prompt_ms -= saved_ms;  // the prompt's time, not the file's
  if (cache.save_generated && !cache.read_only && !answer->generation.tokens.empty()) {
    KVSTASH_RETURN_IF_ERROR(SavePromptCache(s, request, replace_empty, &*answer));
  }
  return answer;
}

// A session file's session (warm) or a fresh one (cold); load_ms for the file.
Result<std::unique_ptr<Session>> OpenOrCreate(std::shared_ptr<const Model> model,
                                              const RunRequest& request) {
  if (request.session_path)
    return Session::Open(model, *request.session_path, SizedOpenOptions(request));
  return Session::Create(model, request.context);
}

// A session file's session (warm: a prefix or a whole prompt synced with it) or a fresh one.
Result<RunReport> RunWithSessionOrCold(std::shared_ptr<const Model> model,
                                       const RunRequest& request, const PieceCallback& on_piece,
                                       const ProgressFn& progress) {
  RunReport report;
  const auto t_start = Clock::now();
  auto opened = OpenOrCreate(model, request);
  if (!opened.ok()) return opened.status();
  Session& session = **opened;
  const auto t_prompt = Clock::now();
  if (request.session_path) {
    report.load_ms = MsBetween(t_start, t_prompt);
    report.reused_from = "session";
  }
  KVSTASH_RETURN_IF_ERROR(PrepareSession(*model, request, progress, &session, &report));
  std::vector<Token> prefix_tokens;
  if (request.prefix) {
    auto tokens = model->Tokenize(*request.prefix, /*add_bos=*/true);
    if (!tokens.ok()) return tokens.status();
    prefix_tokens = std::move(tokens.value());
  }
  std::vector<Token> whole;  // the prompt as a whole prompt, when it repeats the session
  if (request.session_path && !request.prefix) {
    auto tokens = model->Tokenize(request.prompt, /*add_bos=*/true);
    if (!tokens.ok()) return tokens.status();
    if (RepeatsSession(*tokens, session.tokens())) whole = std::move(tokens.value());
  }

  if (!whole.empty()) {
    auto synced = session.Sync(whole);
    if (!synced.ok()) return synced.status();
    report.n_reused_tokens = synced->n_reused;
    report.prompt_repeats_session = true;
  } else if (request.session_path && request.prefix) {
    auto synced = session.Sync(prefix_tokens);
    if (!synced.ok()) return synced.status();
    report.n_reused_tokens = synced->n_reused;
  } else if (request.session_path) {
    report.n_reused_tokens = session.tokens().size();
  } else if (!prefix_tokens.empty()) {
    KVSTASH_RETURN_IF_ERROR(session.AppendTokens(prefix_tokens));
  }
  if (whole.empty()) {
    auto prompt_tokens = model->Tokenize(request.prompt, /*add_bos=*/session.tokens().empty());
    if (!prompt_tokens.ok()) return prompt_tokens.status();
    KVSTASH_RETURN_IF_ERROR(session.AppendTokens(*prompt_tokens));
  }
  // Open decodes nothing, so everything this session decoded was decoded by this run (including a
  // prefix token Sync may decode again for its logits).
  report.n_decoded_prompt_tokens = session.n_decoded_total();
  report.n_prompt_tokens = session.tokens().size();
  return Generate(session, request, on_piece, t_start, t_prompt, &report);
}

}  // namespace

Result<RunReport> RunPrompt(std::shared_ptr<const Model> model, const RunRequest& request,
                            const PieceCallback& on_piece, const ProgressFn& progress) {
  RunReport report;
  if ((request.store != nullptr) + request.session_path.has_value() +
          request.prompt_cache.has_value() >
      1) {
    return Status::InvalidArgument(
        "a run uses one of a session file, a prompt cache and a prefix " +
        std::string("store: drop --session, --prompt-cache or ") + "--cache-dir");
  }
  if (request.prompt_cache) return RunWithPromptCache(model, request, on_piece, progress);
  if (!request.store) return RunWithSessionOrCold(model, request, on_piece, progress);
  const auto t_start = Clock::now();
  auto session = CreateThroughStore(model, request, progress, &report);
  if (!session.ok()) return session.status();
  if (report.n_reused_tokens > 0) report.reused_from = "store";
  return Generate(**session, request, on_piece, t_start, t_start, &report);
}

}  // namespace kvstash
