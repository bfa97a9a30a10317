// Helpers shared by kvstash's benchmarks: timing, medians, fatal errors, page-cache eviction.
#ifndef KVSTASH_BENCH_BENCH_UTIL_H_
#define KVSTASH_BENCH_BENCH_UTIL_H_

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "kvstash/status.h"

namespace kvstash::bench {

using Clock = std::chrono::steady_clock;

inline double Ms(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

inline double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

// Runs `body` once as a warm-up, then `reps` times; returns the median of what body returns.
inline double MedianOf(int reps, const std::function<double()>& body) {
  body();
  std::vector<double> samples;
  for (int i = 0; i < reps; ++i) samples.push_back(body());
  return Median(samples);
}

[[noreturn]] inline void Die(const std::string& what) {
  std::fprintf(stderr, "kvstash-bench: %s\n", what.c_str());
  std::exit(1);
}

template <typename T>
T Check(Result<T> r, const char* what) {
  if (!r.ok()) Die(std::string(what) + ": " + r.status().message());
  return std::move(r.value());
}
inline void Check(const Status& s, const char* what) {
  if (!s.ok()) Die(std::string(what) + ": " + s.message());
}

inline void EvictFromPageCache(const std::string& path) {
  int fd = open(path.c_str(), O_RDONLY);
  if (fd < 0) return;
  fdatasync(fd);
  posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
  close(fd);
}

inline uint64_t FileSize(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0 ? static_cast<uint64_t>(st.st_size) : 0;
}

}  // namespace kvstash::bench

#endif  // KVSTASH_BENCH_BENCH_UTIL_H_
