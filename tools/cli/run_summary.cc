#include "run_summary.h"

#include <cstdio>

namespace kvstash::cli {
namespace {

// "812 ms (1395 t/s)"; the rate only when there is a time to divide by.
std::string TimeAndRate(size_t tokens, double ms) {
  char buf[96];
  if (ms > 0 && tokens > 0) {
    std::snprintf(buf, sizeof(buf), "%.0f ms (%.0f t/s)", ms, tokens * 1000.0 / ms);
  } else {
    std::snprintf(buf, sizeof(buf), "%.0f ms", ms);
  }
  return buf;
}

}  // namespace

std::string RunSummary(const RunReport& r) {
  std::string line = "kvstash: reused " + std::to_string(r.n_reused_tokens) + " of " +
                     std::to_string(r.n_prompt_tokens) + " prompt tokens";
  if (r.n_reused_tokens > 0 && r.reused_from[0] != '\0')
    line += std::string(" (") + r.reused_from + ")";
  line += ", decoded " + std::to_string(r.n_decoded_prompt_tokens) + " in " +
          TimeAndRate(r.n_decoded_prompt_tokens, r.prompt_ms);
  if (r.load_ms > 0) line += "; load " + TimeAndRate(0, r.load_ms);
  line += "; generated " + std::to_string(r.generation.tokens.size()) + " tokens in " +
          TimeAndRate(r.generation.tokens.size(), r.generate_ms);
  if (r.prompt_cache_saved) line += "; saved prompt cache in " + TimeAndRate(0, r.save_ms);
  return line;
}

std::string RepeatedSessionNote(const RunReport& r) {
  return "note: the prompt begins with the session's " + std::to_string(r.n_reused_tokens) +
         " tokens; they were reused, not decoded a second time (pass only the text after the "
         "session's to skip this check)";
}

}  // namespace kvstash::cli
