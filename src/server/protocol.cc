// The OpenAI wire protocol: see protocol.h.
//
// Choices this file makes where OpenAI's documentation is silent or clients disagree:
//  - A field sent as JSON null is read as absent (LangChain and others send "stop": null etc.).
//  - Integer fields accept a float only when it is integral (10.0, as pydantic's lax mode does for
//    OpenAI's own server, and because JavaScript clients cannot tell 10 from 10.0); 10.5 is
//    refused.
//  - Booleans are JSON booleans only: 0/1 and "true" are refused, not coerced.
//  - Fields we cannot honour are refused only when they ask for something: "n": 1, "logprobs":
//    false, "tools": null, "presence_penalty": 0, "echo": false, "best_of": 1, ... pass.
#include "server/protocol.h"

#include <cmath>
#include <cstdio>
#include <limits>
#include <nlohmann/json.hpp>
#include <random>
#include <utility>

namespace kvstash::server {
namespace {

using Json = nlohmann::json;
// Responses keep OpenAI's key order (id, object, created, ...): easier to read in logs and diffs.
using OJson = nlohmann::ordered_json;

// Deeper than any request we accept needs (messages[i].content[j] is 4 levels); refusing before
// the parse bounds the parser's stack and memory on hostile bodies such as 100000 '['.
constexpr int kMaxDepth = 64;

// Fills *error with `message`, after "<param>: " when the error is a field's; returns false.
bool Fail(ApiError* error, const std::string& param, const std::string& message) {
  *error = ApiError{400, param.empty() ? message : param + ": " + message, "invalid_request_error",
                    param, ""};
  return false;
}

// "got ..." for messages: the JSON type, and the value when it is a short scalar.
std::string Got(const Json& v) {
  switch (v.type()) {
    case Json::value_t::string:
      return "a string";
    case Json::value_t::boolean:
      return v.get<bool>() ? "true" : "false";
    case Json::value_t::array:
      return "an array";
    case Json::value_t::object:
      return "an object";
    case Json::value_t::null:
      return "null";
    default:
      return v.dump();  // a number
  }
}

// True when the brackets outside strings never nest deeper than `max_depth`. Only needs to agree
// with the JSON lexer up to the first syntax error, which is where the parser stops.
bool NestingWithin(std::string_view body, int max_depth) {
  int depth = 0;
  bool in_string = false;
  bool escaped = false;
  for (char c : body) {
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > max_depth) return false;
    } else if ((c == ']' || c == '}') && depth > 0) {
      --depth;
    }
  }
  return true;
}

// The field `name` of `obj`, or nullptr when it is absent or null.
const Json* Field(const Json& obj, const char* name) {
  auto it = obj.find(name);
  if (it == obj.end() || it->is_null()) return nullptr;
  return &*it;
}

bool ReadInteger(const Json& v, const std::string& name, int64_t min, int64_t max, int64_t* out,
                 ApiError* error) {
  const std::string range = " from " + std::to_string(min) + " to " + std::to_string(max);
  bool in_range = false;
  int64_t value = 0;
  if (v.is_number_unsigned()) {
    uint64_t u = v.get<uint64_t>();
    in_range = u <= static_cast<uint64_t>(max) && static_cast<int64_t>(u) >= min;
    value = static_cast<int64_t>(u);
  } else if (v.is_number_integer()) {
    value = v.get<int64_t>();
    in_range = value >= min && value <= max;
  } else if (v.is_number_float()) {
    double d = v.get<double>();
    if (std::floor(d) != d) {
      return Fail(
          error, name,
          "expected an integer" + range + ", got " + Got(v) + " (a fraction); send a whole number");
    }
    // Compare as doubles first: converting an out-of-range double to int64 is undefined.
    in_range = d >= static_cast<double>(min) && d <= static_cast<double>(max);
    if (in_range) value = static_cast<int64_t>(d);
  } else {
    return Fail(
        error, name,
        "expected an integer" + range + ", got " + Got(v) + "; send a JSON number without quotes");
  }
  if (!in_range) {
    return Fail(error, name, Got(v) + " is out of range; send an integer" + range);
  }
  *out = value;
  return true;
}

// A number in [min, max] (or (min, max] when min_exclusive).
bool ReadNumber(const Json& v, const std::string& name, double min, double max, bool min_exclusive,
                double* out, ApiError* error) {
  char range[64];
  std::snprintf(range, sizeof range, "%s%g, %g]", min_exclusive ? "(" : "[", min, max);
  if (!v.is_number()) {
    return Fail(error, name,
                std::string("expected a number in ") + range + ", got " + Got(v) +
                    "; send a JSON number without quotes");
  }
  double d = v.get<double>();
  if (!(min_exclusive ? d > min : d >= min) || !(d <= max)) {
    return Fail(error, name, Got(v) + " is out of range; send a number in " + range);
  }
  *out = d;
  return true;
}

bool ReadBool(const Json& v, const std::string& name, bool* out, ApiError* error) {
  if (!v.is_boolean()) {
    return Fail(error, name,
                "expected a boolean, got " + Got(v) + "; send true or false without quotes");
  }
  *out = v.get<bool>();
  return true;
}

bool ReadString(const Json& v, const std::string& name, std::string* out, ApiError* error) {
  if (!v.is_string()) {
    return Fail(error, name, "expected a string, got " + Got(v));
  }
  *out = v.get<std::string>();
  return true;
}

// A chat message's content: a string, or an array of {"type": "text", "text": ...} parts that are
// concatenated (OpenAI's multi-part form; clients send it even for plain text).
bool ParseContent(const Json& content, const std::string& param, std::string* out,
                  ApiError* error) {
  if (content.is_string()) {
    *out = content.get<std::string>();
    return true;
  }
  if (!content.is_array()) {
    return Fail(error, param, "expected a string or an array of text parts, got " + Got(content));
  }
  out->clear();
  for (size_t j = 0; j < content.size(); ++j) {
    const Json& part = content[j];
    const std::string p = param + "[" + std::to_string(j) + "]";
    if (!part.is_object()) {
      return Fail(error, p,
                  "expected an object {\"type\": \"text\", \"text\": ...}, got " + Got(part));
    }
    const Json* type = Field(part, "type");
    std::string type_name;
    if (type == nullptr) return Fail(error, p + ".type", "required; send \"text\"");
    if (!ReadString(*type, p + ".type", &type_name, error)) return false;
    if (type_name != "text") {
      return Fail(error, p + ".type",
                  "\"" + type_name +
                      "\" content parts are not supported (text-only model server); send only "
                      "{\"type\": \"text\"} parts");
    }
    const Json* text = Field(part, "text");
    std::string piece;
    if (text == nullptr) return Fail(error, p + ".text", "required for a text part");
    if (!ReadString(*text, p + ".text", &piece, error)) return false;
    *out += piece;
  }
  return true;
}

bool ParseMessage(const Json& m, size_t i, ChatMessage* out, ApiError* error) {
  const std::string param = "messages[" + std::to_string(i) + "]";
  if (!m.is_object()) {
    return Fail(error, param,
                "expected an object {\"role\": ..., \"content\": ...}, got " + Got(m));
  }
  const Json* role = Field(m, "role");
  if (role == nullptr) return Fail(error, param + ".role", "required");
  if (!ReadString(*role, param + ".role", &out->role, error)) return false;
  if (out->role == "developer") out->role = "system";  // OpenAI's newer name for system
  if (out->role == "tool" || out->role == "function") {
    return Fail(error, param + ".role",
                "\"" + out->role +
                    "\" messages are not supported (no tool calling); send system, developer, "
                    "user or assistant messages");
  }
  if (out->role != "system" && out->role != "user" && out->role != "assistant") {
    return Fail(error, param + ".role",
                "\"" + out->role + "\" is not a role; send system, developer, user or assistant");
  }
  for (const char* key : {"tool_calls", "function_call"}) {
    if (Field(m, key) != nullptr) {
      return Fail(error, param + "." + key, "tool calls are not supported; remove the field");
    }
  }
  if (const Json* name = Field(m, "name")) {
    std::string ignored;
    if (!ReadString(*name, param + ".name", &ignored, error)) return false;
  }
  const Json* content = Field(m, "content");
  if (content == nullptr) {
    // OpenAI lets an assistant message omit content (when it carried tool calls): read as empty.
    if (out->role == "assistant") {
      out->content.clear();
      return true;
    }
    return Fail(error, param + ".content",
                "required for a " + out->role + " message; send a string");
  }
  return ParseContent(*content, param + ".content", &out->content, error);
}

bool ParseMessages(const Json& body, const ParseLimits& limits, CompletionRequest* out,
                   ApiError* error) {
  const Json* messages = Field(body, "messages");
  if (messages == nullptr) {
    return Fail(error, "messages",
                "required; send an array such as [{\"role\": \"user\", \"content\": "
                "\"Hello\"}]");
  }
  if (!messages->is_array() || messages->empty()) {
    return Fail(error, "messages",
                "expected a non-empty array of messages, got " +
                    (messages->is_array() ? std::string("an empty array") : Got(*messages)));
  }
  if (messages->size() > limits.max_messages) {
    return Fail(error, "messages",
                std::to_string(messages->size()) + " messages is more than this " +
                    "server's limit of " + std::to_string(limits.max_messages));
  }
  out->messages.resize(messages->size());
  for (size_t i = 0; i < messages->size(); ++i) {
    if (!ParseMessage((*messages)[i], i, &out->messages[i], error)) return false;
  }
  return true;
}

// An array prompt: exactly one string, or token ids.
bool ParsePromptArray(const Json& prompt, CompletionRequest* out, ApiError* error) {
  if (prompt.empty()) {
    return Fail(error, "prompt", "empty array; send a string or an array of token ids");
  }
  if (prompt[0].is_string()) {
    if (prompt.size() != 1) {
      return Fail(error, "prompt",
                  std::to_string(prompt.size()) +
                      " prompts in one request (batching) are not supported; send one string");
    }
    out->prompt = prompt[0].get<std::string>();
    if (out->prompt.empty()) return Fail(error, "prompt", "empty; send some text");
    return true;
  }
  out->prompt_is_tokens = true;
  out->prompt_tokens.reserve(prompt.size());
  for (size_t i = 0; i < prompt.size(); ++i) {
    const Json& t = prompt[i];
    const std::string p = "prompt[" + std::to_string(i) + "]";
    if (t.is_array()) {
      return Fail(error, p, "batched token prompts are not supported; send one array of token ids");
    }
    int64_t id = 0;
    if (!ReadInteger(t, p, 0, std::numeric_limits<int32_t>::max(), &id, error)) return false;
    out->prompt_tokens.push_back(static_cast<int32_t>(id));
  }
  return true;
}

bool ParsePrompt(const Json& body, CompletionRequest* out, ApiError* error) {
  const Json* prompt = Field(body, "prompt");
  if (prompt == nullptr) {
    return Fail(error, "prompt", "required; send the text to complete as a string");
  }
  if (prompt->is_string()) {
    out->prompt = prompt->get<std::string>();
    if (out->prompt.empty()) return Fail(error, "prompt", "empty; send some text");
    return true;
  }
  if (prompt->is_array()) return ParsePromptArray(*prompt, out, error);
  return Fail(error, "prompt", "expected a string or an array of token ids, got " + Got(*prompt));
}

bool ParseStop(const Json& body, const ParseLimits& limits, CompletionRequest* out,
               ApiError* error) {
  const Json* stop = Field(body, "stop");
  if (stop == nullptr) return true;
  if (!stop->is_string() && !stop->is_array()) {
    return Fail(error, "stop", "expected a string or an array of strings, got " + Got(*stop));
  }
  if (stop->is_array() && stop->size() > limits.max_stop) {
    return Fail(error, "stop",
                std::to_string(stop->size()) + " sequences; send at most " +
                    std::to_string(limits.max_stop));
  }
  const Json list = stop->is_string() ? Json::array({*stop}) : *stop;
  for (size_t i = 0; i < list.size(); ++i) {
    const std::string p = stop->is_string() ? "stop" : "stop[" + std::to_string(i) + "]";
    std::string s;
    if (!ReadString(list[i], p, &s, error)) return false;
    if (s.empty()) return Fail(error, p, "an empty stop sequence; remove it");
    if (s.size() > limits.max_stop_bytes) {
      return Fail(error, p,
                  std::to_string(s.size()) + " bytes; stop sequences may have at most " +
                      std::to_string(limits.max_stop_bytes));
    }
    out->stop.push_back(std::move(s));
  }
  return true;
}

// Sampling and length fields both endpoints share.
bool ParseSampling(const Json& body, const ParseLimits& limits, CompletionRequest* out,
                   ApiError* error) {
  const char* length_fields[] = {"max_tokens", "max_completion_tokens"};
  // Completions has no max_completion_tokens; for chat it wins over max_tokens (read second).
  for (int f = 0; f < (out->endpoint == Endpoint::kChat ? 2 : 1); ++f) {
    if (const Json* v = Field(body, length_fields[f])) {
      int64_t n = 0;
      if (!ReadInteger(*v, length_fields[f], 1, limits.max_tokens_cap, &n, error)) return false;
      out->max_tokens = n;
    }
  }
  if (const Json* v = Field(body, "temperature")) {
    if (!ReadNumber(*v, "temperature", 0, 2, false, &out->temperature, error)) return false;
  }
  if (const Json* v = Field(body, "top_p")) {
    if (!ReadNumber(*v, "top_p", 0, 1, true, &out->top_p, error)) return false;
  }
  if (const Json* v = Field(body, "seed")) {
    int64_t seed = 0;
    if (!ReadInteger(*v, "seed", 0, std::numeric_limits<uint32_t>::max(), &seed, error)) {
      return false;
    }
    out->seed = static_cast<uint32_t>(seed);
  }
  if (const Json* v = Field(body, "n")) {
    int64_t n = 0;
    if (!ReadInteger(*v, "n", 0, std::numeric_limits<int64_t>::max(), &n, error)) return false;
    if (n != 1) return Fail(error, "n", "only one choice per request is supported; send n = 1");
  }
  for (const char* penalty : {"presence_penalty", "frequency_penalty"}) {
    if (const Json* v = Field(body, penalty)) {
      double p = 0;
      if (!ReadNumber(*v, penalty, -2, 2, false, &p, error)) return false;
      if (p != 0) {
        return Fail(error, penalty, "not supported by this server; omit it or send 0");
      }
    }
  }
  if (const Json* v = Field(body, "logit_bias")) {
    if (!v->is_object()) {
      return Fail(error, "logit_bias", "expected an object, got " + Got(*v));
    }
    if (!v->empty()) {
      return Fail(error, "logit_bias", "not supported by this server; omit it");
    }
  }
  return ParseStop(body, limits, out, error);
}

bool ParseStreaming(const Json& body, CompletionRequest* out, ApiError* error) {
  if (const Json* v = Field(body, "stream")) {
    if (!ReadBool(*v, "stream", &out->stream, error)) return false;
  }
  const Json* options = Field(body, "stream_options");
  if (options == nullptr) return true;
  if (!out->stream) {
    // As OpenAI: stream_options without streaming is a client mistake worth reporting.
    return Fail(error, "stream_options",
                "only allowed when stream is true; remove it or set stream");
  }
  if (!options->is_object()) {
    return Fail(error, "stream_options", "expected an object, got " + Got(*options));
  }
  if (const Json* v = Field(*options, "include_usage")) {
    if (!ReadBool(*v, "stream_options.include_usage", &out->include_usage, error)) return false;
  }
  return true;
}

// Fields that ask for something this server does not do; refused by name, never dropped.
bool RefuseUnsupported(const Json& body, Endpoint endpoint, ApiError* error) {
  auto refuse = [&](const char* name, const std::string& why) { return Fail(error, name, why); };
  if (endpoint == Endpoint::kChat) {
    for (const char* name : {"tools", "functions"}) {
      if (Field(body, name)) return refuse(name, "tool calling is not supported; remove the field");
    }
    for (const char* name : {"tool_choice", "function_call"}) {
      const Json* v = Field(body, name);
      if (v != nullptr && *v != "none") {
        return refuse(name, "tool calling is not supported; remove the field or send \"none\"");
      }
    }
    if (const Json* v = Field(body, "logprobs")) {
      bool logprobs = false;
      if (!ReadBool(*v, "logprobs", &logprobs, error)) return false;
      if (logprobs) return refuse("logprobs", "log probabilities are not supported; send false");
    }
    if (const Json* v = Field(body, "top_logprobs")) {
      int64_t n = 0;
      if (!ReadInteger(*v, "top_logprobs", 0, 20, &n, error)) return false;
      if (n != 0) return refuse("top_logprobs", "log probabilities are not supported; omit it");
    }
    if (const Json* v = Field(body, "response_format")) {
      const Json* type = v->is_object() ? Field(*v, "type") : nullptr;
      if (type == nullptr || *type != "text") {
        return refuse("response_format",
                      "only {\"type\": \"text\"} is supported (no JSON mode or schemas); omit it");
      }
    }
    return true;
  }
  if (const Json* v = Field(body, "logprobs")) {
    // Completions' logprobs is a count; any count, 0 included, asks for the sampled token's.
    int64_t n = 0;
    if (!ReadInteger(*v, "logprobs", 0, 5, &n, error)) return false;
    return refuse("logprobs", "log probabilities are not supported; omit it");
  }
  if (const Json* v = Field(body, "echo")) {
    bool echo = false;
    if (!ReadBool(*v, "echo", &echo, error)) return false;
    if (echo) return refuse("echo", "echoing the prompt is not supported; send false");
  }
  if (const Json* v = Field(body, "best_of")) {
    int64_t n = 0;
    if (!ReadInteger(*v, "best_of", 1, 20, &n, error)) return false;
    if (n != 1) return refuse("best_of", "only one candidate per request; send best_of = 1");
  }
  if (const Json* v = Field(body, "suffix")) {
    std::string suffix;
    if (!ReadString(*v, "suffix", &suffix, error)) return false;
    if (!suffix.empty()) return refuse("suffix", "insertion (a suffix) is not supported; omit it");
  }
  return true;
}

bool ParseFields(const Json& body, Endpoint endpoint, const ParseLimits& limits,
                 CompletionRequest* out, ApiError* error) {
  if (!body.is_object()) {
    return Fail(error, "", "the request body must be a JSON object, got " + Got(body));
  }
  out->endpoint = endpoint;
  if (const Json* v = Field(body, "model")) {
    if (!ReadString(*v, "model", &out->model, error)) return false;
  }
  if (const Json* v = Field(body, "user")) {
    std::string ignored;
    if (!ReadString(*v, "user", &ignored, error)) return false;
  }
  if (!RefuseUnsupported(body, endpoint, error)) return false;
  if (endpoint == Endpoint::kChat) {
    if (!ParseMessages(body, limits, out, error)) return false;
  } else {
    if (!ParsePrompt(body, out, error)) return false;
  }
  return ParseSampling(body, limits, out, error) && ParseStreaming(body, out, error);
}

// nlohmann's parse errors quote the bytes last read, which may be the invalid UTF-8 that failed:
// written as \xNN so that the message itself is clean ASCII for logs and clients.
std::string AsciiOnly(std::string_view text) {
  std::string out;
  for (char c : text) {
    const auto byte = static_cast<unsigned char>(c);
    if (byte < 0x80) {
      out += c;
    } else {
      char hex[8];
      std::snprintf(hex, sizeof hex, "\\x%02X", byte);
      out += hex;
    }
  }
  return out;
}

std::string Dump(const OJson& j) {
  // replace: text from a model may hold invalid UTF-8; it becomes U+FFFD instead of a throw.
  return j.dump(-1, ' ', false, OJson::error_handler_t::replace);
}

OJson UsageJson(const Usage& usage) {
  return OJson{{"prompt_tokens", usage.prompt_tokens},
               {"completion_tokens", usage.completion_tokens},
               {"total_tokens", usage.prompt_tokens + usage.completion_tokens},
               {"prompt_tokens_details", OJson{{"cached_tokens", usage.cached_tokens}}}};
}

OJson Envelope(const ResponseMeta& meta, const char* object) {
  return OJson{
      {"id", meta.id}, {"object", object}, {"created", meta.created}, {"model", meta.model}};
}

}  // namespace

std::string RenderError(const ApiError& error) {
  OJson e{{"message", error.message}, {"type", error.type}};
  e["param"] = error.param.empty() ? OJson(nullptr) : OJson(error.param);
  e["code"] = error.code.empty() ? OJson(nullptr) : OJson(error.code);
  return Dump(OJson{{"error", std::move(e)}});
}

bool ParseCompletionRequest(std::string_view body, Endpoint endpoint, const ParseLimits& limits,
                            CompletionRequest* out, ApiError* error) {
  *out = CompletionRequest{};
  if (!NestingWithin(body, kMaxDepth)) {
    return Fail(error, "",
                "the request body nests arrays or objects deeper than " +
                    std::to_string(kMaxDepth) + " levels; no valid request needs that");
  }
  Json parsed;
  try {
    parsed = Json::parse(body.begin(), body.end());
  } catch (const Json::exception& e) {
    // e.what() says where and why (e.g. "invalid string: ill-formed UTF-8 byte").
    return Fail(error, "",
                "the request body is not valid JSON (or not valid UTF-8): " + AsciiOnly(e.what()));
  }
  try {
    return ParseFields(parsed, endpoint, limits, out, error);
  } catch (const Json::exception& e) {
    // Not expected (every access is type-checked first); a bug here must still be a 400, not a
    // crash of the server thread.
    return Fail(error, "", std::string("the request could not be read: ") + e.what());
  }
}

std::string NewResponseId(Endpoint endpoint) {
  thread_local std::random_device device;
  static constexpr char kHex[] = "0123456789abcdef";
  std::string id = endpoint == Endpoint::kChat ? "chatcmpl-" : "cmpl-";
  for (int word = 0; word < 3; ++word) {
    uint32_t bits = device();
    for (int nibble = 0; nibble < 8; ++nibble, bits >>= 4) id += kHex[bits & 0xf];
  }
  return id;
}

const char* FinishReasonName(FinishReason reason) {
  return reason == FinishReason::kLength ? "length" : "stop";
}

std::string RenderResponse(const ResponseMeta& meta, std::string_view text, FinishReason finish,
                           const Usage& usage) {
  const bool chat = meta.endpoint == Endpoint::kChat;
  OJson choice{{"index", 0}};
  if (chat) {
    choice["message"] = OJson{{"role", "assistant"}, {"content", std::string(text)}};
  } else {
    choice["text"] = std::string(text);
  }
  choice["logprobs"] = nullptr;
  choice["finish_reason"] = FinishReasonName(finish);
  OJson j = Envelope(meta, chat ? "chat.completion" : "text_completion");
  j["choices"] = OJson::array({std::move(choice)});
  j["usage"] = UsageJson(usage);
  return Dump(j);
}

std::string RenderChunk(const ResponseMeta& meta, std::string_view text, bool first,
                        std::optional<FinishReason> finish) {
  const bool chat = meta.endpoint == Endpoint::kChat;
  OJson choice{{"index", 0}};
  if (chat) {
    OJson delta = OJson::object();
    if (first) delta["role"] = "assistant";
    // The last chunk's delta is {} as OpenAI's, unless the caller still had text to send.
    if (!finish || !text.empty()) delta["content"] = std::string(text);
    choice["delta"] = std::move(delta);
  } else {
    choice["text"] = std::string(text);
  }
  choice["logprobs"] = nullptr;
  choice["finish_reason"] = finish ? OJson(FinishReasonName(*finish)) : OJson(nullptr);
  OJson j = Envelope(meta, chat ? "chat.completion.chunk" : "text_completion");
  j["choices"] = OJson::array({std::move(choice)});
  return Dump(j);
}

std::string RenderUsageChunk(const ResponseMeta& meta, const Usage& usage) {
  OJson j = Envelope(
      meta, meta.endpoint == Endpoint::kChat ? "chat.completion.chunk" : "text_completion");
  j["choices"] = OJson::array();
  j["usage"] = UsageJson(usage);
  return Dump(j);
}

std::string RenderModels(const std::string& id, int64_t created) {
  OJson model{{"id", id}, {"object", "model"}, {"created", created}, {"owned_by", "kvstash"}};
  return Dump(OJson{{"object", "list"}, {"data", OJson::array({std::move(model)})}});
}

}  // namespace kvstash::server
