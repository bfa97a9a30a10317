// The background writer of one Store: publishes queued chunks (temp file + fdatasync + link, first
// writer wins), records namespace descriptions, keeps parents at least as new as their children,
// and evicts down to the budget afterwards (docs/STORE.md, "Publishing").
#ifndef KVSTASH_STORE_CHUNK_WRITER_H_
#define KVSTASH_STORE_CHUNK_WRITER_H_

#include <atomic>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "store/store_files.h"
#include "store/store_impl.h"

namespace kvstash::store {

struct PublishItem {
  format::Hash256 ns{};
  std::string ns_text;
  std::vector<ChunkWrite> writes;
  std::vector<format::Hash256> touch;  // h_1..h_k: one mtime after the writes
  uint64_t bytes = 0;                  // counted against max_pending_bytes
};

class ChunkWriter {
 public:
  struct Options {
    Env* env = nullptr;
    StorePaths paths;
    uint32_t chunk_tokens = 0;
    bool sync = true;
    uint64_t max_pending_bytes = 0;
    uint64_t max_bytes = 0;  // 0: no eviction after publishing
    WarnOnce* warn = nullptr;
  };
  explicit ChunkWriter(Options options);
  // Drains the queue, then joins the thread.
  ~ChunkWriter();
  ChunkWriter(const ChunkWriter&) = delete;
  ChunkWriter& operator=(const ChunkWriter&) = delete;

  // Queues the longest prefix of item.writes that fits under max_pending_bytes (a prefix, so that
  // nothing is published without its parents) and returns its length; the rest are dropped.
  size_t Enqueue(PublishItem item);
  void WaitIdle();
  WriterStats stats() const;
  // Set once a write failed because the store cannot be written (EROFS, EACCES): later
  // publishes are dropped at once.
  bool read_only() const { return read_only_.load(); }
  void set_read_only(const std::string& kind);

 private:
  void Run();
  void Process(PublishItem& item);
  // Publishes one chunk; *existed: another writer had published it first.
  Status WriteChunk(const ChunkWrite& write, bool* existed);
  void WriteNamespace(const format::Hash256& ns, const std::string& text);
  void Failed(const Status& status);

  const Options options_;
  mutable std::mutex mu_;
  std::condition_variable work_cv_, idle_cv_;
  std::deque<PublishItem> queue_;
  uint64_t pending_bytes_ = 0;
  bool busy_ = false;
  bool stopping_ = false;
  std::thread thread_;
  WriterStats stats_;
  std::atomic<bool> read_only_{false};
  std::mutex kind_mu_;
  std::string read_only_kind_;                    // the warning's kind, e.g. "read-only"
  std::set<format::Hash256> namespaces_written_;  // writer thread only
  // Eviction after publishing (writer thread only). Listing and stat'ing every chunk costs time
  // proportional to the store, so it runs only when the store may be over budget: when this
  // estimate (the bytes left by the last collection plus what this writer wrote since) exceeds
  // it, or when kRecheckNs passed since the last listing (other processes write too).
  bool MayBeOverBudget(int64_t now_ns) const;
  uint64_t estimated_bytes_ = 0;
  uint64_t bytes_counted_ = 0;  // stats_.bytes_written already in estimated_bytes_
  int64_t listed_at_ns_ = 0;    // 0: never listed
};

}  // namespace kvstash::store

#endif  // KVSTASH_STORE_CHUNK_WRITER_H_
