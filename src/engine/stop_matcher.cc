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

std::string_view StopMatcher::TakeShowable(bool final) {
  size_t end = text_.size();
  if (!final) {
    const std::string_view fresh =
        std::string_view(text_).substr(shown_, std::max(shown_, safe_size()) - shown_);
    end = shown_ + Utf8CompletePrefix(fresh);
  }
  const std::string_view showable = std::string_view(text_).substr(shown_, end - shown_);
  shown_ = std::max(shown_, end);
  return showable;
}

size_t Utf8CompletePrefix(std::string_view text) {
  // Find the last lead byte among the final 3 bytes; if the bytes after it are a valid but
  // unfinished sequence, hold them back. Anything else (ASCII, a finished sequence, invalid
  // bytes) is complete: it renders now, as itself or U+FFFD.
  const size_t n = text.size();
  for (size_t back = 1; back <= 3 && back <= n; ++back) {
    const auto lead = static_cast<unsigned char>(text[n - back]);
    if ((lead & 0xC0) == 0x80) continue;  // a continuation byte: keep looking for the lead
    size_t need = 0;
    unsigned char lo = 0x80, hi = 0xBF;  // the allowed range of the byte after the lead
    if (lead >= 0xC2 && lead <= 0xDF) {
      need = 2;
    } else if (lead >= 0xE0 && lead <= 0xEF) {
      need = 3;
      if (lead == 0xE0) lo = 0xA0;  // overlong
      if (lead == 0xED) hi = 0x9F;  // surrogates
    } else if (lead >= 0xF0 && lead <= 0xF4) {
      need = 4;
      if (lead == 0xF0) lo = 0x90;  // overlong
      if (lead == 0xF4) hi = 0x8F;  // above U+10FFFF
    }
    if (need <= back) return n;  // ASCII, an invalid lead, or a finished sequence
    if (back >= 2) {
      const auto second = static_cast<unsigned char>(text[n - back + 1]);
      if (second < lo || second > hi) return n;  // already invalid: nothing to wait for
    }
    return n - back;
  }
  return n;
}

}  // namespace kvstash::engine
