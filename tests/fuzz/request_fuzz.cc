// libFuzzer harness for the server's request parser and response renderers (src/server/
// protocol.cc): any bytes as a body for both endpoints must give a parsed request or a 400 that
// renders, never a crash, a hang or an exception; what parses is rendered back (content, model and
// stop strings as response text) and the output must be JSON that reads back to the same text.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "engine/stop_matcher.h"
#include "server/protocol.h"

namespace {

namespace s = kvstash::server;

void Check(bool ok) {
  if (!ok) std::abort();
}

// Parses `out` as JSON (abort if it is not) and returns it.
nlohmann::json Reparse(const std::string& out) {
  auto j = nlohmann::json::parse(out, nullptr, /*allow_exceptions=*/false);
  Check(!j.is_discarded());
  return j;
}

void RenderParsed(const s::CompletionRequest& request) {
  // The text a model might have produced from this request: everything it carried.
  std::string text = request.model;
  for (const auto& m : request.messages) text += m.role + ":" + m.content + "\n";
  text += request.prompt;
  for (int32_t t : request.prompt_tokens) text += std::to_string(t) + " ";
  for (const auto& stop : request.stop) text += stop;
  // Valid UTF-8 made of whole strings: nothing to hold back. Cut inside its last character (a
  // streaming caller's piece boundary), that character is held back whole.
  Check(kvstash::engine::Utf8CompletePrefix(text) == text.size());
  size_t cut = text.size();
  if (!text.empty() && static_cast<unsigned char>(text.back()) >= 0x80) {
    cut = kvstash::engine::Utf8CompletePrefix(std::string_view(text).substr(0, text.size() - 1));
    Check(cut < text.size() && text.size() - cut <= 4);
  }

  s::ResponseMeta meta;
  meta.id = s::NewResponseId(request.endpoint);
  meta.created = 1;
  meta.model = request.model;
  meta.endpoint = request.endpoint;
  const bool chat = request.endpoint == s::Endpoint::kChat;
  s::Usage usage{static_cast<int64_t>(text.size()), request.max_tokens.value_or(0), 0};

  // Text that came out of a JSON parse is valid UTF-8, so it must read back unchanged.
  auto response = Reparse(s::RenderResponse(meta, text, s::FinishReason::kStop, usage));
  const auto& choice = response["choices"][0];
  Check((chat ? choice["message"]["content"] : choice["text"]) == text);
  Check(response["model"] == request.model);

  auto chunk = Reparse(s::RenderChunk(meta, std::string_view(text).substr(0, cut), true, {}));
  Check(chat ? chunk["choices"][0]["delta"]["role"] == "assistant"
             : chunk["choices"][0]["text"].is_string());
  Reparse(
      s::RenderChunk(meta, std::string_view(text).substr(cut), false, s::FinishReason::kLength));
  Reparse(s::RenderUsageChunk(meta, usage));
  Reparse(s::RenderModels(request.model, 0));
  // Arbitrary bytes (the raw cut halves of a character) render too, as U+FFFD.
  if (!text.empty()) {
    Reparse(
        s::RenderResponse(meta, std::string_view(text).substr(1), s::FinishReason::kStop, usage));
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view body(reinterpret_cast<const char*>(data), size);
  for (s::Endpoint endpoint : {s::Endpoint::kChat, s::Endpoint::kCompletion}) {
    s::CompletionRequest request;
    s::ApiError error;
    // Exceptions escaping the parser would abort here (libFuzzer reports an uncaught exception).
    if (s::ParseCompletionRequest(body, endpoint, s::ParseLimits{}, &request, &error)) {
      Check(request.endpoint == endpoint);
      if (endpoint == s::Endpoint::kChat) {
        Check(!request.messages.empty());
      } else {
        Check(request.prompt_is_tokens ? request.prompt.empty() && !request.prompt_tokens.empty()
                                       : !request.prompt.empty() && request.prompt_tokens.empty());
      }
      Check(request.stop.size() <= 4);
      Check(!request.stream ? !request.include_usage : true);
      RenderParsed(request);
    } else {
      Check(error.http_status == 400 && !error.message.empty());
      Reparse(s::RenderError(error));
    }
  }
  // The raw bytes as model output: the renderer and the cutter take anything.
  const size_t cut = kvstash::engine::Utf8CompletePrefix(body);
  Check(cut <= size && size - cut <= 3);
  s::ResponseMeta meta;
  meta.endpoint = size % 2 ? s::Endpoint::kChat : s::Endpoint::kCompletion;
  Reparse(s::RenderChunk(meta, body, size % 3 == 0, std::nullopt));
  return 0;
}
