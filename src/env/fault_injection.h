// Syscalls that fail, interrupt, shorten or kill on command: the test side of the Env seam.
#ifndef KVSTASH_ENV_FAULT_INJECTION_H_
#define KVSTASH_ENV_FAULT_INJECTION_H_

#include <signal.h>
#include <unistd.h>

#include <cerrno>

#include "env/env.h"

namespace kvstash {

// Counts every open/read/readlink/write/fdatasync/fsync/flock/close/rename/link/mkdir/utimens as
// one step (unlink is never failed: it is how a failed save cleans up, and a real cleanup failure
// cannot be helped).
class FaultInjectionSyscalls : public Syscalls {
 public:
  int fail_at = 0;  // fail step N (1-based) with fail_errno; 0: never
  int fail_errno = EIO;
  int kill_at = 0;           // SIGKILL this process at step N, before the call; 0: never
  size_t max_write = 0;      // each write writes at most this many bytes; 0: no limit
  bool eintr_first = false;  // each call fails once with EINTR before it is made
  int steps = 0;
  int eintr_returned = 0;

  int Open(const char* path, int flags, mode_t mode) override {
    if (int e = Step()) return Err(e);
    return Syscalls::Open(path, flags, mode);
  }
  ssize_t Write(int fd, const void* buf, size_t n) override {
    if (int e = Step()) return Err(e);
    return Syscalls::Write(fd, buf, max_write != 0 && n > max_write ? max_write : n);
  }
  int Fdatasync(int fd) override {
    if (int e = Step()) return Err(e);
    return Syscalls::Fdatasync(fd);
  }
  int Fsync(int fd) override {
    if (int e = Step()) return Err(e);
    return Syscalls::Fsync(fd);
  }
  int Close(int fd) override {
    if (int e = Step(/*may_interrupt=*/false)) {
      Syscalls::Close(fd);  // POSIX: the descriptor is released even when close reports an error
      return Err(e);
    }
    return Syscalls::Close(fd);
  }
  int Rename(const char* from, const char* to) override {
    if (int e = Step()) return Err(e);
    return Syscalls::Rename(from, to);
  }
  ssize_t Read(int fd, void* buf, size_t n) override {
    if (int e = Step()) return Err(e);
    return Syscalls::Read(fd, buf, n);
  }
  ssize_t Readlink(const char* path, char* buf, size_t n) override {
    if (int e = Step()) return Err(e);
    return Syscalls::Readlink(path, buf, n);
  }
  int Flock(int fd, int operation) override {
    if (int e = Step()) return Err(e);
    return Syscalls::Flock(fd, operation);
  }
  int Link(const char* from, const char* to) override {
    if (int e = Step()) return Err(e);
    return Syscalls::Link(from, to);
  }
  int Mkdir(const char* path, mode_t mode) override {
    if (int e = Step()) return Err(e);
    return Syscalls::Mkdir(path, mode);
  }
  int Utimens(const char* path, const struct timespec& mtime) override {
    if (int e = Step()) return Err(e);
    return Syscalls::Utimens(path, mtime);
  }

 private:
  // 0: go ahead; otherwise the errno to fail with.
  int Step(bool may_interrupt = true) {
    if (eintr_first && may_interrupt && !pending_retry_) {
      pending_retry_ = true;
      ++eintr_returned;
      return EINTR;
    }
    pending_retry_ = false;
    ++steps;
    if (kill_at != 0 && steps == kill_at) kill(getpid(), SIGKILL);
    return steps == fail_at ? fail_errno : 0;
  }
  static int Err(int e) {
    errno = e;
    return -1;
  }
  bool pending_retry_ = false;
};

}  // namespace kvstash

#endif  // KVSTASH_ENV_FAULT_INJECTION_H_
