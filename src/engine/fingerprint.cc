#include "engine/fingerprint.h"

#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <vector>

#include "env/env.h"

namespace kvstash::engine {
namespace {

// Blocks hashed independently (in parallel), read through a small buffer each.
constexpr uint64_t kHashBlock = uint64_t{16} << 20;
constexpr size_t kReadBuffer = size_t{1} << 20;
constexpr int kMaxHashThreads = 8;

// GGUF's value types (ggml/include/gguf.h, enum gguf_type), by their fixed sizes.
size_t ScalarSize(uint32_t type) {
  switch (type) {
    case 0:
    case 1:
    case 7:
      return 1;  // u8, i8, bool
    case 2:
    case 3:
      return 2;  // u16, i16
    case 4:
    case 5:
    case 6:
      return 4;  // u32, i32, f32
    case 10:
    case 11:
    case 12:
      return 8;  // u64, i64, f64
    default:
      return 0;  // 8: string, 9: array, else unknown
  }
}

// Walks a GGUF header in place: no allocation per key or string, which is what makes the
// fingerprint cheap next to llama.cpp's own load of a 128k-token vocabulary.
class GgufWalker {
 public:
  GgufWalker(const uint8_t* data, size_t size) : p_(data), end_(data + size), begin_(data) {}
  bool U32(uint32_t* v) { return Read(v, 4); }
  bool U64(uint64_t* v) { return Read(v, 8); }
  bool Skip(uint64_t n) {
    if (n > static_cast<uint64_t>(end_ - p_)) return false;
    p_ += n;
    return true;
  }
  bool String(const uint8_t** s, uint64_t* len) {
    if (!U64(len)) return false;
    *s = p_;
    return Skip(*len);
  }
  bool SkipValue(uint32_t type, int depth = 0) {
    if (const size_t size = ScalarSize(type)) return Skip(size);
    if (type == 8) {
      uint64_t len;
      return U64(&len) && Skip(len);
    }
    if (type != 9 || depth > 0) return false;  // nested arrays do not occur in GGUF files
    uint32_t element_type;
    uint64_t count;
    if (!U32(&element_type) || !U64(&count)) return false;
    if (const size_t size = ScalarSize(element_type)) {
      return count <= UINT64_MAX / size && Skip(count * size);
    }
    for (uint64_t i = 0; i < count; ++i) {
      if (!SkipValue(element_type, depth + 1)) return false;
    }
    return true;
  }
  size_t offset() const { return static_cast<size_t>(p_ - begin_); }

 private:
  bool Read(void* v, size_t n) {
    if (static_cast<size_t>(end_ - p_) < n) return false;
    std::memcpy(v, p_, n);
    p_ += n;
    return true;
  }
  const uint8_t* p_;
  const uint8_t* end_;
  const uint8_t* begin_;
};

FileIdentity IdentityOf(const struct stat& st) {
  FileIdentity id;
  id.dev = static_cast<uint64_t>(st.st_dev);
  id.ino = static_cast<uint64_t>(st.st_ino);
  id.size = static_cast<uint64_t>(st.st_size);
  id.mtime_ns = int64_t{st.st_mtim.tv_sec} * 1000000000 + st.st_mtim.tv_nsec;
  id.ctime_ns = int64_t{st.st_ctim.tv_sec} * 1000000000 + st.st_ctim.tv_nsec;
  return id;
}

Status ChangedError(const std::string& path) {
  return Status::IOError("model '" + path + "' changed while kvstash loaded it (replaced or " +
                         "written to); load it again once nothing writes to it");
}

// pread until `n` bytes or end of file; false on a read error.
bool ReadFully(int fd, uint8_t* buf, size_t n, uint64_t offset, size_t* got) {
  *got = 0;
  while (*got < n) {
    const ssize_t r = pread(fd, buf + *got, n - *got, static_cast<off_t>(offset + *got));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return false;
    if (r == 0) break;
    *got += static_cast<size_t>(r);
  }
  return true;
}

// Walks the tensor table of `header` (a prefix of the file) for the names kvstash cares about.
// Returns false when the prefix ends before the table does.
bool WalkTensorTable(const uint8_t* header, size_t size, GgufFacts* facts, bool* bad_magic) {
  GgufWalker walker(header, size);
  uint32_t magic, version;
  uint64_t n_tensors, n_kv;
  *bad_magic = false;
  if (!walker.U32(&magic)) return false;
  if (std::memcmp(&magic, "GGUF", 4) != 0) {
    *bad_magic = true;
    return false;
  }
  if (!walker.U32(&version) || !walker.U64(&n_tensors) || !walker.U64(&n_kv)) return false;
  for (uint64_t i = 0; i < n_kv; ++i) {
    const uint8_t* key;
    uint64_t key_len;
    uint32_t type;
    if (!walker.String(&key, &key_len) || !walker.U32(&type) || !walker.SkipValue(type)) {
      return false;
    }
  }
  for (uint64_t i = 0; i < n_tensors; ++i) {
    const uint8_t* name;
    uint64_t name_len;
    uint32_t n_dims;
    if (!walker.String(&name, &name_len) || !walker.U32(&n_dims) || n_dims > 8 ||
        !walker.Skip(uint64_t{n_dims} * 8 + 4 + 8)) {
      return false;
    }
    const std::string_view n(reinterpret_cast<const char*>(name), name_len);
    if (n.rfind("rope_factors_long", 0) == 0 || n.rfind("rope_factors_short", 0) == 0) {
      facts->has_rope_factors = true;
    }
    if (n.rfind("rope_freqs", 0) == 0) facts->has_rope_freqs = true;
  }
  return true;
}

// Reads as much of the file's start as the GGUF header needs (a large vocabulary takes MiBs).
Result<GgufFacts> ReadGgufFacts(const ModelFile& file) {
  const uint64_t file_size = file.identity().size;
  for (uint64_t want = uint64_t{4} << 20;; want *= 2) {
    const size_t n = static_cast<size_t>(std::min(want, file_size));
    std::vector<uint8_t> header(n);
    size_t got = 0;
    if (!ReadFully(file.fd(), header.data(), n, 0, &got)) {
      return Status::IOError("cannot read model '" + file.path() + "': " + ErrnoText(errno));
    }
    GgufFacts facts;
    bool bad_magic = false;
    if (WalkTensorTable(header.data(), got, &facts, &bad_magic)) return facts;
    if (bad_magic || got < n || n == file_size) {
      return Status::Corruption("model '" + file.path() + "' is not a valid GGUF file (its " +
                                "header or tensor table is cut short); re-download or re-convert " +
                                "it");
    }
  }
}

// xxh3-128 of each kHashBlock of the file, read through the descriptor.
Status HashBlocks(const ModelFile& file, std::vector<XXH128_hash_t>* sums) {
  const uint64_t size = file.identity().size;
  const size_t n_blocks = static_cast<size_t>((size + kHashBlock - 1) / kHashBlock);
  sums->assign(n_blocks, XXH128_hash_t{});
  const unsigned hw = std::thread::hardware_concurrency();
  const size_t threads =
      std::max<size_t>(1, std::min<size_t>({n_blocks, hw == 0 ? 1 : hw, size_t{kMaxHashThreads}}));
  std::vector<int> errors(threads, 0);
  auto hash_range = [&](size_t worker) {
    std::vector<uint8_t> buf(kReadBuffer);
    XXH3_state_t* state = XXH3_createState();
    for (size_t b = worker; b < n_blocks && errors[worker] == 0; b += threads) {
      XXH3_128bits_reset(state);
      const uint64_t begin = b * kHashBlock;
      const uint64_t end = std::min(size, begin + kHashBlock);
      for (uint64_t at = begin; at < end;) {
        const size_t want = static_cast<size_t>(std::min<uint64_t>(kReadBuffer, end - at));
        size_t got = 0;
        const bool read_ok = ReadFully(file.fd(), buf.data(), want, at, &got);
        if (!read_ok || got != want) {
          errors[worker] = read_ok ? EIO : errno;  // a short read: truncated under us
          break;
        }
        XXH3_128bits_update(state, buf.data(), got);
        at += got;
      }
      (*sums)[b] = XXH3_128bits_digest(state);
    }
    XXH3_freeState(state);
  };
  std::vector<std::thread> workers;
  std::vector<size_t> inline_workers = {0};
  for (size_t t = 1; t < threads; ++t) {
    try {
      workers.emplace_back(hash_range, t);
    } catch (const std::system_error&) {
      inline_workers.push_back(t);  // out of threads: this thread does that share
    }
  }
  for (size_t t : inline_workers) hash_range(t);
  for (std::thread& w : workers) w.join();
  for (int err : errors) {
    if (err != 0) {
      return Status::IOError("cannot read model '" + file.path() + "' to fingerprint it: " +
                             ErrnoText(err) + "; check the disk and that nothing truncates it");
    }
  }
  return Status::Ok();
}

Result<ModelFingerprint> HashFile(const ModelFile& file) {
  std::vector<XXH128_hash_t> sums;
  KVSTASH_RETURN_IF_ERROR(HashBlocks(file, &sums));
  std::string all;
  all.reserve(sums.size() * 16 + 8);
  for (const XXH128_hash_t& h : sums) {
    XXH128_canonical_t c;
    XXH128_canonicalFromHash(&c, h);
    all.append(reinterpret_cast<const char*>(c.digest), sizeof(c.digest));
  }
  const uint64_t size = file.identity().size;
  for (int i = 0; i < 8; ++i) all.push_back(static_cast<char>(size >> (8 * i)));
  XXH128_canonical_t canonical;
  XXH128_canonicalFromHash(&canonical, XXH3_128bits(all.data(), all.size()));
  ModelFingerprint fingerprint;
  std::memcpy(fingerprint.bytes, canonical.digest, sizeof(fingerprint.bytes));
  return fingerprint;
}

// --- the cache: one fixed-size record per (dev, ino) ---------------------------------------

constexpr char kCacheMagic[8] = {'K', 'V', 'S', 'F', 'P', '0', '0', '2'};

struct CacheRecord {  // hashed and written as bytes: keep it free of padding
  char magic[8];
  FileIdentity id;
  uint8_t fingerprint[16];
  uint64_t check;  // xxh3-64 of everything before it
};

static_assert(sizeof(CacheRecord) == 72, "CacheRecord must have no padding");

uint64_t RecordCheck(const CacheRecord& r) { return XXH3_64bits(&r, offsetof(CacheRecord, check)); }

std::string CacheEntryPath(const std::string& dir, const FileIdentity& id) {
  return dir + "/" + std::to_string(id.dev) + "-" + std::to_string(id.ino);
}

// A missing, short, damaged or stale entry is a miss, never an error: the cache only saves time.
bool ReadCacheEntry(const std::string& dir, const FileIdentity& id, ModelFingerprint* out) {
  const int fd = open(CacheEntryPath(dir, id).c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  CacheRecord r;
  size_t got = 0;
  const bool read_ok = ReadFully(fd, reinterpret_cast<uint8_t*>(&r), sizeof(r), 0, &got);
  uint8_t extra;
  size_t more = 0;
  const bool exact =
      read_ok && got == sizeof(r) && ReadFully(fd, &extra, 1, sizeof(r), &more) && more == 0;
  close(fd);
  if (!exact || std::memcmp(r.magic, kCacheMagic, sizeof(kCacheMagic)) != 0 ||
      r.check != RecordCheck(r) || r.id != id) {
    return false;
  }
  std::memcpy(out->bytes, r.fingerprint, sizeof(out->bytes));
  return true;
}

// mkdir -p of the cache directory (best effort).
void MakeDirs(const std::string& dir) {
  for (size_t at = dir.find('/', 1);; at = dir.find('/', at + 1)) {
    mkdir(dir.substr(0, at).c_str(), 0755);
    if (at == std::string::npos) break;
  }
}

// Temp file + rename, so a reader sees a whole entry or none. Failures are ignored.
void WriteCacheEntry(const std::string& dir, const FileIdentity& id, const ModelFingerprint& fp) {
  MakeDirs(dir);
  CacheRecord r{};  // no padding: 8 + 40 + 16 + 8 bytes
  std::memcpy(r.magic, kCacheMagic, sizeof(kCacheMagic));
  r.id = id;
  std::memcpy(r.fingerprint, fp.bytes, sizeof(r.fingerprint));
  r.check = RecordCheck(r);
  const std::string path = CacheEntryPath(dir, id);
  std::string tmp = path + ".tmp-XXXXXX";
  const int fd = mkstemp(tmp.data());
  if (fd < 0) return;
  const bool written = write(fd, &r, sizeof(r)) == static_cast<ssize_t>(sizeof(r));
  const bool closed = close(fd) == 0;
  if (!written || !closed || rename(tmp.c_str(), path.c_str()) != 0) unlink(tmp.c_str());
}

}  // namespace

Result<std::unique_ptr<ModelFile>> ModelFile::Open(const std::string& path) {
  // O_NONBLOCK: opening a FIFO must not wait for a writer (fstat then refuses it).
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) {
    const int err = errno;
    if (err == ENOENT) {
      return Status::NotFound("model '" + path + "' does not exist; check the path of the GGUF " +
                              "file (a test model: 'kvstash make-test-model -o FILE')");
    }
    return Status::IOError("cannot open model '" + path + "': " + ErrnoText(err) +
                           "; check the path and its permissions");
  }
  struct stat st;
  if (fstat(fd, &st) != 0) {
    const int err = errno;
    close(fd);
    return Status::IOError("cannot stat model '" + path + "': " + ErrnoText(err));
  }
  if (!S_ISREG(st.st_mode)) {
    close(fd);
    return Status::InvalidArgument("model '" + path + "' is not a regular file; pass a GGUF file");
  }
  return std::unique_ptr<ModelFile>(new ModelFile(path, fd, IdentityOf(st)));
}

ModelFile::~ModelFile() { close(fd_); }

Status ModelFile::CheckPathUnchanged() const {
  struct stat st;
  if (stat(path_.c_str(), &st) != 0 || IdentityOf(st) != identity_) return ChangedError(path_);
  return Status::Ok();
}

Status ModelFile::CheckFdUnchanged() const {
  struct stat st;
  if (fstat(fd_, &st) != 0 || IdentityOf(st) != identity_) return ChangedError(path_);
  return Status::Ok();
}

std::string DefaultFingerprintCacheDir() {
  const char* xdg = getenv("XDG_CACHE_HOME");
  if (xdg != nullptr && xdg[0] == '/') return std::string(xdg) + "/kvstash/fingerprints";
  const char* home = getenv("HOME");
  if (home != nullptr && home[0] == '/') return std::string(home) + "/.cache/kvstash/fingerprints";
  return "";
}

Result<FingerprintResult> FingerprintModelFile(const ModelFile& file,
                                               const std::string& cache_dir) {
  FingerprintResult result;
  auto facts = ReadGgufFacts(file);
  if (!facts.ok()) return facts.status();
  result.facts = *facts;
  if (!cache_dir.empty() && ReadCacheEntry(cache_dir, file.identity(), &result.fingerprint)) {
    result.from_cache = true;
    return result;
  }
  auto hash = HashFile(file);
  if (!hash.ok()) return hash.status();
  // An edit in place while hashing would make the hash describe no version of the file.
  KVSTASH_RETURN_IF_ERROR(file.CheckFdUnchanged());
  result.fingerprint = *hash;
  if (!cache_dir.empty()) WriteCacheEntry(cache_dir, file.identity(), result.fingerprint);
  return result;
}

Result<ModelFingerprint> FingerprintGguf(const std::string& path) {
  auto file = ModelFile::Open(path);
  if (!file.ok()) return file.status();
  auto result = FingerprintModelFile(**file, /*cache_dir=*/"");
  if (!result.ok()) return result.status();
  return result->fingerprint;
}

}  // namespace kvstash::engine
