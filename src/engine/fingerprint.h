// Model fingerprints (see ModelFingerprint in include/kvstash/model.h and docs/FORMAT.md).
#ifndef KVSTASH_ENGINE_FINGERPRINT_H_
#define KVSTASH_ENGINE_FINGERPRINT_H_

#include <cstddef>
#include <cstdint>
#include <string>

#include "kvstash/model.h"
#include "kvstash/status.h"

namespace kvstash::engine {

// What identifies one version of a file on this machine. An edit in place changes mtime and
// ctime (ctime cannot be set back by the user); a replacement changes the inode.
struct FileIdentity {
  uint64_t dev = 0;
  uint64_t ino = 0;
  uint64_t size = 0;
  int64_t mtime_ns = 0;
  int64_t ctime_ns = 0;
  bool operator==(const FileIdentity& o) const {
    return dev == o.dev && ino == o.ino && size == o.size && mtime_ns == o.mtime_ns &&
           ctime_ns == o.ctime_ns;
  }
  bool operator!=(const FileIdentity& o) const { return !(*this == o); }
};

// A model file opened once: the fingerprint is computed through this descriptor, so it is the
// fingerprint of the file llama.cpp loaded as long as CheckPathUnchanged() passes after the load.
// (The syscalls live here rather than in src/env because they are specific to model files.)
class ModelFile {
 public:
  // NotFound / InvalidArgument (not a regular file) / IOError, naming the path and the fix.
  static Result<std::unique_ptr<ModelFile>> Open(const std::string& path);
  ~ModelFile();
  ModelFile(const ModelFile&) = delete;
  ModelFile& operator=(const ModelFile&) = delete;

  const std::string& path() const { return path_; }
  const FileIdentity& identity() const { return identity_; }
  int fd() const { return fd_; }
  // IOError when `path` no longer names this version of the file (replaced or edited since Open).
  Status CheckPathUnchanged() const;
  // IOError when the open file itself changed since Open (edited in place).
  Status CheckFdUnchanged() const;

 private:
  ModelFile(std::string path, int fd, FileIdentity identity)
      : path_(std::move(path)), fd_(fd), identity_(identity) {}
  std::string path_;
  int fd_;
  FileIdentity identity_;
};

// Facts read from the GGUF tensor table.
struct GgufFacts {
  bool has_rope_factors = false;  // rope_factors_long / rope_factors_short (LongRoPE)
  bool has_rope_freqs = false;    // rope_freqs: fixed factors, which take precedence
};

struct FingerprintResult {
  ModelFingerprint fingerprint;
  GgufFacts facts;
  bool from_cache = false;
};

// xxh3-128 of every byte of the file (16 MiB blocks hashed in parallel, then the block hashes),
// so any changed byte of metadata or tensor data changes it; a copy elsewhere has the same one.
// `cache_dir` (empty: no cache) keeps one entry per (dev, ino) that is reused only while size,
// mtime_ns and ctime_ns match; writes are atomic and a damaged entry is ignored and replaced.
Result<FingerprintResult> FingerprintModelFile(const ModelFile& file, const std::string& cache_dir);

// The same fingerprint for a path, without a cache.
Result<ModelFingerprint> FingerprintGguf(const std::string& path);

// $XDG_CACHE_HOME/kvstash/fingerprints, else $HOME/.cache/kvstash/fingerprints, else "".
std::string DefaultFingerprintCacheDir();

}  // namespace kvstash::engine

#endif  // KVSTASH_ENGINE_FINGERPRINT_H_
