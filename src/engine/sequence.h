// engine::Sequence: one sequence of one llama.cpp context (engine/context.h): its tokens, what of
// them is cached and exact, how they are grouped into llama_decode calls, cutting, snapshots and
// rollback, and its side of the prefix store (restore what a lookup fetched, capture what each
// chunk carries beyond its cells, publish new chunks). Session is a context with one Sequence;
// BatchEngine a context with one per slot. Every promise of both (warm == cold bit for bit, a
// failed decode leaves the sequence as it was, a store hit equals an empty store) lives here once.
#ifndef KVSTASH_ENGINE_SEQUENCE_H_
#define KVSTASH_ENGINE_SEQUENCE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "engine/context.h"
#include "engine/store_chain.h"
#include "kvstash/status.h"
#include "llama.h"

namespace kvstash::engine {

// Copies sequence `seq`'s trailing part (the window or the recurrent state: llama.cpp's "partial"
// state) into `out`, as a one-stream state.
Status PartialState(const Context& ctx, llama_seq_id seq, std::vector<uint8_t>* out);

// Non-finite logits poison every later sample (greedy picks token 0 forever). Range checks cannot
// see NaN hidden in restored KV values, so what comes out after a restore is checked.
Status CheckFinite(const Model& model, const float* logits, size_t n_tokens);

// The length of the common prefix of a and b, at most `limit`.
size_t CommonPrefix(const std::vector<Token>& a, const std::vector<Token>& b,
                    size_t limit = SIZE_MAX);

class Sequence;

// A group of one sequence's tokens for a llama_decode call: [seq->n_cached(), end). `aligned`:
// decoded as a cold chunk-aligned decode would be (prompts through a store, the server's prompts).
struct Group {
  Sequence* seq;
  size_t end;
  bool aligned;
};

// One llama_decode holding every group. On success each sequence has its group cached, and
// logits_row() says where its logits are when its group ended at its last token. On failure the
// cells of the groups may be half written: the caller rolls back (Sequence::Rollback) or clears.
// kContextFull, kCancelled (the context's cancel flag), kInternal with llama.cpp's reason.
Status DecodeGroups(Context& ctx, const std::vector<Group>& groups);

class Sequence {
 public:
  Sequence(Context* ctx, llama_seq_id id) : ctx_(ctx), id_(id) {}
  Sequence(const Sequence&) = delete;
  Sequence& operator=(const Sequence&) = delete;

  // Every token of the sequence: the first n_cached() are in the cache, the rest wait to be
  // decoded. Callers append and assign freely past n_cached(); Cut drops cached ones.
  std::vector<Token>& tokens() { return tokens_; }
  const std::vector<Token>& tokens() const { return tokens_; }
  size_t n_cached() const { return n_cached_; }
  // tokens[0, n_exact) hold the KV bytes a cold chunk-aligned decode of them gives (every cached
  // token in an invariant context): the only ones reused through a store or published.
  size_t n_exact() const { return n_exact_; }
  llama_seq_id id() const { return id_; }
  int32_t logits_row() const { return logits_row_; }
  Context& context() const { return *ctx_; }

  // Whether the cache can be cut to its first `keep` tokens and continue as if only those had been
  // decoded. Always for an attention KV cache; never below the last token for a recurrent state
  // (it holds no earlier position); for an iSWA cache while the window of position `keep` is
  // still held: only the last token, or anything while no token was ever out of sight.
  bool CanCut(size_t keep) const;
  // Drops every cached token from position `keep` on, and tokens past `keep`. kIncompatible when
  // the memory cannot be cut there (CanCut): the caller then decodes from the start.
  Status Cut(size_t keep);
  // Empties the sequence (never fails).
  void Clear();
  // The cache now holds exactly `tokens`, restored by the caller (a session file, an import):
  // none of them counts as exact.
  void Restored(std::vector<Token> tokens);

  // The end of the next llama_decode group from n_cached(): at most `budget` tokens, and, when
  // `aligned` and grouping matters (a context that is not invariant, or a memory whose window or
  // state is captured at chunk boundaries), never past the next multiple of the store's chunk.
  size_t GroupEnd(size_t budget, bool aligned) const;
  // Decodes tokens[n_cached()..] alone, group by group (GroupEnd(step, aligned)), calling
  // `after_call` (may be empty; a non-ok Status stops) after each llama_decode with the tokens
  // done. On failure the cache is as it was before the call (the trailing part from a snapshot) and
  // tokens() keeps its first max(n_cached, keep) tokens.
  Status DecodeAlone(size_t step, bool aligned, size_t keep,
                     const std::function<Status(size_t done, size_t total)>& after_call);

  // Copies the memory's trailing part (window or recurrent state) into `out`.
  Status Snapshot(std::vector<uint8_t>* out) const { return PartialState(*ctx_, id_, out); }
  // Undoes a failed decode from position `begin` on: the cells from `begin`, and the trailing part
  // from `snapshot` (taken before; empty when there is none). Returns `why`, or, when the memory
  // could not be put back, `why` plus that the sequence is now empty.
  Status Rollback(size_t begin, const std::vector<uint8_t>& snapshot, const Status& why);

  // --- The prefix store ---
  // Starts `prompt` (not empty), decoded in groups aligned to `chunk` tokens (the store's chunk
  // when there is a store): keeps the longest prefix of its own cache that is exact (whole chunks
  // unless the context is invariant; never the last token, whose logits come from decoding it),
  // drops the rest, and holds `prompt`. With a store, returns the chain of the whole chunks a
  // lookup may add (hashes empty: nothing to look up). Fails only where the state's shape cannot
  // be learnt (Context::Shape); the sequence is then empty.
  Result<Chain> Begin(std::vector<Token> prompt, uint32_t chunk, Store* store);
  // A finished lookup (FetchPrefix of BeginStore's chain): restores what it found beyond what the
  // sequence kept of its own. A restore that fails is the store's warning and leaves the sequence
  // empty. Returns the tokens restored.
  size_t ApplyFetched(Fetched& fetched);
  // Queues tokens' whole exact chunks up to `upto` tokens for the store's writer, when
  // RunPendingPublish is called (after the first token of an answer: the copy-out takes tens of
  // ms) or before anything changes cells below `upto`; with `tail`, in a context that keeps
  // tails (TailsFor), also the tail of tokens [upto / C * C, upto) unless the store has it.
  // Returns the chunk tokens that will be queued.
  size_t QueuePublish(size_t upto, bool tail = true);
  // Returns the tokens queued for the store's writer.
  size_t RunPendingPublish();

 private:
  friend Status DecodeGroups(Context& ctx, const std::vector<Group>& groups);
  // After a successful decode of [n_cached, end): bookkeeping and, at a chunk boundary of an
  // aligned group, what the chunk carries beyond its cells.
  void Decoded(size_t end, bool aligned);
  void CaptureBoundary(uint32_t index);
  size_t Publish(size_t upto, const std::vector<size_t>& tail_ends);
  // The tails at `ends` to publish with the chunks of `chain`: exact, one per parent (the
  // longest), and not in the store already (or refused by the last lookup: replaced).
  std::vector<TailToPublish> TailsToPublish(const Chain& chain, Store& store,
                                            const std::vector<size_t>& ends) const;
  void Warn(const std::string& what) const;

  Context* ctx_;
  llama_seq_id id_;
  std::vector<Token> tokens_;
  size_t n_cached_ = 0;
  size_t n_exact_ = 0;
  int32_t logits_row_ = -1;
  // The store this sequence was last synced through, its namespace (chain_.hashes unused) and
  // what the store holds of tokens_: its first published_ chunks; first_bad_, a chunk that exists
  // but was refused (its publish replaces it).
  uint32_t chunk_ = 0;  // groups are aligned to it (0: no alignment yet)
  std::weak_ptr<Store> store_;
  std::optional<Chain> chain_;
  size_t published_ = 0;
  long first_bad_ = -1;
  size_t pending_upto_ = 0;
  std::vector<size_t> pending_tails_;  // tail ends queued with pending_upto_
  std::string tail_refused_;           // the last lookup's refused tail (Fetched::tail_refused)
  // Every kind but kKv: what each chunk decoded here carries beyond its cells (window cells or a
  // snapshot), captured at its last token.
  BoundaryParts parts_;
};

}  // namespace kvstash::engine

#endif  // KVSTASH_ENGINE_SEQUENCE_H_
