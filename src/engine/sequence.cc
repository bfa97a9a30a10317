#include "engine/sequence.h"

#include <algorithm>
#include <cmath>

#include "engine/llama_runtime.h"
#include "kvstash/store.h"
#include "store/chain_hash.h"
#include "store/store_impl.h"

namespace kvstash::engine {

Status PartialState(const Context& ctx, llama_seq_id seq, std::vector<uint8_t>* out) {
  const size_t size =
      llama_state_seq_get_size_ext(ctx.get(), seq, LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY);
  out->resize(size);
  ClearLlamaError();
  if (size == 0 || llama_state_seq_get_data_ext(ctx.get(), out->data(), size, seq,
                                                LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY) != size) {
    return Status::Internal("llama.cpp could not copy the model's recurrent or window state: " +
                            LastLlamaError());
  }
  if (ctx.n_stream() > 1) {
    auto one = format::StateToOneStream(out->data(), size, ctx.memory(), /*partial=*/true,
                                        ctx.n_stream(), static_cast<uint32_t>(seq));
    if (!one.ok()) return one.status();
    out->resize(*one);
  }
  return Status::Ok();
}

Status CheckFinite(const Model& model, const float* logits, size_t n_tokens) {
  for (int32_t i = 0; i < model.n_vocab(); ++i) {
    if (!std::isfinite(logits[i])) {
      return Status::Corruption(
          "the model produced a non-finite logit after " + std::to_string(n_tokens) +
          " tokens (model '" + model.path() + "'): the KV cache holds NaN or infinite values; " +
          "if this session came from a file, the file is damaged: re-create it with 'kvstash " +
          "save'");
    }
  }
  return Status::Ok();
}

size_t CommonPrefix(const std::vector<Token>& a, const std::vector<Token>& b, size_t limit) {
  const size_t n = std::min({a.size(), b.size(), limit});
  size_t common = 0;
  while (common < n && a[common] == b[common]) ++common;
  return common;
}

Status DecodeGroups(Context& ctx, const std::vector<Group>& groups) {
  size_t total = 0;
  for (const Group& g : groups) total += g.end - g.seq->n_cached_;
  llama_batch batch = llama_batch_init(static_cast<int32_t>(total), 0, 1);
  int32_t row = 0;
  for (const Group& g : groups) {
    Sequence& s = *g.seq;
    s.logits_row_ = -1;
    for (size_t p = s.n_cached_; p < g.end; ++p, ++row) {
      batch.token[row] = s.tokens_[p];
      batch.pos[row] = static_cast<llama_pos>(p);
      batch.n_seq_id[row] = 1;
      batch.seq_id[row][0] = s.id_;
      batch.logits[row] = (p + 1 == s.tokens_.size()) ? 1 : 0;
      if (batch.logits[row]) s.logits_row_ = row;
    }
  }
  batch.n_tokens = row;
  ClearLlamaError();
  const int32_t rc = llama_decode(ctx.get(), batch);
  llama_batch_free(batch);
  if (rc == 2 && ctx.cancel() != nullptr && ctx.cancel()->load()) {
    return Status::Cancelled("decoding was cancelled");
  }
  if (rc == 1) {
    return Status::ContextFull("the context has no free KV cells for " + std::to_string(total) +
                               " tokens; use a larger -c");
  }
  if (rc != 0) {
    const std::string why = LastLlamaError();
    return Status::Internal("llama.cpp failed to decode " + std::to_string(total) +
                            " tokens (code " + std::to_string(rc) + ")" +
                            (why.empty() ? "" : ": " + why));
  }
  for (const Group& g : groups) g.seq->Decoded(g.end, g.aligned);
  return Status::Ok();
}

bool Sequence::CanCut(size_t keep) const {
  if (keep == 0 || keep >= n_cached_) return true;
  switch (ctx_->memory()) {
    case format::MemoryKind::kKv:
      return true;
    case format::MemoryKind::kIswa:
      return keep + 1 == n_cached_ || n_cached_ <= ctx_->n_swa();
    case format::MemoryKind::kRecurrent:
    case format::MemoryKind::kHybrid:
      return false;
  }
  return false;
}

Status Sequence::Cut(size_t keep) {
  if (keep < pending_upto_) RunPendingPublish();
  if (!CanCut(keep)) {
    return Status::Incompatible("the " + std::string(format::MemoryKindName(ctx_->memory())) +
                                " memory of model '" + ctx_->model().path() +
                                "' cannot be cut back to " + std::to_string(keep) + " of " +
                                std::to_string(n_cached_) + " tokens");
  }
  if (keep < n_cached_) {
    if (!llama_memory_seq_rm(llama_get_memory(ctx_->get()), id_, static_cast<llama_pos>(keep),
                             -1)) {
      return Status::Internal("llama.cpp cannot remove tokens from this model's cache");
    }
    n_cached_ = keep;
  }
  n_exact_ = std::min(n_exact_, keep);
  if (chunk_ != 0) {
    published_ = std::min(published_, keep / chunk_);
    // Parts captured after a token that is gone describe another sequence.
    parts_.erase(parts_.upper_bound(static_cast<uint32_t>(keep / chunk_)), parts_.end());
  }
  if (keep < tokens_.size()) tokens_.resize(keep);
  return Status::Ok();
}

void Sequence::Clear() {
  RunPendingPublish();
  llama_memory_seq_rm(llama_get_memory(ctx_->get()), id_, -1, -1);
  tokens_.clear();
  n_cached_ = n_exact_ = published_ = 0;
  parts_.clear();
  logits_row_ = -1;
}

void Sequence::Restored(std::vector<Token> tokens) {
  tokens_ = std::move(tokens);
  n_cached_ = tokens_.size();
  n_exact_ = published_ = 0;
  parts_.clear();
}

size_t Sequence::GroupEnd(size_t budget, bool aligned) const {
  size_t end = std::min(tokens_.size(), n_cached_ + std::max<size_t>(budget, 1));
  const bool grouping_matters = !ctx_->invariant() || ctx_->memory() != format::MemoryKind::kKv;
  if (aligned && grouping_matters && chunk_ != 0) {
    end = std::min(end, (n_cached_ / chunk_ + 1) * chunk_);
  }
  return end;
}

Status Sequence::DecodeAlone(size_t step, bool aligned, size_t keep,
                             const std::function<Status(size_t, size_t)>& after_call) {
  const size_t begin = n_cached_, n = tokens_.size();
  if (begin == n) return Status::Ok();
  const size_t rollback = std::max(begin, std::min(keep, n));
  // A failed decode leaves a window or state half-advanced: a snapshot puts it back. One token
  // is decoded without (a generated token: the copy would cost more than the decode); if that
  // fails, the sequence starts again empty.
  std::vector<uint8_t> snapshot;
  Status status;
  if (format::HasTrailingState(ctx_->memory()) && begin > 0 && n - begin > 1) {
    status = Snapshot(&snapshot);
  }
  while (status.ok() && n_cached_ < n) {
    status = DecodeGroups(*ctx_, {{this, GroupEnd(step, aligned), aligned}});
    if (status.code() == Status::Code::kCancelled) {
      status = Status::Cancelled(
          "decoding was cancelled after " + std::to_string(n_cached_ - begin) + " of " +
          std::to_string(n - begin) + " tokens; the session holds what " + "it held before");
    }
    if (status.ok() && after_call) status = after_call(n_cached_ - begin, n - begin);
  }
  if (status.ok()) {
    const float* out = llama_get_logits_ith(ctx_->get(), logits_row_);
    if (out == nullptr) {
      status = Status::Internal("llama.cpp decoded " + std::to_string(n - begin) +
                                " tokens but returned no logits for the last one (model '" +
                                ctx_->model().path() + "'); the tokens were not appended");
    } else {
      status = CheckFinite(ctx_->model(), out, n);
    }
  }
  if (status.ok()) return status;
  tokens_.resize(rollback);
  if (chunk_ != 0) {
    parts_.erase(parts_.upper_bound(static_cast<uint32_t>(begin / chunk_)), parts_.end());
  }
  return Rollback(begin, snapshot, status);
}

Status Sequence::Rollback(size_t begin, const std::vector<uint8_t>& snapshot, const Status& why) {
  llama_memory_t mem = llama_get_memory(ctx_->get());
  const format::MemoryKind memory = ctx_->memory();
  bool ok = begin == 0 || !format::HasTrailingState(memory) || !snapshot.empty();
  // The trailing part first: a hybrid's recurrent state refuses to be cut at `begin` while it
  // stands past it, and then leaves the attention cells uncut too.
  if (ok && !snapshot.empty()) {
    ok = llama_state_seq_set_data_ext(ctx_->get(), snapshot.data(), snapshot.size(), id_,
                                      LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY) == snapshot.size();
  }
  if (ok) ok = llama_memory_seq_rm(mem, id_, static_cast<llama_pos>(begin), -1);
  n_cached_ = std::min(n_cached_, begin);
  n_exact_ = std::min(n_exact_, begin);
  if (ok) return why;
  Clear();
  return why.WithMore(std::string(" (the model's ") + format::MemoryKindName(memory) +
                      " state could not be put back, so the session is now empty: append the " +
                      "prompt again)");
}

void Sequence::Decoded(size_t end, bool aligned) {
  // A cell is exact when every cell before it is (it attends to them) and, unless the context is
  // invariant, its group was chunk-aligned. Restored cells (a file, an import) never are.
  if (n_exact_ == n_cached_ && (ctx_->invariant() || aligned)) n_exact_ = end;
  n_cached_ = end;
  if (aligned && chunk_ != 0 && end % chunk_ == 0 && ctx_->memory() != format::MemoryKind::kKv) {
    CaptureBoundary(static_cast<uint32_t>(end / chunk_));
  }
}

void Sequence::CaptureBoundary(uint32_t index) {
  if (!chain_) return;
  const format::ChunkLayout& l = chain_->layout;
  if (l.kind != format::MemoryKind::kIswa && !l.HasSnapshot(index)) return;
  std::vector<uint8_t> snapshot;
  Status status = Snapshot(&snapshot);
  if (status.ok()) status = BoundaryPart(*chain_, index, snapshot, &parts_);
  if (!status.ok()) {
    Warn("kvstash: chunk " + std::to_string(index) +
         " of a prompt will not be saved: " + status.message());
  }
}

void Sequence::Warn(const std::string& what) const {
  if (auto store = store_.lock()) ImplOf(*store)->Warn(what);
}

Result<Chain> Sequence::Begin(std::vector<Token> prompt, uint32_t chunk, Store* store) {
  RunPendingPublish();  // the previous prompt's chunks, before anything changes
  if (chunk != chunk_) {
    // Exactness is relative to the chunk the groups were aligned to.
    if (!ctx_->invariant()) n_exact_ = 0;
    published_ = 0;
    parts_.clear();
    chunk_ = chunk;
  }
  size_t keep = CommonPrefix(tokens_, prompt, std::min(n_exact_, prompt.size() - 1));
  if (!ctx_->invariant()) keep = keep / chunk * chunk;
  if (!CanCut(keep)) keep = 0;
  if (!Cut(keep).ok()) Clear();
  tokens_ = std::move(prompt);
  Chain chain;
  if (store == nullptr) return chain;
  if (store_.lock().get() != store) {
    store_ = store->weak_from_this();
    published_ = 0;
  }
  first_bad_ = -1;
  auto shape = ctx_->Shape(id_);
  if (!shape.ok()) {
    Clear();
    return shape.status();
  }
  // Token-exact: every whole chunk (the last may be cut) and a tail; else the whole chunks before
  // the last token.
  const bool tails = TailsFor(*ctx_);
  const size_t usable = (tokens_.size() - (tails ? 0 : 1)) / chunk;
  const std::vector<Token> whole(tokens_.begin(), tokens_.begin() + usable * chunk);
  chain = MakeChain(ctx_->model(), ctx_->params(), ctx_->v_trans(), chunk, whole, *shape);
  chain.tails = tails;
  chain.limit = tokens_.size() - 1;
  chain.own = n_cached_;
  chain_ = chain;
  chain_->hashes.clear();
  if (tails ? chain.limit <= n_cached_ : usable * chunk <= n_cached_) {
    chain.hashes.clear();
    chain.tails = false;
  }
  return chain;
}

size_t Sequence::ApplyFetched(Fetched& fetched) {
  first_bad_ = fetched.first_bad;
  tail_refused_ = fetched.tail_refused;
  const size_t cells = fetched.n_tokens;
  if (cells <= n_cached_) {
    published_ = std::max(published_, std::min(fetched.n_found, n_cached_ / chunk_));
    return 0;
  }
  Status status = fetched.status;
  if (status.ok() && (fetched.layout.kind == format::MemoryKind::kRecurrent ||
                      fetched.layout.kind == format::MemoryKind::kHybrid)) {
    status = ctx_->CheckRecurrentShape(fetched.layout.rs, "the store's snapshot");
  }
  if (status.ok()) {
    RunPendingPublish();
    parts_.clear();
    status = RestoreFetched(ctx_->get(), id_, ctx_->n_stream(), fetched);
  }
  fetched.state.reset();  // restored: the bytes are llama.cpp's now
  if (!status.ok()) {
    if (auto alive = store_.lock()) {
      ImplOf(*alive)->Warn("kvstash: chunks of store '" + alive->dir() +
                           "' were not used: " + status.message());
    }
    std::vector<Token> prompt = std::move(tokens_);
    Clear();
    tokens_ = std::move(prompt);
    return 0;
  }
  n_cached_ = n_exact_ = cells;
  published_ = fetched.n_found;
  return cells;
}

size_t Sequence::QueuePublish(size_t upto, bool tail) {
  if (store_.expired() || chunk_ == 0) return 0;
  pending_upto_ = std::max(pending_upto_, upto);
  if (tail && std::find(pending_tails_.begin(), pending_tails_.end(), upto) == pending_tails_.end())
    pending_tails_.push_back(upto);
  const size_t n_chunks = std::min(pending_upto_, tokens_.size()) / chunk_;
  return n_chunks > published_ ? (n_chunks - published_) * chunk_ : 0;
}

size_t Sequence::RunPendingPublish() {
  if (pending_upto_ == 0) return 0;
  const size_t upto = pending_upto_;
  std::vector<size_t> tails = std::move(pending_tails_);
  pending_upto_ = 0;
  pending_tails_.clear();
  return Publish(upto, tails);
}

std::vector<TailToPublish> Sequence::TailsToPublish(const Chain& chain, Store& store,
                                                    const std::vector<size_t>& ends) const {
  std::vector<TailToPublish> out;
  if (!TailsFor(*ctx_)) return out;
  std::vector<size_t> sorted = ends;
  std::sort(sorted.begin(), sorted.end(), std::greater<size_t>());
  for (size_t end : sorted) {
    const size_t j = end / chunk_;
    // Exact tokens only, and one tail per parent: a longer one after the same whole chunks holds
    // every token of a shorter one.
    if (end > n_exact_ || end % chunk_ == 0 || j > chain.hashes.size()) continue;
    if (!out.empty() && out.back().end / chunk_ == j) continue;
    const format::Hash256& parent = j == 0 ? chain.h0 : chain.hashes[j - 1];
    const uint32_t n = static_cast<uint32_t>(end - j * chunk_);
    const std::string path =
        ImplOf(store)->TailPath(parent, static_cast<uint32_t>(j), n,
                                store::TailHash(parent, tokens_.data() + j * chunk_, n));
    const bool refused = path == tail_refused_;
    if (!refused && ImplOf(store)->HasFile(path)) continue;  // no state copy for a repeated prompt
    out.push_back({end, refused});
  }
  return out;
}

size_t Sequence::Publish(size_t upto, const std::vector<size_t>& tail_ends) {
  auto store = store_.lock();
  if (!store || !chain_ || chunk_ == 0) return 0;
  const size_t n_chunks = std::min(upto, n_exact_) / chunk_;
  Chain chain = *chain_;
  chain.hashes = store::ChainHashes(chain.h0, tokens_.data(), n_chunks * chunk_, chunk_);
  const std::vector<TailToPublish> tails = TailsToPublish(chain, *store, tail_ends);
  if (n_chunks <= published_ && tails.empty()) return 0;
  SeqState state;
  const Status status =
      GetSeqState(ctx_->get(), id_, ctx_->n_stream(), &state, ctx_->memory(), ctx_->n_swa());
  if (!status.ok()) {
    ImplOf(*store)->Warn("kvstash: the new chunks were not saved to store '" + store->dir() +
                         "': " + status.message());
    return 0;
  }
  const long bad = first_bad_ >= static_cast<long>(published_) ? first_bad_ : -1;
  const size_t queued =
      PublishChunks(*store, chain, tokens_, state, published_, bad, &parts_, tails);
  published_ = std::max(published_, n_chunks);
  return queued;
}

}  // namespace kvstash::engine
