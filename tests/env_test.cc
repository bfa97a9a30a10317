// The Env seam: mapped files survive truncation, special files are refused, atomic writes.
#include "env/env.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>

#include "env/atomic_file.h"
#include "env/fault_injection.h"
#include "test_util.h"

namespace kvstash {
namespace {

using testing::ReadFile;
using testing::TempDir;
using testing::WriteFile;

TEST(EnvTest, TruncationWhileMappedIsReportedNotASignal) {
  const std::string path = TempDir() + "/shrinking";
  WriteFile(path, std::string(1 << 20, 'k'));
  auto mapped = Env::Default()->MapFile(path, 1 << 30);
  ASSERT_TRUE(mapped.ok());
  ASSERT_EQ(truncate(path.c_str(), 4096), 0);  // as another process would
  uint64_t sum = 0;
  for (size_t i = 0; i < (*mapped)->size(); i += 512) sum += (*mapped)->data()[i];
  EXPECT_TRUE((*mapped)->damaged());
  EXPECT_LT(sum, uint64_t{'k'} * ((1 << 20) / 512));  // the lost pages read as zeros
  // An intact mapping is not marked.
  WriteFile(path, std::string(8192, 'k'));
  auto fine = Env::Default()->MapFile(path, 1 << 30);
  ASSERT_TRUE(fine.ok());
  EXPECT_EQ((*fine)->data()[8191], 'k');
  EXPECT_FALSE((*fine)->damaged());
}

TEST(EnvTest, SpecialFilesAreRefusedWithoutBlocking) {
  const std::string fifo = TempDir() + "/fifo";
  ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
  const std::string loop = TempDir() + "/loop";
  ASSERT_EQ(symlink(loop.c_str(), loop.c_str()), 0);
  struct Case {
    std::string path;
    std::string expect;
  } cases[] = {{fifo, "is a FIFO"},
               {TempDir(), "is a directory"},
               {"/dev/null", "character device"},
               {loop, "Too many levels of symbolic links"},
               {TempDir() + "/missing.kvs", "does not exist"}};
  for (const auto& c : cases) {
    auto mapped = Env::Default()->MapFile(c.path, 1 << 30);
    ASSERT_FALSE(mapped.ok()) << c.path;
    EXPECT_NE(mapped.status().message().find(c.expect), std::string::npos)
        << mapped.status().message();
    EXPECT_NE(mapped.status().message().find(c.path), std::string::npos);
  }
}

TEST(EnvTest, HugeSparseFilesAreRefusedBySize) {
  const std::string path = TempDir() + "/sparse";
  int fd = open(path.c_str(), O_CREAT | O_WRONLY, 0644);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(ftruncate(fd, off_t{100} << 30), 0);  // 100 GiB, no blocks
  close(fd);
  auto mapped = Env::Default()->MapFile(path, uint64_t{1} << 30);
  ASSERT_FALSE(mapped.ok());
  EXPECT_EQ(mapped.status().code(), Status::Code::kCorruption);
  unlink(path.c_str());
}

TEST(EnvTest, AtomicWriteReplacesAndCleansStaleTemps) {
  const std::string dir = TempDir() + "/atomic";
  mkdir(dir.c_str(), 0755);
  const std::string path = dir + "/f";
  ASSERT_TRUE(AtomicWriteFile(Env::Default(), path, {"hello ", "world"}).ok());
  EXPECT_EQ(ReadFile(path), "hello world");
  // A temp file of a dead writer (pid 999999 is above the default pid_max... or gone).
  WriteFile(path + ".kvstash-tmp.999999.0", "junk");
  WriteFile(path + ".kvstash-old.999999.3", "junk");
  WriteFile(dir + "/other.kvstash-tmp.999999.0", "not ours");
  ASSERT_TRUE(AtomicWriteFile(Env::Default(), path, {"new"}).ok());
  EXPECT_EQ(ReadFile(path), "new");
  Env::WaitForBackgroundCloses();
  auto names = Env::Default()->ListDir(dir);
  ASSERT_TRUE(names.ok());
  std::sort(names->begin(), names->end());
  EXPECT_EQ(*names, (std::vector<std::string>{"f", "other.kvstash-tmp.999999.0"}));
}

TEST(EnvTest, ShortWritesAndEintrAreRetried) {
  FaultInjectionSyscalls sys;
  sys.max_write = 7;
  sys.eintr_first = true;
  Env env(&sys);
  const std::string path = TempDir() + "/retried";
  const std::string payload(10000, 'r');
  ASSERT_TRUE(AtomicWriteFile(&env, path, {payload, "end"}).ok());
  EXPECT_EQ(ReadFile(path), payload + "end");
  EXPECT_GT(sys.eintr_returned, 1000);
}

TEST(EnvTest, FailedWritesLeaveTheOldFileAtEveryStep) {
  const std::string dir = TempDir() + "/steps";
  mkdir(dir.c_str(), 0755);
  const std::string path = dir + "/f";
  // Count the steps of a clean write, then fail each one. A step whose failure changes nothing
  // (closing a lock or directory descriptor) lets the write succeed: then the file is new.
  FaultInjectionSyscalls counter;
  Env counting_env(&counter);
  WriteFile(path, "old bytes");
  ASSERT_TRUE(AtomicWriteFile(&counting_env, path, {"new bytes"}).ok());
  for (int err : {ENOSPC, EIO, EDQUOT}) {
    int failed = 0, after_rename = 0;
    for (int n = 1; n <= counter.steps; ++n) {
      WriteFile(path, "old bytes");
      FaultInjectionSyscalls sys;
      sys.fail_at = n;
      sys.fail_errno = err;
      Env env(&sys);
      Status s = AtomicWriteFile(&env, path, {"new bytes"});
      EXPECT_EQ(Env::Default()->ListDir(dir)->size(), 1u) << "temp file left at step " << n;
      if (s.ok()) {
        EXPECT_EQ(ReadFile(path), "new bytes") << "step " << n;
        continue;
      }
      ++failed;
      EXPECT_NE(s.message().find(ErrnoText(err)), std::string::npos) << s.message();
      EXPECT_NE(s.message().find("'" + path + "'"), std::string::npos) << s.message();
      // Only the directory fsync comes after the rename; it says the file is new (see
      // atomic_file.h). Every other failure leaves the old bytes.
      if (s.message().find("now holds the new") != std::string::npos) {
        ++after_rename;
        EXPECT_EQ(ReadFile(path), "new bytes") << "step " << n;
      } else {
        EXPECT_EQ(ReadFile(path), "old bytes") << "step " << n;
      }
    }
    // readlink, open temp, open + flock its lock, write, fdatasync, close, open dir, rename, fsync
    EXPECT_GE(failed, 10);
    EXPECT_EQ(after_rename, 1);
  }
}

// A temp file whose writer is alive holds an flock; the writer may be in another PID namespace or
// on another host, so its PID says nothing. (pid 999999 is not a process here.)
TEST(EnvTest, CleanupKeepsATempFileWhoseWriterHoldsItsLock) {
  const std::string dir = TempDir() + "/live";
  mkdir(dir.c_str(), 0755);
  const std::string path = dir + "/f";
  const std::string live = path + ".kvstash-tmp.999999.7";
  WriteFile(live, "half written");
  const int fd = open(live.c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(flock(fd, LOCK_EX), 0);
  WriteFile(path + ".kvstash-tmp.999999.8", "stale");  // nobody holds it
  ASSERT_TRUE(AtomicWriteFile(Env::Default(), path, {"new"}).ok());
  EXPECT_EQ(ReadFile(path), "new");
  EXPECT_EQ(ReadFile(live), "half written") << "a live writer's temp file was deleted";
  EXPECT_NE(access((path + ".kvstash-tmp.999999.8").c_str(), F_OK), 0);
  close(fd);
  // Once its writer is gone, the next save removes it.
  ASSERT_TRUE(AtomicWriteFile(Env::Default(), path, {"newer"}).ok());
  Env::WaitForBackgroundCloses();
  EXPECT_EQ(*Env::Default()->ListDir(dir), std::vector<std::string>{"f"});
}

// Saving through a symbolic link writes the link's target and keeps the link; a dangling link
// creates its target.
TEST(EnvTest, SymlinkDestinationsUpdateTheTarget) {
  const std::string dir = TempDir() + "/links";
  mkdir(dir.c_str(), 0755);
  mkdir((dir + "/real").c_str(), 0755);
  WriteFile(dir + "/real/target", "old");
  ASSERT_EQ(symlink("real/target", (dir + "/link").c_str()), 0);
  ASSERT_TRUE(AtomicWriteFile(Env::Default(), dir + "/link", {"new"}).ok());
  struct stat st;
  ASSERT_EQ(lstat((dir + "/link").c_str(), &st), 0);
  EXPECT_TRUE(S_ISLNK(st.st_mode)) << "the link was replaced by a file";
  EXPECT_EQ(ReadFile(dir + "/real/target"), "new");
  EXPECT_EQ(Env::Default()->ListDir(dir + "/real")->size(), 1u);

  ASSERT_EQ(symlink((dir + "/real/created").c_str(), (dir + "/dangling").c_str()), 0);
  ASSERT_TRUE(AtomicWriteFile(Env::Default(), dir + "/dangling", {"made"}).ok());
  ASSERT_EQ(lstat((dir + "/dangling").c_str(), &st), 0);
  EXPECT_TRUE(S_ISLNK(st.st_mode));
  EXPECT_EQ(ReadFile(dir + "/real/created"), "made");

  // A link to something that is not a regular file is refused, and the thing is left alone.
  ASSERT_EQ(symlink("/dev/null", (dir + "/null").c_str()), 0);
  Status s = AtomicWriteFile(Env::Default(), dir + "/null", {"x"});
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("not a regular file"), std::string::npos) << s.message();
  ASSERT_EQ(stat("/dev/null", &st), 0);
  EXPECT_TRUE(S_ISCHR(st.st_mode));

  // /dev/stdout on a pipe: /proc/self/fd/1 links to "pipe:[...]", a name that exists nowhere.
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  const std::string magic_link = "/proc/self/fd/" + std::to_string(fds[1]);
  s = AtomicWriteFile(Env::Default(), magic_link, {"x"});
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("not a regular file"), std::string::npos) << s.message();
  close(fds[0]);
  close(fds[1]);
}

// Errors name the destination the caller asked for, never the internal temp name.
TEST(EnvTest, ErrorsNameTheDestinationNotTheTempFile) {
  const std::string dir = TempDir() + "/names";
  mkdir(dir.c_str(), 0755);
  const std::string path = dir + "/dest.kvs";
  for (int n = 1; n <= 3; ++n) {  // open, write, fdatasync of the temp file
    FaultInjectionSyscalls sys;
    sys.fail_at = n;
    sys.fail_errno = ENOSPC;
    Env env(&sys);
    Status s = AtomicWriteFile(&env, path, {"bytes"});
    ASSERT_FALSE(s.ok());
    EXPECT_NE(s.message().find("'" + path + "'"), std::string::npos) << s.message();
    EXPECT_EQ(s.message().find(".kvstash-tmp"), std::string::npos) << s.message();
  }
  const std::string long_name = dir + "/" + std::string(250, 'n');
  Status s = AtomicWriteFile(Env::Default(), long_name, {"bytes"});
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("'" + long_name + "'"), std::string::npos) << s.message();
  EXPECT_EQ(s.message().find(".kvstash-tmp"), std::string::npos) << s.message();
}

// Where link() is refused (fs.protected_hardlinks, another user's file in a sticky directory,
// file systems without hard links) a save must still work: it may only create its temp file and
// rename it. (Syscalls has no link() any more; this records every name the save creates.)
class RecordingSyscalls : public FaultInjectionSyscalls {
 public:
  std::vector<std::string> created;
  int Open(const char* path, int flags, mode_t mode) override {
    if (flags & O_CREAT) created.push_back(path);
    return FaultInjectionSyscalls::Open(path, flags, mode);
  }
};

TEST(EnvTest, SavesWithOnlyATempFileAndARename) {
  const std::string dir = TempDir() + "/nolink";
  mkdir(dir.c_str(), 0755);
  const std::string path = dir + "/f";
  WriteFile(path, "old");
  RecordingSyscalls sys;
  Env env(&sys);
  Status s = AtomicWriteFile(&env, path, {"new"});
  ASSERT_TRUE(s.ok()) << s.message();
  EXPECT_EQ(ReadFile(path), "new");
  ASSERT_EQ(sys.created.size(), 1u);
  EXPECT_EQ(sys.created[0].find(path + ".kvstash-tmp."), 0u) << sys.created[0];
  Env::WaitForBackgroundCloses();
  EXPECT_EQ(*Env::Default()->ListDir(dir), std::vector<std::string>{"f"});
}

}  // namespace
}  // namespace kvstash
