#include "store/store_files.h"

#include <unistd.h>

#include <atomic>
#include <charconv>
#include <chrono>
#include <cstdio>
#include <random>

#include "env/atomic_file.h"

namespace kvstash::store {

std::string StorePaths::ChunkDir(const format::Hash256& hash) const {
  return Chunks() + "/" + format::HashHex(hash).substr(0, 2);
}

std::string StorePaths::ChunkPath(const format::Hash256& hash, uint32_t index) const {
  const std::string hex = format::HashHex(hash);
  return Chunks() + "/" + hex.substr(0, 2) + "/" + hex + "." + std::to_string(index) + ".kvc";
}

std::string StorePaths::NamespacePath(const format::Hash256& ns) const {
  return Namespaces() + "/" + format::HashHex(ns) + ".txt";
}

std::string StorePaths::TailDir(const format::Hash256& parent) const {
  return Tails() + "/" + format::HashHex(parent).substr(0, 2);
}

std::string StorePaths::TailPath(const format::Hash256& parent, uint32_t j, uint32_t n_tokens,
                                 const format::Hash256& tail) const {
  const std::string hex = format::HashHex(parent);
  return Tails() + "/" + hex.substr(0, 2) + "/" + hex + "." + std::to_string(j) + "." +
         std::to_string(n_tokens) + "." + format::HashHex(tail) + ".kvt";
}

std::string StorePaths::NewTempPath() const {
  static std::atomic<uint64_t> counter{0};
  // Seeded once per process from the OS: writers in other PID namespaces or on other hosts that
  // share the directory draw other names.
  static const uint64_t seed = [] {
    std::random_device rd;
    return (uint64_t{rd()} << 32) ^ rd();
  }();
  uint64_t x = seed + counter.fetch_add(1) * 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;  // splitmix64's finalizer
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  x ^= x >> 31;
  char nonce[17];
  std::snprintf(nonce, sizeof(nonce), "%016llx", static_cast<unsigned long long>(x));
  return Temp() + "/" + std::to_string(getpid()) + "." + nonce + kTempSuffix;
}

bool ParseChunkName(const std::string& name, format::Hash256* hash, uint32_t* index) {
  // 64 hex, '.', 1..10 digits, ".kvc"
  constexpr size_t kHex = 64;
  const std::string ext = ".kvc";
  if (name.size() < kHex + 1 + 1 + ext.size() || name[kHex] != '.') return false;
  if (name.compare(name.size() - ext.size(), ext.size(), ext) != 0) return false;
  if (!format::ParseHashHex(name.substr(0, kHex), hash)) return false;  // lowercase only
  const std::string digits = name.substr(kHex + 1, name.size() - kHex - 1 - ext.size());
  return !digits.empty() && digits[0] != '0' && ParseDecimal(digits, index);
}

bool ParseTailName(const std::string& name, TailName* out) {
  constexpr size_t kHex = 64;
  const std::string ext = ".kvt";
  if (name.size() < kHex + 5 + kHex + ext.size() || name[kHex] != '.') return false;
  if (name.compare(name.size() - ext.size(), ext.size(), ext) != 0) return false;
  const size_t hash_at = name.size() - ext.size() - kHex;
  if (name[hash_at - 1] != '.') return false;
  if (!format::ParseHashHex(name.substr(0, kHex), &out->parent) ||
      !format::ParseHashHex(name.substr(hash_at, kHex), &out->hash)) {
    return false;
  }
  const std::string middle = name.substr(kHex + 1, hash_at - 1 - (kHex + 1));  // "<j>.<T>"
  const size_t dot = middle.find('.');
  if (dot == std::string::npos) return false;
  const std::string j = middle.substr(0, dot), t = middle.substr(dot + 1);
  const auto canonical = [](const std::string& d) {
    return d == "0" || (!d.empty() && d[0] != '0');
  };
  return canonical(j) && canonical(t) && ParseDecimal(j, &out->j) &&
         ParseDecimal(t, &out->n_tokens) && out->n_tokens > 0;
}

uint64_t TailFileBytes(const format::ChunkLayout& layout, uint32_t n_tokens) {
  return format::kChunkHeaderSize + uint64_t{n_tokens} * 4 + layout.KvBytes(n_tokens);
}

bool ParseDecimal(std::string_view text, uint32_t* value) {
  const char* end = text.data() + text.size();
  const auto [stop, error] = std::from_chars(text.data(), end, *value);
  return !text.empty() && error == std::errc() && stop == end;
}

uint64_t ChunkFileBytes(const format::ChunkLayout& layout, uint32_t chunk_tokens) {
  // The largest chunk of the namespace: one that carries a snapshot, if any do.
  const uint32_t index = layout.snapshot_every != 0 ? layout.snapshot_every : 1;
  return format::kChunkHeaderSize + uint64_t{chunk_tokens} * 4 +
         layout.ChunkKvBytes(chunk_tokens, index);
}

namespace {

bool IsHexPair(const std::string& name) {
  return name.size() == 2 && name.find_first_not_of("0123456789abcdef") == std::string::npos;
}

const char* TypeName(FileInfo::Type type) {
  switch (type) {
    case FileInfo::Type::kDirectory:
      return "a directory";
    case FileInfo::Type::kSymlink:
      return "a symbolic link";
    case FileInfo::Type::kRegular:
      return "a regular file";
    default:
      return "a FIFO, socket or device";
  }
}

// The entries of one chunks/<hh>/ (tails/<hh>/) directory.
void ListSubdir(Env* env, const std::string& sub, const std::string& hh, bool tails,
                std::vector<ChunkEntry>* out) {
  auto names = env->ListDir(sub);
  if (!names.ok()) {
    ChunkEntry entry;
    entry.path = sub;
    entry.bad = "cannot be listed: " + names.status().message();
    out->push_back(std::move(entry));
    return;
  }
  for (const std::string& name : *names) {
    ChunkEntry entry;
    entry.path = sub + "/" + name;
    entry.tail = tails;
    auto info = env->LinkStat(entry.path);
    if (!info.ok()) {
      if (info.status().code() == Status::Code::kNotFound) continue;  // evicted meanwhile
      entry.bad = info.status().message();
      out->push_back(std::move(entry));
      continue;
    }
    entry.info = *info;
    const char* dir = tails ? "tails/" : "chunks/";
    bool named = false;
    if (tails) {
      named = ParseTailName(name, &entry.tail_name);
      entry.hash = entry.tail_name.hash;
      entry.index = entry.tail_name.j + 1;
    } else {
      named = ParseChunkName(name, &entry.hash, &entry.index);
    }
    if (!named) {
      entry.bad = tails ? "not a tail name (<64 hex>.<j>.<T>.<64 hex>.kvt)"
                        : "not a chunk name (<64 hex>.<index>.kvc)";
    } else if (name.compare(0, 2, hh) != 0) {
      entry.bad =
          "in the wrong directory (" + std::string(dir) + name.substr(0, 2) + "/ is its place)";
    } else if (info->type != FileInfo::Type::kRegular) {
      entry.bad = std::string("is ") + TypeName(info->type) + ", not a " +
                  (tails ? "tail" : "chunk") + " file";
    }
    out->push_back(std::move(entry));
  }
}

}  // namespace

Status RealSubdir(Env* env, const std::string& path) {
  auto info = env->LinkStat(path);
  if (!info.ok()) return info.status();
  if (info->type != FileInfo::Type::kDirectory) {
    return Status::IOError("'" + path + "' is " + TypeName(info->type) +
                           ", not a directory of the store; the store never follows it (its " +
                           "files could be outside the store): remove it");
  }
  return Status::Ok();
}

namespace {

// Every entry of `top` (chunks/ or tails/), one level of <hh> directories down.
Status ListTop(Env* env, const std::string& top, bool tails, std::vector<ChunkEntry>* entries) {
  KVSTASH_RETURN_IF_ERROR(RealSubdir(env, top));
  auto subdirs = env->ListDir(top);
  if (!subdirs.ok()) return subdirs.status();
  for (const std::string& hh : *subdirs) {
    const std::string sub = top + "/" + hh;
    auto info = env->LinkStat(sub);
    if (!info.ok()) continue;
    if (!IsHexPair(hh) || info->type != FileInfo::Type::kDirectory) {
      ChunkEntry entry;
      entry.path = sub;
      entry.info = *info;
      entry.tail = tails;
      entry.bad = std::string("is ") + TypeName(info->type) + " misplaced in " +
                  (tails ? "tails/" : "chunks/");
      entries->push_back(std::move(entry));
      continue;
    }
    ListSubdir(env, sub, hh, tails, entries);
  }
  return Status::Ok();
}

}  // namespace

Result<std::vector<ChunkEntry>> ListChunkEntries(Env* env, const StorePaths& paths) {
  std::vector<ChunkEntry> entries;
  KVSTASH_RETURN_IF_ERROR(ListTop(env, paths.Chunks(), /*tails=*/false, &entries));
  Status tails = ListTop(env, paths.Tails(), /*tails=*/true, &entries);
  if (!tails.ok() && tails.code() != Status::Code::kNotFound) return tails;
  return entries;
}

std::string FailureKind(const Status& status) {
  const std::string& m = status.message();
  if (m.find("(ENOSPC)") != std::string::npos || m.find("(EDQUOT)") != std::string::npos) {
    return "disk full";
  }
  if (m.find("(EROFS)") != std::string::npos) return "read-only";
  if (m.find("(EACCES)") != std::string::npos || m.find("(EPERM)") != std::string::npos) {
    return "permission denied";
  }
  if (m.find("(EIO)") != std::string::npos) return "I/O error";
  return "write error";
}

bool IsReadOnlyFailure(const Status& status) {
  const std::string kind = FailureKind(status);
  return kind == "read-only" || kind == "permission denied";
}

bool WarnOnce::First(const std::string& key) {
  std::lock_guard<std::mutex> lock(mu_);
  return said_.insert(key).second;
}

void WarnOnce::Say(const std::string& line) {
  if (First(line)) SayAlways(line);
}

void WarnOnce::SayAlways(const std::string& line) {
  if (warn_) {
    warn_(line);
  } else {
    std::fprintf(stderr, "%s\n", line.c_str());
  }
}

void WarnOnce::Warn(const std::string& kind, const std::string& detail) {
  if (!First(kind)) return;
  std::string line = "kvstash: store '" + dir_ + "': " + kind +
                     "; new chunks are not saved (answers are not affected)";
  if (!detail.empty()) line += " [" + detail + "]";
  SayAlways(line);
}

Status PublishFile(Env* env, const StorePaths& paths, const std::vector<std::string_view>& parts,
                   const std::string& dest, bool replace, bool sync, bool* existed) {
  *existed = false;
  std::string temp;
  std::unique_ptr<WritableFile> file;
  auto lock = CreateLockedFile(
      env, [&paths] { return paths.NewTempPath(); }, "",
      Status::IOError("cannot write to '" + paths.Temp() +
                      "': another process keeps removing new temp files there"),
      &temp, &file);
  if (!lock.ok()) return lock.status();
  Status status;
  for (std::string_view part : parts) {
    if (status.ok()) status = file->Append(part.data(), part.size());
  }
  // The data reaches the disk before the name does: after a crash a chunk name never points at
  // bytes that were not written (it may be missing, which is a miss).
  if (status.ok() && sync) status = file->Sync();
  Status closed = file->Close();
  if (status.ok()) status = closed;
  if (status.ok()) {
    if (replace) {
      status = env->RenameFile(temp, dest);
      if (status.ok()) return Status::Ok();  // the temp name is gone; the lock goes with `lock`
    } else {
      auto linked = env->LinkFile(temp, dest);
      if (linked.ok()) {
        *existed = !*linked;
      } else {
        status = linked.status();
      }
    }
  }
  // Unlinked while still locked: a sweeper that locks this name later finds it gone, never a
  // file that is also a published chunk.
  (void)env->RemoveFile(temp);
  lock->reset();
  return status;
}

int64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace kvstash::store
