#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "env/env.h"
#include "env/mapped_file.h"

namespace kvstash {

int Syscalls::Open(const char* path, int flags, mode_t mode) { return ::open(path, flags, mode); }
ssize_t Syscalls::Write(int fd, const void* buf, size_t n) { return ::write(fd, buf, n); }
int Syscalls::Fdatasync(int fd) { return ::fdatasync(fd); }
int Syscalls::Fsync(int fd) { return ::fsync(fd); }
int Syscalls::Close(int fd) { return ::close(fd); }
int Syscalls::Rename(const char* from, const char* to) { return ::rename(from, to); }
int Syscalls::Unlink(const char* path) { return ::unlink(path); }
ssize_t Syscalls::Read(int fd, void* buf, size_t n) { return ::read(fd, buf, n); }
ssize_t Syscalls::Readlink(const char* path, char* buf, size_t n) {
  return ::readlink(path, buf, n);
}
int Syscalls::Flock(int fd, int operation) { return ::flock(fd, operation); }
int Syscalls::Link(const char* from, const char* to) { return ::link(from, to); }
int Syscalls::Mkdir(const char* path, mode_t mode) { return ::mkdir(path, mode); }
int Syscalls::Utimens(const char* path, const struct timespec& mtime) {
  const struct timespec times[2] = {{0, UTIME_OMIT}, mtime};
  return ::utimensat(AT_FDCWD, path, times, AT_SYMLINK_NOFOLLOW);
}

std::string ErrnoText(int err) {
  static const std::pair<int, const char*> kNames[] = {{ENOSPC, "ENOSPC"},
                                                       {EIO, "EIO"},
                                                       {EACCES, "EACCES"},
                                                       {EPERM, "EPERM"},
                                                       {ENOENT, "ENOENT"},
                                                       {EEXIST, "EEXIST"},
                                                       {EISDIR, "EISDIR"},
                                                       {ENOTDIR, "ENOTDIR"},
                                                       {ELOOP, "ELOOP"},
                                                       {EROFS, "EROFS"},
                                                       {EDQUOT, "EDQUOT"},
                                                       {EINTR, "EINTR"},
                                                       {EFBIG, "EFBIG"},
                                                       {ENAMETOOLONG, "ENAMETOOLONG"},
                                                       {EWOULDBLOCK, "EWOULDBLOCK"}};
  std::string text = std::strerror(err);
  for (const auto& [code, name] : kNames) {
    if (code == err) return text + " (" + name + ")";
  }
  return text;
}

std::string DirName(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

std::string BaseName(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

namespace {

// Repeats a syscall interrupted by a signal (not for close: on Linux the descriptor is gone).
template <typename Call>
auto RetryOnEintr(Call call) {
  auto rc = call();
  while (rc < 0 && errno == EINTR) rc = call();
  return rc;
}

class PosixWritableFile : public WritableFile {
 public:
  PosixWritableFile(Syscalls* sys, std::string path, int fd)
      : sys_(sys), path_(std::move(path)), fd_(fd) {}
  ~PosixWritableFile() override {
    if (fd_ >= 0) sys_->Close(fd_);
  }

  Status Append(const void* data, size_t n) override {
    const char* p = static_cast<const char*>(data);
    while (n > 0) {
      // Large writes are split so that one call never asks the kernel for more than 1 GiB; a
      // short write or EINTR is retried with what is left.
      const size_t chunk = n < (size_t{1} << 30) ? n : (size_t{1} << 30);
      const ssize_t written = RetryOnEintr([&] { return sys_->Write(fd_, p, chunk); });
      if (written < 0) {
        return Status::IOError("cannot write '" + path_ + "': " + ErrnoText(errno) +
                               "; free space or choose another directory");
      }
      p += written;
      n -= static_cast<size_t>(written);
    }
    return Status::Ok();
  }

  Status Sync() override {
    if (RetryOnEintr([&] { return sys_->Fdatasync(fd_); }) != 0) {
      return Status::IOError("cannot flush '" + path_ + "' to disk: " + ErrnoText(errno));
    }
    return Status::Ok();
  }

  Status Close() override {
    if (fd_ < 0) return Status::Ok();
    const int fd = fd_;
    fd_ = -1;  // POSIX: after close fails the descriptor is gone anyway; never close twice
    if (sys_->Close(fd) != 0) {
      return Status::IOError("cannot close '" + path_ + "': " + ErrnoText(errno));
    }
    return Status::Ok();
  }

 private:
  Syscalls* sys_;
  std::string path_;
  int fd_;
};

}  // namespace

LargeBuffer::LargeBuffer(size_t size, bool huge_pages) : size_(size) {
  constexpr size_t kHuge = size_t{2} << 20;
  mapped_ = (size + kHuge - 1) / kHuge * kHuge;
  if (mapped_ == 0) return;
  void* p = mmap(nullptr, mapped_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    mapped_ = 0;
    return;
  }
  if (huge_pages) madvise(p, mapped_, MADV_HUGEPAGE);  // a hint; kernels without THP ignore it
#ifdef MADV_POPULATE_WRITE
  // Fault everything in with one call instead of one trap per page (Linux >= 5.14; else ignored).
  madvise(p, mapped_, MADV_POPULATE_WRITE);
#endif
  data_ = static_cast<uint8_t*>(p);
}

LargeBuffer::~LargeBuffer() {
  if (data_ != nullptr) munmap(data_, mapped_);
}

Env* Env::Default() {
  static Syscalls* syscalls = new Syscalls();
  static Env* env = new Env(syscalls);
  return env;
}

Result<std::unique_ptr<WritableFile>> Env::NewWritableFile(const std::string& path,
                                                           const std::string& name_in_errors) {
  const std::string& name = name_in_errors.empty() ? path : name_in_errors;
  const int fd = RetryOnEintr(
      [&] { return sys_->Open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644); });
  if (fd < 0) {
    const int err = errno;
    const char* fix = err == EACCES || err == EROFS    ? "; choose a directory you can write to"
                      : err == ENOENT                  ? "; create the directory first"
                      : err == ENAMETOOLONG            ? "; choose a shorter name (up to 200 bytes)"
                      : err == ENOSPC || err == EDQUOT ? "; free space or choose another directory"
                                                       : "";
    return Status::IOError("cannot create '" + name + "': " + ErrnoText(err) + fix);
  }
  return std::unique_ptr<WritableFile>(new PosixWritableFile(sys_, name, fd));
}

Result<int> Env::OpenForReading(const std::string& path, uint64_t max_size, uint64_t* size,
                                bool follow_links) {
  // O_NONBLOCK: opening a FIFO must not hang waiting for a writer; it is refused below.
  const int flags = O_RDONLY | O_CLOEXEC | O_NONBLOCK | (follow_links ? 0 : O_NOFOLLOW);
  const int fd = RetryOnEintr([&] { return sys_->Open(path.c_str(), flags, 0); });
  if (fd < 0) {
    const int err = errno;
    if (err == ENOENT) {
      return Status::NotFound("session file '" + path + "' does not exist; check the path or " +
                              "create it with 'kvstash save'");
    }
    if (err == ELOOP && !follow_links) {
      return Status::InvalidArgument("'" + path + "' is a symbolic link, not a file written " +
                                     "there; remove it");
    }
    return Status::IOError("cannot open '" + path + "': " + ErrnoText(err));
  }
  struct stat st;
  if (fstat(fd, &st) != 0) {
    const int err = errno;
    sys_->Close(fd);
    return Status::IOError("cannot stat '" + path + "': " + ErrnoText(err));
  }
  if (!S_ISREG(st.st_mode)) {
    sys_->Close(fd);
    const char* what = S_ISDIR(st.st_mode)    ? "a directory"
                       : S_ISFIFO(st.st_mode) ? "a FIFO"
                       : S_ISCHR(st.st_mode)  ? "a character device"
                       : S_ISBLK(st.st_mode)  ? "a block device"
                       : S_ISSOCK(st.st_mode) ? "a socket"
                                              : "not a regular file";
    return Status::InvalidArgument("'" + path + "' is " + what +
                                   ", not a session file; pass the path of a .kvs file");
  }
  *size = static_cast<uint64_t>(st.st_size);
  if (*size > max_size) {
    sys_->Close(fd);
    // Callers bound the size by what they accept (a model's largest session, or any session at
    // all for inspect), so the message speaks of sessions, not of a model.
    return Status::Corruption("'" + path + "' is " + std::to_string(*size) +
                              " bytes, larger than any kvstash session that can be read here (at " +
                              "most " + std::to_string(max_size) +
                              " bytes); it is not a session file: check the path");
  }
  return fd;
}

Result<std::unique_ptr<MappedFile>> Env::MapFile(const std::string& path, uint64_t max_size) {
  uint64_t size = 0;
  auto fd = OpenForReading(path, max_size, &size);
  if (!fd.ok()) return fd.status();
  void* addr = nullptr;
  if (size > 0) {
    addr = mmap(nullptr, size, PROT_READ, MAP_PRIVATE, *fd, 0);
    if (addr == MAP_FAILED) {
      const int err = errno;
      sys_->Close(*fd);
      return Status::IOError("cannot map '" + path + "': " + ErrnoText(err));
    }
  }
  sys_->Close(*fd);  // the mapping keeps the file alive
  auto mapped = std::make_unique<PosixMappedFile>(static_cast<const uint8_t*>(addr), size);
  if (!mapped->Guard()) {
    return Status::IOError("cannot load '" + path +
                           "': too many session files are mapped at once in this process");
  }
  return std::unique_ptr<MappedFile>(std::move(mapped));
}

namespace {

FileInfo InfoOf(const struct stat& st) {
  FileInfo info;
  info.type = S_ISREG(st.st_mode)   ? FileInfo::Type::kRegular
              : S_ISDIR(st.st_mode) ? FileInfo::Type::kDirectory
                                    : FileInfo::Type::kOther;
  if (S_ISLNK(st.st_mode)) info.type = FileInfo::Type::kSymlink;
  info.size = static_cast<uint64_t>(st.st_size);
  info.mtime_ns = int64_t(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
  info.device = static_cast<uint64_t>(st.st_dev);
  info.inode = static_cast<uint64_t>(st.st_ino);
  return info;
}

// stat or lstat of `path`.
Result<FileInfo> StatWith(int (*stat_call)(const char*, struct stat*), const std::string& path) {
  struct stat st;
  if (stat_call(path.c_str(), &st) != 0) {
    const int err = errno;
    if (err == ENOENT) return Status::NotFound("'" + path + "' does not exist");
    return Status::IOError("cannot stat '" + path + "': " + ErrnoText(err));
  }
  return InfoOf(st);
}

class PosixFileLock : public FileLock {
 public:
  PosixFileLock(Syscalls* sys, int fd) : sys_(sys), fd_(fd) {}
  ~PosixFileLock() override { sys_->Close(fd_); }  // closing the file releases its flock

 private:
  Syscalls* sys_;
  int fd_;
};

class PosixDirectory : public Directory {
 public:
  PosixDirectory(Syscalls* sys, std::string path, int fd)
      : sys_(sys), path_(std::move(path)), fd_(fd) {}
  ~PosixDirectory() override { sys_->Close(fd_); }
  Status Sync() override {
    if (RetryOnEintr([&] { return sys_->Fsync(fd_); }) != 0) {
      return Status::IOError("cannot flush directory '" + path_ + "' to disk: " + ErrnoText(errno));
    }
    return Status::Ok();
  }

 private:
  Syscalls* sys_;
  std::string path_;
  int fd_;
};

}  // namespace

Result<FileInfo> Env::Stat(const std::string& path) { return StatWith(::stat, path); }
Result<FileInfo> Env::LinkStat(const std::string& path) { return StatWith(::lstat, path); }

Result<bool> Env::LinkFile(const std::string& from, const std::string& to) {
  if (RetryOnEintr([&] { return sys_->Link(from.c_str(), to.c_str()); }) != 0) {
    const int err = errno;
    if (err == EEXIST) return false;
    return Status::IOError("cannot create '" + to + "': " + ErrnoText(err));
  }
  return true;
}

Status Env::CreateDir(const std::string& path, mode_t mode) {
  if (path.empty()) return Status::InvalidArgument("cannot create a directory with an empty name");
  // Parents first; each level tolerates EEXIST, so concurrent creators all succeed.
  for (size_t at = path.find('/', 1);; at = path.find('/', at + 1)) {
    const std::string part = at == std::string::npos ? path : path.substr(0, at);
    if (!part.empty() && part.back() != '/') {
      const mode_t m = at == std::string::npos ? mode : 0755;  // parents as mkdir -p makes them
      if (RetryOnEintr([&] { return sys_->Mkdir(part.c_str(), m); }) != 0 && errno != EEXIST) {
        const int err = errno;
        return Status::IOError("cannot create directory '" + part + "': " + ErrnoText(err));
      }
    }
    if (at == std::string::npos) break;
  }
  // EEXIST also covers a file by that name: say so rather than fail later on a confusing open.
  struct stat st;
  if (stat(path.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    return Status::IOError("cannot create directory '" + path +
                           "': something else by that name is in the way; remove it");
  }
  return Status::Ok();
}

Status Env::SetMtime(const std::string& path, int64_t mtime_ns) {
  struct timespec t;
  t.tv_sec = static_cast<time_t>(mtime_ns / 1000000000);
  t.tv_nsec = static_cast<long>(mtime_ns % 1000000000);
  if (t.tv_nsec < 0) {
    t.tv_nsec += 1000000000;
    --t.tv_sec;
  }
  if (RetryOnEintr([&] { return sys_->Utimens(path.c_str(), t); }) != 0) {
    return Status::IOError("cannot set the time of '" + path + "': " + ErrnoText(errno));
  }
  return Status::Ok();
}

Status Env::RenameFile(const std::string& from, const std::string& to) {
  if (RetryOnEintr([&] { return sys_->Rename(from.c_str(), to.c_str()); }) != 0) {
    return Status::IOError("cannot replace '" + to + "': " + ErrnoText(errno));
  }
  return Status::Ok();
}

Result<std::string> Env::ReadFilePrefix(const std::string& path, size_t n, bool follow_links) {
  const int flags = O_RDONLY | O_CLOEXEC | O_NONBLOCK | (follow_links ? 0 : O_NOFOLLOW);
  const int fd = RetryOnEintr([&] { return sys_->Open(path.c_str(), flags, 0); });
  if (fd < 0) return Status::IOError("cannot read '" + path + "': " + ErrnoText(errno));
  struct stat st;
  if (!follow_links && (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode))) {
    sys_->Close(fd);
    return Status::InvalidArgument("'" + path + "' is not a regular file");
  }
  std::string bytes(n, '\0');
  size_t got = 0;
  while (got < n) {
    const ssize_t r = RetryOnEintr([&] { return sys_->Read(fd, &bytes[got], n - got); });
    if (r < 0) {
      const int err = errno;
      sys_->Close(fd);
      return Status::IOError("cannot read '" + path + "': " + ErrnoText(err));
    }
    if (r == 0) break;
    got += static_cast<size_t>(r);
  }
  sys_->Close(fd);
  bytes.resize(got);
  return bytes;
}

Result<std::string> Env::ResolveLinks(const std::string& path) {
  std::string name = path;
  // The kernel's own limit on links followed in one lookup (ELOOP beyond it).
  for (int hops = 0; hops < 40; ++hops) {
    std::string target(4096, '\0');
    const ssize_t n =
        RetryOnEintr([&] { return sys_->Readlink(name.c_str(), &target[0], target.size()); });
    if (n < 0) {
      const int err = errno;
      // EINVAL: not a link; ENOENT: nothing there yet. Either way `name` is the file itself.
      if (err == EINVAL || err == ENOENT) return name;
      return Status::IOError("cannot resolve '" + path + "': " + ErrnoText(err));
    }
    target.resize(static_cast<size_t>(n));
    if (target.empty()) return Status::InvalidArgument("'" + path + "' is an empty link");
    name = target[0] == '/' ? target : DirName(name) + "/" + target;
  }
  return Status::InvalidArgument("cannot resolve '" + path + "': " + ErrnoText(ELOOP));
}

Result<std::unique_ptr<FileLock>> Env::LockFile(const std::string& path, bool wait,
                                                const std::string& name_in_errors) {
  const std::string& name = name_in_errors.empty() ? path : name_in_errors;
  // Read-write where allowed: NFS emulates flock with POSIX locks, whose exclusive kind needs a
  // file open for writing. O_NOFOLLOW and O_NONBLOCK: a link or FIFO under a temp name is not
  // ours and must not hang us.
  const int flags = O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK;
  const int fd = RetryOnEintr([&] {
    const int rw = sys_->Open(path.c_str(), O_RDWR | flags, 0);
    return rw < 0 && errno == EACCES ? sys_->Open(path.c_str(), O_RDONLY | flags, 0) : rw;
  });
  if (fd < 0) {
    const int err = errno;
    if (err == ENOENT) return Status::NotFound("'" + name + "' does not exist");
    return Status::IOError("cannot open '" + name + "' to lock it: " + ErrnoText(err));
  }
  auto lock = std::make_unique<PosixFileLock>(sys_, fd);
  const int op = LOCK_EX | (wait ? 0 : LOCK_NB);
  if (RetryOnEintr([&] { return sys_->Flock(fd, op); }) != 0) {
    const int err = errno;
    return Status::IOError("cannot lock '" + name +
                           "': " + (err == EWOULDBLOCK ? std::string("in use") : ErrnoText(err)));
  }
  // The name may have been removed (or removed and made again) while we opened or waited: then
  // the lock is on a file nobody else will look for.
  struct stat held, named;
  if (fstat(fd, &held) != 0 || !S_ISREG(held.st_mode) || held.st_nlink == 0 ||
      lstat(path.c_str(), &named) != 0 || !InfoOf(held).SameFile(InfoOf(named))) {
    return Status::NotFound("'" + name + "' was removed while it was being locked");
  }
  return std::unique_ptr<FileLock>(std::move(lock));
}

Result<std::unique_ptr<Directory>> Env::OpenDirectory(const std::string& dir) {
  const int fd =
      RetryOnEintr([&] { return sys_->Open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0); });
  if (fd < 0) return Status::IOError("cannot open directory '" + dir + "': " + ErrnoText(errno));
  return std::unique_ptr<Directory>(new PosixDirectory(sys_, dir, fd));
}

Status Env::RemoveFile(const std::string& path) {
  if (sys_->Unlink(path.c_str()) != 0) {
    return Status::IOError("cannot remove '" + path + "': " + ErrnoText(errno));
  }
  return Status::Ok();
}

Result<std::vector<std::string>> Env::ListDir(const std::string& dir) {
  DIR* d = opendir(dir.c_str());
  if (d == nullptr) return Status::IOError("cannot list '" + dir + "': " + ErrnoText(errno));
  std::vector<std::string> names;
  while (struct dirent* entry = readdir(d)) {
    const std::string name = entry->d_name;
    if (name != "." && name != "..") names.push_back(name);
  }
  closedir(d);
  return names;
}

namespace {

// Closes descriptors on one thread, started on first use and joined at exit, so that no close is
// cut off by a normal exit. Closing the last descriptor of a file without names frees its blocks,
// which blocks the closer.
class Closer {
 public:
  ~Closer() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
  }
  void Add(int fd) {
    std::lock_guard<std::mutex> lock(mu_);
    queue_.push_back(fd);
    if (!thread_.joinable()) thread_ = std::thread([this] { Run(); });
    cv_.notify_all();
  }
  void Wait() {
    std::unique_lock<std::mutex> lock(mu_);
    idle_.wait(lock, [this] { return queue_.empty() && busy_ == 0; });
  }

 private:
  void Run() {
    std::unique_lock<std::mutex> lock(mu_);
    while (true) {
      cv_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping, nothing left
      const int fd = queue_.front();
      queue_.pop_front();
      ++busy_;
      lock.unlock();
      ::close(fd);
      lock.lock();
      --busy_;
      idle_.notify_all();
    }
  }
  std::mutex mu_;
  std::condition_variable cv_, idle_;
  std::deque<int> queue_;
  int busy_ = 0;
  bool stopping_ = false;
  std::thread thread_;
};

Closer& GlobalCloser() {
  static Closer closer;
  return closer;
}

}  // namespace

void Env::CloseInBackground(int fd) {
  if (fd >= 0) GlobalCloser().Add(fd);
}

int Env::OpenForBackgroundRelease(const std::string& path) {
  return RetryOnEintr(
      [&] { return sys_->Open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK, 0); });
}
void Env::WaitForBackgroundCloses() { GlobalCloser().Wait(); }

uint64_t Env::PhysicalMemoryBytes() {
  const long pages = sysconf(_SC_PHYS_PAGES);
  const long page_size = sysconf(_SC_PAGESIZE);
  return pages > 0 && page_size > 0 ? uint64_t(pages) * uint64_t(page_size) : 0;
}

}  // namespace kvstash
