#include "engine/stop_matcher.h"

#include <algorithm>
#include <utility>

namespace kvstash::engine {

StopMatcher::StopMatcher(std::vector<std::string> stops) {
  for (std::string& stop : stops) {
    if (stop.empty()) continue;
    longest_ = std::max(longest_, stop.size());
    stops_.push_back(std::move(stop));
  }
}

bool StopMatcher::Add(std::string_view piece) {
  if (stopped_) return true;
  // A match that ends in the new piece starts at most longest_ - 1 bytes before it; searching only
  // from there keeps a long generation linear.
  const size_t old_size = text_.size();
  const size_t search_from = old_size >= longest_ ? old_size - longest_ + 1 : 0;
  text_.append(piece);
  size_t stop_at = std::string::npos;
  for (const std::string& stop : stops_) {
    const size_t at = text_.find(stop, search_from);
    if (at != std::string::npos) stop_at = std::min(stop_at, at);
  }
  if (stop_at == std::string::npos) return false;
  text_.resize(stop_at);
  stopped_ = true;
  return true;
}

size_t StopMatcher::safe_size() const {
  if (stopped_) return text_.size();
  // The longest tail of the text that is a proper prefix of some stop string.
  size_t hold = 0;
  for (const std::string& stop : stops_) {
    for (size_t k = std::min(stop.size() - 1, text_.size()); k > hold; --k) {
      if (text_.compare(text_.size() - k, k, stop, 0, k) == 0) {
        hold = k;
        break;
      }
    }
  }
  return text_.size() - hold;
}

}  // namespace kvstash::engine
