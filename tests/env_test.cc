// The Env seam: mapped files survive truncation, special files are refused, atomic writes.
#include "env/env.h"

#include <fcntl.h>
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
  Env::WaitForBackgroundRemovals();
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
  for (int err : {ENOSPC, EIO, EDQUOT}) {
    Env::WaitForBackgroundRemovals();
    WriteFile(path, "old bytes");
    int n = 1;
    for (;; ++n) {
      FaultInjectionSyscalls sys;
      sys.fail_at = n;
      sys.fail_errno = err;
      Env env(&sys);
      Status s = AtomicWriteFile(&env, path, {"new bytes"});
      if (s.ok()) break;
      EXPECT_EQ(ReadFile(path), "old bytes") << "step " << n;
      EXPECT_EQ(Env::Default()->ListDir(dir)->size(), 1u) << "temp file left at step " << n;
      EXPECT_NE(s.message().find(ErrnoText(err)), std::string::npos) << s.message();
    }
    EXPECT_GE(n, 8);  // open, write, fdatasync, close, link, rename, open dir, fsync dir, ...
    EXPECT_EQ(ReadFile(path), "new bytes");
  }
}

}  // namespace
}  // namespace kvstash
