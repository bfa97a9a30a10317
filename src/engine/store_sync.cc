// Session::Sync through a prefix store: engine::Sequence's store flow (docs/STORE.md, "Syncing a
// session") for a session's one sequence, synchronously.
#include <chrono>
#include <future>

#include "engine/session_impl.h"
#include "engine/session_internals.h"
#include "engine/store_chain.h"
#include "format/compat.h"
#include "kvstash/store.h"

namespace kvstash {
namespace {

using Clock = std::chrono::steady_clock;
double MsSince(Clock::time_point t) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t).count();
}

using engine::Chain;
using engine::Fetched;

// Session::Sync(tokens, store), using `fetched` (from Create(..., store)) when it was fetched for
// this namespace and these tokens.
Result<SyncResult> SyncThroughStore(Session& session, SessionInternals::Impl& s,
                                    const std::vector<Token>& tokens, Store& store,
                                    Fetched* fetched) {
  KVSTASH_RETURN_IF_ERROR(s.CheckTokens(tokens));
  if (tokens.size() > s.n_ctx()) {
    return Status::ContextFull("cannot sync to " + std::to_string(tokens.size()) + " tokens: the " +
                               "context holds " + std::to_string(s.n_ctx()) +
                               "; the session is unchanged; use a larger -c");
  }
  if (tokens.empty()) return session.Sync(tokens);
  const auto t_restore = Clock::now();
  const size_t cached = s.seq->n_cached();
  auto chain = s.seq->Begin(tokens, store.chunk_tokens(), &store);
  if (s.seq->n_cached() < cached) s.logits_valid = false;
  if (!chain.ok()) return chain.status();
  SyncResult result;
  if (chain->Lookup()) {
    Fetched local;
    if (fetched == nullptr || fetched->ns_text != chain->text || fetched->hashes != chain->hashes ||
        fetched->tails != chain->tails || fetched->limit != chain->limit) {
      local = engine::FetchPrefix(store, *chain, tokens, chain->hashes.size(),
                                  std::min(s.context->n_threads(), 2), /*huge_pages=*/true);
      fetched = &local;
    }
    result.n_restored = s.seq->ApplyFetched(*fetched);
    if (result.n_restored > 0) s.logits_valid = false;
  }
  result.restore_ms = MsSince(t_restore);
  result.n_reused = s.seq->n_cached();
  const auto t_decode = Clock::now();
  KVSTASH_RETURN_IF_ERROR(s.Flush(/*keep=*/result.n_reused, /*aligned=*/true));
  result.decode_ms = MsSince(t_decode);
  result.n_decoded = tokens.size() - result.n_reused;
  // The new chunks are copied out for the writer after the answer's first token (Generate), or
  // when the session is next changed or ends.
  result.n_published = s.seq->QueuePublish(tokens.size());
  return result;
}

}  // namespace

Result<SyncResult> Session::Sync(const std::vector<Token>& tokens, Store& store) {
  return SyncThroughStore(*this, *impl_, tokens, store, nullptr);
}

Result<std::unique_ptr<Session>> Session::Create(std::shared_ptr<const Model> model,
                                                 const SessionOptions& options,
                                                 const std::vector<Token>& tokens, Store& store,
                                                 const StoreSyncOptions& sync, SyncResult* result) {
  if (!model) return Status::InvalidArgument("Session::Create needs a loaded model");
  auto params = engine::ParamsFor(*model, options);
  if (!params.ok()) return params.status();
  // The namespace as the context will have it: llama.cpp's n_ctx (0: the training context, rounded
  // up to 256) decides LongRoPE's factors.
  params->n_ctx = format::CreatedContextSize(params->n_ctx, model->n_ctx_train());
  // Other kinds' namespaces need the state's shape, known only once the context exists.
  auto memory = engine::MemoryKindOf(*model);
  const bool plain = memory.ok() && *memory == format::MemoryKind::kKv;
  const uint32_t chunk = store.chunk_tokens();
  // As Sequence::Begin will ask, for an empty session (TailsFor: a plain, invariant context).
  const bool tails = plain && !tokens.empty() && engine::WouldBeInvariant(*model, *params);
  const size_t usable = tokens.empty() || !plain ? 0 : (tokens.size() - (tails ? 0 : 1)) / chunk;
  Chain predicted =
      engine::MakeChain(*model, *params, !params->flash_attn, chunk,
                        std::vector<Token>(tokens.begin(), tokens.begin() + usable * chunk));
  predicted.tails = tails && tokens.size() > 1;
  predicted.limit = tokens.empty() ? 0 : tokens.size() - 1;
  std::future<Fetched> fetching;
  if (usable > 0 || predicted.tails) {
    fetching = std::async(std::launch::async, [&] {
      // Alongside context creation: no huge-page compaction (env.h, LargeBuffer).
      return engine::FetchPrefix(store, predicted, tokens, usable, /*n_threads=*/1,
                                 /*huge_pages=*/false);
    });
  }
  auto created = Create(model, options);
  Fetched fetched = fetching.valid() ? fetching.get() : Fetched();
  if (!created.ok()) return created.status();
  Session& session = **created;
  session.SetProgressCallback(sync.progress);
  session.SetCancelFlag(sync.cancel);
  auto synced = SyncThroughStore(session, *session.impl_, tokens, store, &fetched);
  if (!synced.ok()) return synced.status();
  if (result != nullptr) *result = *synced;
  return std::move(created.value());
}

}  // namespace kvstash
