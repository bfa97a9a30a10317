// The store's side of Session::Sync(tokens, store): finding and loading a verified prefix of
// chunks, and queueing new ones. The engine (src/engine/store_sync.cc) computes the namespace and
// the chain hashes, cuts the KV and restores it; this side knows files, not llama.cpp.
#ifndef KVSTASH_STORE_STORE_IMPL_H_
#define KVSTASH_STORE_STORE_IMPL_H_

#include <memory>
#include <string>
#include <vector>

#include "env/env.h"
#include "format/chunk_format.h"
#include "kvstash/store.h"

namespace kvstash {

// One chunk (or tail: header.tail) to publish. `kv` holds layout.KvBytes(tokens.size()) bytes.
struct ChunkWrite {
  format::ChunkHeader header;  // hash, parent, ns, index, n_tokens, layout (tail, chunk_tokens)
  std::vector<int32_t> tokens;
  std::string kv;
  // The lookup found a bad file under this name: replace it instead of keeping the first
  // writer's (which would make the chunk a miss forever).
  bool replace_bad = false;
};

// The chunks h_1..h_k that LoadPrefix accepted, held stable (env/env.h StableFile) so the bytes
// verified are the bytes restored.
struct LoadedPrefix {
  std::vector<std::unique_ptr<StableFile>> files;
  std::vector<format::ChunkView> chunks;  // chunks[j] is h_{j+1}, its kv points into files[j]
  // Chunks after the files' come from the Redis tier: their bytes, which chunks[files.size()..]
  // point into.
  std::vector<std::unique_ptr<std::string>> remote;
  // Index (0-based into the chain) of the first chunk that exists but was refused (corrupt,
  // misnamed, wrong tokens or parent, another layout), or -1. Its publish must replace it.
  long first_bad = -1;
  std::string first_bad_reason;
  // The mtime the accepted chunks were given (a tail found after them gets the same).
  int64_t touched_ns = 0;
  // True when every file was still intact after use (StableFile::Intact); check after restoring.
  bool Intact() const;
};

// The tail LoadTail chose, held stable like LoadedPrefix's chunks.
struct LoadedTail {
  std::unique_ptr<StableFile> file;  // null: no tail
  format::ChunkView view;            // a tail's header; kv points into file
  uint32_t usable = 0;               // its first `usable` tokens are the request's
  // The path of a tail that exists but was refused (its publish must replace it), or "".
  std::string refused;
};

struct Store::Impl {
  // Loads the longest run h_1..h_k (k <= max_chunks, k <= chain.size()) of existing chunks of
  // namespace `ns` whose every check passes against the request:
  //   - the file is a regular file of the expected size, its header and payload checksums hold;
  //   - its hash, parent (chain[j-1], or ns for the first), namespace and index are the
  //     request's; its tokens are tokens[j*C, (j+1)*C);
  //   - its layout equals `layout` (the live context's).
  // Stops at the first chunk that is missing or refused; never fails the caller for a bad chunk
  // (a refusal is a miss, recorded in first_bad). Touches the accepted chunks' mtimes with one
  // time (use for LRU). I/O errors other than a missing file are misses too.
  virtual LoadedPrefix LoadPrefix(const format::Hash256& ns,
                                  const std::vector<format::Hash256>& chain, const int32_t* tokens,
                                  size_t max_chunks, const format::ChunkLayout& layout) = 0;

  // The stored tail of namespace `ns` after whole chunk `j` (parent h_j: `parent`, ns for j = 0)
  // that shares the most of `rest` (the request's n_rest tokens from position j*C on), or none.
  // Candidates are the parent's tails, newest first, at most 64; each is checked like a chunk
  // (header and name, parent, index, namespace, the store's C, `layout`, the tail hash of its
  // tokens), the winner's payload checksum too. A refusal is a miss. The winner gets mtime
  // `touched_ns` (the chunks' own, so eviction takes the tail before its parent; 0: untouched).
  virtual LoadedTail LoadTail(const format::Hash256& ns, const format::Hash256& parent, uint32_t j,
                              const int32_t* rest, size_t n_rest, const format::ChunkLayout& layout,
                              int64_t touched_ns) = 0;
  // Whether the tail file `path` exists (the writer would skip it).
  virtual bool HasFile(const std::string& path) = 0;
  // Where tail `tail` (hash) of `n_tokens` tokens after whole chunk j (parent h_j) is kept.
  virtual std::string TailPath(const format::Hash256& parent, uint32_t j, uint32_t n_tokens,
                               const format::Hash256& tail) const = 0;

  // Queues `writes` (chunks of one chain, in order, then its tails) for the background writer,
  // after recording the namespace's description `ns_text` once. When written, the chain
  // h_1..h_{touch_upto} (hashes in `chain`) gets one mtime, so that a parent is never older than
  // its children; then the store is evicted down to its budget. Returns how many chunks were queued
  // (the rest were dropped: queue over max_pending_bytes, or the store is read-only).
  virtual size_t Publish(const format::Hash256& ns, const std::string& ns_text,
                         std::vector<ChunkWrite> writes,
                         const std::vector<format::Hash256>& chain) = 0;

  // Reports a problem that costs caching but not the answer, on StoreOptions::warn (once per
  // kind of problem and Store).
  virtual void Warn(const std::string& message) = 0;

  virtual ~Impl() = default;
};

// The engine's access to a store's parts (Store's one friend).
struct StoreInternals {
  using Impl = Store::Impl;
  static Impl* Get(const Store& store) { return store.impl_.get(); }
  // Store::Open on `env` (tests inject faults through it).
  static Result<std::shared_ptr<Store>> Open(const std::string& dir, const StoreOptions& options,
                                             Env* env);
};
using StoreImpl = StoreInternals::Impl;
inline StoreImpl* ImplOf(const Store& store) { return StoreInternals::Get(store); }

}  // namespace kvstash

#endif  // KVSTASH_STORE_STORE_IMPL_H_
