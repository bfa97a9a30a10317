// The server's wire protocol (request parsing, response rendering, UTF-8 cutting) and its
// Prometheus metrics. Pure functions: no model, no HTTP, no llama.cpp.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "server/metrics.h"
#include "server/protocol.h"

namespace kvstash::server {
namespace {

using nlohmann::json;

struct Parsed {
  bool ok;
  CompletionRequest request;
  ApiError error;
};

Parsed Parse(std::string_view body, Endpoint endpoint = Endpoint::kChat,
             const ParseLimits& limits = {}) {
  Parsed p;
  p.ok = ParseCompletionRequest(body, endpoint, limits, &p.request, &p.error);
  return p;
}

// A chat body: the minimal valid request with `extra` members merged in.
std::string Chat(const json& extra = json::object()) {
  json body = {{"model", "m"}, {"messages", {{{"role", "user"}, {"content", "Hi"}}}}};
  body.update(extra);
  return body.dump();
}
std::string Completion(const json& extra = json::object()) {
  json body = {{"model", "m"}, {"prompt", "Once"}};
  body.update(extra);
  return body.dump();
}

// Asserts a 400 naming `param`, whose message names it too and contains `words`.
void ExpectRefused(const std::string& body, Endpoint endpoint, const std::string& param,
                   const std::string& words = "") {
  SCOPED_TRACE(body);
  Parsed p = Parse(body, endpoint);
  ASSERT_FALSE(p.ok);
  EXPECT_EQ(p.error.http_status, 400);
  EXPECT_EQ(p.error.param, param);
  EXPECT_EQ(p.error.type, "invalid_request_error");
  EXPECT_NE(p.error.message.find(param), std::string::npos) << p.error.message;
  if (!words.empty()) {
    EXPECT_NE(p.error.message.find(words), std::string::npos) << p.error.message;
  }
  // The error renders as OpenAI's shape.
  json e = json::parse(RenderError(p.error));
  EXPECT_EQ(e["error"]["param"], param.empty() ? json(nullptr) : json(param));
  EXPECT_EQ(e["error"]["message"], p.error.message);
}
void ExpectChatRefused(const json& extra, const std::string& param, const std::string& words = "") {
  ExpectRefused(Chat(extra), Endpoint::kChat, param, words);
}
void ExpectCompletionRefused(const json& extra, const std::string& param,
                             const std::string& words = "") {
  ExpectRefused(Completion(extra), Endpoint::kCompletion, param, words);
}

// ---- Valid requests ----

TEST(ParseTest, MinimalChat) {
  Parsed p = Parse(Chat());
  ASSERT_TRUE(p.ok) << p.error.message;
  EXPECT_EQ(p.request.endpoint, Endpoint::kChat);
  EXPECT_EQ(p.request.model, "m");
  ASSERT_EQ(p.request.messages.size(), 1u);
  EXPECT_EQ(p.request.messages[0].role, "user");
  EXPECT_EQ(p.request.messages[0].content, "Hi");
  EXPECT_FALSE(p.request.max_tokens);
  EXPECT_EQ(p.request.temperature, 1.0);
  EXPECT_EQ(p.request.top_p, 1.0);
  EXPECT_FALSE(p.request.seed);
  EXPECT_TRUE(p.request.stop.empty());
  EXPECT_FALSE(p.request.stream);
  EXPECT_FALSE(p.request.include_usage);
}

TEST(ParseTest, FullChat) {
  json body = {
      {"model", "x"},
      {"messages",
       {{{"role", "developer"}, {"content", "Be brief."}},
        {{"role", "system"}, {"content", "S"}},
        {{"role", "user"},
         {"content", {{{"type", "text"}, {"text", "Hel"}}, {{"type", "text"}, {"text", "lo"}}}},
         {"name", "bob"}},
        {{"role", "assistant"}, {"content", nullptr}},
        {{"role", "assistant"}}}},
      {"max_tokens", 10},
      {"max_completion_tokens", 20},
      {"temperature", 0},
      {"top_p", 0.5},
      {"seed", 4294967295u},
      {"stop", {"\n", "END"}},
      {"stream", true},
      {"stream_options", {{"include_usage", true}}},
      {"n", 1},
      {"logprobs", false},
      {"top_logprobs", 0},
      {"tools", nullptr},
      {"tool_choice", "none"},
      {"response_format", {{"type", "text"}}},
      {"presence_penalty", 0},
      {"frequency_penalty", 0.0},
      {"logit_bias", json::object()},
      {"user", "u"},
      {"some_future_field", {{"anything", 1}}}};
  Parsed p = Parse(body.dump());
  ASSERT_TRUE(p.ok) << p.error.message;
  const auto& m = p.request.messages;
  ASSERT_EQ(m.size(), 5u);
  EXPECT_EQ(m[0].role, "system");  // developer is read as system
  EXPECT_EQ(m[0].content, "Be brief.");
  EXPECT_EQ(m[2].content, "Hello");  // text parts concatenated
  EXPECT_EQ(m[3].role, "assistant");
  EXPECT_EQ(m[3].content, "");
  EXPECT_EQ(m[4].content, "");
  EXPECT_EQ(p.request.max_tokens, 20);  // max_completion_tokens wins
  EXPECT_EQ(p.request.temperature, 0.0);
  EXPECT_EQ(p.request.top_p, 0.5);
  EXPECT_EQ(p.request.seed, 4294967295u);
  EXPECT_EQ(p.request.stop, (std::vector<std::string>{"\n", "END"}));
  EXPECT_TRUE(p.request.stream);
  EXPECT_TRUE(p.request.include_usage);
}

TEST(ParseTest, NullsReadAsAbsent) {
  Parsed p = Parse(Chat({{"max_tokens", nullptr},
                         {"stop", nullptr},
                         {"seed", nullptr},
                         {"temperature", nullptr},
                         {"stream_options", nullptr},
                         {"model", nullptr}}));
  ASSERT_TRUE(p.ok) << p.error.message;
  EXPECT_FALSE(p.request.max_tokens);
  EXPECT_EQ(p.request.temperature, 1.0);
  EXPECT_EQ(p.request.model, "");
}

TEST(ParseTest, IntegralFloatAcceptedForIntegerFields) {
  Parsed p = Parse(Chat({{"max_tokens", 10.0}, {"seed", 7.0}}));
  ASSERT_TRUE(p.ok) << p.error.message;
  EXPECT_EQ(p.request.max_tokens, 10);
  EXPECT_EQ(p.request.seed, 7u);
  ExpectChatRefused({{"max_tokens", 10.5}}, "max_tokens", "expected an integer");
}

TEST(ParseTest, StopAsString) {
  Parsed p = Parse(Chat({{"stop", "###"}}));
  ASSERT_TRUE(p.ok) << p.error.message;
  EXPECT_EQ(p.request.stop, std::vector<std::string>{"###"});
  p = Parse(Chat({{"stop", json::array()}}));
  ASSERT_TRUE(p.ok) << p.error.message;
  EXPECT_TRUE(p.request.stop.empty());
}

TEST(ParseTest, CompletionPrompts) {
  Parsed p = Parse(Completion({{"max_tokens", 5}, {"echo", false}, {"best_of", 1}, {"suffix", ""}}),
                   Endpoint::kCompletion);
  ASSERT_TRUE(p.ok) << p.error.message;
  EXPECT_EQ(p.request.endpoint, Endpoint::kCompletion);
  EXPECT_EQ(p.request.prompt, "Once");
  EXPECT_FALSE(p.request.prompt_is_tokens);
  EXPECT_EQ(p.request.max_tokens, 5);

  p = Parse(Completion({{"prompt", {"one string"}}}), Endpoint::kCompletion);
  ASSERT_TRUE(p.ok) << p.error.message;
  EXPECT_EQ(p.request.prompt, "one string");

  p = Parse(Completion({{"prompt", {0, 1, 2147483647}}}), Endpoint::kCompletion);
  ASSERT_TRUE(p.ok) << p.error.message;
  EXPECT_TRUE(p.request.prompt_is_tokens);
  EXPECT_EQ(p.request.prompt_tokens, (std::vector<int32_t>{0, 1, 2147483647}));
  EXPECT_TRUE(p.request.prompt.empty());
}

TEST(ParseTest, CompletionStreamWithUsage) {
  Parsed p = Parse(Completion({{"stream", true}, {"stream_options", {{"include_usage", false}}}}),
                   Endpoint::kCompletion);
  ASSERT_TRUE(p.ok) << p.error.message;
  EXPECT_TRUE(p.request.stream);
  EXPECT_FALSE(p.request.include_usage);
}

TEST(ParseTest, CompletionIgnoresChatOnlyFields) {
  // max_completion_tokens is chat's: completions ignores it as any unknown field.
  Parsed p = Parse(Completion({{"max_completion_tokens", "x"}}), Endpoint::kCompletion);
  ASSERT_TRUE(p.ok) << p.error.message;
  EXPECT_FALSE(p.request.max_tokens);
}

TEST(ParseTest, ReusedOutputIsReset) {
  CompletionRequest out;
  ApiError error;
  ASSERT_TRUE(ParseCompletionRequest(Chat({{"stop", "x"}}), Endpoint::kChat, {}, &out, &error));
  ASSERT_TRUE(ParseCompletionRequest(Chat(), Endpoint::kChat, {}, &out, &error));
  EXPECT_TRUE(out.stop.empty());
  EXPECT_EQ(out.messages.size(), 1u);
}

// ---- Refusals: the body ----

TEST(RefuseTest, InvalidJson) {
  for (const char* body : {"", "{", "{\"model\": }", "[1,]", "{} x", "nul", "{\"a\":1,}"}) {
    ExpectRefused(body, Endpoint::kChat, "", "not valid JSON");
  }
}

TEST(RefuseTest, InvalidUtf8) {
  std::string body = Chat();
  body.replace(body.find("Hi"), 2, "\xff\xfe");
  ExpectRefused(body, Endpoint::kChat, "", "UTF-8");
  body = Chat();
  body.replace(body.find("Hi"), 2, "\xed\xa0\x80");  // a surrogate
  ExpectRefused(body, Endpoint::kChat, "", "not valid JSON");
  // nlohmann's message quotes the bad bytes: they are written as \xNN, so the message is ASCII.
  Parsed p = Parse(body);
  EXPECT_NE(p.error.message.find("\\xED\\xA0"), std::string::npos) << p.error.message;
  for (char c : p.error.message) EXPECT_LT(static_cast<unsigned char>(c), 0x80);
}

TEST(RefuseTest, NotAnObject) {
  for (const char* body : {"[]", "1", "\"x\"", "null", "true"}) {
    ExpectRefused(body, Endpoint::kChat, "", "JSON object");
  }
}

TEST(RefuseTest, DeepNesting) {
  ExpectRefused(std::string(100000, '['), Endpoint::kChat, "", "deeper");
  ExpectRefused("{\"x\":" + std::string(65, '{'), Endpoint::kCompletion, "", "deeper");
  // Brackets inside strings do not count, escaped quotes included.
  json body = {{"model", std::string(1000, '[') + "\\\"" + std::string(1000, '{')},
               {"messages", {{{"role", "user"}, {"content", std::string(500, ']')}}}}};
  EXPECT_TRUE(Parse(body.dump()).ok);
  // 64 levels of an unknown field pass.
  std::string deep = std::string(63, '[') + std::string(63, ']');
  EXPECT_TRUE(Parse(Chat().insert(1, "\"x\":" + deep + ",")).ok);
}

// ---- Refusals: chat ----

TEST(RefuseTest, Messages) {
  ExpectRefused("{\"model\":\"m\"}", Endpoint::kChat, "messages", "required");
  ExpectChatRefused({{"messages", json::array()}}, "messages", "non-empty");
  ExpectChatRefused({{"messages", "hi"}}, "messages");
  ExpectChatRefused({{"messages", {1}}}, "messages[0]");
  ExpectChatRefused({{"messages", {{{"content", "x"}}}}}, "messages[0].role", "required");
  ExpectChatRefused({{"messages", {{{"role", 1}, {"content", "x"}}}}}, "messages[0].role",
                    "expected a string");
  ExpectChatRefused({{"messages", {{{"role", "robot"}, {"content", "x"}}}}}, "messages[0].role");
  ExpectChatRefused({{"messages", {{{"role", "user"}}}}}, "messages[0].content", "required");
  ExpectChatRefused({{"messages", {{{"role", "user"}, {"content", 3}}}}}, "messages[0].content");
  ExpectChatRefused({{"messages", {{{"role", "user"}, {"content", "a"}, {"name", 1}}}}},
                    "messages[0].name");
  ParseLimits limits;
  limits.max_messages = 2;
  json three = {{"messages", json::array()}};
  for (int i = 0; i < 3; ++i) three["messages"].push_back({{"role", "user"}, {"content", "x"}});
  Parsed p = Parse(three.dump(), Endpoint::kChat, limits);
  ASSERT_FALSE(p.ok);
  EXPECT_EQ(p.error.param, "messages");
}

TEST(RefuseTest, ToolRolesAndCalls) {
  for (const char* role : {"tool", "function"}) {
    ExpectChatRefused({{"messages",
                        {{{"role", "user"}, {"content", "x"}},
                         {{"role", role}, {"content", "r"}, {"tool_call_id", "1"}}}}},
                      "messages[1].role", "not supported");
  }
  ExpectChatRefused({{"messages", {{{"role", "assistant"}, {"tool_calls", json::array()}}}}},
                    "messages[0].tool_calls");
  ExpectChatRefused({{"messages", {{{"role", "assistant"}, {"function_call", {{"name", "f"}}}}}}},
                    "messages[0].function_call");
}

TEST(RefuseTest, ContentParts) {
  json image = {{"type", "image_url"}, {"image_url", {{"url", "http://x"}}}};
  ExpectChatRefused({{"messages", {{{"role", "user"}, {"content", {image}}}}}},
                    "messages[0].content[0].type", "image_url");
  json text = {{"type", "text"}, {"text", "a"}};
  ExpectChatRefused({{"messages", {{{"role", "user"}, {"content", {text, image}}}}}},
                    "messages[0].content[1].type");
  ExpectChatRefused({{"messages", {{{"role", "user"}, {"content", {"str"}}}}}},
                    "messages[0].content[0]");
  ExpectChatRefused({{"messages", {{{"role", "user"}, {"content", {{{"text", "a"}}}}}}}},
                    "messages[0].content[0].type", "required");
  ExpectChatRefused({{"messages", {{{"role", "user"}, {"content", {{{"type", "text"}}}}}}}},
                    "messages[0].content[0].text", "required");
  ExpectChatRefused(
      {{"messages", {{{"role", "user"}, {"content", {{{"type", "text"}, {"text", 5}}}}}}}},
      "messages[0].content[0].text", "expected a string");
}

TEST(RefuseTest, ChatUnsupportedFeatures) {
  ExpectChatRefused({{"tools", json::array({{{"type", "function"}}})}}, "tools", "not supported");
  ExpectChatRefused({{"functions", json::array()}}, "functions");
  ExpectChatRefused({{"tool_choice", "auto"}}, "tool_choice");
  ExpectChatRefused({{"function_call", "auto"}}, "function_call");
  ExpectChatRefused({{"logprobs", true}}, "logprobs", "not supported");
  ExpectChatRefused({{"logprobs", 1}}, "logprobs", "expected a boolean");
  ExpectChatRefused({{"top_logprobs", 3}}, "top_logprobs");
  ExpectChatRefused({{"n", 2}}, "n", "n = 1");
  ExpectChatRefused({{"n", 0}}, "n", "n = 1");
  ExpectChatRefused({{"n", 1000}}, "n", "n = 1");
  ExpectChatRefused({{"n", -1}}, "n", "out of range");
  ExpectChatRefused({{"n", "1"}}, "n", "expected an integer");
  ExpectChatRefused({{"response_format", {{"type", "json_object"}}}}, "response_format");
  ExpectChatRefused({{"response_format", {{"type", "json_schema"}, {"json_schema", {}}}}},
                    "response_format");
  ExpectChatRefused({{"response_format", "text"}}, "response_format");
  ExpectChatRefused({{"presence_penalty", 0.5}}, "presence_penalty", "not supported");
  ExpectChatRefused({{"frequency_penalty", 3}}, "frequency_penalty", "out of range");
  ExpectChatRefused({{"logit_bias", {{"50256", -100}}}}, "logit_bias");
  ExpectChatRefused({{"logit_bias", 1}}, "logit_bias", "expected an object");
}

// ---- Refusals: completions ----

TEST(RefuseTest, Prompt) {
  ExpectRefused("{\"model\":\"m\"}", Endpoint::kCompletion, "prompt", "required");
  ExpectCompletionRefused({{"prompt", ""}}, "prompt", "empty");
  ExpectCompletionRefused({{"prompt", json::array()}}, "prompt", "empty");
  ExpectCompletionRefused({{"prompt", {""}}}, "prompt", "empty");
  ExpectCompletionRefused({{"prompt", {"a", "b"}}}, "prompt", "batching");
  ExpectCompletionRefused({{"prompt", 5}}, "prompt");
  ExpectCompletionRefused({{"prompt", {{1, 2}, {3}}}}, "prompt[0]", "batched");
  ExpectCompletionRefused({{"prompt", {1, -1}}}, "prompt[1]", "out of range");
  ExpectCompletionRefused({{"prompt", {2147483648LL}}}, "prompt[0]", "out of range");
  ExpectCompletionRefused({{"prompt", {1, "a"}}}, "prompt[1]", "expected an integer");
  ExpectCompletionRefused({{"prompt", {1, 2.5}}}, "prompt[1]", "expected an integer");
  ExpectCompletionRefused({{"prompt", {"a", 1}}}, "prompt", "batching");
  ExpectCompletionRefused({{"prompt", {true}}}, "prompt[0]");
}

TEST(RefuseTest, CompletionUnsupportedFeatures) {
  ExpectCompletionRefused({{"logprobs", 1}}, "logprobs", "not supported");
  ExpectCompletionRefused({{"logprobs", 0}}, "logprobs", "not supported");
  ExpectCompletionRefused({{"logprobs", true}}, "logprobs", "expected an integer");
  ExpectCompletionRefused({{"echo", true}}, "echo", "not supported");
  ExpectCompletionRefused({{"echo", "no"}}, "echo", "expected a boolean");
  ExpectCompletionRefused({{"best_of", 2}}, "best_of");
  ExpectCompletionRefused({{"suffix", "tail"}}, "suffix", "not supported");
  ExpectCompletionRefused({{"suffix", 1}}, "suffix", "expected a string");
  ExpectCompletionRefused({{"n", 3}}, "n");
}

// ---- Refusals: shared fields, type and range checks ----

TEST(RefuseTest, Types) {
  for (Endpoint e : {Endpoint::kChat, Endpoint::kCompletion}) {
    auto refused = [&](const json& extra, const std::string& param, const std::string& words) {
      ExpectRefused(e == Endpoint::kChat ? Chat(extra) : Completion(extra), e, param, words);
    };
    refused({{"max_tokens", "10"}}, "max_tokens", "expected an integer");
    refused({{"max_tokens", true}}, "max_tokens", "expected an integer");
    refused({{"max_tokens", 0}}, "max_tokens", "out of range");
    refused({{"max_tokens", -5}}, "max_tokens", "out of range");
    refused({{"max_tokens", (1 << 24) + 1}}, "max_tokens", "out of range");
    refused({{"max_tokens", 18446744073709551615ull}}, "max_tokens", "out of range");
    refused({{"max_tokens", 1e300}}, "max_tokens", "out of range");
    refused({{"temperature", "0.5"}}, "temperature", "expected a number");
    refused({{"temperature", -0.1}}, "temperature", "out of range");
    refused({{"temperature", 2.5}}, "temperature", "out of range");
    refused({{"top_p", 0}}, "top_p", "out of range");
    refused({{"top_p", 1.01}}, "top_p", "out of range");
    refused({{"seed", -1}}, "seed", "out of range");
    refused({{"seed", 4294967296LL}}, "seed", "out of range");
    refused({{"seed", "1"}}, "seed", "expected an integer");
    refused({{"stream", 1}}, "stream", "expected a boolean");
    refused({{"stream", "true"}}, "stream", "expected a boolean");
    refused({{"stream_options", {{"include_usage", true}}}}, "stream_options", "stream is true");
    refused({{"stream", false}, {"stream_options", json::object()}}, "stream_options", "");
    refused({{"stream", true}, {"stream_options", 1}}, "stream_options", "expected an object");
    refused({{"stream", true}, {"stream_options", {{"include_usage", "yes"}}}},
            "stream_options.include_usage", "expected a boolean");
    refused({{"stop", 5}}, "stop", "expected a string or an array");
    refused({{"stop", ""}}, "stop", "empty");
    refused({{"stop", {"a", ""}}}, "stop[1]", "empty");
    refused({{"stop", {"a", 1}}}, "stop[1]", "expected a string");
    refused({{"stop", {"a", "b", "c", "d", "e"}}}, "stop", "at most 4");
    refused({{"stop", std::string(257, 'x')}}, "stop", "at most 256");
    refused({{"model", 1}}, "model", "expected a string");
    refused({{"user", 1}}, "user", "expected a string");
  }
  // max_completion_tokens is checked as max_tokens is.
  ExpectChatRefused({{"max_completion_tokens", "5"}}, "max_completion_tokens",
                    "expected an integer");
}

TEST(RefuseTest, NeverThrowsOnOddBodies) {
  const std::vector<std::string> bodies = {
      "\xef\xbb\xbf{}",  // a BOM (nlohmann skips it): then no messages
      std::string("{\"messages\":[{\"role\":\"user\",\"content\":\"a\0b\"}]}", 38),
      "{\"messages\":[{\"role\":\"user\",\"content\":\"\\ud800\"}]}",  // a lone surrogate escape
      "{\"max_tokens\":1e999}",
      "{\"max_tokens\":-0.0,\"messages\":[]}",
      "{\"prompt\":[1e30]}",
  };
  for (const auto& body : bodies) {
    for (Endpoint e : {Endpoint::kChat, Endpoint::kCompletion}) {
      Parsed p;
      EXPECT_NO_THROW(p = Parse(body, e));
      if (!p.ok) {
        EXPECT_EQ(p.error.http_status, 400);
        EXPECT_NO_THROW(json::parse(RenderError(p.error)));
      }
    }
  }
}

// ---- Rendering ----

ResponseMeta Meta(Endpoint endpoint) {
  ResponseMeta meta;
  meta.id = NewResponseId(endpoint);
  meta.created = 1700000000;
  meta.model = "the-model";
  meta.endpoint = endpoint;
  return meta;
}

void ExpectUsage(const json& u, int64_t prompt, int64_t completion, int64_t cached) {
  EXPECT_EQ(u["prompt_tokens"], prompt);
  EXPECT_EQ(u["completion_tokens"], completion);
  EXPECT_EQ(u["total_tokens"], prompt + completion);
  EXPECT_EQ(u["prompt_tokens_details"]["cached_tokens"], cached);
}

TEST(RenderTest, ChatResponse) {
  ResponseMeta meta = Meta(Endpoint::kChat);
  json r = json::parse(RenderResponse(meta, "Hello \"there\"\n", FinishReason::kLength, {7, 3, 5}));
  EXPECT_EQ(r["id"], meta.id);
  EXPECT_EQ(r["object"], "chat.completion");
  EXPECT_EQ(r["created"], 1700000000);
  EXPECT_EQ(r["model"], "the-model");
  ASSERT_EQ(r["choices"].size(), 1u);
  const json& c = r["choices"][0];
  EXPECT_EQ(c["index"], 0);
  EXPECT_EQ(c["message"], (json{{"role", "assistant"}, {"content", "Hello \"there\"\n"}}));
  EXPECT_TRUE(c["logprobs"].is_null());
  EXPECT_EQ(c["finish_reason"], "length");
  ExpectUsage(r["usage"], 7, 3, 5);
}

TEST(RenderTest, CompletionResponse) {
  ResponseMeta meta = Meta(Endpoint::kCompletion);
  json r = json::parse(RenderResponse(meta, "text", FinishReason::kStop, {2, 1, 0}));
  EXPECT_EQ(r["object"], "text_completion");
  EXPECT_EQ(r["choices"][0]["text"], "text");
  EXPECT_EQ(r["choices"][0]["index"], 0);
  EXPECT_TRUE(r["choices"][0]["logprobs"].is_null());
  EXPECT_EQ(r["choices"][0]["finish_reason"], "stop");
  EXPECT_FALSE(r["choices"][0].contains("message"));
  ExpectUsage(r["usage"], 2, 1, 0);
}

TEST(RenderTest, ChatChunks) {
  ResponseMeta meta = Meta(Endpoint::kChat);
  json first = json::parse(RenderChunk(meta, "Hel", true, std::nullopt));
  EXPECT_EQ(first["object"], "chat.completion.chunk");
  EXPECT_EQ(first["id"], meta.id);
  EXPECT_EQ(first["model"], "the-model");
  EXPECT_EQ(first["choices"][0]["delta"], (json{{"role", "assistant"}, {"content", "Hel"}}));
  EXPECT_TRUE(first["choices"][0]["finish_reason"].is_null());
  EXPECT_TRUE(first["choices"][0]["logprobs"].is_null());
  EXPECT_EQ(first["choices"][0]["index"], 0);
  EXPECT_FALSE(first.contains("usage"));

  json middle = json::parse(RenderChunk(meta, "lo", false, std::nullopt));
  EXPECT_EQ(middle["choices"][0]["delta"], (json{{"content", "lo"}}));

  json last = json::parse(RenderChunk(meta, "", false, FinishReason::kStop));
  EXPECT_EQ(last["choices"][0]["delta"], json::object());
  EXPECT_EQ(last["choices"][0]["finish_reason"], "stop");

  // Text in the finishing chunk is never dropped.
  json last_text = json::parse(RenderChunk(meta, "!", false, FinishReason::kLength));
  EXPECT_EQ(last_text["choices"][0]["delta"], (json{{"content", "!"}}));
  EXPECT_EQ(last_text["choices"][0]["finish_reason"], "length");
}

TEST(RenderTest, CompletionChunks) {
  ResponseMeta meta = Meta(Endpoint::kCompletion);
  json c = json::parse(RenderChunk(meta, "abc", true, std::nullopt));
  EXPECT_EQ(c["object"], "text_completion");
  EXPECT_EQ(c["choices"][0]["text"], "abc");
  EXPECT_TRUE(c["choices"][0]["finish_reason"].is_null());
  EXPECT_FALSE(c["choices"][0].contains("delta"));
  c = json::parse(RenderChunk(meta, "", false, FinishReason::kLength));
  EXPECT_EQ(c["choices"][0]["text"], "");
  EXPECT_EQ(c["choices"][0]["finish_reason"], "length");
}

TEST(RenderTest, UsageChunk) {
  for (Endpoint e : {Endpoint::kChat, Endpoint::kCompletion}) {
    ResponseMeta meta = Meta(e);
    json u = json::parse(RenderUsageChunk(meta, {10, 4, 8}));
    EXPECT_EQ(u["object"], e == Endpoint::kChat ? "chat.completion.chunk" : "text_completion");
    EXPECT_EQ(u["id"], meta.id);
    EXPECT_TRUE(u["choices"].is_array());
    EXPECT_TRUE(u["choices"].empty());
    ExpectUsage(u["usage"], 10, 4, 8);
  }
}

TEST(RenderTest, Models) {
  json m = json::parse(RenderModels("qwen.gguf", 123));
  EXPECT_EQ(m, (json{{"object", "list"},
                     {"data",
                      {{{"id", "qwen.gguf"},
                        {"object", "model"},
                        {"created", 123},
                        {"owned_by", "kvstash"}}}}}));
}

TEST(RenderTest, Error) {
  ApiError e;
  e.message = "m";
  json j = json::parse(RenderError(e));
  EXPECT_EQ(j, (json{{"error",
                      {{"message", "m"},
                       {"type", "invalid_request_error"},
                       {"param", nullptr},
                       {"code", nullptr}}}}));
  e.http_status = 400;
  e.param = "messages";
  e.code = "context_length_exceeded";
  j = json::parse(RenderError(e));
  EXPECT_EQ(j["error"]["param"], "messages");
  EXPECT_EQ(j["error"]["code"], "context_length_exceeded");
}

TEST(RenderTest, InvalidUtf8BecomesReplacementCharacter) {
  const std::string bad = std::string("a\xff") + "b\xe2\x82" + "c\xc3";  // stray, cut, cut at end
  const std::string fffd = "\xef\xbf\xbd";
  for (Endpoint e : {Endpoint::kChat, Endpoint::kCompletion}) {
    ResponseMeta meta = Meta(e);
    meta.model = "model\xfe";
    std::vector<std::string> outputs = {
        RenderResponse(meta, bad, FinishReason::kStop, {}),
        RenderChunk(meta, bad, true, std::nullopt),
        RenderChunk(meta, bad, false, FinishReason::kStop),
    };
    for (const auto& out : outputs) {
      json j;
      ASSERT_NO_THROW(j = json::parse(out)) << out;
      std::string text = e == Endpoint::kChat ? j["choices"][0].contains("message")
                                                    ? j["choices"][0]["message"]["content"]
                                                    : j["choices"][0]["delta"]["content"]
                                              : j["choices"][0]["text"];
      EXPECT_EQ(text.substr(0, 1), "a");
      EXPECT_NE(text.find(fffd), std::string::npos);
      EXPECT_EQ(text.find('\xff'), std::string::npos);
      EXPECT_EQ(j["model"], "model" + fffd);
    }
  }
  ApiError error;
  error.message = "bad \xc0\xaf byte";
  EXPECT_NO_THROW(json::parse(RenderError(error)));
  EXPECT_NO_THROW(json::parse(RenderModels("id\x80", 0)));
}

TEST(RenderTest, ResponseIds) {
  std::set<std::string> seen;
  for (int i = 0; i < 1000; ++i) {
    std::string chat = NewResponseId(Endpoint::kChat);
    ASSERT_EQ(chat.rfind("chatcmpl-", 0), 0u);
    ASSERT_EQ(chat.size(), 9u + 24u);
    EXPECT_EQ(chat.find_first_not_of("0123456789abcdef", 9), std::string::npos);
    seen.insert(chat);
  }
  EXPECT_EQ(seen.size(), 1000u);
  std::string cmpl = NewResponseId(Endpoint::kCompletion);
  EXPECT_EQ(cmpl.rfind("cmpl-", 0), 0u);
  EXPECT_EQ(cmpl.size(), 5u + 24u);
  EXPECT_STREQ(FinishReasonName(FinishReason::kStop), "stop");
  EXPECT_STREQ(FinishReasonName(FinishReason::kLength), "length");
}

// ---- Metrics ----

// The value of the sample line `series` (name plus labels) in `text`, or -1.
double Sample(const std::string& text, const std::string& series) {
  size_t pos = 0;
  while ((pos = text.find(series + " ", pos)) != std::string::npos) {
    if (pos == 0 || text[pos - 1] == '\n') return std::stod(text.substr(pos + series.size() + 1));
    pos += series.size();
  }
  return -1;
}

TEST(MetricsTest, CountersAddUp) {
  Metrics m;
  m.CountRequest("/v1/chat/completions", 200);
  m.CountRequest("/v1/chat/completions", 200);
  m.CountRequest("/v1/chat/completions", 400);
  m.CountRequest("/v1/completions", 200);
  m.CountCompletion(100, 40, 10, 0.02, 0.5);
  m.CountCompletion(50, 10, 5, -1, 3);        // no first token
  m.CountCompletion(-5, -1, -2, 0.001, 200);  // negative counts read as 0
  Gauges g;
  g.queue_length = 2;
  g.active_sequences = 3;
  g.n_parallel = 4;
  const std::string text = m.Render(g);
  EXPECT_EQ(
      Sample(text, "kvstash_requests_total{endpoint=\"/v1/chat/completions\",status=\"200\"}"), 2);
  EXPECT_EQ(
      Sample(text, "kvstash_requests_total{endpoint=\"/v1/chat/completions\",status=\"400\"}"), 1);
  EXPECT_EQ(Sample(text, "kvstash_requests_total{endpoint=\"/v1/completions\",status=\"200\"}"), 1);
  EXPECT_EQ(Sample(text, "kvstash_completions_total"), 3);
  EXPECT_EQ(Sample(text, "kvstash_prompt_tokens_total"), 150);
  EXPECT_EQ(Sample(text, "kvstash_cached_tokens_total"), 50);
  EXPECT_EQ(Sample(text, "kvstash_generated_tokens_total"), 15);
  EXPECT_DOUBLE_EQ(Sample(text, "kvstash_cache_hit_ratio"), 50.0 / 150.0);
  EXPECT_EQ(Sample(text, "kvstash_ttft_seconds_count"), 2);
  EXPECT_DOUBLE_EQ(Sample(text, "kvstash_ttft_seconds_sum"), 0.021);
  EXPECT_EQ(Sample(text, "kvstash_request_duration_seconds_count"), 3);
  EXPECT_DOUBLE_EQ(Sample(text, "kvstash_request_duration_seconds_sum"), 203.5);
  EXPECT_EQ(Sample(text, "kvstash_queue_length"), 2);
  EXPECT_EQ(Sample(text, "kvstash_active_sequences"), 3);
  EXPECT_EQ(Sample(text, "kvstash_parallel_sequences"), 4);
  // No store: no store series.
  EXPECT_EQ(text.find("kvstash_store_"), std::string::npos);
  // Every family has HELP and TYPE.
  for (const char* name :
       {"kvstash_requests_total", "kvstash_completions_total", "kvstash_prompt_tokens_total",
        "kvstash_cached_tokens_total", "kvstash_generated_tokens_total", "kvstash_cache_hit_ratio",
        "kvstash_ttft_seconds", "kvstash_request_duration_seconds", "kvstash_queue_length",
        "kvstash_active_sequences", "kvstash_parallel_sequences"}) {
    EXPECT_NE(text.find(std::string("# HELP ") + name + " "), std::string::npos) << name;
    EXPECT_NE(text.find(std::string("# TYPE ") + name + " "), std::string::npos) << name;
  }
  EXPECT_NE(text.find("# TYPE kvstash_ttft_seconds histogram\n"), std::string::npos);
  EXPECT_NE(text.find("# TYPE kvstash_requests_total counter\n"), std::string::npos);
  EXPECT_NE(text.find("# TYPE kvstash_queue_length gauge\n"), std::string::npos);
  EXPECT_EQ(text.back(), '\n');
}

TEST(MetricsTest, EmptyRatioIsZero) {
  Metrics m;
  const std::string text = m.Render({});
  EXPECT_EQ(Sample(text, "kvstash_cache_hit_ratio"), 0);
  EXPECT_EQ(Sample(text, "kvstash_completions_total"), 0);
  EXPECT_EQ(Sample(text, "kvstash_ttft_seconds_bucket{le=\"+Inf\"}"), 0);
}

TEST(MetricsTest, StoreGauges) {
  Metrics m;
  Gauges g;
  g.store_bytes = 1 << 20;
  g.store_chunks = 12;
  std::string text = m.Render(g);
  EXPECT_EQ(Sample(text, "kvstash_store_bytes"), 1 << 20);
  EXPECT_EQ(Sample(text, "kvstash_store_chunks"), 12);
  EXPECT_EQ(text.find("kvstash_store_max_bytes"), std::string::npos);  // no budget
  g.store_max_bytes = 1 << 30;
  text = m.Render(g);
  EXPECT_EQ(Sample(text, "kvstash_store_max_bytes"), 1 << 30);
}

TEST(MetricsTest, HistogramBucketsAreCumulative) {
  Histogram h;
  // One observation in each bucket, one exactly on a bound (le is inclusive), and one beyond all.
  for (double b : Histogram::kBounds) h.Observe(b * 0.9);
  h.Observe(0.005);
  h.Observe(1000);
  h.Observe(-1);  // dropped
  h.Observe(std::nan(""));
  std::string text;
  h.Render("t", "help text", &text);
  EXPECT_EQ(text.rfind("# HELP t help text\n# TYPE t histogram\n", 0), 0u) << text;
  EXPECT_EQ(Sample(text, "t_bucket{le=\"0.005\"}"), 2);
  EXPECT_EQ(Sample(text, "t_bucket{le=\"0.01\"}"), 3);
  EXPECT_EQ(Sample(text, "t_bucket{le=\"1\"}"), 9);
  EXPECT_EQ(Sample(text, "t_bucket{le=\"120\"}"), 15);
  EXPECT_EQ(Sample(text, "t_bucket{le=\"+Inf\"}"), 16);
  EXPECT_EQ(Sample(text, "t_count"), 16);
  double previous = 0;
  size_t buckets = 0;
  for (size_t pos = 0; (pos = text.find("t_bucket{", pos)) != std::string::npos; ++buckets) {
    size_t end = text.find('\n', pos);
    double v = std::stod(text.substr(text.rfind(' ', end) + 1));
    EXPECT_GE(v, previous);
    previous = v;
    pos = end;
  }
  EXPECT_EQ(buckets, Histogram::kBounds.size() + 1);
}

TEST(MetricsTest, LabelEscaping) {
  Metrics m;
  m.CountRequest("a\\b\"c\nd", 404);
  const std::string text = m.Render({});
  EXPECT_NE(text.find("kvstash_requests_total{endpoint=\"a\\\\b\\\"c\\nd\",status=\"404\"} 1\n"),
            std::string::npos)
      << text;
}

TEST(MetricsTest, ConcurrentCounting) {
  Metrics m;
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&m] {
      for (int i = 0; i < 1000; ++i) {
        m.CountRequest("/v1/completions", 200);
        m.CountCompletion(2, 1, 1, 0.01, 0.1);
      }
    });
  }
  for (int i = 0; i < 50; ++i) (void)m.Render({});  // scrapes while counting
  for (auto& t : threads) t.join();
  const std::string text = m.Render({});
  EXPECT_EQ(Sample(text, "kvstash_requests_total{endpoint=\"/v1/completions\",status=\"200\"}"),
            4000);
  EXPECT_EQ(Sample(text, "kvstash_prompt_tokens_total"), 8000);
  EXPECT_EQ(Sample(text, "kvstash_ttft_seconds_count"), 4000);
}

}  // namespace
}  // namespace kvstash::server
