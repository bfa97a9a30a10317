// The prefix store's Redis tier against a real redis-server that the test starts on a free loopback
// port (and stops): chunks published by one store are served to another store with its own
// directory; a value that fails any check is a miss; Redis down, restarted or out of memory costs
// misses, never a failed lookup; the URL's password is never printed.
#include "store/redis_tier.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <mutex>
#include <thread>

#include "format/chunk_format.h"
#include "kvstash/store.h"
#include "store/chain_hash.h"
#include "store/redis_url.h"
#include "store/store_impl.h"

namespace kvstash {
namespace {

using store::ParseRedisUrl;

TEST(RedisUrlTest, ParsesAndNeverShowsThePassword) {
  auto u = ParseRedisUrl("redis://alice:s3cr%40t@cache.internal:6380/2");
  ASSERT_TRUE(u.ok()) << u.status().ToString();
  EXPECT_EQ(u->host, "cache.internal");
  EXPECT_EQ(u->port, 6380);
  EXPECT_EQ(u->user, "alice");
  EXPECT_EQ(u->password, "s3cr@t");
  EXPECT_EQ(u->db, 2);
  EXPECT_EQ(u->Redacted(), "redis://alice:***@cache.internal:6380/2");
  auto plain = ParseRedisUrl("redis://127.0.0.1");
  ASSERT_TRUE(plain.ok());
  EXPECT_EQ(plain->port, 6379);
  EXPECT_EQ(plain->Redacted(), "redis://127.0.0.1:6379");
  auto v6 = ParseRedisUrl("redis://:pw@[::1]:7000");
  ASSERT_TRUE(v6.ok());
  EXPECT_EQ(v6->host, "::1");
  EXPECT_EQ(v6->password, "pw");
  EXPECT_EQ(v6->Redacted(), "redis://:***@::1:7000");
  for (const char* bad :
       {"http://h:1", "redis://", "redis://h:0", "redis://h:70000", "redis://h:12x",
        "redis://h:1/x", "redis://u:@h:1", "redis://h :1", "redis://u:pw%zz@h:1"}) {
    auto r = ParseRedisUrl(bad);
    EXPECT_FALSE(r.ok()) << bad;
    EXPECT_EQ(r.status().message().find("pw"), std::string::npos) << r.status().message();
  }
}

// redis-server on a free loopback port with a temporary directory, no persistence.
class RedisServer {
 public:
  RedisServer() { Start(); }
  ~RedisServer() { Stop(); }
  int port() const { return port_; }
  std::string url() const { return "redis://127.0.0.1:" + std::to_string(port_); }

  void Start() {
    if (port_ == 0) port_ = FreePort();
    dir_ = "/tmp/kvstash-redis-XXXXXX";
    ASSERT_NE(mkdtemp(dir_.data()), nullptr);
    pid_ = fork();
    if (pid_ == 0) {
      const std::string port = std::to_string(port_);
      execlp("redis-server", "redis-server", "--port", port.c_str(), "--bind", "127.0.0.1", "--dir",
             dir_.c_str(), "--save", "", "--appendonly", "no", "--loglevel", "warning",
             static_cast<char*>(nullptr));
      _exit(127);
    }
    for (int i = 0; i < 200 && !Reachable(); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    ASSERT_TRUE(Reachable()) << "redis-server did not start (is it installed? make setup)";
  }
  void Stop() {
    if (pid_ <= 0) return;
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
    pid_ = -1;
    std::system(("rm -rf '" + dir_ + "'").c_str());
  }
  // Binary-safe GET and SET, for planting values.
  std::string Get(const std::string& key) const { return Command({"GET", key}); }
  void Set(const std::string& key, const std::string& value) const { Command({"SET", key, value}); }
  std::string Command(const std::vector<std::string>& args) const {
    redisContext* c = redisConnect("127.0.0.1", port_);
    std::string out;
    if (c == nullptr || c->err != 0) {
      ADD_FAILURE() << "cannot connect to the test's redis-server";
      if (c != nullptr) redisFree(c);
      return out;
    }
    std::vector<const char*> argv;
    std::vector<size_t> lens;
    for (const auto& a : args) {
      argv.push_back(a.data());
      lens.push_back(a.size());
    }
    auto* r = static_cast<redisReply*>(
        redisCommandArgv(c, static_cast<int>(argv.size()), argv.data(), lens.data()));
    if (r != nullptr && (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS)) {
      out.assign(r->str, r->len);
    }
    if (r != nullptr) freeReplyObject(r);
    redisFree(c);
    return out;
  }
  // A command through redis-cli (CONFIG SET, DBSIZE, ...), its output.
  std::string Cli(const std::string& args) const {
    const std::string cmd = "redis-cli -p " + std::to_string(port_) + " " + args + " 2>&1";
    std::string out;
    FILE* p = popen(cmd.c_str(), "r");
    if (p == nullptr) return out;
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
    pclose(p);
    return out;
  }

 private:
  static int FreePort() {
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
  bool Reachable() const {
    const int s = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<uint16_t>(port_));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    const bool ok = connect(s, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
    close(s);
    return ok;
  }
  int port_ = 0;
  pid_t pid_ = -1;
  std::string dir_;
};

constexpr uint32_t kC = 16;

format::ChunkLayout TestLayout() {
  format::ChunkLayout l;
  l.n_layer = 2;
  l.k_type = 1;  // f16
  l.v_type = 1;
  l.k_row_bytes = 64;
  l.v_row_bytes = 64;
  return l;
}

std::string TempDir(const std::string& name) {
  static int counter = 0;
  std::string d = "/tmp/kvstash-rt-XXXXXX";
  EXPECT_NE(mkdtemp(d.data()), nullptr);
  return d + "/" + name + std::to_string(counter++);
}

// A prompt of `chunks` whole chunks in namespace `ns`, its chain and its writes.
struct Prompt {
  format::Hash256 ns{};
  std::vector<int32_t> tokens;
  std::vector<format::Hash256> chain;
  std::vector<ChunkWrite> writes;
};

Prompt MakePrompt(size_t chunks, uint32_t seed) {
  Prompt p;
  p.ns = store::NamespaceHash("redis test namespace " + std::to_string(seed));
  for (size_t i = 0; i < chunks * kC; ++i) p.tokens.push_back(int32_t(seed * 1000 + i));
  p.chain = store::ChainHashes(p.ns, p.tokens.data(), p.tokens.size(), kC);
  const format::ChunkLayout layout = TestLayout();
  for (size_t j = 0; j < chunks; ++j) {
    ChunkWrite w;
    w.header.hash = p.chain[j];
    w.header.parent = j == 0 ? p.ns : p.chain[j - 1];
    w.header.ns = p.ns;
    w.header.index = uint32_t(j + 1);
    w.header.n_tokens = kC;
    w.header.layout = layout;
    w.tokens = std::vector<int32_t>(p.tokens.begin() + j * kC, p.tokens.begin() + (j + 1) * kC);
    w.kv.resize(layout.KvBytes(kC));
    for (size_t b = 0; b < w.kv.size(); ++b) w.kv[b] = char((b * 31 + j * 7 + seed) & 0xff);
    p.writes.push_back(std::move(w));
  }
  return p;
}

struct Warnings {
  std::mutex mu;
  std::vector<std::string> lines;
  std::function<void(const std::string&)> Sink() {
    return [this](const std::string& line) {
      std::lock_guard<std::mutex> lock(mu);
      lines.push_back(line);
    };
  }
  size_t Count(const std::string& needle) {
    std::lock_guard<std::mutex> lock(mu);
    size_t n = 0;
    for (const auto& l : lines) n += l.find(needle) != std::string::npos;
    return n;
  }
};

std::shared_ptr<Store> OpenWithRedis(const std::string& url, Warnings* warnings,
                                     int command_timeout_ms = 1000) {
  StoreOptions o;
  o.chunk_tokens = kC;
  o.sync = false;
  o.redis_url = url;
  o.redis_connect_timeout_ms = 300;
  o.redis_command_timeout_ms = command_timeout_ms;
  if (warnings != nullptr) o.warn = warnings->Sink();
  auto s = Store::Open(TempDir("store"), o);
  EXPECT_TRUE(s.ok()) << s.status().ToString();
  return s.ok() ? *s : nullptr;
}

size_t Lookup(Store& s, const Prompt& p) {
  LoadedPrefix loaded =
      ImplOf(s)->LoadPrefix(p.ns, p.chain, p.tokens.data(), p.chain.size(), TestLayout());
  for (size_t j = 0; j < loaded.chunks.size(); ++j) {
    // What came back is the chunk that was published, byte for byte.
    EXPECT_EQ(
        std::string(reinterpret_cast<const char*>(loaded.chunks[j].kv), loaded.chunks[j].kv_size),
        p.writes[j].kv)
        << j;
  }
  return loaded.chunks.size();
}

TEST(RedisTierTest, AnotherMachinesStoreIsServedFromRedisAndKeptLocally) {
  RedisServer redis;
  const Prompt p = MakePrompt(4, 1);
  {
    auto a = OpenWithRedis(redis.url(), nullptr);
    ASSERT_NE(a, nullptr);
    ImplOf(*a)->Publish(p.ns, "ns", p.writes, p.chain);
    a->WaitForWrites();
    EXPECT_EQ(a->redis_stats().chunks_published, 4u);
  }
  auto b = OpenWithRedis(redis.url(), nullptr);
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(Lookup(*b, p), 4u);
  const RedisStats st = b->redis_stats();
  EXPECT_EQ(st.hits, 4u);
  EXPECT_EQ(st.lookups, 1u);
  // Written to b's own directory: the next lookup is local and does not ask Redis.
  b->WaitForWrites();
  EXPECT_EQ(Lookup(*b, p), 4u);
  EXPECT_EQ(b->redis_stats().lookups, 1u);
  auto stats = b->Stats();
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->chunks, 4u);
  // The second chunk evicted from Redis: a third machine gets the first only.
  const std::string key2 = store::RedisChunkKey(format::HashHex(p.ns), format::HashHex(p.chain[1]));
  redis.Cli("UNLINK " + key2);
  auto c = OpenWithRedis(redis.url(), nullptr);
  EXPECT_EQ(Lookup(*c, p), 1u);
  EXPECT_EQ(c->redis_stats().misses, 1u);
  // cache rm with Redis: the keys go too.
  auto removed = c->Clear();
  ASSERT_TRUE(removed.ok()) << removed.status().ToString();
  EXPECT_EQ(redis.Cli("DBSIZE"), "0\n");
}

// Planted values under a real key: altered bytes, a truncated value, a valid chunk of another
// prompt, junk. Each is a miss (and counted), never restored.
TEST(RedisTierTest, AValueThatFailsAnyCheckIsAMiss) {
  RedisServer redis;
  const Prompt p = MakePrompt(2, 2);
  const Prompt other = MakePrompt(2, 3);
  {
    auto a = OpenWithRedis(redis.url(), nullptr);
    ImplOf(*a)->Publish(p.ns, "ns", p.writes, p.chain);
    ImplOf(*a)->Publish(other.ns, "ns", other.writes, other.chain);
    a->WaitForWrites();
  }
  const std::string key = store::RedisChunkKey(format::HashHex(p.ns), format::HashHex(p.chain[0]));
  const std::string good = redis.Get(key);
  ASSERT_GT(good.size(), format::kChunkHeaderSize);
  std::string flipped = good;
  flipped[flipped.size() - 5] ^= 1;
  const std::string foreign =
      redis.Get(store::RedisChunkKey(format::HashHex(other.ns), format::HashHex(other.chain[0])));
  struct Case {
    const char* what;
    std::string value;
  } cases[] = {
      {"a flipped payload byte", flipped},
      {"a truncated value", good.substr(0, 300)},
      {"another prompt's chunk", foreign},
      {"junk", "junk"},
  };
  for (const auto& c : cases) {
    redis.Set(key, c.value);
    Warnings warnings;
    auto b = OpenWithRedis(redis.url(), &warnings);
    EXPECT_EQ(Lookup(*b, p), 0u) << c.what;
    const RedisStats st = b->redis_stats();
    EXPECT_EQ(st.hits, 0u) << c.what;
    EXPECT_EQ(st.bad_values + st.misses, 1u) << c.what;
  }
}

TEST(RedisTierTest, DownRestartedOrFullRedisCostsMissesNeverFailures) {
  auto redis = std::make_unique<RedisServer>();
  const Prompt p = MakePrompt(3, 4);
  Warnings warnings;
  auto s = OpenWithRedis(redis->url(), &warnings);
  ASSERT_NE(s, nullptr);
  ImplOf(*s)->Publish(p.ns, "ns", p.writes, p.chain);
  s->WaitForWrites();
  ASSERT_TRUE(s->Clear().ok());  // empty both tiers; republish to Redis only through another store
  {
    auto a = OpenWithRedis(redis->url(), nullptr);
    ImplOf(*a)->Publish(p.ns, "ns", p.writes, p.chain);
    a->WaitForWrites();
  }
  // Down: lookups return at once (after the first failed connect) with the local prefix (none).
  redis->Stop();
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < 20; ++i) EXPECT_EQ(Lookup(*s, p), 0u);
  const double ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_LT(ms, 2000) << "20 lookups with Redis down";
  EXPECT_EQ(warnings.Count("is unavailable"), 1u) << "one warning per outage";
  EXPECT_GE(s->redis_stats().errors, 1u);
  EXPECT_EQ(s->redis_stats().outages, 1u);
  EXPECT_FALSE(s->redis_stats().available);
  // Publishing meanwhile is dropped, not blocking.
  ImplOf(*s)->Publish(p.ns, "ns", p.writes, p.chain);
  s->WaitForWrites();
  // Restarted (empty: no persistence): reachable again after the backoff; misses, then hits once
  // something publishes.
  redis->Start();
  std::this_thread::sleep_for(std::chrono::milliseconds(600));
  ASSERT_TRUE(s->Clear().ok());
  EXPECT_EQ(Lookup(*s, p), 0u);
  EXPECT_EQ(warnings.Count("reachable again"), 1u);
  EXPECT_TRUE(s->redis_stats().available);
  // Out of memory, no eviction policy: writes are refused (said once), reads go on.
  redis->Cli("CONFIG SET maxmemory 1");
  redis->Cli("CONFIG SET maxmemory-policy noeviction");
  auto w = OpenWithRedis(redis->url(), &warnings);
  ImplOf(*w)->Publish(p.ns, "ns", p.writes, p.chain);
  w->WaitForWrites();
  EXPECT_EQ(w->redis_stats().chunks_published, 0u);
  EXPECT_GE(w->redis_stats().errors, 1u);
  EXPECT_GE(warnings.Count("refuses writes"), 1u);
  // The local tier still works for the writer itself.
  EXPECT_EQ(Lookup(*w, p), 3u);
}

// A value larger than a part is split under derived keys; a missing part is a miss.
TEST(RedisTierTest, LargeValuesTravelInParts) {
  RedisServer redis;
  store::RedisTierOptions o;
  o.url = *ParseRedisUrl(redis.url());
  o.part_bytes = 1000;
  store::RedisTier tier(o);
  std::string value(2500, 'x');
  for (size_t i = 0; i < value.size(); ++i) value[i] = char(i * 7);
  tier.Publish("kvs:t:a", value);
  tier.Publish("kvs:t:b", std::string(10, 'y'));
  tier.WaitIdle();
  EXPECT_EQ(redis.Cli("EXISTS kvs:t:a:1 kvs:t:a:2"), "2\n");
  auto size_of = [](const std::string& first) -> uint64_t { return first[0] == 'y' ? 10 : 2500; };
  auto got = tier.FetchConsecutive({"kvs:t:a", "kvs:t:b"}, 1 << 20, size_of);
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0], value);
  EXPECT_EQ(got[1], std::string(10, 'y'));
  redis.Cli("UNLINK kvs:t:a:2");
  EXPECT_TRUE(tier.FetchConsecutive({"kvs:t:a"}, 1 << 20, size_of).empty());
  // A value bigger than the caller's bound is refused before its parts are read.
  EXPECT_TRUE(tier.FetchConsecutive({"kvs:t:b"}, 5, size_of).empty());
}

TEST(RedisTierTest, PasswordsAuthenticateAndNeverAppearInMessages) {
  RedisServer redis;
  redis.Cli("CONFIG SET requirepass hunter2");
  Warnings warnings;
  const std::string url = "redis://:wrong@127.0.0.1:" + std::to_string(redis.port());
  auto s = OpenWithRedis(url, &warnings);
  const Prompt p = MakePrompt(1, 5);
  EXPECT_EQ(Lookup(*s, p), 0u);
  ASSERT_EQ(warnings.Count("is unavailable"), 1u);
  EXPECT_EQ(warnings.Count("wrong"), 0u) << warnings.lines[0];
  EXPECT_EQ(warnings.Count(":***@"), 1u) << warnings.lines[0];
  auto good =
      OpenWithRedis("redis://:hunter2@127.0.0.1:" + std::to_string(redis.port()), &warnings);
  ImplOf(*good)->Publish(p.ns, "ns", p.writes, p.chain);
  good->WaitForWrites();
  EXPECT_EQ(good->redis_stats().chunks_published, 1u);
  EXPECT_EQ(warnings.Count("hunter2"), 0u);
}

}  // namespace
}  // namespace kvstash
