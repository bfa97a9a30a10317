// Session's private parts, shared by the engine's translation units (session.cc: the session
// itself; store_sync.cc: syncing through a prefix store).
#ifndef KVSTASH_ENGINE_SESSION_IMPL_H_
#define KVSTASH_ENGINE_SESSION_IMPL_H_

#include <algorithm>
#include <atomic>
#include <cmath>
#include <exception>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "engine/llama_runtime.h"
#include "engine/model_impl.h"
#include "env/env.h"
#include "format/llama_state.h"
#include "format/meta_check.h"
#include "format/session_format.h"
#include "kvstash/session.h"
#include "kvstash/session_file.h"
#include "llama.h"

namespace kvstash {

struct ContextDeleter {
  void operator()(llama_context* ctx) const { llama_free(ctx); }
};
using ContextPtr = std::unique_ptr<llama_context, ContextDeleter>;

inline constexpr llama_seq_id kSeq = 0;

namespace engine {
// What a context's sequence state looks like beyond what a model's facts say (which layers slide
// or keep a state is not in llama.h): learnt from a state of the context itself. The prefix store
// needs it for every memory kind but kKv (engine/store_chain.h).
struct StateShape {
  format::SeqLayout layout;     // of a whole state (cell counts aside)
  uint64_t snapshot_bytes = 0;  // kRecurrent, kHybrid: a partial state's size
};
}  // namespace engine

// The layout llama.cpp's sequence state has for `model` (engine/memory_support.h); refused for a
// memory kvstash does not read.
Result<format::MemoryKind> MemoryKindOf(const Model& model);

struct Session::Impl {
  std::shared_ptr<const Model> model;
  ContextPtr ctx;
  SessionMeta params;  // the context parameters (model and sequence fields filled on save)
  int n_threads = 1;
  int n_threads_batch = 1;  // for prompts (llama.cpp's n_threads_batch)
  // What the model keeps per token (format/llama_state.h). Every kind but kKv has a part that
  // cannot be cut at an earlier position: a sliding window (iSWA) or a recurrent state.
  format::MemoryKind memory = format::MemoryKind::kKv;
  uint32_t n_swa = 0;
  // kRecurrent, kHybrid: the records a state of this context has (which layers keep one is
  // nowhere in the payload), learnt from the empty context (LearnRecurrentShape).
  std::optional<format::RecurrentLayout> rs_shape;
  // Prefix store (store_sync.cc), every kind but kKv: the state's shape (learnt once), and what
  // each chunk decoded here carries beyond its KV cells, captured at its last token (the window
  // cells or a snapshot; chunk index -> bytes, engine::BoundaryPart), for the store's writer.
  std::optional<engine::StateShape> shape;
  std::map<uint32_t, std::vector<uint8_t>> boundary_parts;
  // Every token of the sequence. The first n_cached are in the KV cache; the rest (at most the
  // last sampled token) are decoded lazily by Flush(), so that stopping generation never costs a
  // decode nobody needs.
  std::vector<Token> tokens;
  size_t n_cached = 0;
  // Logits after tokens[n_cached - 1]; valid only when every token is cached.
  std::vector<float> logits;
  bool logits_valid = false;
  size_t n_decoded_total = 0;
  ProgressFn progress;
  const std::atomic<bool>* cancel = nullptr;  // SetCancelFlag
  OpenStats open_stats;
  // Prefix store (store_sync.cc): the first n_aligned cached tokens were decoded in groups that
  // start and end at multiples of aligned_chunk tokens (the last group ending anywhere), as a cold
  // Sync through a store with that chunk size decodes them; only whole chunks of them are reused.
  size_t n_aligned = 0;
  uint32_t aligned_chunk = 0;
  // Whether V is stored transposed (flash attention off): known from Open's file, Create's flag,
  // or, for flash attention "auto", a probe the first time a store needs it.
  std::optional<bool> v_trans;
  // New chunks a store Sync decoded, copied out for the store's writer only after the first token
  // of the answer (store_sync.cc): llama_state_seq_get_data copies the whole sequence, tens of ms
  // an answer need not wait for. Run before anything changes cells below pending_publish_upto
  // (Truncate, a store Sync's restore), after Generate's first token, and when the session ends.
  std::function<void(Impl&)> pending_publish;
  size_t pending_publish_upto = 0;
  void RunPendingPublish() {
    if (!pending_publish) return;
    auto publish = std::move(pending_publish);
    pending_publish = nullptr;
    pending_publish_upto = 0;
    publish(*this);
  }

  const Model::Impl& m() const { return *model->impl(); }
  // The context parameters Create() asks llama.cpp for (n_ctx as given: llama.cpp rounds it).
  static Result<SessionMeta> ParamsFor(const SessionOptions& options);
  Status Restore(const format::ParsedFile& parsed, const StableFile& file, const std::string& path);
  uint32_t n_ctx() const { return llama_n_ctx(ctx.get()); }

  // A context whose KV cache alone would not fit in this machine's memory is refused before
  // llama.cpp tries to allocate it (a failed allocation there is an abort under sanitizers and
  // can take the machine into swap elsewhere).
  static Status CheckContextFits(const Model& model, const SessionMeta& p) {
    const Model::Impl& m = *model.impl();
    const uint64_t per_token = uint64_t(llama_model_n_layer(m.model)) *
                               (ggml_row_size(static_cast<ggml_type>(p.type_k), m.n_embd_k_gqa) +
                                ggml_row_size(static_cast<ggml_type>(p.type_v), m.n_embd_v_gqa));
    const uint64_t n_ctx = p.n_ctx != 0 ? p.n_ctx : uint64_t(model.n_ctx_train());
    const uint64_t need = n_ctx * per_token;
    const uint64_t have = Env::PhysicalMemoryBytes();
    if (n_ctx > format::kMaxTokens) {
      return Status::InvalidArgument(
          "a " + std::to_string(n_ctx) + "-token context is more than kvstash supports (at most " +
          std::to_string(format::kMaxTokens) + " tokens, 2^24); use a smaller -c");
    }
    if (have != 0 && need > have) {
      auto gib = [](uint64_t b) { return std::to_string((b + (1u << 29)) >> 30); };
      return Status::InvalidArgument(
          "a " + std::to_string(n_ctx) + "-token context for model '" + model.path() + "' needs " +
          gib(need) + " GiB of KV cache" +
          (have != 0 ? ", more than this machine's " + gib(have) + " GiB of memory" : "") +
          "; use a smaller -c");
    }
    return Status::Ok();
  }

  // Creates the llama.cpp context described by `p`.
  // `flash` overrides p.flash_attn for Create(), where "auto" is llama.cpp's to resolve.
  static Result<ContextPtr> MakeContext(const Model& model, const SessionMeta& p, int n_threads,
                                        int n_threads_batch,
                                        std::optional<llama_flash_attn_type> flash = {}) {
    KVSTASH_RETURN_IF_ERROR(CheckContextFits(model, p));
    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = p.n_ctx;
    cp.n_batch = p.n_batch;
    cp.n_ubatch = p.n_ubatch;
    cp.n_seq_max = 1;
    cp.n_threads = n_threads;
    cp.n_threads_batch = n_threads_batch;
    cp.type_k = static_cast<ggml_type>(p.type_k);
    cp.type_v = static_cast<ggml_type>(p.type_v);
    cp.flash_attn_type = flash          ? *flash
                         : p.flash_attn ? LLAMA_FLASH_ATTN_TYPE_ENABLED
                                        : LLAMA_FLASH_ATTN_TYPE_DISABLED;
    cp.rope_scaling_type = static_cast<llama_rope_scaling_type>(p.rope_scaling_type);
    cp.rope_freq_base = p.rope_freq_base;
    cp.rope_freq_scale = p.rope_freq_scale;
    cp.yarn_ext_factor = p.yarn_ext_factor;
    cp.yarn_attn_factor = p.yarn_attn_factor;
    cp.yarn_beta_fast = p.yarn_beta_fast;
    cp.yarn_beta_slow = p.yarn_beta_slow;
    cp.yarn_orig_ctx = p.yarn_orig_ctx;
    cp.swa_full = p.swa_full;
    cp.kv_unified = p.kv_unified;
    cp.no_perf = true;
    engine::ClearLlamaError();
    llama_context* ctx = llama_init_from_model(model.impl()->model, cp);
    if (ctx == nullptr) {
      const std::string why = engine::LastLlamaError();
      return Status::InvalidArgument("cannot create a " + std::to_string(p.n_ctx) +
                                     "-token context for model '" + model.path() + "'" +
                                     (why.empty() ? "" : " (llama.cpp: " + why + ")") +
                                     "; try a smaller -c or other cache types");
    }
    return ContextPtr(ctx);
  }

  // Decodes tokens[n_cached..] as one group (split only at n_batch). On failure the cache is as
  // it was and `tokens` keeps its first `keep` tokens (never fewer than the cached ones): the
  // tokens the caller held before its call. By default all of them, so that a token Generate left
  // pending stays pending when the call that would have decoded it fails or is cancelled.
  Status Flush(size_t keep = std::numeric_limits<size_t>::max()) {
    if (n_cached == tokens.size()) return Status::Ok();
    const size_t begin = n_cached;
    const size_t count = tokens.size() - begin;
    const size_t rollback = std::max(begin, std::min(keep, tokens.size()));
    if (tokens.size() > n_ctx()) {
      tokens.resize(rollback);
      return ContextFullError(begin, count);
    }
    // A failed decode leaves a window or state half-advanced: a snapshot puts it back. One token
    // is decoded without (a generated token: the copy would cost more than the decode); if that
    // fails, the session starts again empty.
    std::vector<uint8_t> snapshot;
    if (format::HasTrailingState(memory) && begin > 0 && count > 1) {
      Status taken = TakeSnapshot(&snapshot);
      if (!taken.ok()) {
        tokens.resize(rollback);
        return taken;
      }
    }
    Status status = DecodeGroup(begin, count);
    const float* out = status.ok() ? llama_get_logits_ith(ctx.get(), -1) : nullptr;
    if (status.ok() && out == nullptr) {
      status = Status::Internal("llama.cpp decoded " + std::to_string(count) +
                                " tokens but returned no logits for the last one (model '" +
                                model->path() + "'); the tokens were not appended");
    }
    if (status.ok()) status = CheckFinite(out, begin + count);
    if (!status.ok()) {
      tokens.resize(rollback);
      return RollbackTo(begin, snapshot, status);
    }
    logits.assign(out, out + model->n_vocab());
    logits_valid = true;
    n_cached = tokens.size();
    n_decoded_total += count;
    return Status::Ok();
  }

  // Non-finite logits poison every later sample (greedy picks token 0 forever). Range checks cannot
  // see NaN hidden in a session's KV values, so the first decode after a load checks what comes
  // out.
  Status CheckFinite(const float* out, size_t n_tokens) const {
    for (int32_t i = 0; i < model->n_vocab(); ++i) {
      if (!std::isfinite(out[i])) {
        return Status::Corruption(
            "the model produced a non-finite logit after " + std::to_string(n_tokens) +
            " tokens (model '" + model->path() + "'): the KV cache holds NaN or infinite values; " +
            "if this session came from a file, the file is damaged: re-create it with 'kvstash " +
            "save'");
      }
    }
    return Status::Ok();
  }

  Status ContextFullError(size_t used, size_t more) const {
    return Status::ContextFull("the context is full: " + std::to_string(used) + " of " +
                               std::to_string(n_ctx()) + " tokens used, " + std::to_string(more) +
                               " more do not fit; use a larger -c");
  }

  // llama_decode of tokens[begin, begin + count) in n_batch steps, reporting progress. Leaves the
  // rollback of a failure to Flush. With a progress callback the steps are n_ubatch tokens, so that
  // it is called from the first physical batch on: llama.cpp splits each call into n_ubatch
  // batches from the call's first token anyway, so the same ubatches are computed either way and
  // the numbers do not change (session_test: ProgressDoesNotChangeLogits).
  Status DecodeGroup(size_t begin, size_t count) {
    const uint32_t n_batch = progress ? llama_n_ubatch(ctx.get()) : llama_n_batch(ctx.get());
    if (progress && count > n_batch) {
      KVSTASH_RETURN_IF_ERROR(ReportProgress(0, count));
    }
    llama_batch batch =
        llama_batch_init(static_cast<int32_t>(std::min<size_t>(count, n_batch)), 0, 1);
    Status status;
    for (size_t done = 0; done < count && status.ok();) {
      const size_t n = std::min<size_t>(count - done, n_batch);
      batch.n_tokens = static_cast<int32_t>(n);
      for (size_t i = 0; i < n; ++i) {
        batch.token[i] = tokens[begin + done + i];
        batch.pos[i] = static_cast<llama_pos>(begin + done + i);
        batch.n_seq_id[i] = 1;
        batch.seq_id[i][0] = kSeq;
        batch.logits[i] = (done + i + 1 == count) ? 1 : 0;
      }
      engine::ClearLlamaError();
      const int32_t rc = llama_decode(ctx.get(), batch);
      if (rc == 2 && cancel != nullptr && cancel->load()) {
        status = Status::Cancelled("decoding was cancelled after " + std::to_string(done) + " of " +
                                   std::to_string(count) + " tokens; the session holds what " +
                                   "it held before");
        break;
      }
      if (rc != 0) {
        const std::string why = engine::LastLlamaError();
        status = rc == 1 ? Status::ContextFull("the context has no free KV cells for " +
                                               std::to_string(n) + " tokens; use a larger -c")
                         : Status::Internal("llama.cpp failed to decode " + std::to_string(n) +
                                            " tokens (code " + std::to_string(rc) + ")" +
                                            (why.empty() ? "" : ": " + why));
        break;
      }
      done += n;
      if (progress && count > n_batch) status = ReportProgress(done, count);
    }
    llama_batch_free(batch);
    return status;
  }

  // The user's progress callback must not unwind through llama.cpp's frames or past the batch:
  // an exception becomes a Status and the append is undone.
  Status ReportProgress(size_t done, size_t count) {
    std::string what;
    try {
      progress(done, count);
      return Status::Ok();
    } catch (const std::exception& e) {
      what = e.what();
    } catch (...) {
      what = "an exception that is not a std::exception";
    }
    return Status::InvalidArgument("the progress callback threw (" + what + ") after " +
                                   std::to_string(done) + " of " + std::to_string(count) +
                                   " tokens; the append was undone: a callback must return " +
                                   "normally");
  }

  Status CheckTokens(const std::vector<Token>& new_tokens) const {
    const int32_t n_vocab = model->n_vocab();
    for (Token t : new_tokens) {
      if (t < 0 || t >= n_vocab) {
        return Status::InvalidArgument("token id " + std::to_string(t) +
                                       " is outside the vocabulary of " + std::to_string(n_vocab) +
                                       " tokens of model '" + model->path() + "'");
      }
    }
    return Status::Ok();
  }

  // Whether the cache can be cut to its first `keep` tokens and continue as if only those had been
  // decoded. Always for an attention KV cache; never below the last token for a recurrent state
  // (it holds no earlier position); for an iSWA cache while the window of position `keep` is
  // still held: cells the newest position cannot see are dropped (a restored window holds only
  // the last n_swa), so only the last token, or anything while no token was ever out of sight.
  bool CanCut(size_t keep) const {
    if (keep == 0 || keep >= n_cached) return true;
    switch (memory) {
      case format::MemoryKind::kKv:
        return true;
      case format::MemoryKind::kIswa:
        return keep + 1 == n_cached || n_cached <= n_swa;
      case format::MemoryKind::kRecurrent:
      case format::MemoryKind::kHybrid:
        return false;
    }
    return false;
  }

  // Fills rs_shape from the context, whose sequence must still be empty.
  Status LearnRecurrentShape() {
    if (memory != format::MemoryKind::kRecurrent && memory != format::MemoryKind::kHybrid) {
      return Status::Ok();
    }
    std::vector<uint8_t> empty;
    KVSTASH_RETURN_IF_ERROR(TakeSnapshot(&empty));
    auto shape = format::ParseRecurrentShape(empty.data(), empty.size(), memory, /*partial=*/true,
                                             "model '" + model->path() + "'");
    if (!shape.ok()) return shape.status();
    rs_shape = *shape;
    return Status::Ok();
  }

  // A state's recurrent records against the context's (kIncompatible naming `what` otherwise).
  Status CheckRecurrentShape(const format::RecurrentLayout& rs, const std::string& what) const {
    if (!rs_shape || rs.SameShape(*rs_shape)) return Status::Ok();
    const auto describe = [](const format::RecurrentLayout& l) {
      return std::to_string(l.n_layer) + " layers, " + std::to_string(l.n_r) + " R records of " +
             std::to_string(l.r_row_bytes) + " bytes and " + std::to_string(l.n_s) +
             " S records of " + std::to_string(l.s_row_bytes) + " bytes";
    };
    return Status::Corruption(what + " has a recurrent state of " + describe(rs) + ", but model '" +
                              model->path() + "' keeps " + describe(*rs_shape) +
                              "; re-create it with 'kvstash save'");
  }

  // Copies the memory's trailing part (the window or the recurrent state: llama.cpp's "partial"
  // state) into `out`.
  Status TakeSnapshot(std::vector<uint8_t>* out) const {
    const size_t size =
        llama_state_seq_get_size_ext(ctx.get(), kSeq, LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY);
    out->resize(size);
    engine::ClearLlamaError();
    if (size == 0 || llama_state_seq_get_data_ext(ctx.get(), out->data(), size, kSeq,
                                                  LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY) != size) {
      return Status::Internal("llama.cpp could not copy the model's recurrent or window state: " +
                              engine::LastLlamaError());
    }
    return Status::Ok();
  }

  // Undoes a failed decode of the tokens from position `begin` on: the cells from `begin`, and the
  // trailing part from `snapshot` (taken before the decode; empty when there is none). Returns
  // `why`, or, when the memory could not be put back, why plus that the session is now empty.
  Status RollbackTo(size_t begin, const std::vector<uint8_t>& snapshot, const Status& why) {
    llama_memory_t mem = llama_get_memory(ctx.get());
    bool ok = begin == 0 || !format::HasTrailingState(memory) || !snapshot.empty();
    // The trailing part first: a hybrid's recurrent state refuses to be cut at `begin` while it
    // stands past it, and then leaves the attention cells uncut too.
    if (ok && !snapshot.empty()) {
      ok = llama_state_seq_set_data_ext(ctx.get(), snapshot.data(), snapshot.size(), kSeq,
                                        LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY) == snapshot.size();
    }
    if (ok) ok = llama_memory_seq_rm(mem, kSeq, static_cast<llama_pos>(begin), -1);
    if (ok) return why;
    llama_memory_seq_rm(mem, kSeq, -1, -1);
    tokens.clear();
    n_cached = 0;
    n_aligned = 0;
    logits_valid = false;
    return why.WithMore(std::string(" (the model's ") + format::MemoryKindName(memory) +
                        " state could not be put back, so the session is now empty: append the " +
                        "prompt again)");
  }

  // Drops every cached token from position `keep` on. kIncompatible when the memory cannot be cut
  // there (CanCut); the caller then decodes from the start or from a snapshot.
  Status Truncate(size_t keep) {
    if (keep < pending_publish_upto) RunPendingPublish();
    if (!CanCut(keep)) {
      return Status::Incompatible("the " + std::string(format::MemoryKindName(memory)) +
                                  " memory of model '" + model->path() +
                                  "' cannot be cut back to " + std::to_string(keep) + " of " +
                                  std::to_string(n_cached) + " tokens");
    }
    if (keep < n_cached) {
      if (!llama_memory_seq_rm(llama_get_memory(ctx.get()), kSeq, static_cast<llama_pos>(keep),
                               -1)) {
        return Status::Internal("llama.cpp cannot remove tokens from this model's cache");
      }
      n_cached = keep;
      logits_valid = false;
    }
    n_aligned = std::min(n_aligned, keep);
    // Parts captured after a token that is gone describe another sequence.
    if (aligned_chunk != 0) {
      boundary_parts.erase(boundary_parts.upper_bound(static_cast<uint32_t>(keep / aligned_chunk)),
                           boundary_parts.end());
    }
    if (keep < tokens.size()) tokens.resize(keep);
    return Status::Ok();
  }

  // Samples one token from the logits after the last token (decoding pending tokens first).
  Result<Token> SampleNext(llama_sampler* chain, std::vector<llama_token_data>* candidates);
  // Samples into `gen` until a stop condition; sampled tokens join `tokens`. On failure the caller
  // undoes them.
  Status SampleLoop(const SampleOptions& options, const PieceCallback& on_piece, Generation* gen);

  // Makes sure logits of the last token exist, re-decoding it if needed.
  Status EnsureLogits() {
    KVSTASH_RETURN_IF_ERROR(Flush());
    if (logits_valid) return Status::Ok();
    if (tokens.empty()) {
      return Status::InvalidArgument("the session is empty: append a prompt before generating");
    }
    // The last token again; a recurrent state cannot step back one token, so all of them.
    const size_t keep = CanCut(tokens.size() - 1) ? tokens.size() - 1 : 0;
    std::vector<Token> all = tokens;
    KVSTASH_RETURN_IF_ERROR(Truncate(keep));
    tokens = std::move(all);
    return Flush();
  }
};

}  // namespace kvstash

#endif  // KVSTASH_ENGINE_SESSION_IMPL_H_
