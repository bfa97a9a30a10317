// Session's private parts: a context with one Sequence (engine/sequence.h), plus what only a
// Session has: the logits after its last token, a progress callback, Open's timings. Shared by
// session.cc, store_sync.cc and import.cc.
#ifndef KVSTASH_ENGINE_SESSION_IMPL_H_
#define KVSTASH_ENGINE_SESSION_IMPL_H_

#include <exception>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "engine/context.h"
#include "engine/model_impl.h"
#include "engine/sequence.h"
#include "format/session_format.h"
#include "kvstash/session.h"
#include "llama.h"

namespace kvstash {

struct Session::Impl {
  std::unique_ptr<engine::Context> context;
  std::unique_ptr<engine::Sequence> seq;  // sequence 0 of `context`
  // Logits after the last token; valid only when every token is cached. The last sampled token
  // stays uncached until something needs it, so stopping generation never costs a decode.
  std::vector<float> logits;
  bool logits_valid = false;
  size_t n_decoded_total = 0;
  ProgressFn progress;
  OpenStats open_stats;

  explicit Impl(std::unique_ptr<engine::Context> c)
      : context(std::move(c)), seq(std::make_unique<engine::Sequence>(context.get(), 0)) {}

  const Model& model() const { return context->model(); }
  const ModelImpl& m() const { return *ImplOf(model()); }
  llama_context* ctx() const { return context->get(); }
  std::vector<Token>& tokens() { return seq->tokens(); }
  uint32_t n_ctx() const { return context->n_ctx_seq(); }

  // Decodes tokens[n_cached..] (aligned: in the store's chunk-aligned groups). On failure the cache
  // is as it was and the tokens keep their first max(n_cached, keep): by default all, so that a
  // token Generate left pending stays pending when the call that would have decoded it fails.
  Status Flush(size_t keep = std::numeric_limits<size_t>::max(), bool aligned = false) {
    const size_t begin = seq->n_cached(), n = tokens().size();
    if (begin == n) return Status::Ok();
    const size_t rollback = std::max(begin, std::min(keep, n));
    if (n > n_ctx()) {
      tokens().resize(rollback);
      return ContextFullError(begin, n - begin);
    }
    // With a progress callback the calls are n_ubatch tokens, so that it is called from the first
    // physical batch on: llama.cpp splits each call into n_ubatch batches from the call's first
    // token anyway, so the same ubatches are computed and the numbers do not change.
    const size_t step = progress ? llama_n_ubatch(ctx()) : llama_n_batch(ctx());
    std::function<Status(size_t, size_t)> report;
    if (progress && n - begin > step) {
      report = [this](size_t done, size_t total) { return ReportProgress(done, total); };
      Status started = report(0, n - begin);
      if (!started.ok()) {
        tokens().resize(rollback);
        return started;
      }
    }
    KVSTASH_RETURN_IF_ERROR(seq->DecodeAlone(step, aligned, keep, report));
    const float* out = llama_get_logits_ith(ctx(), seq->logits_row());
    logits.assign(out, out + model().n_vocab());
    logits_valid = true;
    n_decoded_total += n - begin;
    return Status::Ok();
  }

  Status ContextFullError(size_t used, size_t more) const {
    return Status::ContextFull("the context is full: " + std::to_string(used) + " of " +
                               std::to_string(n_ctx()) + " tokens used, " + std::to_string(more) +
                               " more do not fit; use a larger -c");
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
    const int32_t n_vocab = model().n_vocab();
    for (Token t : new_tokens) {
      if (t < 0 || t >= n_vocab) {
        return Status::InvalidArgument("token id " + std::to_string(t) +
                                       " is outside the vocabulary of " + std::to_string(n_vocab) +
                                       " tokens of model '" + model().path() + "'");
      }
    }
    return Status::Ok();
  }

  // Drops cached tokens from `keep` on (engine::Sequence::Cut); the logits go with them.
  Status Truncate(size_t keep) {
    const size_t cached = seq->n_cached();
    KVSTASH_RETURN_IF_ERROR(seq->Cut(keep));
    if (keep < cached) logits_valid = false;
    return Status::Ok();
  }

  // Samples one token from the logits after the last token (decoding pending tokens first).
  Result<Token> SampleNext(llama_sampler* chain, std::vector<llama_token_data>* candidates);
  // Samples into `gen` until a stop condition; sampled tokens join the sequence. On failure the
  // caller undoes them.
  Status SampleLoop(const SampleOptions& options, const PieceCallback& on_piece, Generation* gen);
  Status Restore(const format::ParsedFile& parsed, const StableFile& file, const std::string& path);
  format::SessionMeta MetaForSave(const format::SeqLayout& layout);

  // Makes sure logits of the last token exist, re-decoding it if needed.
  Status EnsureLogits() {
    KVSTASH_RETURN_IF_ERROR(Flush());
    if (logits_valid) return Status::Ok();
    if (tokens().empty()) {
      return Status::InvalidArgument("the session is empty: append a prompt before generating");
    }
    // The last token again; a recurrent state cannot step back one token, so all of them.
    const size_t keep = seq->CanCut(tokens().size() - 1) ? tokens().size() - 1 : 0;
    std::vector<Token> all = tokens();
    KVSTASH_RETURN_IF_ERROR(Truncate(keep));
    tokens() = std::move(all);
    return Flush();
  }
};

}  // namespace kvstash

#endif  // KVSTASH_ENGINE_SESSION_IMPL_H_
