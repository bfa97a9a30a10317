#include "store/gc.h"

#include <algorithm>

namespace kvstash::store {

uint64_t SweepTempFiles(Env* env, const StorePaths& paths) {
  // A tmp/ that is a symbolic link is not swept: its *.tmp files may be anyone's.
  if (!RealSubdir(env, paths.Temp()).ok()) return 0;
  auto names = env->ListDir(paths.Temp());
  if (!names.ok()) return 0;
  uint64_t removed = 0;
  const std::string suffix = kTempSuffix;
  for (const std::string& name : *names) {
    if (name.size() <= suffix.size() ||
        name.compare(name.size() - suffix.size(), suffix.size(), suffix) != 0) {
      continue;  // not ours: left alone
    }
    const std::string path = paths.Temp() + "/" + name;
    // Busy: its writer is alive. Not found: published and unlinked meanwhile. LockFile also
    // refuses when the name now names another file than the one locked, so the unlink below
    // always removes the file whose lock we hold.
    auto lock = env->LockFile(path, /*wait=*/false);
    if (!lock.ok()) continue;
    if (env->RemoveFile(path).ok()) ++removed;
  }
  return removed;
}

Result<std::unique_ptr<FileLock>> LockGc(Env* env, const StorePaths& paths, bool wait) {
  for (int attempt = 0; attempt < 2; ++attempt) {
    auto lock = env->LockFile(paths.GcLock(), wait);
    if (lock.ok() || lock.status().code() != Status::Code::kNotFound) return lock;
    // Missing (a store made by hand, or someone removed it): make it; EEXIST from a racing
    // creator is fine, the next LockFile takes whichever file holds the name.
    auto created = env->NewWritableFile(paths.GcLock());
    if (created.ok()) (void)(*created)->Close();
  }
  return Status::IOError("cannot lock '" + paths.GcLock() +
                         "': it keeps disappearing; is another program cleaning the store?");
}

namespace {

// Removes chunks, oldest first and leaf first among equals, until the total is at most max_bytes.
void Evict(Env* env, std::vector<ChunkEntry>* chunks, uint64_t max_bytes, GcReport* report) {
  uint64_t total = 0;
  for (const ChunkEntry& c : *chunks) total += c.info.size;
  const uint64_t listed = total;
  std::sort(chunks->begin(), chunks->end(), [](const ChunkEntry& a, const ChunkEntry& b) {
    if (a.info.mtime_ns != b.info.mtime_ns) return a.info.mtime_ns < b.info.mtime_ns;
    return a.index > b.index;  // same time: the leaf first
  });
  for (const ChunkEntry& c : *chunks) {
    if (total <= max_bytes) break;
    Status removed = env->RemoveFile(c.path);
    // A failure (read-only, or gone already) still leaves the loop going: other chunks may go.
    if (removed.ok()) {
      ++report->chunks_removed;
      report->bytes_removed += c.info.size;
    }
    total -= c.info.size;  // gone or not removable: either way, try the next one
  }
  report->bytes_left = listed - report->bytes_removed;
}

}  // namespace

Result<GcReport> CollectGarbage(Env* env, const StorePaths& paths, uint64_t max_bytes, bool wait,
                                bool* skipped) {
  if (skipped != nullptr) *skipped = false;
  auto lock = LockGc(env, paths, wait);
  if (!lock.ok()) {
    if (!wait && skipped != nullptr) {
      *skipped = true;
      return GcReport{};
    }
    return lock.status();
  }
  GcReport report;
  report.temp_files_removed = SweepTempFiles(env, paths);
  auto entries = ListChunkEntries(env, paths);
  if (!entries.ok()) return entries.status();
  // Only well-named regular chunk files count and go; anything else is left for a person
  // (Verify reports it).
  std::vector<ChunkEntry> chunks;
  for (ChunkEntry& e : *entries) {
    if (e.bad.empty()) chunks.push_back(std::move(e));
  }
  Evict(env, &chunks, max_bytes, &report);
  return report;
}

}  // namespace kvstash::store
