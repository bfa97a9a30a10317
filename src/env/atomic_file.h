// Replacing a file so that readers and crashes only ever see the old or the new bytes.
#ifndef KVSTASH_ENV_ATOMIC_FILE_H_
#define KVSTASH_ENV_ATOMIC_FILE_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "env/env.h"

namespace kvstash {

struct AtomicWriteOptions {
  bool sync = true;  // fsync the data and the directory; off only for benchmarks
  // Called after each chunk written, with bytes done and in all. Empty: none.
  std::function<void(uint64_t done, uint64_t total)> progress;
  // Checked before the write, between chunks and before the rename; when true the write stops
  // with kCancelled and `path` keeps its previous bytes. May be set from a signal handler.
  const std::atomic<bool>* cancel = nullptr;
  // Non-empty: an existing destination must start with these bytes (it is a file of our kind),
  // unless replace_any.
  std::string_view required_magic;
  bool replace_any = false;
  // Files that are never replaced, whatever their name: the destination is refused when it is the
  // same file (device and inode) as one of them, e.g. the model it was computed from.
  std::vector<std::string> protected_paths;
  // How errors call the protected files, e.g. "the model file".
  std::vector<std::string> protected_names;
};

// Refuses a destination AtomicWriteFile would refuse (not a regular file, a protected file, an
// existing file without the magic), without writing anything: for callers that want to fail
// before long work. Follows symbolic links as AtomicWriteFile does.
Status CheckDestination(Env* env, const std::string& path, const AtomicWriteOptions& options);

// Writes the concatenation of `parts` to `path`:
//   1. follow symbolic links in the last component (the link stays, its target is replaced);
//      refuse a destination that is not a regular file, CheckDestination's refusals;
//   2. remove temp files beside it whose writer is gone (see RemoveStaleTempFiles);
//   3. write `path`.kvstash-tmp.<pid>.<n>.<nonce> while holding an flock on it; fdatasync, close;
//   4. rename it over `path` and fsync the directory.
// Whatever step before the rename fails, `path` keeps its previous bytes and no temp file
// remains. Only rename() is needed: no hard links, so a save works wherever `mv` does.
//
// A failed directory fsync (after the rename) is reported, but `path` then already holds the
// new, complete and synced bytes: the old bytes are gone and cannot be put back. A crash before
// the directory reaches the disk may show the old file again; never a mix of the two.
Status AtomicWriteFile(Env* env, const std::string& path,
                       const std::vector<std::string_view>& parts,
                       const AtomicWriteOptions& options = {});

// Removes `<base>.kvstash-tmp.*` (and `.kvstash-old.*`, left by older versions) files in `dir`
// whose writer is gone: a writer holds an flock on its temp file until it is renamed, so a file
// that can be locked without waiting has no writer. PIDs are not used: a writer in another PID
// namespace or on another host sharing the directory is alive whatever its PID says here.
// Returns how many were removed.
int RemoveStaleTempFiles(Env* env, const std::string& dir, const std::string& base);

// Creates a file under a fresh name from `next_name` (O_EXCL) and takes its flock, so that no
// cleaner removes it while it is written. A cleaner in another process may remove the new name in
// the instant before it is locked (it looked unowned); then another name is tried, and after 8
// `exhausted` is returned. Sets *path and *file; errors name `name_in_errors` (default: *path).
Result<std::unique_ptr<FileLock>> CreateLockedFile(Env* env,
                                                   const std::function<std::string()>& next_name,
                                                   const std::string& name_in_errors,
                                                   const Status& exhausted, std::string* path,
                                                   std::unique_ptr<WritableFile>* file);

}  // namespace kvstash

#endif  // KVSTASH_ENV_ATOMIC_FILE_H_
