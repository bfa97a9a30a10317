// The OpenAI wire protocol of `kvstash serve`: request bodies in, response bodies out.
//
// Pure functions over bytes (nlohmann-json inside, no llama.h, no httplib.h), so that every check
// is tested on its own and fuzzed. Nothing in a request is trusted: every field is type- and
// range-checked here, and an error names the field, what was wrong, and what is allowed. Unknown
// fields are ignored (clients send many we do not use); known fields we cannot honour (n > 1,
// tools, logprobs, ...) are refused by name rather than silently dropped.
#ifndef KVSTASH_SERVER_PROTOCOL_H_
#define KVSTASH_SERVER_PROTOCOL_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace kvstash::server {

// An error in OpenAI's shape: {"error": {"message", "type", "param", "code"}} with an HTTP status.
struct ApiError {
  int http_status = 400;
  std::string message;
  std::string type = "invalid_request_error";  // or authentication_error, server_error, ...
  std::string param;                           // the offending field ("" when none): JSON null
  std::string code;                            // e.g. "context_length_exceeded" ("": null)
};
std::string RenderError(const ApiError& error);

enum class Endpoint { kChat, kCompletion };

struct ChatMessage {
  std::string role;  // system, user, assistant ("developer" is read as system)
  std::string content;
};

struct CompletionRequest {
  Endpoint endpoint = Endpoint::kChat;
  std::string model;                  // echoed back; any string is accepted (as llama-server)
  std::vector<ChatMessage> messages;  // kChat: at least one
  // kCompletion: either text or token ids (an array of integers), never both.
  std::string prompt;
  std::vector<int32_t> prompt_tokens;
  bool prompt_is_tokens = false;
  // max_tokens or max_completion_tokens (the latter wins when both are given). Unset: until the
  // end of generation or the context.
  std::optional<int64_t> max_tokens;
  double temperature = 1.0;  // OpenAI's default; 0: greedy
  double top_p = 1.0;
  std::optional<uint32_t> seed;
  std::vector<std::string> stop;  // at most 4, none empty
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
};

// Limits the parser enforces (the server passes its own).
struct ParseLimits {
  size_t max_messages = 4096;
  size_t max_stop = 4;
  size_t max_stop_bytes = 256;
  int64_t max_tokens_cap = 1 << 24;  // larger max_tokens values are refused, not clamped
};

// Parses and validates a request body for `endpoint`. On failure returns false and fills *error
// (http_status 400, param = the field). Invalid JSON, invalid UTF-8, wrong types, out-of-range
// numbers (negative or zero max_tokens, temperature outside [0, 2], top_p outside (0, 1], n != 1,
// seed outside 0..2^32-1 when given) are all refused here. A field sent as null reads as absent;
// an integer field takes an integral float (10.0) but not 10.5 or "10"; booleans are true/false.
// Bodies nesting arrays/objects deeper than 64 levels are refused before they are parsed.
bool ParseCompletionRequest(std::string_view body, Endpoint endpoint, const ParseLimits& limits,
                            CompletionRequest* out, ApiError* error);

// What every response of one request shares.
struct ResponseMeta {
  std::string id;       // "chatcmpl-..." or "cmpl-..."
  int64_t created = 0;  // unix seconds
  std::string model;    // the request's model string
  Endpoint endpoint = Endpoint::kChat;
};
// A fresh id for `endpoint`: prefix + 24 random hex digits.
std::string NewResponseId(Endpoint endpoint);

struct Usage {
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
  int64_t cached_tokens = 0;  // prompt tokens restored from a cache, not decoded
};

enum class FinishReason { kStop, kLength };
const char* FinishReasonName(FinishReason reason);  // "stop", "length"

// Text given to the Render* functions may end inside a UTF-8 sequence or hold invalid bytes (a
// model can emit anything); they are rendered with U+FFFD in place of invalid bytes, never thrown
// on. Streaming callers cut pieces with engine::StopMatcher, so a character is never split.

// The non-streamed response (chat.completion or text_completion) with usage.
std::string RenderResponse(const ResponseMeta& meta, std::string_view text, FinishReason finish,
                           const Usage& usage);
// One streamed chunk's JSON (without the "data: " framing). Chat: the first chunk has
// delta.role = "assistant"; `finish` set: the last content chunk, empty delta / text.
std::string RenderChunk(const ResponseMeta& meta, std::string_view text, bool first,
                        std::optional<FinishReason> finish);
// The chunk that carries usage when stream_options.include_usage: choices = [].
std::string RenderUsageChunk(const ResponseMeta& meta, const Usage& usage);
// GET /v1/models: one model with `id`.
std::string RenderModels(const std::string& id, int64_t created);

}  // namespace kvstash::server

#endif  // KVSTASH_SERVER_PROTOCOL_H_
