#include "store/chunk_writer.h"

#include <algorithm>

#include "store/gc.h"

namespace kvstash::store {

ChunkWriter::ChunkWriter(Options options) : options_(std::move(options)) {}

ChunkWriter::~ChunkWriter() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  work_cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

size_t ChunkWriter::Enqueue(PublishItem item) {
  const bool read_only_now = read_only();
  if (read_only_now && !item.writes.empty() && options_.warn != nullptr) {
    std::lock_guard<std::mutex> kind_lock(kind_mu_);
    options_.warn->Warn(read_only_kind_, "");  // said once, by whoever found out first
  }
  std::lock_guard<std::mutex> lock(mu_);
  size_t fit = 0;
  uint64_t bytes = 0;
  if (!read_only_now) {
    for (const ChunkWrite& w : item.writes) {
      const uint64_t b = format::kChunkHeaderSize + w.tokens.size() * 4 + w.kv.size();
      if (pending_bytes_ + bytes + b > options_.max_pending_bytes) break;
      bytes += b;
      ++fit;
    }
  }
  stats_.chunks_dropped += item.writes.size() - fit;
  item.writes.resize(fit);
  // Nothing to write and nothing to touch: nothing to queue. (A touch alone, e.g. of a prefix
  // that was all loaded, still runs so that the LRU order holds.)
  if (read_only_now || (item.writes.empty() && item.touch.empty())) return fit;
  item.bytes = bytes;
  pending_bytes_ += bytes;
  queue_.push_back(std::move(item));
  if (!thread_.joinable()) thread_ = std::thread([this] { Run(); });
  work_cv_.notify_all();
  return fit;
}

void ChunkWriter::WaitIdle() {
  std::unique_lock<std::mutex> lock(mu_);
  idle_cv_.wait(lock, [this] { return queue_.empty() && !busy_; });
}

WriterStats ChunkWriter::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

void ChunkWriter::Run() {
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    work_cv_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
    if (queue_.empty()) return;  // stopping, and drained
    PublishItem item = std::move(queue_.front());
    queue_.pop_front();
    busy_ = true;
    lock.unlock();
    Process(item);
    lock.lock();
    pending_bytes_ -= item.bytes;
    busy_ = false;
    if (queue_.empty()) idle_cv_.notify_all();
  }
}

void ChunkWriter::Failed(const Status& status) {
  if (IsReadOnlyFailure(status)) set_read_only(FailureKind(status));
  if (options_.warn != nullptr) options_.warn->Warn(FailureKind(status), status.message());
}

void ChunkWriter::set_read_only(const std::string& kind) {
  std::lock_guard<std::mutex> lock(kind_mu_);
  read_only_kind_ = kind;
  read_only_.store(true);
}

void ChunkWriter::Process(PublishItem& item) {
  if (!item.writes.empty()) WriteNamespace(item.ns, item.ns_text);
  // The highest index that is now in the store (written here or by another writer).
  uint32_t stored_upto = 0;
  for (size_t i = 0; i < item.writes.size(); ++i) {
    if (read_only()) {  // found out on an earlier write, and warned then
      std::lock_guard<std::mutex> lock(mu_);
      stats_.chunks_dropped += item.writes.size() - i;
      break;
    }
    bool existed = false;
    Status status = WriteChunk(item.writes[i], &existed);
    if (!status.ok()) Failed(status);
    std::lock_guard<std::mutex> lock(mu_);
    if (!status.ok()) {
      // The rest would have no parent in the store: unreachable, so not worth the disk.
      stats_.chunks_dropped += item.writes.size() - i;
      break;
    }
    // A tail (index j + 1) needs its parent h_j touched: the chain up to j.
    const format::ChunkHeader& h = item.writes[i].header;
    stored_upto = std::max(stored_upto, h.tail ? h.index - 1 : h.index);
    if (existed) {
      ++stats_.chunks_existing;
    } else {
      ++stats_.chunks_written;
      stats_.bytes_written +=
          format::kChunkHeaderSize + item.writes[i].tokens.size() * 4 + item.writes[i].kv.size();
    }
  }
  // One time for the whole chain, parents included, after the chunks and tails were written: a
  // parent is then never older than a child, and eviction (oldest first, leaf first on ties) never
  // strands a chunk or a tail behind a missing parent.
  size_t touch = item.touch.size();
  if (!item.writes.empty()) touch = std::min<size_t>(touch, stored_upto);
  const int64_t now = NowNs();
  for (size_t j = 0; j < touch && !read_only(); ++j) {
    (void)options_.env->SetMtime(options_.paths.ChunkPath(item.touch[j], uint32_t(j + 1)), now);
  }
  if (options_.max_bytes != 0 && !read_only()) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      estimated_bytes_ += stats_.bytes_written - bytes_counted_;
      bytes_counted_ = stats_.bytes_written;
    }
    if (MayBeOverBudget(now)) {
      // Another process's collector at work: it does the same job, so skip rather than wait.
      bool skipped = false;
      auto report = CollectGarbage(options_.env, options_.paths, options_.max_bytes,
                                   /*wait=*/false, &skipped);
      if (report.ok() && !skipped) {
        estimated_bytes_ = report->bytes_left;
        listed_at_ns_ = now;
      }
    }
  }
}

bool ChunkWriter::MayBeOverBudget(int64_t now_ns) const {
  // Other processes' chunks are seen only by listing; a few seconds over budget is allowed.
  constexpr int64_t kRecheckNs = int64_t{10} * 1000 * 1000 * 1000;
  return listed_at_ns_ == 0 || estimated_bytes_ > options_.max_bytes ||
         now_ns - listed_at_ns_ > kRecheckNs;
}

Status ChunkWriter::WriteChunk(const ChunkWrite& write, bool* existed) {
  const format::ChunkHeader& h = write.header;
  const uint32_t c = options_.chunk_tokens;
  const bool sized = h.tail ? h.n_tokens > 0 && h.n_tokens < c && h.chunk_tokens == c &&
                                  h.layout.kind == format::MemoryKind::kKv
                            : h.n_tokens == c;
  if (!sized || write.tokens.size() != h.n_tokens || h.index == 0 ||
      write.kv.size() != h.layout.ChunkKvBytes(h.n_tokens, h.index)) {
    return Status::InvalidArgument(std::string(h.tail ? "tail " : "chunk ") +
                                   std::to_string(h.index) + " of " + format::HashHex(h.hash) +
                                   " does not match the store's chunk size " + std::to_string(c) +
                                   " or its layout; not saved (a bug in the caller)");
  }
  // Chunks the caller could not know to be stored (another process published them since its
  // lookup, or the lookup stopped early) are common: skip them before paying for a checksum and a
  // write. A bad file under the name is replaced (replace_bad), never kept.
  const std::string path = h.tail
                               ? options_.paths.TailPath(h.parent, h.index - 1, h.n_tokens, h.hash)
                               : options_.paths.ChunkPath(h.hash, h.index);
  if (!write.replace_bad && options_.env->LinkStat(path).ok()) {
    *existed = true;
    return Status::Ok();
  }
  KVSTASH_RETURN_IF_ERROR(options_.env->CreateDir(h.tail ? options_.paths.TailDir(h.parent)
                                                         : options_.paths.ChunkDir(h.hash)));
  const std::string head = format::EncodeChunkHead(
      h, write.tokens.data(), reinterpret_cast<const uint8_t*>(write.kv.data()), write.kv.size());
  return PublishFile(options_.env, options_.paths, {head, write.kv}, path, write.replace_bad,
                     options_.sync, existed);
}

void ChunkWriter::WriteNamespace(const format::Hash256& ns, const std::string& text) {
  if (namespaces_written_.count(ns) != 0 || read_only()) return;
  const std::string path = options_.paths.NamespacePath(ns);
  bool existed = false;
  if (options_.env->LinkStat(path).ok()) {
    existed = true;
  } else {
    Status status = options_.env->CreateDir(options_.paths.Namespaces());
    if (status.ok()) {
      status = PublishFile(options_.env, options_.paths, {text}, path, /*replace=*/false,
                           options_.sync, &existed);
    }
    // A description is for people (Stats); failing to record it must not cost the chunks, but a
    // read-only or full disk is worth the one warning.
    if (!status.ok()) {
      Failed(status);
      return;
    }
  }
  namespaces_written_.insert(ns);
}

}  // namespace kvstash::store
