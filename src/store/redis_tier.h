// The prefix store's second tier: chunks in Redis, shared by every machine that points at the same
// server (docs/STORE.md, "The Redis tier"). One key per chunk, kvs:<namespace>:<hash>, whose value
// is the chunk file's bytes (self-checking: the store verifies them as it verifies a file); a
// value over kRedisPartBytes continues under <key>:1, <key>:2, ...
//
// Redis is a cache here, never a dependency: a Redis that is down, slow, restarting, out of memory
// or answering errors costs a miss, never a failed request. Every command has a timeout; a failed
// connection is retried with backoff (250 ms doubling to 30 s) while lookups go straight to a miss;
// each outage is reported once, and its end too. Publishing runs on a thread of its own with a
// bounded queue, SET ... NX (the first writer wins, as with files).
#ifndef KVSTASH_STORE_REDIS_TIER_H_
#define KVSTASH_STORE_REDIS_TIER_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "kvstash/store.h"
#include "store/redis_url.h"

namespace kvstash::store {

inline constexpr size_t kRedisPartBytes = size_t{32} << 20;

struct RedisTierOptions {
  RedisUrl url;
  int connect_timeout_ms = 1000;
  int command_timeout_ms = 3000;
  uint64_t max_pending_bytes = uint64_t{256} << 20;  // publish queue; more is dropped
  size_t part_bytes = kRedisPartBytes;               // tests split small values
  std::function<void(const std::string&)> warn;      // one line per event worth saying
};

// The key of a chunk (and of its parts after the first).
std::string RedisChunkKey(const std::string& ns_hex, const std::string& hash_hex);
std::string RedisPartKey(const std::string& key, size_t part);

class RedisConnection;

class RedisTier {
 public:
  explicit RedisTier(RedisTierOptions options);
  // Publishes what is queued, for at most one command timeout (plus the one in flight), then drops
  // the rest and stops.
  ~RedisTier();
  RedisTier(const RedisTier&) = delete;
  RedisTier& operator=(const RedisTier&) = delete;

  // The values of keys[0..n) for the longest run of keys from the first that all exist (one
  // pipelined EXISTS round, then one pipelined GET round, then the parts of values that have
  // more), each at most `max_value_bytes`. Stops at the first key missing or failing; returns
  // what came before it. Empty while Redis is unreachable.
  // `size_of(first_part)`: the whole value's size its first part claims (0: refuse it); the value
  // is whole when its parts add up to exactly that.
  std::vector<std::string> FetchConsecutive(
      const std::vector<std::string>& keys, size_t max_value_bytes,
      const std::function<uint64_t(const std::string& first_part)>& size_of);

  // Queues `value` for SET key value NX in the background (split into parts when large). Dropped
  // (counted) when the queue holds max_pending_bytes.
  void Publish(std::string key, std::string value);
  // Blocks until the queue is empty (every publish done or dropped).
  void WaitIdle();
  // Deletes every key matching `pattern` (SCAN + UNLINK, in batches); returns how many.
  Result<uint64_t> Unlink(const std::string& pattern);

  // The store's verdict on values FetchConsecutive returned: `hits` used, `bad` refused by the
  // chunk checks (each a miss).
  void Counted(uint64_t hits, uint64_t bad, int64_t check_ns) {
    counters_.hits += hits;
    counters_.bad += bad;
    counters_.check_ns += static_cast<uint64_t>(check_ns);
  }

  RedisStats stats() const;
  const RedisUrl& url() const { return options_.url; }

 private:
  // A connection that works, or nullptr (then a miss): reconnects after the backoff.
  RedisConnection* Usable(std::unique_ptr<RedisConnection>& conn);
  void Failed(std::unique_ptr<RedisConnection>& conn, const std::string& why);
  // Whether a command round succeeded; a failure is reported (Failed) and drops `conn`.
  template <typename R>
  bool Succeeded(const R& round, std::unique_ptr<RedisConnection>& conn) {
    if (!round.ok()) Failed(conn, round.status().message());
    return round.ok();
  }
  // FetchConsecutive's rounds, under lookup_mu_: how many of `keys` exist in a run from the first
  // (0 also when Redis failed); the whole value of `key` whose first part is `value` (false: a
  // part is missing or Redis failed, counted).
  size_t CountExisting(RedisConnection* conn, const std::vector<std::string>& keys);
  bool JoinParts(RedisConnection* conn, const std::string& key, uint64_t size, std::string* value);
  void Recovered();
  void PublishLoop();
  bool PublishOne(const std::string& key, const std::string& value);

  RedisTierOptions options_;

  // Outage state, shared by both connections so that a dead server is not hammered twice.
  mutable std::mutex state_mu_;
  bool down_ = false;
  int64_t retry_at_ns_ = 0;
  int64_t backoff_ms_ = 250;
  bool oom_warned_ = false;

  std::mutex lookup_mu_;  // one lookup at a time on its connection
  std::unique_ptr<RedisConnection> lookup_;

  std::mutex queue_mu_;
  std::condition_variable queue_cv_, idle_cv_;
  std::deque<std::pair<std::string, std::string>> queue_;
  uint64_t queued_bytes_ = 0;
  bool busy_ = false;
  bool stop_ = false;
  int64_t stop_deadline_ns_ = 0;                // stopping: when what is still queued is dropped
  std::unique_ptr<RedisConnection> publisher_;  // the publish thread's own

  struct Counters {
    std::atomic<uint64_t> lookups{0}, hits{0}, misses{0}, bad{0}, errors{0}, outages{0};
    std::atomic<uint64_t> bytes_read{0}, fetch_ns{0}, check_ns{0};
    std::atomic<uint64_t> published{0}, existing{0}, dropped{0}, bytes_written{0};
  };
  mutable Counters counters_;
  std::thread thread_;  // last: started once everything above exists
};

}  // namespace kvstash::store

#endif  // KVSTASH_STORE_REDIS_TIER_H_
