// The store directory's names and the small pieces every part of the store shares: chunk paths,
// the parsing of chunk names, temp names, the size bound of a chunk file and one-time warnings.
#ifndef KVSTASH_STORE_STORE_FILES_H_
#define KVSTASH_STORE_STORE_FILES_H_

#include <cstdint>
#include <functional>
#include <mutex>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "env/env.h"
#include "format/chunk_format.h"
#include "kvstash/status.h"

namespace kvstash::store {

inline constexpr const char* kManifestName = "STORE";
inline constexpr const char* kGcLockName = "gc.lock";
inline constexpr const char* kTempSuffix = ".tmp";

// Paths inside one store directory (docs/STORE.md, "Directory layout").
struct StorePaths {
  std::string dir;
  std::string Manifest() const { return dir + "/" + kManifestName; }
  std::string GcLock() const { return dir + "/" + kGcLockName; }
  std::string Chunks() const { return dir + "/chunks"; }
  std::string Namespaces() const { return dir + "/ns"; }
  std::string Temp() const { return dir + "/tmp"; }
  std::string Tails() const { return dir + "/tails"; }
  // chunks/<first 2 hex>
  std::string ChunkDir(const format::Hash256& hash) const;
  // chunks/<hh>/<64 hex>.<index>.kvc
  std::string ChunkPath(const format::Hash256& hash, uint32_t index) const;
  std::string NamespacePath(const format::Hash256& ns) const;
  // tails/<first 2 hex of the parent>: all tails of one parent are in one directory.
  std::string TailDir(const format::Hash256& parent) const;
  // tails/<hh>/<parent hex>.<j>.<T>.<tail hex>.kvt: the T tokens after whole chunk j (parent h_j).
  std::string TailPath(const format::Hash256& parent, uint32_t j, uint32_t n_tokens,
                       const format::Hash256& tail) const;
  // tmp/<pid>.<counter>.<nonce>.tmp: unique across threads, processes and hosts (O_EXCL refuses
  // the rare collision anyway).
  std::string NewTempPath() const;
};

// `text` as a decimal of digits only (no sign, no space) that fits a uint32.
bool ParseDecimal(std::string_view text, uint32_t* value);

// Parses "<64 hex>.<index>.kvc" (index 1..2^32-1, decimal without leading zeros).
bool ParseChunkName(const std::string& name, format::Hash256* hash, uint32_t* index);

// A tail file's name, parsed: "<64 hex>.<j>.<T>.<64 hex>.kvt" (decimals without leading zeros,
// T >= 1).
struct TailName {
  format::Hash256 parent{};
  uint32_t j = 0;  // whole chunks before the tail
  uint32_t n_tokens = 0;
  format::Hash256 hash{};
};
bool ParseTailName(const std::string& name, TailName* out);

// The size of a tail file of `n_tokens` tokens in `layout` (a plain KV cache).
uint64_t TailFileBytes(const format::ChunkLayout& layout, uint32_t n_tokens);

// The size of a chunk file of `chunk_tokens` tokens in `layout`: header, tokens, KV.
uint64_t ChunkFileBytes(const format::ChunkLayout& layout, uint32_t chunk_tokens);

// A file under chunks/ or tails/: what its name and lstat say, before it is opened.
struct ChunkEntry {
  std::string path;
  std::string bad;  // why it is not a chunk (tail) by its name or type ("" when it may be one)
  format::Hash256 hash{};
  uint32_t index = 0;  // a tail's: j + 1 (its positions start at j * C)
  FileInfo info;
  bool tail = false;
  TailName tail_name;  // tails only
};

// Every entry of chunks/*/ and tails/*/ (and anything misplaced directly in them). Never opens a
// file, so FIFOs and devices cannot block it. Entries that vanish while listed are skipped.
// chunks/ and tails/ must be directories, not symbolic links (RealSubdir): else collectors would
// remove files outside the store. A store without tails/ (made by an older kvstash, read-only)
// lists its chunks only.
Result<std::vector<ChunkEntry>> ListChunkEntries(Env* env, const StorePaths& paths);

// Ok when `path` (a store's chunks/, ns/ or tmp/) is a directory itself, not a symbolic link to
// one (lstat): nothing the store lists, writes or removes may lie outside its directory.
Status RealSubdir(Env* env, const std::string& path);

// Which kind of failure a writer's Status stands for, as the warning calls it ("disk full",
// "read-only", ...). Env statuses carry the errno name (ErrnoText).
std::string FailureKind(const Status& status);
bool IsReadOnlyFailure(const Status& status);

// Calls `warn` (or writes to standard error) once per kind.
class WarnOnce {
 public:
  WarnOnce(std::string dir, std::function<void(const std::string&)> warn)
      : dir_(std::move(dir)), warn_(std::move(warn)) {}
  void Warn(const std::string& kind, const std::string& detail);
  // `line` as it is, once.
  void Say(const std::string& line);
  // `line` as it is, every time (the caller decides how often: the Redis tier, once per outage).
  void SayAlways(const std::string& line);

 private:
  bool First(const std::string& key);  // true the first time `key` is seen
  std::string dir_;
  std::function<void(const std::string&)> warn_;
  std::mutex mu_;
  std::set<std::string> said_;
};

// Writes `parts` to a new temp file in tmp/ (flock'ed from creation on; fdatasync'ed when `sync`)
// and gives it the name `dest`: link(2), which never replaces, so the first writer wins and
// *existed tells a later one; or rename(2) over `dest` when `replace`. The temp name is unlinked
// before its lock is released, so a sweeper never removes a file it should not. On failure
// nothing is left behind.
Status PublishFile(Env* env, const StorePaths& paths, const std::vector<std::string_view>& parts,
                   const std::string& dest, bool replace, bool sync, bool* existed);

int64_t NowNs();

}  // namespace kvstash::store

#endif  // KVSTASH_STORE_STORE_FILES_H_
