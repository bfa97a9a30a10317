// Session::Save under injected faults and SIGKILL: the destination always holds the old or the
// new complete file, never a mix, and no temp file survives the next save.
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>

#include "engine/session_internals.h"
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
    Env::WaitForBackgroundCloses();
    return Env::Default()->ListDir(dir_)->size();
  }

  std::string dir_, path_, old_bytes_, new_bytes_;
  std::unique_ptr<Session> session_;
};

TEST_F(SaveFaultTest, EveryFailingStepLeavesTheOldFileAndNoTemp) {
  // Count the steps of a clean save, then fail each one.
  FaultInjectionSyscalls counter;
  counter.max_write = 16384;  // so that faults also land in the middle of the KV payload
  Env counting_env(&counter);
  SaveOptions count_options;
  ASSERT_TRUE(SessionInternals::Save(*session_, path_, count_options, &counting_env).ok());
  testing::WriteFile(path_, old_bytes_);
  int points = 0;
  for (int err : {ENOSPC, EIO, EDQUOT}) {
    for (int n = 1; n <= counter.steps; ++n) {
      FaultInjectionSyscalls sys;
      sys.fail_at = n;
      sys.fail_errno = err;
      sys.max_write = 16384;
      Env env(&sys);
      SaveOptions options;
      Status s = SessionInternals::Save(*session_, path_, options, &env);
      ASSERT_EQ(FilesInDir(), 1u) << "temp file left at step " << n;
      // Closing a read-only, lock or directory descriptor: a failure there changes nothing.
      // The directory fsync comes after the rename: the file is new and the error says so.
      const bool is_new = s.ok() || s.message().find("now holds the new") != std::string::npos;
      ASSERT_EQ(ReadFile(path_), is_new ? new_bytes_ : old_bytes_)
          << "step " << n << " errno " << err << ": " << s.message();
      ASSERT_TRUE(Session::Open(TinyModel(), path_).ok());
      if (is_new) testing::WriteFile(path_, old_bytes_);
      if (s.ok()) continue;
      ++points;
      EXPECT_EQ(s.code(), Status::Code::kIOError);
      EXPECT_NE(s.message().find("'" + path_ + "'"), std::string::npos) << s.message();
      EXPECT_EQ(s.message().find(".kvstash-tmp"), std::string::npos) << s.message();
      // The failed save leaves a usable session.
      ASSERT_TRUE(Session::Create(TinyModel()).value()->AppendTokens({1}).ok());
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
  ASSERT_TRUE(SessionInternals::Save(*session_, path_, options, &env).ok());
  EXPECT_EQ(ReadFile(path_), new_bytes_);
  EXPECT_GT(sys.eintr_returned, 100);
}

TEST_F(SaveFaultTest, KilledWritersLeaveOldOrNewNeverAMix) {
  // Count the steps of one save, then kill a child at each of them.
  FaultInjectionSyscalls counter;
  counter.max_write = 2048;
  Env counting_env(&counter);
  SaveOptions count_options;
  ASSERT_TRUE(
      SessionInternals::Save(*session_, dir_ + "/count.kvs", count_options, &counting_env).ok());
  unlink((dir_ + "/count.kvs").c_str());
  const int steps = counter.steps;
  ASSERT_GT(steps, 5);

  int kills = 0;
  // Writes are split into 2 KiB pieces so that there are kill points all through the data.
  for (int k = 1; k <= steps; ++k) {
    testing::WriteFile(path_, old_bytes_);
    Env::WaitForBackgroundCloses();  // no lock of the closer is held across fork()
    const pid_t child = fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
      FaultInjectionSyscalls sys;
      sys.kill_at = k;
      sys.max_write = 2048;
      Env env(&sys);
      SaveOptions options;
      (void)SessionInternals::Save(*session_, path_, options, &env);  // killed before it returns
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
  Env::WaitForBackgroundCloses();
  EXPECT_EQ(FilesInDir(), 1u);
}

// The destination is never the model, even with replace_any, and through any other name for it.
TEST_F(SaveFaultTest, NeverReplacesTheModelFile) {
  const std::string model_path = TinyModel()->path();
  const std::string model_bytes = ReadFile(model_path);
  const std::string hard = dir_ + "/model-hardlink.gguf";
  const std::string soft = dir_ + "/model-symlink.gguf";
  ASSERT_EQ(link(model_path.c_str(), hard.c_str()), 0);
  ASSERT_EQ(symlink(model_path.c_str(), soft.c_str()), 0);
  for (const std::string& dest : {model_path, hard, soft}) {
    Status s = session_->Save(dest);
    ASSERT_FALSE(s.ok()) << dest;
    EXPECT_NE(s.message().find("model"), std::string::npos) << s.message();
    EXPECT_EQ(ReadFile(model_path), model_bytes) << "the model was replaced through " << dest;
  }
  unlink(hard.c_str());
  unlink(soft.c_str());
}

// An existing file that is not a kvstash session is not replaced silently.
TEST_F(SaveFaultTest, RefusesToReplaceAFileThatIsNotASession) {
  const std::string notes = dir_ + "/notes.txt";
  testing::WriteFile(notes, "my notes, not a session");
  Status s = session_->Save(notes);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("'" + notes + "'"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("not a kvstash session"), std::string::npos) << s.message();
  EXPECT_EQ(ReadFile(notes), "my notes, not a session");
  // An empty file is not a session either.
  testing::WriteFile(notes, "");
  EXPECT_FALSE(session_->Save(notes).ok());
  // Replacing a session is what Save is for.
  ASSERT_TRUE(session_->Save(path_).ok());
  EXPECT_EQ(ReadFile(path_), new_bytes_);
}

// A cancellation in the middle of the write (a signal handler sets the flag) stops the save:
// kCancelled, the old bytes, no temp file.
class CancellingSyscalls : public FaultInjectionSyscalls {
 public:
  std::atomic<bool> cancel{false};
  int writes = 0;
  ssize_t Write(int fd, const void* buf, size_t n) override {
    if (++writes == 2) cancel.store(true);
    return FaultInjectionSyscalls::Write(fd, buf, n);
  }
};

TEST_F(SaveFaultTest, CancellationMidWriteKeepsTheOldFile) {
  CancellingSyscalls sys;
  sys.max_write = 1024;  // the flag turns true while the header part is being written
  Env env(&sys);
  SaveOptions options;
  options.cancel = &sys.cancel;
  Status s = SessionInternals::Save(*session_, path_, options, &env);
  ASSERT_EQ(s.code(), Status::Code::kCancelled) << s.message();
  EXPECT_NE(s.message().find("'" + path_ + "'"), std::string::npos) << s.message();
  EXPECT_EQ(ReadFile(path_), old_bytes_);
  EXPECT_EQ(FilesInDir(), 1u);
  // Cancelled before it starts: nothing is created.
  Status before = session_->Save(dir_ + "/never.kvs", options);
  EXPECT_EQ(before.code(), Status::Code::kCancelled);
  EXPECT_EQ(FilesInDir(), 1u);
}

// replace_any (the CLI's --force) replaces a file that is not a session.
TEST_F(SaveFaultTest, ReplaceAnyReplacesAFileThatIsNotASession) {
  const std::string notes = dir_ + "/notes.txt";
  testing::WriteFile(notes, "my notes");
  SaveOptions options;
  options.replace_any = true;
  ASSERT_TRUE(session_->Save(notes, options).ok());
  EXPECT_EQ(ReadFile(notes), new_bytes_);
}

}  // namespace
}  // namespace kvstash
