#include "env/atomic_file.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>

namespace kvstash {
namespace {

constexpr const char* kTempTag = ".kvstash-tmp.";
constexpr const char* kOldTag = ".kvstash-old.";

std::string UniqueSuffix() {
  static std::atomic<uint64_t> counter{0};
  return std::to_string(getpid()) + "." + std::to_string(counter.fetch_add(1));
}

}  // namespace

int RemoveStaleTempFiles(Env* env, const std::string& dir, const std::string& base) {
  auto names = env->ListDir(dir);
  if (!names.ok()) return 0;
  int removed = 0;
  for (const std::string& name : *names) {
    for (const char* tag : {kTempTag, kOldTag}) {
      const std::string prefix = base + tag;
      if (name.compare(0, prefix.size(), prefix) != 0) continue;
      const pid_t pid = static_cast<pid_t>(std::strtol(name.c_str() + prefix.size(), nullptr, 10));
      // Our own pid: an in-flight save of another thread, or an old name being removed.
      if (pid <= 0 || pid == getpid() || env->ProcessAlive(pid)) continue;
      if (env->RemoveFile(dir + "/" + name).ok()) ++removed;
    }
  }
  return removed;
}

Status AtomicWriteFile(Env* env, const std::string& path,
                       const std::vector<std::string_view>& parts,
                       const AtomicWriteOptions& options) {
  const std::string dir = DirName(path);
  RemoveStaleTempFiles(env, dir, BaseName(path));

  auto info = env->Stat(path);
  if (info.ok() && info->type != FileInfo::Type::kRegular) {
    return Status::InvalidArgument("cannot save to '" + path +
                                   "': it is a directory or special file; choose a file name");
  }
  const bool replacing = info.ok();

  const std::string suffix = UniqueSuffix();
  const std::string temp = path + kTempTag + suffix;
  Status status;
  {
    auto file = env->NewWritableFile(temp);
    if (!file.ok()) return file.status();
    uint64_t total = 0, done = 0;
    for (std::string_view part : parts) total += part.size();
    // Chunks only so that a progress bar can move; one write per part when nobody watches.
    const size_t chunk = options.progress ? size_t{16} << 20 : SIZE_MAX;
    for (std::string_view part : parts) {
      for (size_t at = 0; at < part.size() && status.ok(); at += chunk) {
        const size_t n = std::min(chunk, part.size() - at);
        status = (*file)->Append(part.data() + at, n);
        done += n;
        if (options.progress) options.progress(done, total);
      }
      if (!status.ok()) break;
    }
    if (status.ok() && options.sync) status = (*file)->Sync();
    Status closed = (*file)->Close();
    if (status.ok()) status = closed;
  }
  if (!status.ok()) {
    env->RemoveFile(temp);
    return status;
  }

  // The old file keeps a second name until the new one is in place: a failed directory sync can
  // put it back, and the cost of freeing its blocks moves off the caller's path.
  const std::string old = path + kOldTag + suffix;
  const bool keep_old = replacing;
  if (keep_old) {
    status = env->LinkFile(path, old);
    if (!status.ok()) {
      env->RemoveFile(temp);
      return status;
    }
  }
  status = env->RenameFile(temp, path);
  if (!status.ok()) {
    env->RemoveFile(temp);
    if (keep_old) env->RemoveFile(old);
    return status;
  }
  if (options.sync) {
    status = env->SyncDir(dir);
    if (!status.ok()) {
      if (keep_old) {
        env->RenameFile(old, path);  // best effort: put the previous bytes back
      } else {
        env->RemoveFile(path);  // nothing was there before; do not leave an unsynced file
      }
      return status;
    }
  }
  if (keep_old) Env::RemoveFileInBackground(old);
  return Status::Ok();
}

}  // namespace kvstash
