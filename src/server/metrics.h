// Counters of `kvstash serve`, rendered as Prometheus text for GET /metrics.
//
// Thread-safe: HTTP threads and the scheduler record into one Metrics; Render reads a consistent
// enough snapshot (each value is read once; a scrape never blocks a request for long).
#ifndef KVSTASH_SERVER_METRICS_H_
#define KVSTASH_SERVER_METRICS_H_

#include <array>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>

#include "kvstash/store.h"

namespace kvstash::server {

// A Prometheus histogram with fixed buckets (seconds).
class Histogram {
 public:
  static constexpr std::array<double, 14> kBounds = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                                     1,     2.5,  5,     10,   30,  60,   120};
  void Observe(double seconds);
  // Appends "# HELP", "# TYPE", the _bucket lines (cumulative, then le="+Inf"), _sum and _count.
  void Render(const std::string& name, const std::string& help, std::string* out) const;

 private:
  mutable std::mutex mu_;
  std::array<uint64_t, kBounds.size()> counts_{};  // per bucket, not cumulative
  uint64_t count_ = 0;
  double sum_ = 0;
};

// Gauges the server reads from elsewhere (the store, the scheduler) at scrape time.
struct Gauges {
  int64_t queue_length = 0;      // requests waiting for a sequence
  int64_t active_sequences = 0;  // requests being decoded
  int64_t n_parallel = 0;
  int64_t store_bytes = -1;  // -1: no store
  int64_t store_chunks = -1;
  int64_t store_max_bytes = -1;  // the store's budget, -1: none
  RedisStats redis;              // the store's Redis tier (configured == false: none)
};

class Metrics {
 public:
  // One finished HTTP request on `endpoint` (e.g. "/v1/chat/completions") with `status`.
  void CountRequest(const std::string& endpoint, int status);
  // One finished completion: its prompt tokens, of which `cached` came from a cache, and its
  // generated tokens; time to first token and whole duration in seconds (ttft < 0: none).
  void CountCompletion(int64_t prompt_tokens, int64_t cached_tokens, int64_t generated_tokens,
                       double ttft_seconds, double duration_seconds);

  // Prometheus text format 0.0.4. Names: kvstash_requests_total{endpoint,status},
  // kvstash_prompt_tokens_total, kvstash_cached_tokens_total, kvstash_generated_tokens_total,
  // kvstash_completions_total, kvstash_ttft_seconds, kvstash_request_duration_seconds,
  // kvstash_queue_length, kvstash_active_sequences, kvstash_parallel_sequences,
  // kvstash_store_bytes, kvstash_store_chunks, kvstash_store_max_bytes (store ones only when a
  // store is used), kvstash_cache_hit_ratio (cached / prompt tokens so far; 0 before any), and
  // with a Redis tier kvstash_redis_available and kvstash_redis_*_total (RedisStats' counters).
  std::string Render(const Gauges& gauges) const;

 private:
  mutable std::mutex mu_;
  std::map<std::pair<std::string, int>, uint64_t> requests_;
  uint64_t completions_ = 0;
  uint64_t prompt_tokens_ = 0;
  uint64_t cached_tokens_ = 0;
  uint64_t generated_tokens_ = 0;
  Histogram ttft_;
  Histogram duration_;
};

}  // namespace kvstash::server

#endif  // KVSTASH_SERVER_METRICS_H_
