// Session::Sync through a prefix store: restore the longest stored prefix of whole chunks, decode
// the rest in chunk-aligned groups, publish the new chunks (docs/STORE.md, "Syncing a session").
#include <algorithm>
#include <chrono>
#include <future>
#include <map>
#include <mutex>

#include "engine/session_impl.h"
#include "engine/store_chain.h"
#include "format/chunk_format.h"
#include "format/compat.h"
#include "format/llama_state.h"
#include "kvstash/store.h"
#include "store/chain_hash.h"
#include "store/store_impl.h"

namespace kvstash {
namespace {

using Clock = std::chrono::steady_clock;
double MsSince(Clock::time_point t) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t).count();
}

using engine::Chain;
using engine::Fetched;
using engine::FetchPrefix;
using engine::MakeChain;

// Flash attention "auto" is resolved inside llama.cpp, which does not say what it chose; the V
// layout of one decoded token tells (V is transposed exactly when flash attention is off). The
// same state gives the shape of every kind but kKv (which layers slide or keep a state), which
// the store's chunk layout needs.
Result<bool> ResolveShape(Session::Impl& s) {
  const bool plain = s.memory == format::MemoryKind::kKv;
  if (s.v_trans && (plain || s.shape)) return *s.v_trans;
  const bool probe = s.n_cached == 0;
  if (probe) {
    llama_token token = 0;
    llama_batch batch = llama_batch_get_one(&token, 1);
    engine::ClearLlamaError();
    if (llama_decode(s.ctx.get(), batch) != 0) {
      llama_memory_seq_rm(llama_get_memory(s.ctx.get()), kSeq, -1, -1);
      return Status::Internal("llama.cpp could not decode one token to learn the KV layout: " +
                              engine::LastLlamaError());
    }
  }
  engine::SeqState state;
  Status status = engine::GetSeqState(s.ctx.get(), kSeq, 1, &state, s.memory, s.n_swa);
  std::vector<uint8_t> snapshot;
  if (status.ok() && !plain) status = s.TakeSnapshot(&snapshot);
  if (probe) {
    llama_memory_seq_rm(llama_get_memory(s.ctx.get()), kSeq, -1, -1);
    s.logits_valid = false;
  }
  if (!status.ok()) return status;
  if (!plain) {
    engine::StateShape shape;
    shape.layout = state.seq;
    shape.snapshot_bytes = snapshot.size();
    s.shape = shape;
  }
  // A recurrent model has no V to tell; its namespace records what was asked for.
  s.v_trans =
      s.memory == format::MemoryKind::kRecurrent ? !s.params.flash_attn : state.layout.v_trans;
  return *s.v_trans;
}

// Takes what chunk `index`, just decoded, carries beyond its cells (its window cells, or a
// snapshot where the namespace keeps one).
Status CaptureBoundary(Session::Impl& s, const Chain& chain, uint32_t index) {
  if (chain.layout.kind == format::MemoryKind::kKv) return Status::Ok();
  if (chain.layout.kind != format::MemoryKind::kIswa && !chain.layout.HasSnapshot(index)) {
    return Status::Ok();
  }
  std::vector<uint8_t> snapshot;
  KVSTASH_RETURN_IF_ERROR(s.TakeSnapshot(&snapshot));
  return engine::BoundaryPart(chain, index, snapshot, &s.boundary_parts);
}

// Decodes tokens[n_cached..] in groups that end at multiples of `chunk` (and at the end), each
// split at n_batch from its start, as a cold sync would. Rolled back entirely on failure.
// For every kind but kKv, what each chunk ending inside the decoded range carries beyond its cells
// is captured right after its last token (engine::BoundaryPart), for `chain`'s writer.
Status FlushAligned(Session::Impl& s, uint32_t chunk, const Chain& chain) {
  const size_t start = s.n_cached, n = s.tokens.size();
  if (start == n) return Status::Ok();
  // A window or recurrent state half advanced by a failed group is put back from this.
  std::vector<uint8_t> before;
  if (format::HasTrailingState(s.memory) && start > 0) {
    KVSTASH_RETURN_IF_ERROR(s.TakeSnapshot(&before));
  }
  Status status;
  // DecodeGroup reports within its group; the caller's callback sees the whole sync's tokens.
  const ProgressFn outer = s.progress;
  for (size_t begin = start; begin < n && status.ok();) {
    const size_t end = std::min(n, (begin / chunk + 1) * chunk);
    if (outer) {
      s.progress = [&outer, base = begin - start, total = n - start](uint64_t done, uint64_t) {
        outer(base + done, total);
      };
    }
    status = s.DecodeGroup(begin, end - begin);
    s.progress = outer;
    if (status.ok() && end % chunk == 0 && s.memory != format::MemoryKind::kKv) {
      status = CaptureBoundary(s, chain, static_cast<uint32_t>(end / chunk));
    }
    begin = end;
    if (status.ok() && s.progress && begin < n) status = s.ReportProgress(begin - start, n - start);
  }
  const float* out = status.ok() ? llama_get_logits_ith(s.ctx.get(), -1) : nullptr;
  if (status.ok() && out == nullptr)
    status = Status::Internal("llama.cpp returned no logits for the last token");
  if (status.ok()) status = s.CheckFinite(out, n);
  if (!status.ok()) {
    s.tokens.resize(start);
    s.boundary_parts.erase(s.boundary_parts.upper_bound(static_cast<uint32_t>(start / chunk)),
                           s.boundary_parts.end());
    return s.RollbackTo(start, before, status);
  }
  s.logits.assign(out, out + s.model->n_vocab());
  s.logits_valid = true;
  s.n_cached = n;
  s.n_decoded_total += n - start;
  return Status::Ok();
}

// Hands the assembled chunks to llama.cpp (set_data erases the sequence first, so all of them at
// once). On failure the session is empty and the caller decodes from the start.
Status RestoreFetched(Session::Impl& s, Fetched& fetched, const std::vector<Token>& tokens,
                      uint32_t chunk) {
  KVSTASH_RETURN_IF_ERROR(fetched.status);  // before anything changes: the session stays whole
  if (fetched.layout.kind == format::MemoryKind::kRecurrent ||
      fetched.layout.kind == format::MemoryKind::kHybrid) {
    KVSTASH_RETURN_IF_ERROR(s.CheckRecurrentShape(fetched.layout.rs, "the store's snapshot"));
  }
  s.tokens.clear();
  s.n_cached = 0;
  s.n_aligned = 0;
  s.logits_valid = false;
  s.boundary_parts.clear();
  KVSTASH_RETURN_IF_ERROR(engine::RestoreFetched(s.ctx.get(), kSeq, 1, fetched, chunk));
  const size_t cells = fetched.n_assembled * chunk;
  s.tokens.assign(tokens.begin(), tokens.begin() + cells);
  s.n_cached = cells;
  s.n_aligned = cells;
  s.aligned_chunk = chunk;
  return Status::Ok();
}

// Queues chunks first_new+1..k (1-based) of the session's tokens. Returns tokens queued.
size_t PublishChunks(Session::Impl& s, Store& store, const Chain& chain, size_t first_new,
                     long bad) {
  if (first_new >= chain.hashes.size()) return 0;
  engine::SeqState state;
  const Status status = engine::GetSeqState(s.ctx.get(), kSeq, 1, &state, s.memory, s.n_swa);
  if (!status.ok()) {
    store.impl()->Warn("kvstash: the new chunks were not saved to store '" + store.dir() +
                       "': " + status.message());
    return 0;
  }
  return engine::PublishChunks(store, chain, s.tokens, state, first_new, bad, &s.boundary_parts);
}

}  // namespace

namespace {

// Session::Sync(tokens, store), using `fetched` (from Create(..., store)) when it was fetched for
// this namespace and these tokens.
Result<SyncResult> SyncThroughStore(Session& session, Session::Impl& s,
                                    const std::vector<Token>& tokens, Store& store,
                                    Fetched* fetched) {
  KVSTASH_RETURN_IF_ERROR(s.CheckTokens(tokens));
  if (tokens.size() > s.n_ctx()) {
    return Status::ContextFull("cannot sync to " + std::to_string(tokens.size()) + " tokens: the " +
                               "context holds " + std::to_string(s.n_ctx()) +
                               "; the session is unchanged; use a larger -c");
  }
  s.RunPendingPublish();  // the previous sync's chunks, before a restore replaces the cache
  if (tokens.empty()) return session.Sync(tokens);
  const uint32_t chunk = store.chunk_tokens();
  auto v_trans = ResolveShape(s);
  if (!v_trans.ok()) return v_trans.status();
  const Chain chain =
      MakeChain(*s.model, s.params, *v_trans, chunk, tokens, s.shape ? &*s.shape : nullptr);

  // Whole chunks that may be reused: never the one holding the last token, whose logits a cold
  // run computes by decoding it.
  const size_t usable = (tokens.size() - 1) / chunk;
  size_t common = 0;
  while (common < s.n_cached && common < tokens.size() && s.tokens[common] == tokens[common])
    ++common;
  size_t own =
      s.aligned_chunk == chunk ? std::min({common, s.n_aligned, usable * chunk}) / chunk : 0;
  // A window or state that cannot be cut back there is not kept (the store may hold the chunks).
  if (!s.CanCut(own * chunk)) own = 0;
  const auto t_restore = Clock::now();
  Fetched local;
  const bool lookup = usable > own;
  if (lookup &&
      (fetched == nullptr || fetched->ns_text != chain.text || fetched->hashes != chain.hashes)) {
    local = FetchPrefix(store, chain, tokens, usable, std::min(s.n_threads, 2), true);
    fetched = &local;
  }
  SyncResult result;
  size_t keep = own * chunk;
  // What can be restored: for a recurrent state, only up to a snapshot (n_assembled <= n_found).
  if (lookup && fetched->n_assembled > own) {
    const Status restored = RestoreFetched(s, *fetched, tokens, chunk);
    if (restored.ok()) {
      keep = s.n_cached;
      result.n_restored = keep;
    } else {
      store.impl()->Warn("kvstash: chunks of store '" + store.dir() +
                         "' were not used: " + restored.message());
      keep = 0;
    }
  }
  // The store holds chunks 1..n_found (all verified); the rest are new to it, as far as this
  // lookup knows (the writer skips any that another writer published meanwhile).
  const size_t known = lookup ? fetched->n_found : 0;
  const long first_bad = lookup ? fetched->first_bad : -1;
  local = Fetched();
  if (fetched != nullptr) fetched->state.reset();  // restored: the bytes are llama.cpp's now
  result.restore_ms = MsSince(t_restore);
  KVSTASH_RETURN_IF_ERROR(s.Truncate(std::min(keep, s.n_cached)));
  keep = s.n_cached;
  s.tokens.assign(tokens.begin(), tokens.end());
  const auto t_decode = Clock::now();
  KVSTASH_RETURN_IF_ERROR(FlushAligned(s, chunk, chain));
  result.decode_ms = MsSince(t_decode);
  s.n_aligned = tokens.size();
  s.aligned_chunk = chunk;
  result.n_reused = keep;
  result.n_decoded = tokens.size() - keep;
  // The new chunks are copied out for the writer after the answer's first token (session_impl.h,
  // pending_publish), or when the session is next changed or ends.
  if (known < chain.hashes.size()) {
    std::weak_ptr<Store> weak = store.weak_from_this();
    s.pending_publish = [weak, chain, known, first_bad](Session::Impl& impl) {
      if (auto alive = weak.lock()) PublishChunks(impl, *alive, chain, known, first_bad);
    };
    s.pending_publish_upto = chain.hashes.size() * chunk;
    result.n_published = (chain.hashes.size() - known) * chunk;
  }
  return result;
}

// How llama.cpp resolved flash attention "auto" for a model earlier in this process (it does not
// change between contexts of one model and build), so that Create(..., store) can look up the
// right namespace before the context exists. A wrong guess costs the overlap, never correctness:
// Sync fetches again when the namespace differs.
std::mutex g_auto_mu;
std::map<std::string, bool> g_auto_v_trans;  // model fingerprint -> V transposed

bool PredictVTrans(const Model& model, FlashAttention flash) {
  if (flash != FlashAttention::kAuto) return flash == FlashAttention::kOff;
  std::lock_guard<std::mutex> lock(g_auto_mu);
  auto it = g_auto_v_trans.find(model.fingerprint().Hex());
  return it != g_auto_v_trans.end() ? it->second : false;  // CPU builds enable it
}

void RememberVTrans(const Model& model, bool v_trans) {
  std::lock_guard<std::mutex> lock(g_auto_mu);
  g_auto_v_trans[model.fingerprint().Hex()] = v_trans;
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
  auto params = Impl::ParamsFor(options);
  if (!params.ok()) return params.status();
  // The namespace as the context will have it: llama.cpp's n_ctx (0: the training context, rounded
  // up to 256) decides LongRoPE's factors.
  params->n_ctx = format::CreatedContextSize(options.n_ctx, model->n_ctx_train());
  const Chain predicted = MakeChain(*model, *params, PredictVTrans(*model, options.flash_attn),
                                    store.chunk_tokens(), tokens);
  // Other kinds' namespaces need the state's shape, known only once the context exists.
  auto memory = MemoryKindOf(*model);
  const bool plain = memory.ok() && *memory == format::MemoryKind::kKv;
  const size_t usable = tokens.empty() || !plain ? 0 : (tokens.size() - 1) / predicted.chunk;
  std::future<Fetched> fetching;
  if (usable > 0) {
    fetching = std::async(std::launch::async, [&] {
      // Alongside context creation: no huge-page compaction (env.h, LargeBuffer).
      return FetchPrefix(store, predicted, tokens, usable, /*n_threads=*/1, /*huge_pages=*/false);
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
  if (session.impl_->v_trans) RememberVTrans(*model, *session.impl_->v_trans);
  if (result != nullptr) *result = *synced;
  return std::move(created.value());
}

}  // namespace kvstash
