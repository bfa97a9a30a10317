// Session::Save under injected faults and SIGKILL: the destination always holds the old or the
// new complete file, never a mix, and no temp file survives the next save.
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "env/env.h"
#include "env/fault_injection.h"
#include "test_util.h"

namespace kvstash {
namespace {

using testing::kPrefix;
using testing::ReadFile;
using testing::TempDir;
using testing::TinyModel;

class SaveFaultTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = TempDir() + "/" + ::testing::UnitTest::GetInstance()->current_test_info()->name();
    mkdir(dir_.c_str(), 0755);
    path_ = dir_ + "/s.kvs";
    // The old file: a shorter session. The new one: the full prefix.
    auto old_session = Session::Create(TinyModel());
    ASSERT_TRUE((*old_session)->Append("An old, shorter prefix.").ok());
    ASSERT_TRUE((*old_session)->Save(path_).ok());
    old_bytes_ = ReadFile(path_);
    session_ = std::move(Session::Create(TinyModel()).value());
    ASSERT_TRUE(session_->Append(kPrefix).ok());
    ASSERT_TRUE(session_->Save(dir_ + "/reference.kvs").ok());
    new_bytes_ = ReadFile(dir_ + "/reference.kvs");
    unlink((dir_ + "/reference.kvs").c_str());
    ASSERT_NE(old_bytes_, new_bytes_);
  }
  size_t FilesInDir() {
    Env::WaitForBackgroundRemovals();
    return Env::Default()->ListDir(dir_)->size();
  }

  std::string dir_, path_, old_bytes_, new_bytes_;
  std::unique_ptr<Session> session_;
};

TEST_F(SaveFaultTest, EveryFailingStepLeavesTheOldFileAndNoTemp) {
  int points = 0;
  for (int err : {ENOSPC, EIO, EDQUOT}) {
    for (int n = 1;; ++n) {
      FaultInjectionSyscalls sys;
      sys.fail_at = n;
      sys.fail_errno = err;
      sys.max_write = 16384;  // so that faults also land in the middle of the KV payload
      Env env(&sys);
      SaveOptions options;
      options.env = &env;
      Status s = session_->Save(path_, options);
      if (s.ok()) {
        EXPECT_EQ(ReadFile(path_), new_bytes_);
        ASSERT_TRUE(Session::Create(TinyModel()).value()->AppendTokens({1}).ok());
        testing::WriteFile(path_, old_bytes_);  // reset for the next errno
        break;
      }
      ++points;
      EXPECT_EQ(s.code(), Status::Code::kIOError);
      EXPECT_NE(s.message().find(path_.substr(0, path_.size() - 6)), std::string::npos)
          << s.message();
      ASSERT_EQ(ReadFile(path_), old_bytes_) << "step " << n << " errno " << err;
      ASSERT_EQ(FilesInDir(), 1u) << "temp file left at step " << n;
      // The failed save leaves a usable session and the old file still opens.
      ASSERT_TRUE(Session::Open(TinyModel(), path_).ok());
    }
  }
  RecordProperty("fault_points", points);
  EXPECT_GE(points, 45);
}

TEST_F(SaveFaultTest, ShortWritesAndEintrStillSave) {
  FaultInjectionSyscalls sys;
  sys.max_write = 7;
  sys.eintr_first = true;
  Env env(&sys);
  SaveOptions options;
  options.env = &env;
  ASSERT_TRUE(session_->Save(path_, options).ok());
  EXPECT_EQ(ReadFile(path_), new_bytes_);
  EXPECT_GT(sys.eintr_returned, 100);
}

TEST_F(SaveFaultTest, KilledWritersLeaveOldOrNewNeverAMix) {
  // Count the steps of one save, then kill a child at each of them.
  FaultInjectionSyscalls counter;
  counter.max_write = 2048;
  Env counting_env(&counter);
  SaveOptions count_options;
  count_options.env = &counting_env;
  ASSERT_TRUE(session_->Save(dir_ + "/count.kvs", count_options).ok());
  unlink((dir_ + "/count.kvs").c_str());
  const int steps = counter.steps;
  ASSERT_GT(steps, 5);

  int kills = 0;
  // Writes are split into 2 KiB pieces so that there are kill points all through the data.
  for (int k = 1; k <= steps; ++k) {
    testing::WriteFile(path_, old_bytes_);
    Env::WaitForBackgroundRemovals();  // no lock of the remover is held across fork()
    const pid_t child = fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
      FaultInjectionSyscalls sys;
      sys.kill_at = k;
      sys.max_write = 2048;
      Env env(&sys);
      SaveOptions options;
      options.env = &env;
      (void)session_->Save(path_, options);  // killed before it returns
      _exit(0);
    }
    int wstatus = 0;
    waitpid(child, &wstatus, 0);
    const bool killed = WIFSIGNALED(wstatus) && WTERMSIG(wstatus) == SIGKILL;
    kills += killed;
    const std::string now = ReadFile(path_);
    ASSERT_TRUE(now == old_bytes_ || now == new_bytes_) << "mixed file after a kill at step " << k;
    ASSERT_TRUE(Session::Open(TinyModel(), path_).ok()) << "step " << k;
  }
  EXPECT_EQ(kills, steps);
  RecordProperty("kill_points", kills);
  // The next save in the folder removes what the killed writers left.
  ASSERT_TRUE(session_->Save(path_).ok());
  Env::WaitForBackgroundRemovals();
  EXPECT_EQ(FilesInDir(), 1u);
}

}  // namespace
}  // namespace kvstash
