// StopMatcher: finds stop strings in streamed text and says how much of it is safe to show.
//
// Generate() feeds it one token's text at a time. A stop string may span tokens, so the tail of the
// text that could still become a stop string is held back from the caller until the next piece
// decides it. Kept free of llama.h so that it is tested on its own.
#ifndef KVSTASH_ENGINE_STOP_MATCHER_H_
#define KVSTASH_ENGINE_STOP_MATCHER_H_

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace kvstash::engine {

class StopMatcher {
 public:
  // Empty stop strings are ignored (they would match before any text).
  explicit StopMatcher(std::vector<std::string> stops);

  // Appends `piece` to the text. Returns true when a stop string now occurs: the text is then cut
  // before the first match and later calls change nothing.
  bool Add(std::string_view piece);

  // Everything added, or everything before the first match once stopped().
  const std::string& text() const { return text_; }
  bool stopped() const { return stopped_; }
  // Bytes of text() that no later piece can turn into part of a stop string.
  size_t safe_size() const;

 private:
  std::vector<std::string> stops_;
  size_t longest_ = 0;
  std::string text_;
  bool stopped_ = false;
};

}  // namespace kvstash::engine

#endif  // KVSTASH_ENGINE_STOP_MATCHER_H_
