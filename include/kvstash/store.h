// Store: a directory that holds the KV cache of many prompts, shared by every process that opens
// it, deduplicated by prefix, bounded in bytes (docs/STORE.md).
//
// A prompt's KV is kept in chunks of C tokens (full chunks only), each named by a chained
// SHA-256 over the namespace (model, cache types, RoPE, ...) and every token up to its end, so
// that two prompts sharing a prefix share its chunks. Session::Sync(tokens, store) restores the
// longest stored prefix, decodes the rest and publishes the new chunks in the background.
//
// Readers take no lock; writers publish with temp file + fsync + link (first writer wins); one
// garbage collector at a time (flock). A full disk or a read-only directory never fails a Sync:
// the write is dropped with one warning.
//
// Threading: a Store may be shared by any number of Sessions and threads.
#ifndef KVSTASH_STORE_H_
#define KVSTASH_STORE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "kvstash/status.h"

namespace kvstash {

struct StoreOptions {
  // Tokens per chunk for a new store (0: 256; 16..16384, a multiple of 16). An existing store
  // keeps its own; a different non-zero value is refused (kInvalidArgument).
  uint32_t chunk_tokens = 0;
  // The byte budget of the chunks: after publishing, the writer evicts (least recently used,
  // leaf first) down to it. 0: no budget.
  uint64_t max_bytes = 0;
  // Bytes of chunks waiting for the background writer (and, with Redis, as many for its publisher);
  // a publish that would exceed it is dropped (counted in WriterStats, RedisStats), so a slow disk
  // or network never blocks an answer.
  uint64_t max_pending_bytes = uint64_t{1} << 30;
  // Create the directory (and its parents) when missing.
  bool create = true;
  // fsync chunk files before publishing them. Off only for benchmarks.
  bool sync = true;
  // Where the one-line warnings go (e.g. "disk full: chunks are not being saved"); each kind is
  // reported once per Store. Empty: standard error.
  std::function<void(const std::string&)> warn;
  // A second tier shared by several machines: redis://[user:password@]host:port[/db] (empty:
  // none). Lookups that the directory cannot serve ask Redis for the next chunks; new chunks are
  // published there in the background; Redis being down or full never fails a Sync (README,
  // "Several machines"; docs/STORE.md, "The Redis tier"). The password is never printed.
  std::string redis_url;
  int redis_connect_timeout_ms = 1000;
  int redis_command_timeout_ms = 3000;
};

// Counters of the Redis tier (Store::redis_stats), for /metrics and `cache stats`.
struct RedisStats {
  bool configured = false;
  bool available = false;   // no outage now
  uint64_t lookups = 0;     // lookups that asked Redis
  uint64_t hits = 0;        // chunks restored from Redis
  uint64_t misses = 0;      // lookups that found fewer chunks than they asked for
  uint64_t bad_values = 0;  // values refused by the chunk checks (each a miss)
  uint64_t errors = 0;      // failed commands: connection, timeout, error replies (OOM, ...)
  uint64_t outages = 0;     // times Redis became unavailable
  uint64_t bytes_read = 0;
  uint64_t chunks_published = 0;
  uint64_t chunks_existing = 0;  // another machine had published the chunk first
  uint64_t publish_dropped = 0;  // queue full, Redis down or refusing writes
  uint64_t bytes_written = 0;
  double fetch_ms = 0;  // time in lookups' EXISTS and GET rounds (the network and Redis)
  double check_ms = 0;  // time checking fetched values (checksums, chain, tokens, layout)
};

struct NamespaceStats {
  std::string hash;         // h_0 in hex
  std::string description;  // what the namespace stands for (model, cache types), if recorded
  std::string summary;      // the description in one line: model, cache types, flash attention
  uint64_t chunks = 0;
  uint64_t bytes = 0;
};

struct StoreStats {
  uint32_t chunk_tokens = 0;
  uint64_t chunks = 0;
  uint64_t bytes = 0;  // chunk files
  // Tails: the tokens of a prompt after its last whole chunk (docs/STORE.md, "Tails"), which let a
  // lookup continue to the exact token. Not in `chunks`, `bytes` or `namespaces`.
  uint64_t tails = 0;
  uint64_t tail_bytes = 0;
  uint64_t temp_files = 0;
  std::vector<NamespaceStats> namespaces;
};

struct ChunkInfo {
  std::string path;
  std::string hash;    // h_i in hex
  std::string ns;      // h_0 in hex ("" when the header cannot be read)
  uint32_t index = 0;  // 1-based position in its chain
  uint64_t bytes = 0;
  int64_t last_use_ns = 0;  // mtime
};

struct GcReport {
  uint64_t chunks_removed = 0;
  uint64_t bytes_removed = 0;
  uint64_t bytes_left = 0;
  uint64_t temp_files_removed = 0;
};

struct VerifyReport {
  uint64_t chunks_ok = 0;  // tails included
  // "path: why" for each chunk that would not be loaded (corrupt, truncated, misnamed, not a
  // regular file, ...).
  std::vector<std::string> bad;
};

// Counters of this Store object's background writer.
struct WriterStats {
  uint64_t chunks_written = 0;
  uint64_t chunks_existing = 0;  // another writer had published the same chunk first
  uint64_t chunks_dropped = 0;   // queue full, disk full, read-only, ...
  uint64_t bytes_written = 0;
};

class Store : public std::enable_shared_from_this<Store> {
 public:
  static Result<std::shared_ptr<Store>> Open(const std::string& dir,
                                             const StoreOptions& options = {});
  // Waits for queued writes.
  ~Store();
  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;

  const std::string& dir() const;
  uint32_t chunk_tokens() const;

  Result<StoreStats> Stats() const;
  // The chunk files (not the tails), by path.
  Result<std::vector<ChunkInfo>> List() const;
  // Removes temp files of dead writers, then the least recently used chunks (leaf first) until
  // the chunks take at most max_bytes. Waits for a garbage collector in another process.
  Result<GcReport> Gc(uint64_t max_bytes);
  // Reads and checks every chunk and tail file (header, checksum, name, chained hash).
  Result<VerifyReport> Verify() const;
  // Removes every chunk and tail (of namespace `ns_hash`, when not empty) and returns how many;
  // from the Redis tier too when there is one (UNLINK, counted with the files).
  Result<uint64_t> Clear(const std::string& ns_hash = "");

  // Blocks until every chunk queued so far was written or dropped (to Redis too).
  void WaitForWrites();
  WriterStats writer_stats() const;
  RedisStats redis_stats() const;  // configured == false without a Redis tier

 private:
  struct Impl;
  friend struct StoreInternals;  // src/store/store_impl.h: the engine's side of a store
  explicit Store(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace kvstash

#endif  // KVSTASH_STORE_H_
