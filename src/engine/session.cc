#include "kvstash/session.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <exception>
#include <future>
#include <optional>
#include <thread>

#include "engine/inspect.h"
#include "engine/llama_runtime.h"
#include "engine/memory_support.h"
#include "engine/model_impl.h"
#include "engine/sampler.h"
#include "engine/session_impl.h"
#include "engine/session_internals.h"
#include "engine/stop_matcher.h"
#include "env/atomic_file.h"
#include "env/env.h"
#include "format/compat.h"
#include "format/llama_state.h"
#include "format/meta_check.h"
#include "format/session_format.h"
#include "kvstash/session_file.h"
#include "llama.h"

#ifndef KVSTASH_VERSION
#define KVSTASH_VERSION "0.0.0"
#endif

namespace kvstash {
namespace {}  // namespace

const char* StopReasonName(StopReason reason) {
  switch (reason) {
    case StopReason::kEndOfGeneration:
      return "eog";
    case StopReason::kMaxTokens:
      return "n_predict";
    case StopReason::kStopString:
      return "stop";
    case StopReason::kContextFull:
      return "context_full";
    case StopReason::kCancelled:
      return "cancelled";
  }
  return "unknown";
}

Session::Session(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Session::~Session() {
  if (impl_) impl_->seq->RunPendingPublish();
}

Result<std::unique_ptr<Session>> Session::Create(std::shared_ptr<const Model> model,
                                                 const SessionOptions& options) {
  if (!model) return Status::InvalidArgument("Session::Create needs a loaded model");
  auto params = engine::ParamsFor(*model, options);
  if (!params.ok()) return params.status();
  engine::ContextSpec spec;
  spec.params = *params;
  spec.n_threads = options.n_threads;
  spec.n_threads_batch = options.n_threads_batch;
  auto context = engine::Context::Create(model, spec);
  if (!context.ok()) return context.status();
  return std::unique_ptr<Session>(new Session(std::make_unique<Impl>(std::move(*context))));
}

Status Session::Append(std::string_view text) {
  auto tokens = impl_->model().Tokenize(text, /*add_bos=*/impl_->tokens().empty());
  if (!tokens.ok()) return tokens.status();
  return AppendTokens(*tokens);
}

Status Session::AppendTokens(const std::vector<Token>& tokens) {
  KVSTASH_RETURN_IF_ERROR(impl_->CheckTokens(tokens));
  // Checked before the pending token is flushed, so that a refused append changes nothing.
  if (impl_->tokens().size() + tokens.size() > impl_->n_ctx()) {
    return impl_->ContextFullError(impl_->tokens().size(), tokens.size());
  }
  // Anything still pending (the last sampled token) is decoded first, as its own group: the same
  // group Generate would have decoded it in.
  KVSTASH_RETURN_IF_ERROR(impl_->Flush());
  if (tokens.empty()) return Status::Ok();
  const size_t held = impl_->tokens().size();
  impl_->tokens().insert(impl_->tokens().end(), tokens.begin(), tokens.end());
  return impl_->Flush(/*keep=*/held);
}

Result<SyncResult> Session::Sync(const std::vector<Token>& tokens) {
  KVSTASH_RETURN_IF_ERROR(impl_->CheckTokens(tokens));
  Impl& s = *impl_;
  // Refused before the truncation below, which a retry would otherwise pay for in full.
  if (tokens.size() > s.n_ctx()) {
    return Status::ContextFull("cannot sync to " + std::to_string(tokens.size()) + " tokens: the " +
                               "context holds " + std::to_string(s.n_ctx()) +
                               "; the session is unchanged; use a larger -c");
  }
  const size_t before = s.n_decoded_total;
  size_t common = engine::CommonPrefix(tokens, s.tokens());
  // A token Generate left pending that `tokens` keep is decoded first, in its own group: the
  // group Append and Save decode it in. Otherwise a conversation continued here and one saved,
  // opened and continued elsewhere would decode different groups, which builds whose kernels
  // depend on the batch (upstream llamafile, flash attention) turn into different answers.
  if (common >= s.tokens().size()) KVSTASH_RETURN_IF_ERROR(s.Flush());
  // A window or recurrent state that cannot go back to `common` is decoded again from the start:
  // never a state that does not match the tokens.
  if (!s.seq->CanCut(common)) common = 0;
  KVSTASH_RETURN_IF_ERROR(s.Truncate(common));
  SyncResult result;
  result.n_reused = std::min(common, s.seq->n_cached());
  s.tokens().assign(tokens.begin(), tokens.end());
  KVSTASH_RETURN_IF_ERROR(s.Flush(/*keep=*/common));
  if (!s.tokens().empty()) KVSTASH_RETURN_IF_ERROR(s.EnsureLogits());
  result.n_decoded = s.n_decoded_total - before;
  if (result.n_reused + result.n_decoded > tokens.size()) {
    result.n_reused = tokens.size() - result.n_decoded;  // the last token was decoded again
  }
  return result;
}

namespace {

using engine::MakeSampler;
using engine::SamplerPtr;

// Hands what `matcher` can show now to the caller's PieceCallback. The callback must not unwind
// through Generate: an exception becomes a Status (and Generate undoes what it generated).
Status EmitPiece(const PieceCallback& on_piece, engine::StopMatcher& matcher, bool final,
                 bool* cancelled) {
  const std::string_view piece = matcher.TakeShowable(final);
  if (piece.empty() || !on_piece || *cancelled) return Status::Ok();
  std::string what;
  try {
    if (!on_piece(piece)) *cancelled = true;
    return Status::Ok();
  } catch (const std::exception& e) {
    what = e.what();
  } catch (...) {
    what = "an exception that is not a std::exception";
  }
  return Status::InvalidArgument("the piece callback passed to Generate threw (" + what +
                                 "); the generation was undone: return false to stop instead");
}

}  // namespace

Result<Token> Session::Impl::SampleNext(llama_sampler* chain,
                                        std::vector<llama_token_data>* candidates) {
  KVSTASH_RETURN_IF_ERROR(EnsureLogits());
  const int32_t n_vocab = model().n_vocab();
  candidates->resize(n_vocab);
  for (int32_t i = 0; i < n_vocab; ++i) (*candidates)[i] = {i, logits[i], 0.0f};
  llama_token_data_array array = {candidates->data(), candidates->size(), -1, false};
  llama_sampler_apply(chain, &array);
  if (array.selected < 0 || static_cast<size_t>(array.selected) >= array.size) {
    return Status::Internal("the sampler selected no token");
  }
  const Token token = array.data[array.selected].id;
  llama_sampler_accept(chain, token);
  return token;
}

Status Session::Impl::SampleLoop(const SampleOptions& options, const PieceCallback& on_piece,
                                 Generation* gen) {
  // llama.cpp divides positive logits by the penalty: 0, a negative or a NaN one breaks sampling.
  if (!(options.repeat_penalty > 0) || !std::isfinite(options.repeat_penalty)) {
    return Status::InvalidArgument(
        "repeat penalty " + std::to_string(options.repeat_penalty) +
        " is not a positive number; pass one above 0 (1: off, 1.1: " + "llama.cpp's usual)");
  }
  SamplerPtr chain = MakeSampler(options, model(), tokens(), n_ctx());
  engine::StopMatcher matcher(options.stop);
  std::vector<size_t> ends;  // text size after each generated token
  std::vector<llama_token_data> candidates;
  bool cancelled = false;
  while (true) {
    if (options.n_predict >= 0 && gen->tokens.size() >= static_cast<size_t>(options.n_predict)) {
      gen->stop_reason = StopReason::kMaxTokens;
      break;
    }
    if (tokens().size() >= n_ctx()) {
      gen->stop_reason = StopReason::kContextFull;
      break;
    }
    Result<Token> token = SampleNext(chain.get(), &candidates);
    if (!token.ok()) return token.status();
    if (llama_vocab_is_eog(m().vocab, *token)) {
      gen->stop_reason = StopReason::kEndOfGeneration;
      break;
    }
    gen->tokens.push_back(*token);
    tokens().push_back(*token);  // decoded lazily, before the next sample or any other call
    logits_valid = false;
    if (matcher.Add(model().TokenToPiece(*token))) {
      gen->stop_reason = StopReason::kStopString;
      break;
    }
    ends.push_back(matcher.text().size());
    KVSTASH_RETURN_IF_ERROR(EmitPiece(on_piece, matcher, /*final=*/false, &cancelled));
    seq->RunPendingPublish();  // after the first token: the answer does not wait for the copy
    if (cancelled) {
      gen->stop_reason = StopReason::kCancelled;
      break;
    }
  }
  gen->text = matcher.text();
  KVSTASH_RETURN_IF_ERROR(EmitPiece(on_piece, matcher, /*final=*/true, &cancelled));
  if (gen->stop_reason == StopReason::kStopString) {
    // The session keeps only the tokens whose text the caller got: the token that completed the
    // match (and any token the match starts in) is dropped, so the next Append continues right
    // after the returned text.
    const size_t kept = static_cast<size_t>(
        std::upper_bound(ends.begin(), ends.end(), gen->text.size()) - ends.begin());
    KVSTASH_RETURN_IF_ERROR(Truncate(tokens().size() - gen->tokens.size() + kept));
    gen->tokens.resize(kept);
  }
  return Status::Ok();
}

Result<Generation> Session::Generate(const SampleOptions& options, const PieceCallback& on_piece) {
  Impl& s = *impl_;
  KVSTASH_RETURN_IF_ERROR(s.EnsureLogits());
  // What a failed call restores: the tokens and the logits after them (copied, not recomputed, so
  // that a later sample is the one it would have been).
  const size_t start = s.tokens().size();
  const std::vector<float> start_logits = s.logits;
  Generation gen;
  const Status status = s.SampleLoop(options, on_piece, &gen);
  s.seq
      ->RunPendingPublish();  // when no token came (end of generation at once, n_predict 0, errors)
  if (!status.ok()) {
    if (s.Truncate(start).ok()) {
      s.logits = start_logits;
      s.logits_valid = s.seq->n_cached() == start;
    }
    return status;
  }
  return gen;
}

// The META record of a save: the context's parameters, the model's facts and the tokens'.
format::SessionMeta Session::Impl::MetaForSave(const format::SeqLayout& layout) {
  const format::MemoryKind memory = context->memory();
  format::SessionMeta meta;
  static_cast<format::ContextParams&>(meta) = context->params();
  meta.writer = std::string("kvstash ") + KVSTASH_VERSION;
  meta.llama_build = engine::LlamaBuildInfo();
  meta.llama_state_version = LLAMA_STATE_SEQ_VERSION;
  const format::ModelFacts facts = FactsOf(model());
  meta.model_fingerprint = facts.fingerprint;
  meta.model_description = model().Description();
  meta.model_arch = facts.arch;
  meta.model_n_params = llama_model_n_params(m().model);
  meta.n_vocab = facts.n_vocab;
  meta.n_layer = facts.n_layer;
  meta.n_embd = facts.n_embd;
  meta.n_head = facts.n_head;
  meta.n_head_kv = facts.n_head_kv;
  meta.n_embd_k_gqa = facts.n_embd_k_gqa;
  meta.n_embd_v_gqa = facts.n_embd_v_gqa;
  meta.n_swa = facts.n_swa;
  meta.memory_kind = static_cast<uint32_t>(memory);
  meta.n_ctx_train = facts.n_ctx_train;
  meta.n_ctx = n_ctx();
  // A recurrent model has no KV cells to tell; it keeps what the session was created with.
  if (memory != format::MemoryKind::kRecurrent) meta.flash_attn = !layout.kv.v_trans;
  meta.n_tokens = static_cast<uint32_t>(tokens().size());
  meta.has_logits = true;
  std::vector<Token> head(tokens().begin(),
                          tokens().begin() + std::min<size_t>(tokens().size(), 32));
  meta.preview = model().Detokenize(head);

  return meta;
}

Status Session::Save(const std::string& path, const SaveOptions& options) {
  return SessionInternals::Save(*this, path, options, Env::Default());
}

Status SessionInternals::Save(Session& session, const std::string& path, const SaveOptions& options,
                              Env* env) {
  Impl& s = *session.impl_;
  s.seq->RunPendingPublish();
  if (s.tokens().empty()) {
    return Status::InvalidArgument("nothing to save to '" + path + "': the session is empty; " +
                                   "append a prefix first");
  }
  KVSTASH_RETURN_IF_ERROR(s.EnsureLogits());
  llama_context* ctx = s.ctx();
  const size_t size = llama_state_seq_get_size(ctx, 0);
  LargeBuffer kv(size);
  if (kv.data() == nullptr) {
    return Status::IOError("cannot allocate " + std::to_string(size) + " bytes to save '" + path +
                           "'");
  }
  engine::ClearLlamaError();
  if (llama_state_seq_get_data(ctx, kv.data(), size, 0) != size) {
    return Status::Internal("llama.cpp could not copy the KV cache: " + engine::LastLlamaError());
  }
  // Our own reader must accept what we write; this also refuses memory layouts kvstash does not
  // read (a model whose cells carry extra data, a window of another shape), before a file exists.
  const format::MemoryKind memory = s.context->memory();
  auto layout =
      format::ParseSeqState(kv.data(), size, memory, s.context->n_swa(), /*partial=*/false, path);
  if (!layout.ok()) {
    return Status::Incompatible("kvstash cannot save sessions of model '" + s.model().path() +
                                "' (" + s.m().arch + "): its " + format::MemoryKindName(memory) +
                                " memory layout is not supported yet (" +
                                layout.status().message() + ")");
  }
  KVSTASH_RETURN_IF_ERROR(s.context->CheckRecurrentShape(layout->rs, "the model's own state"));
  if (layout->n_tokens != s.tokens().size()) {
    return Status::Internal("the KV cache holds " + std::to_string(layout->n_tokens) +
                            " positions for " + std::to_string(s.tokens().size()) + " tokens");
  }

  const format::SessionMeta meta = s.MetaForSave(*layout);
  const uint64_t kv_sum = format::SectionChecksum(kv.data(), size, 2);
  const std::string prefix = format::EncodeFilePrefix(meta, s.tokens(), s.logits, size, kv_sum);
  const AtomicWriteOptions write_options =
      SessionWriteOptions(options, {{s.model().path(), "the model file"}});
  return AtomicWriteFile(env, path,
                         {prefix, std::string_view(reinterpret_cast<const char*>(kv.data()), size)},
                         write_options);
}

namespace {

// Largest file a session of this model could be with a context of `n_ctx` tokens: anything
// bigger is refused before a byte is read. Per token: its id, a cell record, and K and V of every
// layer at up to 4 bytes a value, as wide as the model's widest row (llama.cpp reports layer 0's
// heads, which a hybrid's first layer may not have: n_embd then bounds them). A recurrent state
// (recurrent and hybrid models) adds a few rows per layer of at most 1024 x n_embd values
// (mamba2's d_inner x d_state is 256 x n_embd).
uint64_t MaxSessionBytes(const Model& model, uint64_t n_ctx) {
  const auto& m = *ImplOf(model);
  const uint64_t n_layer = uint64_t(llama_model_n_layer(m.model));
  const uint64_t n_embd = uint64_t(std::max(0, llama_model_n_embd(m.model)));
  const uint64_t width = std::max({uint64_t(m.n_embd_k_gqa), uint64_t(m.n_embd_v_gqa), n_embd});
  const uint64_t per_token = 4 + 12 + n_layer * 2 * width * 4;
  const bool stateful = llama_model_is_recurrent(m.model) || llama_model_is_hybrid(m.model);
  const uint64_t state = stateful ? n_layer * n_embd * 4 * 1024 : 0;
  return (uint64_t{1} << 20) + uint64_t(model.n_vocab()) * 4 + n_ctx * per_token + n_layer * 64 +
         state;
}

// The KV section's checksum, reading it through the file's ReadBlocks (at disk speed on a cold page
// cache, see StableFile). `progress` (optional) gets the file's bytes read so far, short of its
// size: the restore that follows is what completes the load.
Status VerifyKvBytes(const StableFile& file, format::ParsedFile* parsed, const std::string& path,
                     const ProgressFn& progress = {}) {
  format::SectionHasher hasher;
  const size_t offset = static_cast<size_t>(parsed->kv - file.data());
  size_t read = offset;
  KVSTASH_RETURN_IF_ERROR(
      file.ReadBlocks(offset, parsed->kv_size, format::kChecksumBlock,
                      [&hasher, &read, &progress, &file](const uint8_t* block, size_t n) {
                        hasher.AddBlock(block, n);
                        read += n;
                        if (progress && read < file.size()) progress(read, file.size());
                      }));
  if (hasher.Finish() != parsed->kv_checksum) {
    return Status::Corruption("session file '" + path + "' is corrupt: the checksum of the KV " +
                              "section does not match (the bytes were altered or damaged); " +
                              "re-create it with 'kvstash save'");
  }
  parsed->checksums_verified = true;
  return Status::Ok();
}

Env::HeadCheck HeadCheck(const std::string& path) {
  return [&path](const uint8_t* head, size_t n, uint64_t file_size) {
    return format::CheckFileHead(head, n, file_size, path);
  };
}

Status ChangedWhileLoading(const std::string& path) {
  return Status::IOError("session file '" + path + "' was changed by another process while it " +
                         "was loaded; open it again once the writer is done");
}

using Clock = std::chrono::steady_clock;
double MsBetween(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

}  // namespace

// Hands the verified KV bytes to llama.cpp and checks what it made of them. `file` holds the bytes
// stable (format/../env StableFile), so what llama.cpp reads is what was verified; Intact() says
// whether that held until the end.
Status Session::Impl::Restore(const format::ParsedFile& parsed, const StableFile& file,
                              const std::string& path) {
  engine::ClearLlamaError();
  const size_t read = llama_state_seq_set_data(ctx(), parsed.kv, parsed.kv_size, 0);
  llama_memory_t mem = llama_get_memory(ctx());
  if (!file.Intact()) {
    llama_memory_seq_rm(mem, 0, -1, -1);
    return ChangedWhileLoading(path);
  }
  // The lowest position llama.cpp then holds: 0 for KV cells; the window's first for iSWA (its
  // window cache decides); the last one for a recurrent state (and so for a hybrid).
  const llama_pos n = llama_pos(parsed.meta.n_tokens);
  const format::MemoryKind memory = context->memory();
  const llama_pos pos_min = memory == format::MemoryKind::kKv     ? 0
                            : memory == format::MemoryKind::kIswa ? parsed.layout.swa.first_pos
                                                                  : n - 1;
  if (read != parsed.kv_size || llama_memory_seq_pos_min(mem, 0) != pos_min ||
      llama_memory_seq_pos_max(mem, 0) != n - 1) {
    llama_memory_seq_rm(mem, 0, -1, -1);
    const std::string why = engine::LastLlamaError();
    return Status::Internal("llama.cpp refused the KV cache of session '" + path + "'" +
                            (why.empty() ? "" : " (" + why + ")") + "; re-save the session");
  }
  seq->Restored(parsed.tokens);
  if (!parsed.logits.empty()) {
    logits = parsed.logits;
    logits_valid = true;
  }
  return Status::Ok();
}

Result<std::unique_ptr<Session>> Session::Open(std::shared_ptr<const Model> model,
                                               const std::string& path,
                                               const SessionOptions& options) {
  if (!model) return Status::InvalidArgument("Session::Open needs a loaded model");
  KVSTASH_RETURN_IF_ERROR(engine::CheckThreadsAndBatch(options.n_threads, 1, 1));
  KVSTASH_RETURN_IF_ERROR(engine::CheckThreadsAndBatch(options.n_threads_batch, 1, 1));
  OpenStats stats;
  const auto t_start = Clock::now();
  const uint64_t ctx_bound =
      std::max<uint64_t>({uint64_t(model->n_ctx_train()), options.n_ctx.value_or(0), 1u << 16});
  auto opened =
      Env::Default()->OpenStableFile(path, MaxSessionBytes(*model, ctx_bound), HeadCheck(path));
  if (!opened.ok()) return opened.status();
  const StableFile& file = **opened;
  const auto t_mapped = Clock::now();

  // Every check before llama.cpp sees a byte: structure, ranges and checksums (ParseFile), the
  // model (fingerprint and dimensions), then what the caller asks of the context.
  auto parsed = format::ParseFile(file.data(), file.size(), path, /*verify_checksums=*/true,
                                  /*n_threads=*/1, /*defer_kv_payload=*/true);
  if (!file.Intact()) return ChangedWhileLoading(path);
  if (!parsed.ok()) return parsed.status();
  const format::ModelFacts facts = FactsOf(*model);
  KVSTASH_RETURN_IF_ERROR(format::CheckSessionFitsModel(parsed->meta, facts, path));
  const FlashAttention fa = options.flash_attn.value_or(FlashAttention::kAuto);
  auto n_ctx = format::ResolveOpenContext(
      parsed->meta,
      {options.n_ctx, options.n_room,
       fa == FlashAttention::kAuto ? std::nullopt : std::optional<bool>(fa == FlashAttention::kOn),
       options.n_batch, options.n_ubatch, options.cache_type_k, options.cache_type_v},
      facts, path);
  if (!n_ctx.ok()) return n_ctx.status();
  if (options.progress) options.progress(0, file.size());

  // The KV checksum, the one pass over the whole payload. With the file in the page cache it runs
  // on a second thread while this one creates the context, which needs no byte of the file. A cold
  // file is read first, alone (reading it alongside context creation is slower; PERFORMANCE.md).
  // llama.cpp gets the payload only after the checksum matched.
  const size_t kv_offset = static_cast<size_t>(parsed->kv - file.data());
  std::future<Status> kv_checked;
  if (file.Resident(kv_offset, parsed->kv_size)) {
    kv_checked =
        std::async(std::launch::async, [&] { return VerifyKvBytes(file, &*parsed, path); });
  } else {
    // Read from the disk here, alone: the slow case a progress bar is for.
    std::promise<Status> done;
    done.set_value(VerifyKvBytes(file, &*parsed, path, options.progress));
    kv_checked = done.get_future();
  }
  const auto t_before_context = Clock::now();
  engine::ContextSpec spec;
  spec.params = parsed->meta;
  spec.params.n_ctx = *n_ctx;
  spec.n_threads = options.n_threads;
  spec.n_threads_batch = options.n_threads_batch;
  auto context = engine::Context::Create(model, spec);
  const auto t_context = Clock::now();
  const Status kv_status = kv_checked.get();
  if (!file.Intact()) return ChangedWhileLoading(path);
  KVSTASH_RETURN_IF_ERROR(kv_status);
  KVSTASH_RETURN_IF_ERROR(format::ParseKvPayload(&*parsed, path));
  if (!context.ok()) return context.status();
  auto impl = std::make_unique<Impl>(std::move(*context));
  KVSTASH_RETURN_IF_ERROR(
      impl->context->CheckRecurrentShape(parsed->layout.rs, "session file '" + path + "'"));
  const auto t_checked = Clock::now();

  KVSTASH_RETURN_IF_ERROR(impl->Restore(*parsed, file, path));
  const auto t_restored = Clock::now();
  if (options.progress) options.progress(file.size(), file.size());
  stats.map_ms = MsBetween(t_start, t_mapped);
  stats.verify_ms = MsBetween(t_mapped, t_before_context) + MsBetween(t_context, t_checked);
  stats.context_ms = MsBetween(t_before_context, t_context);
  stats.restore_ms = MsBetween(t_checked, t_restored);
  stats.total_ms = MsBetween(t_start, t_restored);
  stats.file_bytes = file.size();
  stats.leased = file.leased();
  impl->open_stats = stats;
  return std::unique_ptr<Session>(new Session(std::move(impl)));
}

Result<std::vector<float>> Session::Logits() {
  KVSTASH_RETURN_IF_ERROR(impl_->EnsureLogits());
  return impl_->logits;
}

const std::vector<Token>& Session::tokens() const { return impl_->seq->tokens(); }
uint32_t Session::n_ctx() const { return impl_->n_ctx(); }
const Model& Session::model() const { return impl_->model(); }
size_t Session::n_decoded_total() const { return impl_->n_decoded_total; }
const OpenStats& Session::open_stats() const { return impl_->open_stats; }

llama_context* SessionInternals::Context(Session& session) { return session.impl_->ctx(); }
void Session::SetProgressCallback(ProgressFn progress) { impl_->progress = std::move(progress); }

void Session::SetCancelFlag(const std::atomic<bool>* cancel) {
  impl_->context->SetCancelFlag(cancel);
}

Result<SessionFileInfo> InspectSessionFile(const std::string& path, bool verify_checksums) {
  // Without a model there is no tight bound; 64 GiB covers any context of any model kvstash runs.
  // The file is held still like Open's, so what is printed comes from one version of the file.
  auto opened = Env::Default()->OpenStableFile(path, uint64_t{64} << 30, HeadCheck(path));
  if (!opened.ok()) return opened.status();
  const StableFile& file = **opened;
  auto parsed = format::ParseFile(file.data(), file.size(), path, verify_checksums,
                                  /*n_threads=*/1, /*defer_kv_payload=*/true);
  if (parsed.ok()) {
    Status kv = verify_checksums ? VerifyKvBytes(file, &*parsed, path) : Status::Ok();
    if (kv.ok()) kv = format::ParseKvPayload(&*parsed, path);
    if (!kv.ok()) parsed = kv;
  }
  if (!file.Intact()) return ChangedWhileLoading(path);
  if (!parsed.ok()) return parsed.status();
  SessionFileInfo info;
  info.path = path;
  info.format_version = parsed->format_version;
  info.min_reader_version = parsed->min_reader_version;
  info.file_size = file.size();
  info.meta = format::InfoOf(parsed->meta);
  info.tokens = parsed->tokens;
  info.kv_bytes = parsed->kv_size;
  info.logits_bytes = parsed->logits.size() * sizeof(float);
  info.checksums_verified = parsed->checksums_verified;
  info.memory = engine::DescribeSessionMemory(parsed->layout, parsed->meta.n_swa);
  return info;
}

}  // namespace kvstash
