// The engine's side of the prefix store, shared by Session (store_sync.cc) and the server's
// BatchEngine: a prompt's chain of chunk hashes in its namespace, fetching and assembling the
// stored prefix of a chain, and cutting new chunks out of a sequence for the store's writer.
// A context may hold one KV stream or one per sequence (kv_unified off); `n_stream` and the
// sequence id say which.
#ifndef KVSTASH_ENGINE_STORE_CHAIN_H_
#define KVSTASH_ENGINE_STORE_CHAIN_H_

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "engine/context.h"
#include "engine/model_impl.h"
#include "env/env.h"
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
  uint32_t n_swa = 0;  // kIswa: the model's window
  // Token-exact lookups (an invariant context with a plain KV cache: a cell's bytes depend only on
  // the tokens up to it): the lookup continues past the whole chunks with the tail that shares
  // the most tokens, and cuts a chunk or a tail anywhere, up to `limit` tokens (the prompt's
  // length less its last token, whose logits come from decoding it). `hashes` then covers every
  // whole chunk of the prompt.
  bool tails = false;
  size_t limit = 0;
  size_t own = 0;  // tokens the sequence holds already (tails: a lookup that cannot beat them
                   // when they cover every whole chunk costs only a probe of the tails)
  // Whether a lookup can restore anything.
  bool Lookup() const { return !hashes.empty() || tails; }
};

// Whether sequences of `ctx` publish and find tails (Chain::tails).
bool TailsFor(const Context& ctx);

// The layout llama_state_seq_get_data uses for a plain cache of `model` with `params`.
format::ChunkLayout ExpectedLayout(const ModelImpl& m, const format::ContextParams& params,
                                   bool v_trans);

// The chunk layout of a namespace of `shape` with chunks of `chunk` tokens (kIswa: the window
// cells each chunk carries; kRecurrent/kHybrid: every how many chunks a snapshot is kept, so
// that snapshots cost about what the chunks' own KV costs, 8 MiB a chunk at least, at most every
// 64th chunk).
format::ChunkLayout ShapedLayout(const StateShape& shape, const format::ChunkLayout& plain,
                                 uint32_t chunk, uint32_t n_swa);

// `shape` is required for every kind but kKv (whose layout comes from the model's facts).
Chain MakeChain(const Model& model, const format::ContextParams& params, bool v_trans,
                uint32_t chunk, const std::vector<Token>& tokens,
                const StateShape* shape = nullptr);

// What the store holds of a prompt: its longest verified prefix of chunks, assembled into one
// llama.cpp sequence state (the chunk files closed again): every found chunk for kKv and kIswa
// (each keeps its window cells), up to the last one with a snapshot for kRecurrent and kHybrid.
// Needs no context, so it may run on another thread while the context is busy.
struct Fetched {
  std::string ns_text;                  // the namespace it was looked up in
  std::vector<format::Hash256> hashes;  // and the chain
  size_t n_found = 0;                   // chunks the lookup accepted
  size_t n_assembled = 0;               // chunks in `state` (0 if assembling failed)
  size_t n_tokens = 0;                  // cells in `state`: chunks' and the tail's (0 if failed)
  uint32_t tail_tokens = 0;             // of which from a tail
  bool tails = false;                   // the chain's
  size_t limit = 0;                     // the chain's
  std::string tail_refused;             // a tail that exists but was refused (LoadedTail)
  // A one-stream state of state_size bytes, with room after it to become an n_stream one.
  std::unique_ptr<LargeBuffer> state;
  size_t state_size = 0;
  long first_bad = -1;
  Status status;  // why found chunks were not assembled
  // The assembled state's parts (kind kKv when plain: its cells are the verified chunks' own).
  format::SeqLayout layout;
};
Fetched FetchPrefix(Store& store, const Chain& chain, const std::vector<Token>& tokens,
                    size_t max_chunks, int n_threads, bool huge_pages, uint32_t n_stream = 1);

// Restores `fetched` into sequence `seq` of `ctx` (set_data replaces what the sequence held).
// On failure the sequence is empty.
Status RestoreFetched(llama_context* ctx, llama_seq_id seq, uint32_t n_stream, Fetched& fetched);

// A copy of sequence `seq` as a one-stream llama.cpp state, checked by kvstash's reader.
struct SeqState {
  std::unique_ptr<LargeBuffer> buffer;
  const uint8_t* data = nullptr;  // the one-stream state inside buffer
  size_t size = 0;
  format::KvLayout layout;  // its first KV part (none for kRecurrent)
  format::SeqLayout seq;    // all of it
};
// `kind` and `n_swa` say what memory the context has.
Status GetSeqState(llama_context* ctx, llama_seq_id seq, uint32_t n_stream, SeqState* out,
                   format::MemoryKind kind = format::MemoryKind::kKv, uint32_t n_swa = 0);

// What a chunk carries beyond its main KV cells, captured while its tokens were decoded
// (BoundaryPart): chunk index (1-based) -> the window cells (kIswa) or the snapshot (kRecurrent,
// kHybrid, only at indexes that keep one).
using BoundaryParts = std::map<uint32_t, std::vector<uint8_t>>;

// Captures what chunk `index` of `chain` needs from `snapshot`, llama.cpp's partial state right
// after the chunk's last token, into `parts`; nothing for kKv or an index without a snapshot.
Status BoundaryPart(const Chain& chain, uint32_t index, const std::vector<uint8_t>& snapshot,
                    BoundaryParts* parts);

// A tail to publish with the chunks: tokens [j*C, end) of the sequence, j = end / C, end % C > 0.
struct TailToPublish {
  size_t end = 0;
  bool replace_bad = false;  // a refused file has its name
};

// Queues chunks first_new+1..k (1-based) of `chain` for the store's writer, cut from `state`
// (which holds at least those tokens), whose tokens are `tokens`, with their `parts` (every kind
// but kKv; publishing stops before the first chunk whose part is missing), then the `tails`
// (chain.hashes must reach each one's parent). `bad`: the index of a chunk that exists but was
// refused, which the write replaces. Returns the tokens queued; failures are the store's warnings,
// never the caller's.
size_t PublishChunks(Store& store, const Chain& chain, const std::vector<Token>& tokens,
                     const SeqState& state, size_t first_new, long bad,
                     const BoundaryParts* parts = nullptr,
                     const std::vector<TailToPublish>& tails = {});

}  // namespace kvstash::engine

#endif  // KVSTASH_ENGINE_STORE_CHAIN_H_
