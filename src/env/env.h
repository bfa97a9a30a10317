// Env: every system call kvstash makes goes through here.
//
// Why a seam: saving a session must survive ENOSPC, EIO, EINTR, short writes and crashes at any
// point, and loading must survive files that change under it. Tests prove both by swapping the
// syscall layer (FaultInjectionEnv) instead of hoping. Modelled on LevelDB's Env.
//
// Contract: no function here throws; every failure is a Status that names the path and errno text.
#ifndef KVSTASH_ENV_ENV_H_
#define KVSTASH_ENV_ENV_H_

#include <sys/types.h>
#include <time.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "kvstash/messages.h"  // ErrnoText
#include "kvstash/status.h"

namespace kvstash {

// A file opened for appending. Writes retry on EINTR and on short writes; Sync is fdatasync.
class WritableFile {
 public:
  virtual ~WritableFile() = default;
  virtual Status Append(const void* data, size_t n) = 0;
  virtual Status Sync() = 0;
  // Closing twice is harmless; the destructor closes without reporting.
  virtual Status Close() = 0;
};

// A read-only view of a whole regular file, mapped into memory.
//
// If another process truncates the file while it is mapped, touching a lost page would normally
// raise SIGBUS. Here the fault is caught, a page of zeros is mapped in its place, and damaged()
// turns true: readers check it after use and report the file as changed. So a truncated file is
// an error, never a signal.
class MappedFile {
 public:
  virtual ~MappedFile() = default;
  virtual const uint8_t* data() const = 0;
  virtual size_t size() const = 0;
  virtual bool damaged() const = 0;
};

// A whole regular file whose bytes cannot change while this object holds them, so that the bytes a
// reader verifies are the bytes it then uses (a checksum over a mapping proves nothing about a
// second read of the same pages if someone rewrites the file in place in between).
//
// Two ways, chosen per file:
//   - leased: the file's pages are mapped read-only under a read lease (fcntl F_SETLEASE F_RDLCK).
//     The kernel grants it only while nobody has the file open for writing, and holds every later
//     open for writing (and truncate) until the lease is released. One copy fewer than a private
//     buffer: the reader's own pass (checksum, restore) reads the page cache directly. A writer
//     that tries meanwhile makes the kernel send this process SIGURG, whose default action is to
//     ignore it (documented in README: the only process-wide effect besides the SIGBUS guard).
//   - copied: read() into private memory, when a lease cannot be had (another process has the file
//     open for writing, the caller does not own it, the filesystem has no leases, or leases are
//     turned off). The copy is the caller's alone.
// A file truncated underneath a mapping after a lease break timed out still raises no signal: the
// SIGBUS guard below turns it into Intact() == false.
class StableFile {
 public:
  virtual ~StableFile() = default;
  virtual const uint8_t* data() const = 0;
  virtual size_t size() const = 0;
  virtual bool leased() const = 0;
  // Calls fn(bytes, n) for consecutive blocks of `block` bytes (the last may be shorter) covering
  // [offset, offset + n) of the file. A leased file whose pages are mostly not in the page cache
  // is read with pread through a small buffer: large sequential reads at disk speed, and the pages
  // are then in the page cache for whoever reads the mapping next; otherwise the blocks point into
  // data(). The bytes are the same either way (nobody can write while the lease is held).
  virtual Status ReadBlocks(size_t offset, size_t n, size_t block,
                            const std::function<void(const uint8_t*, size_t)>& fn) const = 0;
  // Whether at least 7/8 of [offset, offset + n) is in memory already (always, for a copy): the
  // caller can then overlap a pass over it with other work; a cold read is better done alone.
  virtual bool Resident(size_t offset, size_t n) const = 0;
  // True when the bytes seen since opening cannot have been changed by anyone. Check it after the
  // last use of data(): false only for a leased file whose lease break could have timed out
  // (/proc/sys/fs/lease-break-time) or whose pages were truncated away.
  virtual bool Intact() const = 0;
};

// A large scratch buffer backed by transparent huge pages where the kernel offers them: 2 MiB pages
// take 512 times fewer page faults to fill than 4 KiB pages.
class LargeBuffer {
 public:
  // Empty on allocation failure (check data() != nullptr). huge_pages = false leaves the pages to
  // the kernel's default: where THP is "madvise"d, asking for huge pages makes a fault compact
  // memory on the spot, which stalls other threads (for a buffer filled while llama.cpp creates a
  // context, pass false).
  explicit LargeBuffer(size_t size, bool huge_pages = true);
  ~LargeBuffer();
  LargeBuffer(const LargeBuffer&) = delete;
  LargeBuffer& operator=(const LargeBuffer&) = delete;
  uint8_t* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  uint8_t* data_ = nullptr;
  size_t size_ = 0;
  size_t mapped_ = 0;
};

struct FileInfo {
  // kSymlink only from LinkStat (Stat follows links).
  enum class Type { kRegular, kDirectory, kSymlink, kOther };
  Type type = Type::kOther;
  uint64_t size = 0;
  int64_t mtime_ns = 0;  // last modification, ns since the epoch
  // Identity: two names are the same file exactly when both are equal.
  uint64_t device = 0;
  uint64_t inode = 0;
  bool SameFile(const FileInfo& other) const {
    return device == other.device && inode == other.inode;
  }
};

// An exclusive advisory lock (flock) on a file, released when destroyed. flock is per open file
// and works across PID namespaces and, on NFS, across hosts, unlike a PID written in a name.
class FileLock {
 public:
  virtual ~FileLock() = default;
};

// A directory opened before a rename, so that syncing it afterwards cannot fail on the open.
class Directory {
 public:
  virtual ~Directory() = default;
  virtual Status Sync() = 0;  // fsync: makes renames inside it durable
};

// The raw system calls, one virtual per call, so tests can fail or interrupt any single one.
// Return values and errno follow POSIX exactly.
class Syscalls {
 public:
  virtual ~Syscalls() = default;
  virtual int Open(const char* path, int flags, mode_t mode);
  virtual ssize_t Write(int fd, const void* buf, size_t n);
  virtual int Fdatasync(int fd);
  virtual int Fsync(int fd);
  virtual int Close(int fd);
  virtual int Rename(const char* from, const char* to);
  virtual int Unlink(const char* path);
  virtual ssize_t Read(int fd, void* buf, size_t n);
  virtual ssize_t Readlink(const char* path, char* buf, size_t n);
  virtual int Flock(int fd, int operation);
  virtual int Link(const char* from, const char* to);
  virtual int Mkdir(const char* path, mode_t mode);
  // utimensat(AT_FDCWD, path, {UTIME_OMIT, mtime}, AT_SYMLINK_NOFOLLOW): sets the mtime only.
  virtual int Utimens(const char* path, const struct timespec& mtime);
};

class Env {
 public:
  // The process-wide POSIX Env. Never destroyed.
  static Env* Default();

  // An Env over `syscalls` (which must outlive it), for fault injection.
  explicit Env(Syscalls* syscalls) : sys_(syscalls) {}
  virtual ~Env() = default;

  // Creates `path`, which must not exist yet (O_EXCL), mode 0644. Errors name `name_in_errors`
  // (default: `path`), so that a temp file's errors can name the file the user asked for.
  Result<std::unique_ptr<WritableFile>> NewWritableFile(const std::string& path,
                                                        const std::string& name_in_errors = "");
  // Maps `path` read-only. Refuses anything but a regular file, and files larger than max_size
  // (checked with fstat before a byte is read, so a huge sparse file costs nothing).
  Result<std::unique_ptr<MappedFile>> MapFile(const std::string& path, uint64_t max_size);
  // Checks the first bytes of a file (at most kHeadBytes; all of it when shorter) and its size
  // before the rest is read, so that a file that is no session (or a huge sparse one) is refused
  // without reading or copying it.
  using HeadCheck = std::function<Status(const uint8_t* head, size_t n, uint64_t file_size)>;
  static constexpr size_t kHeadBytes = 4096;
  // Opens `path` for reading as a StableFile (a lease when one can be had and leases are on, else
  // a private copy). Same refusals as MapFile, then `check` on the first bytes.
  // follow_links=false: a symbolic link at `path` is refused (kInvalidArgument), for directories
  // whose entries must be files written there (the store's chunks).
  Result<std::unique_ptr<StableFile>> OpenStableFile(const std::string& path, uint64_t max_size,
                                                     const HeadCheck& check = {},
                                                     bool follow_links = true);
  // Whether OpenStableFile may take leases (on by default; tests turn it off to test the copy).
  void set_read_leases(bool on) { read_leases_ = on; }
  // Follows symbolic links (what opening `path` would reach).
  Result<FileInfo> Stat(const std::string& path);
  // lstat: a link, FIFO or directory is reported as what it is, without opening or following it.
  Result<FileInfo> LinkStat(const std::string& path);
  // Gives the file `from` the second name `to`, which must not exist: link(2) never replaces, so
  // of many processes publishing the same name, exactly one wins. Returns true when linked, false
  // when `to` already existed (EEXIST: not an error). Errors name `to`.
  Result<bool> LinkFile(const std::string& from, const std::string& to);
  // mkdir -p; existing directories are fine (and keep their mode). The last component is made with
  // `mode` (less the umask), its missing parents with 0755.
  Status CreateDir(const std::string& path, mode_t mode = 0755);
  // Sets the modification time of `path` itself: a symbolic link's own time, never its target's
  // (a link planted in a shared directory must not let us touch files elsewhere). The access time
  // is left alone.
  Status SetMtime(const std::string& path, int64_t mtime_ns);
  // Errors name `to`: the caller's destination, not its temp name.
  Status RenameFile(const std::string& from, const std::string& to);
  Status RemoveFile(const std::string& path);
  // Up to `n` first bytes of the regular file `path` (fewer if it is shorter). follow_links=false:
  // a symbolic link at `path` is refused (O_NOFOLLOW), as anything but a regular file is.
  Result<std::string> ReadFilePrefix(const std::string& path, size_t n, bool follow_links = true);
  // `path` with symbolic links in its last component followed, as open() would follow them: the
  // name a rename must replace so that the link stays a link. A dangling link gives the name of
  // the file it would create. Directories on the way are left as they are (rename works in them).
  Result<std::string> ResolveLinks(const std::string& path);
  // Takes an exclusive flock on the existing file `path`. wait=false: a lock another open file
  // holds gives kIOError "busy" at once. Fails with kNotFound if `path` was removed or replaced by
  // another file before the lock was taken, so a lock held always belongs to the name `path`.
  // Errors name `name_in_errors` (default: `path`).
  Result<std::unique_ptr<FileLock>> LockFile(const std::string& path, bool wait,
                                             const std::string& name_in_errors = "");
  Result<std::unique_ptr<Directory>> OpenDirectory(const std::string& dir);
  Result<std::vector<std::string>> ListDir(const std::string& dir);
  // Opens `path` read-only (-1 if it cannot be opened) so that a file about to lose its last name
  // keeps its blocks until CloseInBackground: freeing a replaced large session's blocks then
  // happens off the caller's path.
  int OpenForBackgroundRelease(const std::string& path);
  // Closes `fd` on a background thread (nothing for -1). Uses the POSIX call directly: the close
  // may outlive a test's Syscalls.
  static void CloseInBackground(int fd);
  // Blocks until every background close so far has finished.
  static void WaitForBackgroundCloses();
  // Physical memory of this machine in bytes (0 if unknown).
  static uint64_t PhysicalMemoryBytes();

 private:
  // Opens `path` read-only and checks it is a regular file of at most max_size bytes.
  Result<int> OpenForReading(const std::string& path, uint64_t max_size, uint64_t* size,
                             bool follow_links = true);
  Syscalls* sys_;
  bool read_leases_ = true;
};

// "dir" of "dir/name", "." for a bare name.
std::string DirName(const std::string& path);
std::string BaseName(const std::string& path);

}  // namespace kvstash

#endif  // KVSTASH_ENV_ENV_H_
