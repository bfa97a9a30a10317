#include "kvstash/runner.h"

#include <algorithm>
#include <chrono>
#include <cstdint>

#include "env/env.h"

namespace kvstash {
namespace {

using Clock = std::chrono::steady_clock;
double MsBetween(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
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
  auto tokens = model->Tokenize(prefix, /*add_bos=*/true);
  if (!tokens.ok()) return tokens.status();
  SaveReport report;
  report.n_tokens = tokens->size();
  const auto t0 = Clock::now();
  (*session)->SetProgressCallback(progress);
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

Result<RunReport> RunPrompt(std::shared_ptr<const Model> model, const RunRequest& request,
                            const PieceCallback& on_piece, const ProgressFn& progress) {
  RunReport report;
  const auto t_start = Clock::now();
  std::unique_ptr<Session> session;
  std::vector<Token> prefix_tokens;
  if (request.prefix) {
    auto tokens = model->Tokenize(*request.prefix, /*add_bos=*/true);
    if (!tokens.ok()) return tokens.status();
    prefix_tokens = std::move(tokens.value());
  }

  // The prompt is tokenized before the session exists: without BOS whenever something comes
  // before it (a session always holds at least one token).
  auto prompt_tokens =
      model->Tokenize(request.prompt, /*add_bos=*/!request.session_path && prefix_tokens.empty());
  if (!prompt_tokens.ok()) return prompt_tokens.status();
  if (request.session_path) {
    OpenOptions open = request.open;
    if (open.n_ctx == 0 && request.sample.n_predict >= 0) {
      // Room for everything this run may add: a context sized to the run is cheaper to create.
      const uint64_t room = uint64_t(prefix_tokens.size()) + prompt_tokens->size() +
                            uint64_t(request.sample.n_predict);
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

  if (request.session_path && request.prefix) {
    auto synced = session->Sync(prefix_tokens);
    if (!synced.ok()) return synced.status();
    report.n_reused_tokens = synced->n_reused;
  } else if (request.session_path) {
    report.n_reused_tokens = session->tokens().size();
  } else if (!prefix_tokens.empty()) {
    KVSTASH_RETURN_IF_ERROR(session->AppendTokens(prefix_tokens));
  }
  KVSTASH_RETURN_IF_ERROR(session->AppendTokens(*prompt_tokens));
  // Open decodes nothing, so everything this session decoded was decoded by this run (including a
  // prefix token Sync may decode again for its logits).
  report.n_decoded_prompt_tokens = session->n_decoded_total();
  report.n_prompt_tokens = session->tokens().size();
  const auto t_generate = Clock::now();
  report.prompt_ms = MsBetween(t_prompt, t_generate);

  bool first = true;
  auto t_first = t_generate;
  auto generation = session->Generate(request.sample, [&](std::string_view piece) {
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
  return report;
}

}  // namespace kvstash
