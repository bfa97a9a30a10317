#include "env/atomic_file.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>

namespace kvstash {
namespace {

constexpr const char* kTempTag = ".kvstash-tmp.";
// Hard-link backups of earlier builds; never written any more, only removed.
constexpr const char* kOldTag = ".kvstash-old.";

// pid and a counter are unique within one PID namespace only. The nonce (the clock, and an
// address that ASLR moves) keeps writers in other namespaces or on other hosts off this name; if
// they pick it anyway, O_EXCL refuses it rather than sharing the file.
std::string UniqueSuffix() {
  static std::atomic<uint64_t> counter{0};
  const uint64_t n = counter.fetch_add(1);
  uint64_t x = static_cast<uint64_t>(std::chrono::system_clock::now().time_since_epoch().count()) ^
               reinterpret_cast<uintptr_t>(&counter) ^ (n << 32);
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;  // splitmix64's finalizer
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  x ^= x >> 31;
  char nonce[9];
  std::snprintf(nonce, sizeof(nonce), "%08x", static_cast<unsigned>(x));
  return std::to_string(getpid()) + "." + std::to_string(n) + "." + nonce;
}

bool Cancelled(const AtomicWriteOptions& options) {
  return options.cancel != nullptr && options.cancel->load(std::memory_order_relaxed);
}

Status CancelledStatus(const std::string& path) {
  return Status::Cancelled("saving '" + path + "' was cancelled; '" + path +
                           "' was left as it was");
}

Status NotRegular(const std::string& path, const FileInfo& info) {
  return Status::InvalidArgument(
      "cannot save to '" + path + "': it is " +
      (info.type == FileInfo::Type::kDirectory ? "a directory" : "a device, FIFO or socket") +
      ", not a regular file; choose a file name");
}

// The name a rename must replace for `path`: its links followed. What `path` opens is looked at
// first: a link to a pipe or terminal (/dev/stdout -> /proc/self/fd/1 -> "pipe:[...]") names no
// file, and must be refused as what it is.
Result<std::string> ResolveDestination(Env* env, const std::string& path) {
  auto opens = env->Stat(path);
  if (opens.ok() && opens->type != FileInfo::Type::kRegular) return NotRegular(path, *opens);
  return env->ResolveLinks(path);
}

// The checks of CheckDestination on the resolved name `target`; `path` is what errors call it.
Status CheckResolved(Env* env, const std::string& path, const std::string& target,
                     const AtomicWriteOptions& options) {
  auto info = env->Stat(target);
  if (!info.ok()) {
    if (info.status().code() == Status::Code::kNotFound) return Status::Ok();
    return info.status();
  }
  if (info->type != FileInfo::Type::kRegular) return NotRegular(path, *info);
  for (size_t i = 0; i < options.protected_paths.size(); ++i) {
    auto other = env->Stat(options.protected_paths[i]);
    if (!other.ok() || !other->SameFile(*info)) continue;
    const std::string what =
        i < options.protected_names.size() ? options.protected_names[i] : "an input file";
    return Status::InvalidArgument("cannot save to '" + path + "': it is " + what + " '" +
                                   options.protected_paths[i] +
                                   "' (the same file); choose another output file");
  }
  if (!options.required_magic.empty() && !options.replace_any) {
    auto head = env->ReadFilePrefix(target, options.required_magic.size());
    if (!head.ok()) return head.status();
    if (*head != options.required_magic) {
      return Status::InvalidArgument("'" + path +
                                     "' exists and is not a kvstash session file; refusing to "
                                     "replace it: choose another output file, or pass --force "
                                     "to replace it anyway");
    }
  }
  return Status::Ok();
}

// Writes `parts` to `file`, then syncs and closes it.
Status WriteAll(WritableFile* file, const std::vector<std::string_view>& parts,
                const AtomicWriteOptions& options, const std::string& path) {
  uint64_t total = 0, done = 0;
  for (std::string_view part : parts) total += part.size();
  // Chunks, so that a progress bar moves and a cancellation is seen within 16 MiB of writing.
  constexpr size_t kChunk = size_t{16} << 20;
  Status status;
  for (std::string_view part : parts) {
    for (size_t at = 0; at < part.size() && status.ok(); at += kChunk) {
      if (Cancelled(options)) return CancelledStatus(path);  // the caller closes and removes
      const size_t n = std::min(kChunk, part.size() - at);
      status = file->Append(part.data() + at, n);
      done += n;
      if (status.ok() && options.progress) options.progress(done, total);
    }
    if (!status.ok()) break;
  }
  if (status.ok() && options.sync) status = file->Sync();
  Status closed = file->Close();
  return status.ok() ? closed : status;
}

}  // namespace

Result<std::unique_ptr<FileLock>> CreateLockedFile(Env* env,
                                                   const std::function<std::string()>& next_name,
                                                   const std::string& name_in_errors,
                                                   const Status& exhausted, std::string* path,
                                                   std::unique_ptr<WritableFile>* file) {
  for (int attempt = 0; attempt < 8; ++attempt) {
    *path = next_name();
    auto created = env->NewWritableFile(*path, name_in_errors);
    if (!created.ok()) return created.status();
    auto lock = env->LockFile(*path, /*wait=*/true, name_in_errors);
    if (lock.ok()) {
      *file = std::move(created.value());
      return lock;
    }
    created->reset();
    if (lock.status().code() != Status::Code::kNotFound) {
      (void)env->RemoveFile(*path);  // best effort: the lock error is what the caller needs
      return lock.status();
    }
  }
  return exhausted;
}

int RemoveStaleTempFiles(Env* env, const std::string& dir, const std::string& base) {
  auto names = env->ListDir(dir);
  if (!names.ok()) return 0;
  int removed = 0;
  for (const std::string& name : *names) {
    for (const char* tag : {kTempTag, kOldTag}) {
      const std::string prefix = base + tag;
      if (name.compare(0, prefix.size(), prefix) != 0) continue;
      const std::string full = dir + "/" + name;
      // Busy: its writer is alive (in this process, another, another PID namespace or host).
      // Not found: gone already, or renamed into place by its writer.
      auto lock = env->LockFile(full, /*wait=*/false);
      if (!lock.ok()) continue;
      // Removed while locked: a writer that made this name an instant ago finds it gone when it
      // gets the lock, and tries another (CreateLockedFile).
      if (env->RemoveFile(full).ok()) ++removed;
    }
  }
  return removed;
}

Status CheckDestination(Env* env, const std::string& path, const AtomicWriteOptions& options) {
  auto target = ResolveDestination(env, path);
  if (!target.ok()) return target.status();
  return CheckResolved(env, path, *target, options);
}

Status AtomicWriteFile(Env* env, const std::string& path,
                       const std::vector<std::string_view>& parts,
                       const AtomicWriteOptions& options) {
  if (Cancelled(options)) return CancelledStatus(path);
  // Replace what a link points to, not the link (which would turn e.g. /dev/stdout into a file).
  auto target = ResolveDestination(env, path);
  if (!target.ok()) return target.status();
  KVSTASH_RETURN_IF_ERROR(CheckResolved(env, path, *target, options));
  const std::string dir = DirName(*target);
  RemoveStaleTempFiles(env, dir, BaseName(*target));

  std::string temp;
  std::unique_ptr<WritableFile> file;
  auto lock = CreateLockedFile(
      env, [&] { return *target + kTempTag + UniqueSuffix(); }, path,
      Status::IOError("cannot save '" + path + "': another process keeps removing the temporary " +
                      "files beside it; stop it or save elsewhere"),
      &temp, &file);
  if (!lock.ok()) return lock.status();
  Status status = WriteAll(file.get(), parts, options, path);
  file.reset();
  // Opened before the rename, so that after it only the fsync itself can fail.
  std::unique_ptr<Directory> directory;
  if (status.ok() && options.sync) {
    auto opened = env->OpenDirectory(dir);
    if (opened.ok()) {
      directory = std::move(opened.value());
    } else {
      status = Status::IOError("cannot save '" + path + "': " + opened.status().message());
    }
  }
  if (status.ok() && Cancelled(options)) status = CancelledStatus(path);
  // The file being replaced stays open until a background thread closes it: the rename then only
  // drops a name, and freeing a large file's blocks waits for nobody.
  const int replaced = status.ok() ? env->OpenForBackgroundRelease(*target) : -1;
  if (status.ok()) status = env->RenameFile(temp, *target);
  Env::CloseInBackground(replaced);
  if (!status.ok()) {
    (void)env->RemoveFile(temp);  // best effort: the rename error is what the caller needs
    return status;
  }
  lock->reset();  // the temp name is gone; nothing for a cleaner to find any more
  if (directory != nullptr) {
    Status synced = directory->Sync();
    if (!synced.ok()) {
      // Too late to put the old bytes back: rename dropped them. Say what the file holds.
      return Status::IOError("'" + path + "' now holds the new, complete file, but " +
                             synced.message() + "; after a crash it may hold the old file " +
                             "again (the old bytes are gone otherwise): check the disk");
    }
  }
  return Status::Ok();
}

}  // namespace kvstash
