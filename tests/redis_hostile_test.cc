// The Redis tier against a hostile or broken server (tests/fake_redis.py, which speaks just enough
// RESP): a reply trickled one byte at a time, each within the socket timeout, must not hold a
// lookup or the tier's shutdown for longer than the command timeout allows; a reply announcing a
// gigabyte must not be buffered whole. (All three held or ballooned before: found by attack.)
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <thread>

#include "store/redis_tier.h"
#include "store/redis_url.h"

#ifndef KVSTASH_FAKE_REDIS
#error "KVSTASH_FAKE_REDIS: the path of tests/fake_redis.py (tests/CMakeLists.txt)"
#endif

namespace kvstash {
namespace {

int FreePort() {
  const int s = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t len = sizeof a;
  getsockname(s, reinterpret_cast<sockaddr*>(&a), &len);
  close(s);
  return ntohs(a.sin_port);
}

// fake_redis.py on a free port in `mode` ("trickle" with a delay per byte, or "huge").
struct FakeRedis {
  pid_t pid = -1;
  int port = FreePort();
  // Returns once the server said "ready" (it listens), however long a busy machine takes.
  FakeRedis(const char* mode, const char* delay) {
    int ready[2];
    if (pipe(ready) != 0) ADD_FAILURE() << "pipe";
    pid = fork();
    if (pid == 0) {
      dup2(ready[1], STDOUT_FILENO);
      close(ready[0]);
      execlp("python3", "python3", KVSTASH_FAKE_REDIS, std::to_string(port).c_str(), mode, delay,
             static_cast<char*>(nullptr));
      _exit(127);
    }
    close(ready[1]);
    char c = 0;
    EXPECT_EQ(read(ready[0], &c, 1), 1) << "fake_redis.py did not start";
    close(ready[0]);
  }
  ~FakeRedis() {
    kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
  }
  store::RedisTierOptions Options(int command_timeout_ms) const {
    store::RedisTierOptions o;
    o.url = *store::ParseRedisUrl("redis://127.0.0.1:" + std::to_string(port));
    o.connect_timeout_ms = 300;
    o.command_timeout_ms = command_timeout_ms;
    return o;
  }
};

double SecondsSince(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

uint64_t SizeOfValue(const std::string& v) { return v.size(); }

TEST(RedisHostileTest, ATrickledReplyEndsALookupWithinTheCommandTimeout) {
  FakeRedis fake("trickle", "0.3");
  store::RedisTier tier(fake.Options(1000));
  const auto t0 = std::chrono::steady_clock::now();
  auto values = tier.FetchConsecutive({"kvs:a:b"}, 1 << 20, SizeOfValue);
  const double took = SecondsSince(t0);
  EXPECT_LT(took, 5.0) << "a lookup with a 1 s command timeout took " << took << " s";
  EXPECT_TRUE(values.empty());
  EXPECT_GE(tier.stats().errors, 1u);
}

TEST(RedisHostileTest, ShutdownWithQueuedPublishesIsBounded) {
  FakeRedis fake("trickle", "0.3");
  const auto t0 = std::chrono::steady_clock::now();
  {
    store::RedisTier tier(fake.Options(1000));
    for (int i = 0; i < 20; ++i) tier.Publish("kvs:a:" + std::to_string(i), std::string(100, 'v'));
  }
  const double took = SecondsSince(t0);
  EXPECT_LT(took, 10.0) << "~RedisTier took " << took << " s";
}

TEST(RedisHostileTest, AnOversizedReplyIsRefusedBeforeItIsRead) {
  FakeRedis fake("huge", "0");  // EXISTS 1, then GET announces and sends 1 GiB
  store::RedisTier tier(fake.Options(3000));
  auto values = tier.FetchConsecutive({"kvs:a:b"}, 1 << 20, SizeOfValue);
  EXPECT_TRUE(values.empty());
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  EXPECT_LT(u.ru_maxrss, 256 * 1024)
      << "peak RSS " << u.ru_maxrss / 1024 << " MiB for a 1 MiB bound";
}

}  // namespace
}  // namespace kvstash
