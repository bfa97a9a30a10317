// Env::OpenStableFile: the bytes a reader verifies are the bytes it uses. A read lease holds
// writers off while the file is held; without a lease, a private copy is taken.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <string>
#include <thread>

#include "env/env.h"
#include "format/session_format.h"
#include "test_util.h"

namespace kvstash {
namespace {

using Clock = std::chrono::steady_clock;

std::string SomeBytes(size_t n) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>((i * 2654435761u) >> 13);
  return s;
}

std::string Collect(const StableFile& file, size_t offset, size_t n, size_t block) {
  std::string out;
  Status s = file.ReadBlocks(offset, n, block, [&](const uint8_t* p, size_t len) {
    EXPECT_LE(len, block);
    out.append(reinterpret_cast<const char*>(p), len);
  });
  EXPECT_TRUE(s.ok()) << s.ToString();
  return out;
}

class StableFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = testing::TempDir() + "/stable-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name();
    bytes_ = SomeBytes(3 * (size_t{1} << 20) + 4321);
    testing::WriteFile(path_, bytes_);
  }
  std::string path_;
  std::string bytes_;
};

TEST_F(StableFileTest, LeaseHoldsWritersOffUntilReleased) {
  auto file = Env::Default()->OpenStableFile(path_, uint64_t{1} << 30);
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  if (!(*file)->leased()) GTEST_SKIP() << "no read lease on this filesystem or for this user";
  std::atomic<bool> opened{false};
  std::thread writer([&] {
    const int fd = open(path_.c_str(), O_WRONLY);
    opened = true;
    if (fd >= 0) {
      EXPECT_EQ(pwrite(fd, "X", 1, 0), 1);
      close(fd);
    }
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  EXPECT_FALSE(opened.load()) << "a writer opened the file while the lease was held";
  EXPECT_EQ(std::string(reinterpret_cast<const char*>((*file)->data()), (*file)->size()), bytes_);
  // A writer is waiting, but the lease break cannot have timed out: the bytes are still intact.
  EXPECT_TRUE((*file)->Intact());
  file->reset();
  writer.join();
  EXPECT_TRUE(opened.load());
  EXPECT_EQ(testing::ReadFile(path_)[0], 'X');
}

TEST_F(StableFileTest, AFileOpenForWritingIsCopiedInstead) {
  const int fd = open(path_.c_str(), O_WRONLY);
  ASSERT_GE(fd, 0);
  auto file = Env::Default()->OpenStableFile(path_, uint64_t{1} << 30);
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  EXPECT_FALSE((*file)->leased());
  // The copy is private: a write now does not reach it.
  EXPECT_EQ(pwrite(fd, "Y", 1, 0), 1);
  close(fd);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>((*file)->data()), (*file)->size()), bytes_);
  EXPECT_TRUE((*file)->Intact());
}

// Blocks come out in order and complete, from the mapping (page cache hot), through pread (cold)
// and from a private copy, and hash to SectionChecksum's value.
TEST_F(StableFileTest, ReadBlocksHotColdAndCopied) {
  const size_t offset = 100, n = bytes_.size() - 200, block = format::kChecksumBlock;
  const std::string want = bytes_.substr(offset, n);
  for (int mode = 0; mode < 3; ++mode) {
    Env::Default()->set_read_leases(mode != 2);
    if (mode == 1) {
      const int fd = open(path_.c_str(), O_RDONLY);
      ASSERT_GE(fd, 0);
      posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
      close(fd);
    }
    auto file = Env::Default()->OpenStableFile(path_, uint64_t{1} << 30);
    ASSERT_TRUE(file.ok()) << file.status().ToString();
    EXPECT_EQ(Collect(**file, offset, n, block), want) << "mode " << mode;
    format::SectionHasher hasher;
    ASSERT_TRUE((*file)
                    ->ReadBlocks(offset, n, block,
                                 [&](const uint8_t* p, size_t len) { hasher.AddBlock(p, len); })
                    .ok());
    EXPECT_EQ(hasher.Finish(),
              format::SectionChecksum(reinterpret_cast<const uint8_t*>(want.data()), want.size()));
    EXPECT_FALSE(
        (*file)->ReadBlocks(bytes_.size() - 1, 2, block, [](const uint8_t*, size_t) {}).ok());
  }
  Env::Default()->set_read_leases(true);
}

// The head check runs before the rest of the file is read or copied: a 2 GiB sparse file that is
// no session costs one small read, also when no lease can be had.
TEST_F(StableFileTest, HeadIsCheckedBeforeTheFileIsCopied) {
  const std::string sparse = path_ + ".sparse";
  const int fd = open(sparse.c_str(), O_CREAT | O_WRONLY | O_TRUNC, 0644);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(ftruncate(fd, off_t{2} << 30), 0);
  close(fd);
  for (bool leases : {true, false}) {
    Env::Default()->set_read_leases(leases);
    uint64_t seen_size = 0;
    auto file = Env::Default()->OpenStableFile(sparse, uint64_t{4} << 30,
                                               [&](const uint8_t* head, size_t n, uint64_t size) {
                                                 seen_size = size;
                                                 EXPECT_EQ(n, Env::kHeadBytes);
                                                 EXPECT_EQ(head[0], 0);
                                                 return Status::Corruption("not a session");
                                               });
    EXPECT_EQ(file.status().message(), "not a session");
    EXPECT_EQ(seen_size, uint64_t{2} << 30);
  }
  Env::Default()->set_read_leases(true);
  unlink(sparse.c_str());
}

TEST_F(StableFileTest, RefusesWhatIsNotARegularFileOrTooLarge) {
  EXPECT_EQ(Env::Default()->OpenStableFile(testing::TempDir(), 1 << 30).status().code(),
            Status::Code::kInvalidArgument);
  EXPECT_EQ(Env::Default()->OpenStableFile(path_, 10).status().code(), Status::Code::kCorruption);
  EXPECT_EQ(Env::Default()->OpenStableFile(path_ + ".missing", 10).status().code(),
            Status::Code::kNotFound);
}

}  // namespace
}  // namespace kvstash
