// Env::OpenStableFile: a file held still while it is read (env.h, StableFile).
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <vector>

#include "env/env.h"
#include "env/mapped_file.h"

namespace kvstash {

namespace {

using SteadyClock = std::chrono::steady_clock;

// /proc/sys/fs/lease-break-time: how long the kernel holds a writer off before it breaks a lease
// by force. 0 (or unreadable): leases protect nothing, so none are taken.
double LeaseBreakSeconds() {
  static const double seconds = [] {
    FILE* f = std::fopen("/proc/sys/fs/lease-break-time", "r");
    if (f == nullptr) return 0.0;
    long value = 0;
    if (std::fscanf(f, "%ld", &value) != 1) value = 0;
    std::fclose(f);
    return value > 0 ? double(value) : 0.0;
  }();
  return seconds;
}

// Reads `n` bytes at `offset` with pread, retrying EINTR and short reads. Returns the count read:
// less than `n` at the end of the file (errno 0) or on an error (errno set).
size_t PreadFully(int fd, uint8_t* buf, size_t n, uint64_t offset) {
  size_t got = 0;
  while (got < n) {
    const ssize_t r = pread(fd, buf + got, n - got, static_cast<off_t>(offset + got));
    if (r < 0 && errno == EINTR) continue;
    if (r == 0) errno = 0;
    if (r <= 0) break;
    got += static_cast<size_t>(r);
  }
  return got;
}

void ForEachBlock(const uint8_t* p, size_t n, size_t block,
                  const std::function<void(const uint8_t*, size_t)>& fn) {
  for (size_t done = 0; done < n; done += block) fn(p + done, std::min(block, n - done));
}

// The page-cache pages of a file, mapped under a read lease (see StableFile).
class LeasedFile : public StableFile {
 public:
  LeasedFile(int fd, std::unique_ptr<PosixMappedFile> map)
      : fd_(fd), map_(std::move(map)), taken_(SteadyClock::now()) {}
  ~LeasedFile() override {
    map_.reset();
    fcntl(fd_, F_SETLEASE, F_UNLCK);
    close(fd_);
  }
  const uint8_t* data() const override { return map_->data(); }
  size_t size() const override { return map_->size(); }
  bool leased() const override { return true; }
  Status ReadBlocks(size_t offset, size_t n, size_t block,
                    const std::function<void(const uint8_t*, size_t)>& fn) const override {
    if (offset > size() || n > size() - offset || block == 0) {
      return Status::InvalidArgument("ReadBlocks: range outside the file");
    }
    if (Resident(offset, n)) {
      ForEachBlock(data() + offset, n, block, fn);
      return Status::Ok();
    }
    // Cold: sequential preads of one block each, into a buffer that stays in the CPU cache for
    // `fn` (as fast as larger reads or fread, and faster than POSIX_FADV_WILLNEED first).
    std::vector<uint8_t> buffer(std::min(block, n));
    for (size_t done = 0; done < n;) {
      const size_t want = std::min(buffer.size(), n - done);
      if (PreadFully(fd_, buffer.data(), want, offset + done) != want) {
        return Status::IOError("cannot read a leased file: " + ErrnoText(errno != 0 ? errno : EIO));
      }
      fn(buffer.data(), want);
      done += want;
    }
    return Status::Ok();
  }
  bool Intact() const override {
    if (map_->damaged()) return false;
    if (fcntl(fd_, F_GETLEASE) == F_RDLCK) return true;
    // A writer is waiting (the lease reads as F_UNLCK once a break is pending). The kernel keeps
    // it waiting for lease-break-time after it asked, which is after the lease was taken: inside
    // that time, nothing can have been written. A margin covers clock granularity.
    const double held = std::chrono::duration<double>(SteadyClock::now() - taken_).count();
    return held + 1.0 < LeaseBreakSeconds();
  }

  // mincore: one call, one byte per page. Unknown counts as resident: the mapping then pulls the
  // pages in itself.
  bool Resident(size_t offset, size_t n) const override {
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    const size_t first = offset / page * page;
    const size_t pages = (offset + n - first + page - 1) / page;
    if (pages == 0) return true;
    std::vector<unsigned char> in_core(pages);
    if (mincore(const_cast<uint8_t*>(data()) + first, offset + n - first, in_core.data()) != 0) {
      return true;
    }
    size_t resident = 0;
    for (unsigned char c : in_core) resident += c & 1;
    return resident * 8 >= pages * 7;
  }

 private:
  int fd_;
  std::unique_ptr<PosixMappedFile> map_;
  SteadyClock::time_point taken_;
};

// A private copy of the file (see StableFile).
class CopiedFile : public StableFile {
 public:
  explicit CopiedFile(size_t size) : buffer_(size) {}
  uint8_t* buffer() { return buffer_.data(); }
  const uint8_t* data() const override { return buffer_.data(); }
  size_t size() const override { return buffer_.size(); }
  bool leased() const override { return false; }
  Status ReadBlocks(size_t offset, size_t n, size_t block,
                    const std::function<void(const uint8_t*, size_t)>& fn) const override {
    if (offset > size() || n > size() - offset || block == 0) {
      return Status::InvalidArgument("ReadBlocks: range outside the file");
    }
    ForEachBlock(data() + offset, n, block, fn);
    return Status::Ok();
  }
  bool Resident(size_t, size_t) const override { return true; }
  bool Intact() const override { return true; }

 private:
  LargeBuffer buffer_;
};

// Takes a read lease on `fd` and maps the file; nullptr when no lease can be had (the caller then
// copies). The lease comes first: from then on no writer can change the size or the bytes.
std::unique_ptr<StableFile> TryLease(int fd, uint64_t size) {
  if (size == 0 || LeaseBreakSeconds() <= 0) return nullptr;
  // A lease break is announced with SIGIO unless told otherwise, and SIGIO's default action ends
  // the process. SIGURG's default is to ignore it.
  if (fcntl(fd, F_SETSIG, SIGURG) != 0 || fcntl(fd, F_SETLEASE, F_RDLCK) != 0) return nullptr;
  struct stat st;
  void* addr = MAP_FAILED;
  if (fstat(fd, &st) == 0 && uint64_t(st.st_size) == size) {
    // No MAP_POPULATE: on a cold page cache it would read the whole file, page by page, before
    // returning. ReadBlocks reads cold files with large preads instead.
    addr = mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  }
  if (addr == MAP_FAILED) {
    fcntl(fd, F_SETLEASE, F_UNLCK);
    return nullptr;
  }
  auto map = std::make_unique<PosixMappedFile>(static_cast<const uint8_t*>(addr), size);
  if (!map->Guard()) {
    fcntl(fd, F_SETLEASE, F_UNLCK);
    return nullptr;
  }
  return std::make_unique<LeasedFile>(fd, std::move(map));
}

}  // namespace

Result<std::unique_ptr<StableFile>> Env::OpenStableFile(const std::string& path, uint64_t max_size,
                                                        const HeadCheck& check, bool follow_links) {
  uint64_t size = 0;
  auto fd = OpenForReading(path, max_size, &size, follow_links);
  if (!fd.ok()) return fd.status();
  if (check) {
    uint8_t head[kHeadBytes];
    const size_t want = static_cast<size_t>(std::min<uint64_t>(size, sizeof(head)));
    const size_t got = PreadFully(*fd, head, want, 0);
    Status head_ok = got == want
                         ? check(head, got, size)
                         : Status::IOError("'" + path + "' returned " + std::to_string(got) +
                                           " bytes where its size says " + std::to_string(want) +
                                           ": it is not a session file, or it was truncated while "
                                           "it was read");
    if (!head_ok.ok()) {
      sys_->Close(*fd);
      return head_ok;
    }
  }
  posix_fadvise(*fd, 0, 0, POSIX_FADV_SEQUENTIAL);
  if (read_leases_) {
    if (auto leased = TryLease(*fd, size)) return leased;  // owns fd now
  }
  auto copy = std::make_unique<CopiedFile>(size);
  if (size > 0 && copy->buffer() == nullptr) {
    sys_->Close(*fd);
    return Status::IOError("cannot allocate " + std::to_string(size) + " bytes to read '" + path +
                           "'");
  }
  for (uint64_t done = 0; done < size;) {
    // 1 MiB preads: the fastest cold read (see LeasedFile::ReadBlocks).
    const size_t chunk = static_cast<size_t>(std::min<uint64_t>(size - done, uint64_t{1} << 20));
    if (PreadFully(*fd, copy->buffer() + done, chunk, done) != chunk) {
      const int err = errno;
      sys_->Close(*fd);
      if (err == 0) {
        return Status::IOError("'" + path + "' returned fewer bytes than its size says: it is " +
                               "not a session file, or another process truncated it while it " +
                               "was read");
      }
      return Status::IOError("cannot read '" + path + "': " + ErrnoText(err));
    }
    done += chunk;
  }
  sys_->Close(*fd);
  return std::unique_ptr<StableFile>(std::move(copy));
}

}  // namespace kvstash
