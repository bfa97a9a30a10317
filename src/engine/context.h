// The context factory: context parameters in, a llama.cpp context and what every sequence of it
// shares out. The only place kvstash creates a llama_context (Session: one sequence; BatchEngine:
// one per slot, each with a KV stream of its own).
#ifndef KVSTASH_ENGINE_CONTEXT_H_
#define KVSTASH_ENGINE_CONTEXT_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "format/llama_state.h"
#include "format/session_format.h"
#include "kvstash/model.h"
#include "kvstash/session.h"
#include "kvstash/status.h"
#include "llama.h"

namespace kvstash::engine {

struct ContextDeleter {
  void operator()(llama_context* ctx) const { llama_free(ctx); }
};
using ContextPtr = std::unique_ptr<llama_context, ContextDeleter>;

// What a context's sequence state looks like beyond what a model's facts say (which layers slide
// or keep a state is not in llama.h): learnt from a state of the context itself. The prefix store
// needs it for every memory kind but kKv (engine/store_chain.h).
struct StateShape {
  format::SeqLayout layout;     // of a whole state (cell counts aside)
  uint64_t snapshot_bytes = 0;  // kRecurrent, kHybrid: a partial state's size
};

// The layout llama.cpp's sequence state has for `model` (engine/memory_support.h); refused for a
// memory kvstash does not read.
Result<format::MemoryKind> MemoryKindOf(const Model& model);

// The context parameters for `options` (the per-sequence n_ctx as given: llama.cpp rounds it).
// Flash attention "auto" is resolved here, before any context exists (ResolveFlashAttn), so the V
// layout, and with it a store's namespace, is known without asking llama.cpp.
Result<format::ContextParams> ParamsFor(const Model& model, const SessionOptions& options);

// Flash attention "auto" as kvstash resolves it: on, as llama.cpp's own "auto" resolves on the CPU
// backend (which runs it for every head size and cache type), except for the architectures
// llama.cpp forces off (Grok). A quantized V cache needs it on.
bool ResolveFlashAttn(const Model& model, FlashAttention requested);

// ggml's thread pool holds at most GGML_MAX_N_THREADS threads and crashes beyond; batches of 0
// tokens cannot be decoded. Both are refused by flag name.
Status CheckThreadsAndBatch(int n_threads, uint32_t n_batch, uint32_t n_ubatch);

// What to create: `params` (n_ctx per sequence; flash_attn resolved), `n_seq` sequences (more than
// one: a KV stream each, kv_unified off), threads (0: all cores).
struct ContextSpec {
  format::ContextParams params;
  uint32_t n_seq = 1;
  int n_threads = 0;
  int n_threads_batch = 0;  // prompts (llama.cpp's -tb); 0: as n_threads
};

// One llama.cpp context and the facts its sequences share.
class Context {
 public:
  // Refuses, by flag name, what llama.cpp would crash on (threads, zero batches) and a KV cache
  // larger than this machine's memory, before llama.cpp allocates anything.
  static Result<std::unique_ptr<Context>> Create(std::shared_ptr<const Model> model,
                                                 const ContextSpec& spec);

  llama_context* get() const { return ctx_.get(); }
  const Model& model() const { return *model_; }
  const std::shared_ptr<const Model>& model_ptr() const { return model_; }
  // The parameters of one sequence (n_ctx as llama.cpp rounded it, per sequence).
  const format::ContextParams& params() const { return params_; }
  format::MemoryKind memory() const { return memory_; }
  uint32_t n_swa() const { return n_swa_; }
  uint32_t n_stream() const { return n_stream_; }
  uint32_t n_ctx_seq() const { return params_.n_ctx; }
  int n_threads() const { return n_threads_; }
  // V is stored transposed exactly when flash attention is off (a recurrent model has no V; its
  // namespace records the same).
  bool v_trans() const { return !params_.flash_attn; }
  // Whether a token's logits and KV are bit-equal however its sequence is grouped into
  // llama_decode calls and whatever shares its batch: flash attention off, a llama.cpp with one
  // matmul path for any number of rows, no GPU layers, no repacked weights (docs/SERVER.md).
  bool invariant() const { return invariant_; }
  // Why not, for logs ("" when invariant).
  std::string WhyNotInvariant() const;

  // kRecurrent, kHybrid: the records a state of this context has, learnt from the empty context.
  const std::optional<format::RecurrentLayout>& rs_shape() const { return rs_shape_; }
  // A state's recurrent records against the context's (kCorruption naming `what` otherwise).
  Status CheckRecurrentShape(const format::RecurrentLayout& rs, const std::string& what) const;

  // Every kind but kKv: the state's shape, learnt once from sequence `seq` (by decoding one token
  // there when it is empty, then removing it). nullptr for kKv.
  Result<const StateShape*> Shape(llama_seq_id seq);

  // Sets (or clears, with nullptr) the flag that stops a running decode (llama_decode returns 2).
  void SetCancelFlag(const std::atomic<bool>* cancel);
  const std::atomic<bool>* cancel() const { return cancel_; }

 private:
  Context() = default;
  Status LearnRecurrentShape();

  std::shared_ptr<const Model> model_;
  ContextPtr ctx_;
  format::ContextParams params_;
  format::MemoryKind memory_ = format::MemoryKind::kKv;
  uint32_t n_swa_ = 0;
  uint32_t n_stream_ = 1;
  int n_threads_ = 1;
  bool invariant_ = false;
  std::optional<format::RecurrentLayout> rs_shape_;
  std::optional<StateShape> shape_;
  const std::atomic<bool>* cancel_ = nullptr;
};

// Whether a context of `model` with `params` will be batch-invariant (Context::invariant), known
// before it is created: flash attention off, a build with one matmul path (InvariantBuild), no
// GPU layers, no repacked weights.
bool WouldBeInvariant(const Model& model, const format::ContextParams& params);

}  // namespace kvstash::engine

#endif  // KVSTASH_ENGINE_CONTEXT_H_
