// Prometheus text exposition (format 0.0.4) of the server's counters: see metrics.h.
#include "server/metrics.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <utility>

namespace kvstash::server {
namespace {

// Round-trip exact but short where possible: "0.005", "1", "120" rather than
// "0.0050000000000000001".
std::string FormatDouble(double v) {
  char buf[32];
  for (int digits : {15, 17}) {
    std::snprintf(buf, sizeof buf, "%.*g", digits, v);
    if (std::strtod(buf, nullptr) == v) break;
  }
  return buf;
}

// Label values may hold any text: Prometheus needs \, " and newline escaped.
std::string EscapeLabel(const std::string& value) {
  std::string out;
  out.reserve(value.size());
  for (char c : value) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '"') {
      out += "\\\"";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

void Header(const std::string& name, const char* help, const char* type, std::string* out) {
  *out += "# HELP " + name + " " + help + "\n# TYPE " + name + " " + type + "\n";
}

void Scalar(const std::string& name, const char* help, const char* type, const std::string& value,
            std::string* out) {
  Header(name, help, type, out);
  *out += name + " " + value + "\n";
}

}  // namespace

void Histogram::Observe(double seconds) {
  // A NaN or negative duration is a caller's clock bug: dropping it keeps _sum meaningful.
  if (!(seconds >= 0) || std::isinf(seconds)) return;
  std::lock_guard<std::mutex> lock(mu_);
  for (size_t i = 0; i < kBounds.size(); ++i) {
    if (seconds <= kBounds[i]) {
      ++counts_[i];
      break;
    }
  }
  ++count_;  // observations above the last bound only reach le="+Inf", which is count_
  sum_ += seconds;
}

void Histogram::Render(const std::string& name, const std::string& help, std::string* out) const {
  std::array<uint64_t, kBounds.size()> counts;
  uint64_t count;
  double sum;
  {
    std::lock_guard<std::mutex> lock(mu_);
    counts = counts_;
    count = count_;
    sum = sum_;
  }
  Header(name, help.c_str(), "histogram", out);
  uint64_t cumulative = 0;
  for (size_t i = 0; i < kBounds.size(); ++i) {
    cumulative += counts[i];
    *out += name + "_bucket{le=\"" + FormatDouble(kBounds[i]) + "\"} " +
            std::to_string(cumulative) + "\n";
  }
  *out += name + "_bucket{le=\"+Inf\"} " + std::to_string(count) + "\n";
  *out += name + "_sum " + FormatDouble(sum) + "\n";
  *out += name + "_count " + std::to_string(count) + "\n";
}

void Metrics::CountRequest(const std::string& endpoint, int status) {
  std::lock_guard<std::mutex> lock(mu_);
  ++requests_[{endpoint, status}];
}

void Metrics::CountCompletion(int64_t prompt_tokens, int64_t cached_tokens,
                              int64_t generated_tokens, double ttft_seconds,
                              double duration_seconds) {
  {
    // Negative counts would wrap the unsigned totals: a caller bug reads as 0, not as 2^64.
    auto clamp = [](int64_t v) { return v > 0 ? static_cast<uint64_t>(v) : 0; };
    std::lock_guard<std::mutex> lock(mu_);
    ++completions_;
    prompt_tokens_ += clamp(prompt_tokens);
    cached_tokens_ += clamp(cached_tokens);
    generated_tokens_ += clamp(generated_tokens);
  }
  if (ttft_seconds >= 0) ttft_.Observe(ttft_seconds);
  duration_.Observe(duration_seconds);
}

namespace {

// The Redis tier's counters (RedisStats), as kvstash_redis_*.
void RenderRedis(const RedisStats& r, std::string* out) {
  Scalar("kvstash_redis_available", "1 while the Redis tier answers, 0 during an outage.", "gauge",
         r.available ? "1" : "0", out);
  const struct {
    const char* name;
    const char* help;
    uint64_t value;
  } counters[] = {
      {"kvstash_redis_lookups_total", "Lookups that asked Redis for chunks.", r.lookups},
      {"kvstash_redis_hits_total", "Chunks restored from Redis.", r.hits},
      {"kvstash_redis_misses_total",
       "Lookups that found fewer chunks in Redis than they asked for.", r.misses},
      {"kvstash_redis_bad_values_total", "Values refused by the chunk checks (each a miss).",
       r.bad_values},
      {"kvstash_redis_errors_total",
       "Failed Redis commands: connection, timeout, error replies (OOM, ...).", r.errors},
      {"kvstash_redis_outages_total", "Times Redis became unavailable.", r.outages},
      {"kvstash_redis_read_bytes_total", "Bytes of chunks read from Redis.", r.bytes_read},
      {"kvstash_redis_published_chunks_total", "Chunks published to Redis.", r.chunks_published},
      {"kvstash_redis_existing_chunks_total", "Chunks another writer had published first.",
       r.chunks_existing},
      {"kvstash_redis_dropped_chunks_total",
       "Chunks not published: queue full, Redis down or refusing writes.", r.publish_dropped},
      {"kvstash_redis_written_bytes_total", "Bytes of chunks published to Redis.", r.bytes_written},
  };
  for (const auto& c : counters) Scalar(c.name, c.help, "counter", std::to_string(c.value), out);
}

}  // namespace

std::string Metrics::Render(const Gauges& gauges) const {
  std::map<std::pair<std::string, int>, uint64_t> requests;
  uint64_t completions, prompt, cached, generated;
  {
    std::lock_guard<std::mutex> lock(mu_);
    requests = requests_;
    completions = completions_;
    prompt = prompt_tokens_;
    cached = cached_tokens_;
    generated = generated_tokens_;
  }
  std::string out;
  Header("kvstash_requests_total", "HTTP requests finished, by endpoint and status.", "counter",
         &out);
  for (const auto& [key, count] : requests) {
    out += "kvstash_requests_total{endpoint=\"" + EscapeLabel(key.first) + "\",status=\"" +
           std::to_string(key.second) + "\"} " + std::to_string(count) + "\n";
  }
  Scalar("kvstash_completions_total", "Completions finished.", "counter",
         std::to_string(completions), &out);
  Scalar("kvstash_prompt_tokens_total", "Prompt tokens of finished completions.", "counter",
         std::to_string(prompt), &out);
  Scalar("kvstash_cached_tokens_total", "Prompt tokens restored from a cache instead of decoded.",
         "counter", std::to_string(cached), &out);
  Scalar("kvstash_generated_tokens_total", "Tokens generated.", "counter",
         std::to_string(generated), &out);
  Scalar("kvstash_cache_hit_ratio", "Cached prompt tokens / prompt tokens so far (0 before any).",
         "gauge", FormatDouble(prompt > 0 ? static_cast<double>(cached) / prompt : 0.0), &out);
  ttft_.Render("kvstash_ttft_seconds", "Time to first token.", &out);
  duration_.Render("kvstash_request_duration_seconds", "Completion duration.", &out);
  Scalar("kvstash_queue_length", "Requests waiting for a sequence.", "gauge",
         std::to_string(gauges.queue_length), &out);
  Scalar("kvstash_active_sequences", "Requests being decoded.", "gauge",
         std::to_string(gauges.active_sequences), &out);
  Scalar("kvstash_parallel_sequences", "Sequences the server decodes at once (--parallel).",
         "gauge", std::to_string(gauges.n_parallel), &out);
  // Store gauges only when there is a store (and, for the budget, when it has one): a missing
  // series is clearer on a dashboard than a -1.
  if (gauges.store_bytes >= 0) {
    Scalar("kvstash_store_bytes", "Bytes of chunk files in the prefix store.", "gauge",
           std::to_string(gauges.store_bytes), &out);
  }
  if (gauges.store_chunks >= 0) {
    Scalar("kvstash_store_chunks", "Chunk files in the prefix store.", "gauge",
           std::to_string(gauges.store_chunks), &out);
  }
  if (gauges.store_max_bytes >= 0) {
    Scalar("kvstash_store_max_bytes", "The prefix store's byte budget.", "gauge",
           std::to_string(gauges.store_max_bytes), &out);
  }
  if (gauges.redis.configured) RenderRedis(gauges.redis, &out);
  return out;
}

}  // namespace kvstash::server
