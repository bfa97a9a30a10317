// Eviction and the sweeping of dead writers' temp files (docs/STORE.md, "Eviction", "Temp files").
#ifndef KVSTASH_STORE_GC_H_
#define KVSTASH_STORE_GC_H_

#include <cstdint>

#include "env/env.h"
#include "kvstash/store.h"
#include "store/store_files.h"

namespace kvstash::store {

// Removes the temp files in tmp/ that no writer holds: a writer keeps an flock on its temp file
// from creation until the file is linked into place and unlinked, so a temp file that can be
// locked without waiting belongs to nobody (a dead process, in any PID namespace or host). Never
// guesses from PIDs. Returns how many were removed.
uint64_t SweepTempFiles(Env* env, const StorePaths& paths);

// Sweeps tmp/, then removes chunks, least recently used first and leaf first (by mtime ascending,
// then index descending: a parent is never older than its children, see ChunkWriter), until the
// chunk files take at most `max_bytes`. One collector at a time: takes the flock on gc.lock,
// waiting for it when `wait`; otherwise a busy lock sets *skipped and does nothing.
Result<GcReport> CollectGarbage(Env* env, const StorePaths& paths, uint64_t max_bytes, bool wait,
                                bool* skipped = nullptr);

// Takes the collector's lock (creating gc.lock when missing).
Result<std::unique_ptr<FileLock>> LockGc(Env* env, const StorePaths& paths, bool wait);

}  // namespace kvstash::store

#endif  // KVSTASH_STORE_GC_H_
