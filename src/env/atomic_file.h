// Replacing a file so that readers and crashes only ever see the old or the new bytes.
#ifndef KVSTASH_ENV_ATOMIC_FILE_H_
#define KVSTASH_ENV_ATOMIC_FILE_H_

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
};

// Writes the concatenation of `parts` to `path`:
//   1. remove stale temp files a crashed writer left beside `path`;
//   2. write `path`.kvstash-tmp.<pid>.<n>, fdatasync, close;
//   3. keep the old file reachable as `path`.kvstash-old.<pid>.<n> (hard link);
//   4. rename the temp file over `path`, fsync the directory;
//   5. if that fsync fails, rename the old file back (the caller sees the error and the old
//      bytes), else drop the old name on a background thread (Env::RemoveFileInBackground).
// Whatever step fails, `path` keeps its previous bytes and no temp file remains.
Status AtomicWriteFile(Env* env, const std::string& path,
                       const std::vector<std::string_view>& parts,
                       const AtomicWriteOptions& options = {});

// Removes `<base>.kvstash-tmp.<pid>.*` / `.kvstash-old.<pid>.*` files in `dir` whose writer
// process is gone. Returns how many were removed.
int RemoveStaleTempFiles(Env* env, const std::string& dir, const std::string& base);

}  // namespace kvstash

#endif  // KVSTASH_ENV_ATOMIC_FILE_H_
