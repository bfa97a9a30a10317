// StopMatcher: finds stop strings in streamed text and says how much of it is safe to show.
//
// Session::Generate and the server feed it one token's text at a time. A stop string may span
// tokens, so the tail of the text that could still become a stop string is held back from the
// caller until the next piece decides it, and so is half a UTF-8 character (a token may end inside
// one). Kept free of llama.h so that it is tested on its own.
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
  // The text to show now, after what earlier calls returned: up to safe_size(), ending on a whole
  // UTF-8 character; with `final`, everything left. Each byte of text() is returned once, in
  // order. Valid until the next Add.
  std::string_view TakeShowable(bool final);

 private:
  std::vector<std::string> stops_;
  size_t longest_ = 0;
  std::string text_;
  size_t shown_ = 0;  // bytes of text_ TakeShowable returned
  bool stopped_ = false;
};

// Bytes of `text` up to the last complete UTF-8 character: an incomplete sequence at the end (at
// most 3 bytes) is left for the next piece. Invalid bytes count as complete (a renderer shows them
// as U+FFFD), so nothing is held back forever.
size_t Utf8CompletePrefix(std::string_view text);

}  // namespace kvstash::engine

#endif  // KVSTASH_ENGINE_STOP_MATCHER_H_
