#include "store/redis_tier.h"

#include <hiredis/hiredis.h>
#include <poll.h>

#include <chrono>

namespace kvstash::store {
namespace {

int64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

timeval Millis(int ms) {
  timeval tv;
  tv.tv_sec = ms / 1000;
  tv.tv_usec = (ms % 1000) * 1000;
  return tv;
}

struct ReplyDeleter {
  void operator()(redisReply* r) const {
    if (r != nullptr) freeReplyObject(r);
  }
};
using Reply = std::unique_ptr<redisReply, ReplyDeleter>;

}  // namespace

std::string RedisChunkKey(const std::string& ns_hex, const std::string& hash_hex) {
  return "kvs:" + ns_hex + ":" + hash_hex;
}

std::string RedisPartKey(const std::string& key, size_t part) {
  return part == 0 ? key : key + ":" + std::to_string(part);
}

// One hiredis connection: connect (AUTH, SELECT) with timeouts, and pipelined commands. Any
// failure leaves it unusable: the caller drops it and reconnects after the backoff.
class RedisConnection {
 public:
  static Result<std::unique_ptr<RedisConnection>> Connect(const RedisTierOptions& o) {
    redisContext* c =
        redisConnectWithTimeout(o.url.host.c_str(), o.url.port, Millis(o.connect_timeout_ms));
    if (c == nullptr) return Status::IOError("cannot allocate a Redis connection");
    std::unique_ptr<RedisConnection> conn(new RedisConnection(c));
    if (c->err != 0) return Status::IOError(std::string("cannot connect: ") + c->errstr);
    if (redisSetTimeout(c, Millis(o.command_timeout_ms)) != REDIS_OK)
      return Status::IOError("cannot set the command timeout");
    conn->timeout_ms_ = o.command_timeout_ms;
    std::vector<std::vector<std::string>> setup;
    if (!o.url.password.empty()) {
      if (o.url.user.empty()) {
        setup.push_back({"AUTH", o.url.password});
      } else {
        setup.push_back({"AUTH", o.url.user, o.url.password});
      }
    }
    if (o.url.db != 0) setup.push_back({"SELECT", std::to_string(o.url.db)});
    if (setup.empty()) setup.push_back({"PING"});
    auto replies = conn->Pipeline(setup);
    if (!replies.ok()) return replies.status();
    for (const Reply& r : *replies) {
      if (r->type == REDIS_REPLY_ERROR) {
        // The server's words (WRONGPASS, NOAUTH, ...) never contain the password.
        return Status::IOError(std::string("the server refused the connection: ") +
                               std::string(r->str, r->len));
      }
    }
    return conn;
  }

  ~RedisConnection() { redisFree(c_); }

  // Sends every command, then reads every reply, each at most `max_reply_bytes` and within the
  // command timeout plus a second per MiB it holds: a server that trickles a reply (each byte
  // within the socket's timeout) or announces a huge one fails the pipeline instead of holding
  // the caller for hours or filling its memory. Error replies are replies (the caller decides); a
  // connection, timeout or size failure is a Status, and leaves the connection unusable.
  Result<std::vector<Reply>> Pipeline(const std::vector<std::vector<std::string>>& commands,
                                      size_t max_reply_bytes = size_t{1} << 20) {
    for (const auto& cmd : commands) {
      std::vector<const char*> argv;
      std::vector<size_t> lens;
      for (const std::string& a : cmd) {
        argv.push_back(a.data());
        lens.push_back(a.size());
      }
      if (redisAppendCommandArgv(c_, static_cast<int>(argv.size()), argv.data(), lens.data()) !=
          REDIS_OK) {
        return Error("cannot queue a command");
      }
    }
    for (int done = 0; !done;) {
      if (redisBufferWrite(c_, &done) != REDIS_OK) return Error("cannot send the commands");
    }
    std::vector<Reply> replies;
    for (size_t i = 0; i < commands.size(); ++i) {
      auto reply = ReadReply(max_reply_bytes);
      if (!reply.ok()) return reply.status();
      replies.push_back(std::move(reply.value()));
    }
    return replies;
  }

 private:
  explicit RedisConnection(redisContext* c) : c_(c) {}

  // One reply, under the bounds Pipeline describes.
  Result<Reply> ReadReply(size_t max_reply_bytes) {
    const auto start = std::chrono::steady_clock::now();
    for (;;) {
      void* raw = nullptr;
      if (redisGetReplyFromReader(c_, &raw) != REDIS_OK) return Error("a malformed reply");
      if (raw != nullptr) return Reply(static_cast<redisReply*>(raw));
      const size_t pending = c_->reader->len - c_->reader->pos;
      if (pending > max_reply_bytes + 4096) {
        return Status::IOError("a reply larger than " + std::to_string(max_reply_bytes) + " bytes");
      }
      const double allowed_ms = timeout_ms_ + pending / 1048.576;  // + 1 s per MiB received
      const double spent_ms =
          std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
              .count();
      if (spent_ms >= allowed_ms) return Status::IOError("a reply took too long");
      pollfd p{c_->fd, POLLIN, 0};
      const int ready = poll(&p, 1, static_cast<int>(allowed_ms - spent_ms) + 1);
      if (ready == 0) return Status::IOError("no reply within the command timeout");
      if (ready < 0 || redisBufferRead(c_) != REDIS_OK) return Error("the connection failed");
    }
  }
  Status Error(const std::string& what) const {
    return Status::IOError(what + (c_->err != 0 ? std::string(": ") + c_->errstr : ""));
  }
  redisContext* c_;
  int timeout_ms_ = 3000;
};

RedisTier::RedisTier(RedisTierOptions options) : options_(std::move(options)) {
  thread_ = std::thread([this] { PublishLoop(); });
}

RedisTier::~RedisTier() {
  {
    std::lock_guard<std::mutex> lock(queue_mu_);
    stop_ = true;
  }
  queue_cv_.notify_all();
  thread_.join();
}

RedisConnection* RedisTier::Usable(std::unique_ptr<RedisConnection>& conn) {
  {
    std::lock_guard<std::mutex> lock(state_mu_);
    // An outage the other connection saw: this one, idle meanwhile, is as dead (its first command
    // would fail and report the same outage twice). Reconnect when the backoff allows.
    if (conn && !down_) return conn.get();
    conn.reset();
    if (down_ && NowNs() < retry_at_ns_) return nullptr;
  }
  auto made = RedisConnection::Connect(options_);
  if (!Succeeded(made, conn)) return nullptr;
  conn = std::move(made.value());
  Recovered();
  return conn.get();
}

void RedisTier::Failed(std::unique_ptr<RedisConnection>& conn, const std::string& why) {
  conn.reset();
  ++counters_.errors;
  bool first = false;
  {
    std::lock_guard<std::mutex> lock(state_mu_);
    first = !down_;
    if (first) backoff_ms_ = 250;
    down_ = true;
    retry_at_ns_ = NowNs() + backoff_ms_ * 1000000;
    backoff_ms_ = std::min<int64_t>(backoff_ms_ * 2, 30000);
  }
  if (first) {
    ++counters_.outages;
    if (options_.warn) {
      options_.warn("kvstash: Redis at " + options_.url.Redacted() + " is unavailable (" + why +
                    "); continuing with the local store, retrying in the background");
    }
  }
}

void RedisTier::Recovered() {
  bool was_down = false;
  {
    std::lock_guard<std::mutex> lock(state_mu_);
    was_down = down_;
    down_ = false;
    backoff_ms_ = 250;
  }
  if (was_down && options_.warn) {
    options_.warn("kvstash: Redis at " + options_.url.Redacted() + " is reachable again");
  }
}

std::vector<std::string> RedisTier::FetchConsecutive(
    const std::vector<std::string>& keys, size_t max_value_bytes,
    const std::function<uint64_t(const std::string&)>& size_of) {
  std::vector<std::string> values;
  if (keys.empty()) return values;
  std::lock_guard<std::mutex> lock(lookup_mu_);
  RedisConnection* conn = Usable(lookup_);
  if (conn == nullptr) return values;
  ++counters_.lookups;
  const int64_t start = NowNs();
  struct Timed {  // the rounds' time, however the lookup ends
    std::atomic<uint64_t>* total;
    int64_t start;
    ~Timed() { *total += static_cast<uint64_t>(NowNs() - start); }
  } timed{&counters_.fetch_ns, start};
  const size_t n = CountExisting(conn, keys);
  if (n == 0) return values;
  std::vector<std::vector<std::string>> cmds;
  for (size_t i = 0; i < n; ++i) cmds.push_back({"GET", keys[i]});
  const size_t part_bound = std::min(max_value_bytes, options_.part_bytes);
  auto got = conn->Pipeline(cmds, part_bound);
  if (!Succeeded(got, lookup_)) return values;
  for (size_t i = 0; i < n; ++i) {
    const redisReply* r = (*got)[i].get();
    // Evicted between EXISTS and GET: a miss. Not a string, or not the size its header says: a
    // bad value. Either way the run ends here.
    if (r->type == REDIS_REPLY_NIL) {
      ++counters_.misses;
      break;
    }
    if (r->type != REDIS_REPLY_STRING || r->len > max_value_bytes) {
      ++counters_.bad;
      break;
    }
    std::string value(r->str, r->len);
    const uint64_t size = size_of(value);
    const size_t part = options_.part_bytes;
    if (size == 0 || size > max_value_bytes || value.size() != std::min<uint64_t>(size, part)) {
      ++counters_.bad;
      break;
    }
    if (size > part && !JoinParts(conn, keys[i], size, &value)) break;
    counters_.bytes_read += value.size();
    values.push_back(std::move(value));
  }
  return values;
}

size_t RedisTier::CountExisting(RedisConnection* conn, const std::vector<std::string>& keys) {
  std::vector<std::vector<std::string>> cmds;
  for (const std::string& k : keys) cmds.push_back({"EXISTS", k});
  auto exists = conn->Pipeline(cmds);
  if (!Succeeded(exists, lookup_)) return 0;
  size_t n = 0;
  while (n < exists->size() && (*exists)[n]->type == REDIS_REPLY_INTEGER &&
         (*exists)[n]->integer == 1) {
    ++n;
  }
  if (n < keys.size()) {
    ++counters_.misses;
    // LOADING (a restarted server reading its dump), NOAUTH, ...: an error, and a miss.
    if ((*exists)[n]->type == REDIS_REPLY_ERROR) ++counters_.errors;
  }
  return n;
}

bool RedisTier::JoinParts(RedisConnection* conn, const std::string& key, uint64_t size,
                          std::string* value) {
  const size_t part = options_.part_bytes;
  const size_t parts = static_cast<size_t>((size + part - 1) / part);
  std::vector<std::vector<std::string>> more;
  for (size_t p = 1; p < parts; ++p) more.push_back({"GET", RedisPartKey(key, p)});
  auto rest = conn->Pipeline(more, part);
  if (!Succeeded(rest, lookup_)) return false;
  for (const Reply& piece : *rest) {
    if (piece->type != REDIS_REPLY_STRING || value->size() + piece->len > size) break;
    value->append(piece->str, piece->len);  // a missing part (evicted alone) ends the value
  }
  if (value->size() != size) {
    ++counters_.misses;
    return false;
  }
  return true;
}

void RedisTier::Publish(std::string key, std::string value) {
  {
    std::lock_guard<std::mutex> lock(queue_mu_);
    if (queued_bytes_ + value.size() > options_.max_pending_bytes) {
      ++counters_.dropped;
      return;
    }
    queued_bytes_ += value.size();
    queue_.emplace_back(std::move(key), std::move(value));
  }
  queue_cv_.notify_one();
}

void RedisTier::WaitIdle() {
  std::unique_lock<std::mutex> lock(queue_mu_);
  idle_cv_.wait(lock, [this] { return queue_.empty() && !busy_; });
}

void RedisTier::PublishLoop() {
  std::unique_lock<std::mutex> lock(queue_mu_);
  for (;;) {
    queue_cv_.wait(lock, [this] { return stop_ || !queue_.empty(); });
    if (queue_.empty()) break;  // stop_, and nothing left
    // Stopping: what is left gets one command timeout in all, then is dropped (a slow Redis must
    // not hold the process's exit for as many timeouts as there are queued chunks).
    if (stop_ && stop_deadline_ns_ == 0) {
      stop_deadline_ns_ = NowNs() + int64_t{options_.command_timeout_ms} * 1000000;
    }
    if (stop_ && NowNs() > stop_deadline_ns_) {
      counters_.dropped += queue_.size();
      queue_.clear();
      queued_bytes_ = 0;
      break;
    }
    auto item = std::move(queue_.front());
    queue_.pop_front();
    busy_ = true;
    lock.unlock();
    if (!PublishOne(item.first, item.second)) ++counters_.dropped;
    lock.lock();
    queued_bytes_ -= item.second.size();
    busy_ = false;
    if (queue_.empty()) idle_cv_.notify_all();
  }
  idle_cv_.notify_all();
}

bool RedisTier::PublishOne(const std::string& key, const std::string& value) {
  RedisConnection* conn = Usable(publisher_);
  if (conn == nullptr) return false;
  // The parts first and the first part last, each NX: a reader that finds the key finds the
  // parts too (unless Redis evicted one since: then a miss).
  std::vector<std::vector<std::string>> cmds = {{"EXISTS", key}};
  auto exists = conn->Pipeline(cmds);
  if (!Succeeded(exists, publisher_)) return false;
  if ((*exists)[0]->type == REDIS_REPLY_INTEGER && (*exists)[0]->integer == 1) {
    ++counters_.existing;
    return true;
  }
  const size_t part = options_.part_bytes;
  const size_t parts = value.empty() ? 1 : (value.size() + part - 1) / part;
  cmds.clear();
  for (size_t p = parts; p-- > 0;) {
    const size_t at = p * part;
    cmds.push_back(
        {"SET", RedisPartKey(key, p), value.substr(at, std::min(part, value.size() - at)), "NX"});
  }
  auto set = conn->Pipeline(cmds);
  if (!Succeeded(set, publisher_)) return false;
  for (const Reply& r : *set) {
    if (r->type != REDIS_REPLY_ERROR) continue;
    // OOM command not allowed (maxmemory without an eviction policy), READONLY, ...: the server
    // works but refuses writes. Said once; lookups go on.
    ++counters_.errors;
    bool say = false;
    {
      std::lock_guard<std::mutex> lock(state_mu_);
      say = !oom_warned_;
      oom_warned_ = true;
    }
    if (say && options_.warn) {
      const std::string why(r->str, r->len);
      const bool oom = why.rfind("OOM", 0) == 0;
      options_.warn(
          "kvstash: Redis at " + options_.url.Redacted() + " refuses writes (" + why +
          "); chunks are not published to it" +
          (oom ? " (set maxmemory-policy allkeys-lru so that Redis evicts instead)" : ""));
    }
    return false;
  }
  ++counters_.published;
  counters_.bytes_written += value.size();
  return true;
}

Result<uint64_t> RedisTier::Unlink(const std::string& pattern) {
  std::lock_guard<std::mutex> lock(lookup_mu_);
  RedisConnection* conn = Usable(lookup_);
  if (conn == nullptr) {
    return Status::IOError("Redis at " + options_.url.Redacted() + " is unavailable");
  }
  uint64_t removed = 0;
  std::string cursor = "0";
  do {
    auto scan = conn->Pipeline({{"SCAN", cursor, "MATCH", pattern, "COUNT", "1000"}});
    if (!Succeeded(scan, lookup_)) {
      return Status::IOError("Redis at " + options_.url.Redacted() + ": " +
                             scan.status().message());
    }
    const redisReply* r = (*scan)[0].get();
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
        r->element[0]->type != REDIS_REPLY_STRING || r->element[1]->type != REDIS_REPLY_ARRAY) {
      return Status::IOError("Redis at " + options_.url.Redacted() + " answered SCAN oddly");
    }
    cursor.assign(r->element[0]->str, r->element[0]->len);
    std::vector<std::string> unlink = {"UNLINK"};
    for (size_t i = 0; i < r->element[1]->elements; ++i) {
      const redisReply* k = r->element[1]->element[i];
      if (k->type == REDIS_REPLY_STRING) unlink.emplace_back(k->str, k->len);
    }
    if (unlink.size() > 1) {
      auto done = conn->Pipeline({unlink});
      if (!Succeeded(done, lookup_)) {
        return Status::IOError("Redis at " + options_.url.Redacted() + ": " +
                               done.status().message());
      }
      if ((*done)[0]->type == REDIS_REPLY_INTEGER) removed += (*done)[0]->integer;
    }
  } while (cursor != "0");
  return removed;
}

RedisStats RedisTier::stats() const {
  RedisStats s;
  s.configured = true;
  {
    std::lock_guard<std::mutex> lock(state_mu_);
    s.available = !down_;
  }
  s.lookups = counters_.lookups;
  s.hits = counters_.hits;
  s.misses = counters_.misses;
  s.bad_values = counters_.bad;
  s.errors = counters_.errors;
  s.outages = counters_.outages;
  s.bytes_read = counters_.bytes_read;
  s.chunks_published = counters_.published;
  s.chunks_existing = counters_.existing;
  s.publish_dropped = counters_.dropped;
  s.bytes_written = counters_.bytes_written;
  s.fetch_ms = counters_.fetch_ns / 1e6;
  s.check_ms = counters_.check_ns / 1e6;
  return s;
}

}  // namespace kvstash::store
