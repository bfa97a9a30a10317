// BatchEngine: one llama.cpp context that decodes the sequences of several requests together
// (continuous batching), each started from the longest prefix its slot's cache or the prefix
// store holds, and published to the store when decoded. The server's scheduler drives it from
// one thread; it owns no request and knows nothing of HTTP (src/server/scheduler.h does).
//
// Answers independent of load: each slot has its own KV stream (kv_unified off), so a sequence's
// cells are always its positions in order; with flash attention off and a llama.cpp with one
// matmul path for every batch size (MatmulPath()), a token's logits are then bit-equal
// whatever else shares its batch and however its prompt is grouped (docs/SERVER.md, "Answers
// independent of load"; batch_invariant() says whether this build and these options have it).
// Without it, prompts are still decoded in chunk-aligned groups of their own, as a cold Sync
// through a store decodes them, so warm == cold holds for the prompt.
#ifndef KVSTASH_ENGINE_BATCH_ENGINE_H_
#define KVSTASH_ENGINE_BATCH_ENGINE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kvstash/model.h"
#include "kvstash/session.h"
#include "kvstash/status.h"

namespace kvstash {
class Store;
}

namespace kvstash::engine {

struct BatchEngineOptions {
  uint32_t n_slots = 1;        // sequences decoded together (--parallel)
  uint32_t n_ctx_slot = 4096;  // tokens each sequence may hold (rounded up to 256)
  int n_threads = 0;           // 0: all cores
  uint32_t n_batch = 2048;     // tokens in one decode step, at most
  uint32_t n_ubatch = 512;
  FlashAttention flash_attn = FlashAttention::kOff;
  std::string cache_type_k = "f16";
  std::string cache_type_v = "f16";
  // Prompts are decoded in groups that end at multiples of this many tokens (the store's chunk
  // size when there is a store).
  uint32_t chunk_tokens = 256;
};

// What a request's prompt cost, for usage.cached_tokens and the logs.
struct SlotReport {
  size_t n_prompt = 0;
  size_t n_reused = 0;     // prompt tokens not decoded: the slot's own cache or the store
  size_t n_restored = 0;   // of n_reused: restored from the store
  size_t n_published = 0;  // tokens queued for the store's writer
};

// Whether this llama.cpp build has one matmul path for every batch size (MatmulPath() is not
// "llamafile"): with flash attention off and a model loaded without weight repacking, a context is
// batch-invariant.
bool InvariantBuild();

class BatchEngine {
 public:
  // `store` may be null (no prefix store: only each slot's own cache is reused).
  static Result<std::unique_ptr<BatchEngine>> Create(std::shared_ptr<const Model> model,
                                                     const BatchEngineOptions& options,
                                                     std::shared_ptr<Store> store);
  ~BatchEngine();
  BatchEngine(const BatchEngine&) = delete;
  BatchEngine& operator=(const BatchEngine&) = delete;

  uint32_t n_slots() const;
  uint32_t n_ctx_slot() const;
  bool batch_invariant() const;
  // One line for the server's start-up log: slots, context, flash attention, invariance.
  std::string Describe() const;
  const Model& model() const;

  // The free slot for `prompt`: the one whose cache shares the longest prefix with it, else the
  // one used least recently. `busy[i]` marks slots in use; -1 when all are.
  int PickSlot(const std::vector<Token>& prompt, const std::vector<bool>& busy) const;

  // Starts `prompt` (1..n_ctx_slot tokens, checked by the caller) on a free slot: keeps what the
  // slot's cache shares with it and looks further whole chunks up in the store on a background
  // thread; Step restores them when the lookup is done. The last prompt token is always decoded.
  // Sampling as Session::Generate samples (SampleOptions' stop conditions are the caller's).
  void Begin(int slot, std::vector<Token> prompt, const SampleOptions& sampling);

  // One continuous-batching step: a single llama_decode holding, for each started slot, its
  // pending work (the token it sampled last, or prompt tokens). Fills `ready` with the slots whose
  // tokens are now all decoded (Sample them before the next Step). A failure fails every slot
  // that had tokens in the step: `failed` gets them, and their sequences are dropped.
  Status Step(std::vector<int>* ready, std::vector<int>* failed);
  // Whether some started slot has tokens to decode (or a lookup running).
  bool HasWork() const;

  // The logits (model().n_vocab() floats) of a ready slot's last token, valid until the next Step.
  const float* Logits(int slot) const;
  // Samples the next token of a ready slot; it joins the slot's tokens and is decoded by the next
  // Step unless the slot ends first.
  Token Sample(int slot);
  // Tokens the slot holds (prompt, then sampled).
  const std::vector<Token>& tokens(int slot) const;
  const SlotReport& report(int slot) const;

  // Queues the slot's new whole chunks of the prompt for the store's writer (after the first
  // token: the copy-out takes tens of ms a first token need not wait for). Idempotent.
  void PublishPrompt(int slot);
  // The slot's request is over: publishes what is new and exact, keeps the cache for the next
  // prompt that shares a prefix with it.
  void End(int slot);

 private:
  struct Impl;
  explicit BatchEngine(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace kvstash::engine

#endif  // KVSTASH_ENGINE_BATCH_ENGINE_H_
