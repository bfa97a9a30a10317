// The engine's side of the prefix store, shared by Session (store_sync.cc) and the server's
// BatchEngine: a prompt's chain of chunk hashes in its namespace, fetching and assembling the
// stored prefix of a chain, and cutting new chunks out of a sequence for the store's writer.
// A context may hold one KV stream or one per sequence (kv_unified off); `n_stream` and the
// sequence id say which.
#ifndef KVSTASH_ENGINE_STORE_CHAIN_H_
#define KVSTASH_ENGINE_STORE_CHAIN_H_

#include <memory>
#include <string>
#include <vector>

#include "engine/session_impl.h"
#include "format/chunk_format.h"
#include "kvstash/store.h"

namespace kvstash::engine {

// A prompt's place in the store: its namespace (text and h_0), the hashes h_1..h_k of its whole
// chunks, and the KV layout the namespace's chunks have.
struct Chain {
  format::Hash256 h0;
  std::string text;
  std::vector<format::Hash256> hashes;
  format::ChunkLayout layout;
  uint32_t chunk = 0;
};

// The layout llama_state_seq_get_data uses for a cache of `model` with `params`.
format::ChunkLayout ExpectedLayout(const Model::Impl& m, const SessionMeta& params, bool v_trans);
Chain MakeChain(const Model& model, const SessionMeta& params, bool v_trans, uint32_t chunk,
                const std::vector<Token>& tokens);

// What the store holds of a prompt: its longest verified prefix of chunks, assembled into one
// llama.cpp sequence state (the chunk files closed again). Needs no context, so it may run on
// another thread while the context is busy.
struct Fetched {
  std::string ns_text;                  // the namespace it was looked up in
  std::vector<format::Hash256> hashes;  // and the chain
  size_t n_found = 0;                   // chunks the lookup accepted
  size_t n_assembled = 0;               // chunks in `state` (0 if assembling failed)
  // A one-stream state of state_size bytes, with room after it to become an n_stream one.
  std::unique_ptr<LargeBuffer> state;
  size_t state_size = 0;
  long first_bad = -1;
  Status status;  // why found chunks were not assembled
};
Fetched FetchPrefix(Store& store, const Chain& chain, const std::vector<Token>& tokens,
                    size_t max_chunks, int n_threads, bool huge_pages, uint32_t n_stream = 1);

// Restores `fetched` into sequence `seq` of `ctx` (set_data replaces what the sequence held).
// On failure the sequence is empty.
Status RestoreFetched(llama_context* ctx, llama_seq_id seq, uint32_t n_stream, Fetched& fetched,
                      uint32_t chunk);

// A copy of sequence `seq` as a one-stream llama.cpp state, checked by kvstash's reader.
struct SeqState {
  std::unique_ptr<LargeBuffer> buffer;
  const uint8_t* data = nullptr;  // the one-stream state inside buffer
  size_t size = 0;
  format::KvLayout layout;
};
Status GetSeqState(llama_context* ctx, llama_seq_id seq, uint32_t n_stream, SeqState* out);

// Queues chunks first_new+1..k (1-based) of `chain` for the store's writer, cut from `state`
// (which holds at least those tokens), whose tokens are `tokens`. `bad`: the index of a chunk that
// exists but was refused, which the write replaces. Returns the tokens queued; failures are the
// store's warnings, never the caller's.
size_t PublishChunks(Store& store, const Chain& chain, const std::vector<Token>& tokens,
                     const SeqState& state, size_t first_new, long bad);

}  // namespace kvstash::engine

#endif  // KVSTASH_ENGINE_STORE_CHAIN_H_
