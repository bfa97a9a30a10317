#include "server/http_server.h"

#include <httplib.h>
#include <openssl/crypto.h>
#include <openssl/sha.h>
#include <signal.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <memory>
#include <mutex>
#include <random>
#include <thread>

#include "kvstash/store.h"
#include "server/metrics.h"
#include "server/protocol.h"
#include "server/scheduler.h"
#include "store/redis_url.h"

namespace kvstash::server {
namespace {

using Clock = std::chrono::steady_clock;

void Log(const std::string& line) { std::fprintf(stderr, "kvstash serve: %s\n", line.c_str()); }

// ", Redis tier redis://host:port" for the start-up line: the URL without its password.
std::string RedisLine(const std::string& url) {
  auto parsed = store::ParseRedisUrl(url);
  return parsed.ok() ? ", Redis tier " + parsed->Redacted() : "";
}

int64_t UnixNow() { return static_cast<int64_t>(std::time(nullptr)); }

// Constant-time comparison of the presented key with ours: both are hashed first, so neither the
// content nor the length of the key leaks through timing.
bool KeyMatches(const std::string& presented, const std::string& key) {
  unsigned char a[SHA256_DIGEST_LENGTH], b[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(presented.data()), presented.size(), a);
  SHA256(reinterpret_cast<const unsigned char*>(key.data()), key.size(), b);
  return CRYPTO_memcmp(a, b, sizeof a) == 0;
}

// The metrics label for a request path: the endpoints, or "other" (a raw path would let clients
// create any number of series, with any bytes in them).
std::string EndpointLabel(const std::string& path) {
  for (const char* known :
       {"/v1/chat/completions", "/v1/completions", "/v1/models", "/metrics", "/health"})
    if (path == known) return known;
  return "other";
}

void SendError(httplib::Response& res, const ApiError& error) {
  res.status = error.http_status;
  res.set_content(RenderError(error), "application/json");
}

// Everything the handlers share.
struct ServerState {
  const ServeOptions* options = nullptr;
  std::atomic<bool> ready{false};
  std::atomic<bool> draining{false};
  std::shared_ptr<const Model> model;
  std::shared_ptr<Store> store;
  std::unique_ptr<engine::BatchEngine> engine;
  std::unique_ptr<Scheduler> scheduler;
  Metrics metrics;
  std::string model_id;
  int64_t created = UnixNow();
  // Store figures for /metrics, refreshed at most every few seconds (Stats lists the directory).
  std::mutex store_mu;
  Clock::time_point store_read{};
  int64_t store_bytes = -1, store_chunks = -1;
};

// The prompt tokens of a parsed request, or an error to send.
bool PromptTokens(ServerState& st, const CompletionRequest& req, std::vector<Token>* out,
                  ApiError* error) {
  if (req.endpoint == Endpoint::kCompletion && req.prompt_is_tokens) {
    for (int32_t t : req.prompt_tokens) {
      if (t < 0 || t >= st.model->n_vocab()) {
        *error = ApiError{400,
                          "prompt token " + std::to_string(t) + " is outside the model's " +
                              "vocabulary of " + std::to_string(st.model->n_vocab()) + " tokens",
                          "invalid_request_error", "prompt", ""};
        return false;
      }
    }
    *out = req.prompt_tokens;
    return true;
  }
  std::string text = req.prompt;
  if (req.endpoint == Endpoint::kChat) {
    std::vector<kvstash::ChatMessage> messages;
    for (const auto& m : req.messages) messages.push_back({m.role, m.content});
    auto applied = st.model->ApplyChatTemplate(messages, st.options->chat_template);
    if (!applied.ok()) {
      *error = ApiError{500, applied.status().message(), "server_error", "", ""};
      return false;
    }
    text = std::move(*applied);
  }
  auto tokens = st.model->Tokenize(text, /*add_bos=*/true);
  if (!tokens.ok()) {
    *error = ApiError{400, tokens.status().message(), "invalid_request_error",
                      req.endpoint == Endpoint::kChat ? "messages" : "prompt", ""};
    return false;
  }
  *out = std::move(*tokens);
  return true;
}

// Refuses prompts (and max_tokens) that do not fit a slot, with the numbers.
bool CheckFits(const ServerState& st, const CompletionRequest& req, size_t n_prompt,
               ApiError* error) {
  const size_t n_ctx = st.engine->n_ctx_slot();
  const std::string where = "this server's context holds " + std::to_string(n_ctx) +
                            " tokens per sequence (-c / --parallel)";
  const char* prompt_field = req.endpoint == Endpoint::kChat ? "messages" : "prompt";
  if (n_prompt == 0) {
    *error = ApiError{400, "the prompt is empty", "invalid_request_error", prompt_field, ""};
    return false;
  }
  if (n_prompt >= n_ctx) {
    *error = ApiError{400,
                      "the prompt has " + std::to_string(n_prompt) + " tokens; " + where +
                          ", and at least one must be left to generate",
                      "invalid_request_error", prompt_field, "context_length_exceeded"};
    return false;
  }
  if (req.max_tokens && n_prompt + static_cast<uint64_t>(*req.max_tokens) > n_ctx) {
    *error = ApiError{400,
                      "the prompt has " + std::to_string(n_prompt) + " tokens and max_tokens is " +
                          std::to_string(*req.max_tokens) + ": " +
                          std::to_string(n_prompt + *req.max_tokens) + " tokens, but " + where,
                      "invalid_request_error", "max_tokens", "context_length_exceeded"};
    return false;
  }
  return true;
}

Usage UsageOf(const JobResult& r) {
  Usage u;
  u.prompt_tokens = static_cast<int64_t>(r.n_prompt);
  u.completion_tokens = static_cast<int64_t>(r.n_generated);
  u.cached_tokens = static_cast<int64_t>(r.n_cached);
  return u;
}

FinishReason FinishOf(const JobResult& r) {
  return r.finish == JobFinish::kLength ? FinishReason::kLength : FinishReason::kStop;
}

// The status a finished job is counted and logged under: 499 (nginx's "client closed request")
// for a client that left, 503 for a job cut by the shutdown.
int StatusOf(const JobResult& r, bool draining) {
  if (r.finish == JobFinish::kError) return 500;
  if (r.finish == JobFinish::kCancelled) return draining ? 503 : 499;
  return 200;
}

// Counts and logs a finished job; called on the scheduler thread, whether or not a client is left
// to read the answer.
void Record(ServerState& st, const std::string& path, const JobResult& r) {
  const bool draining = st.draining;
  const int status = StatusOf(r, draining);
  st.metrics.CountRequest(path, status);
  if (r.finish != JobFinish::kError)
    st.metrics.CountCompletion(r.n_prompt, r.n_cached, r.n_generated, r.ttft_s, r.duration_s);
  char line[256];
  std::snprintf(line, sizeof line,
                "%s %d: prompt %zu tokens (%zu cached), %zu generated, first token %.3f s, "
                "total %.3f s%s",
                path.c_str(), status, r.n_prompt, r.n_cached, r.n_generated, r.ttft_s, r.duration_s,
                r.finish != JobFinish::kCancelled ? ""
                : draining                        ? ", cancelled (shutdown)"
                                                  : ", cancelled (client gone)");
  Log(line);
}

// The error a client still connected gets for a job that did not finish: it failed, or the
// shutdown cut it (an answer cut short must not look like a finished one).
std::optional<ApiError> FailureOf(const JobResult& r) {
  if (r.finish == JobFinish::kError)
    return ApiError{500, r.status.message(), "server_error", "", "decode_failed"};
  if (r.finish == JobFinish::kCancelled)
    return ApiError{503, "the server shut down before the answer was complete; retry",
                    "server_error", "", "shutdown"};
  return std::nullopt;
}

// A non-streamed answer. It is sent chunked, with a space (JSON allows leading whitespace) every
// second while the job runs, so that a client that hung up is noticed by a failed write and its
// job cancelled, as a stream's is: the HTTP library offers no other way to see the hang-up. The
// cost: a failure after the request was accepted comes as an error object in a 200 response.
void Respond(const ResponseMeta& meta, const std::shared_ptr<Channel>& channel,
             httplib::Response& res) {
  auto text = std::make_shared<std::string>();
  auto last_write = std::make_shared<Clock::time_point>(Clock::now());
  res.set_chunked_content_provider(
      "application/json",
      [meta, channel, text, last_write](size_t, httplib::DataSink& sink) {
        const std::optional<JobResult> result =
            channel->Wait(text.get(), std::chrono::milliseconds(200));
        if (!result) {
          if (Clock::now() - *last_write < std::chrono::seconds(1)) return true;
          *last_write = Clock::now();
          if (sink.write(" ", 1)) return true;
          channel->Cancel();
          return false;
        }
        const std::optional<ApiError> failure = FailureOf(*result);
        const std::string body =
            failure ? RenderError(*failure)
                    : RenderResponse(meta, *text, FinishOf(*result), UsageOf(*result));
        if (!sink.write(body.data(), body.size())) return false;
        sink.done();
        return true;
      },
      [channel](bool success) {
        if (!success) channel->Cancel();  // the client went away
      });
}

void Stream(const ResponseMeta& meta, const std::shared_ptr<Channel>& channel, bool include_usage,
            httplib::Response& res) {
  auto first = std::make_shared<bool>(true);
  res.set_chunked_content_provider(
      "text/event-stream",
      [meta, channel, include_usage, first](size_t, httplib::DataSink& sink) {
        auto send = [&](const std::string& json) {
          const std::string event = "data: " + json + "\n\n";
          return sink.write(event.data(), event.size());
        };
        std::string text;
        const std::optional<JobResult> result =
            channel->Wait(&text, std::chrono::milliseconds(200));
        if ((!text.empty() || *first) && !send(RenderChunk(meta, text, *first, std::nullopt))) {
          channel->Cancel();
          return false;
        }
        *first = false;
        if (!result) return true;  // called again
        bool ok = true;
        if (const std::optional<ApiError> failure = FailureOf(*result)) {
          ok = send(RenderError(*failure));
        } else {
          ok = send(RenderChunk(meta, "", false, FinishOf(*result)));
          if (ok && include_usage) ok = send(RenderUsageChunk(meta, UsageOf(*result)));
        }
        if (ok) {
          static const char kDone[] = "data: [DONE]\n\n";
          ok = sink.write(kDone, sizeof kDone - 1);
        }
        if (ok) sink.done();
        return ok;
      },
      [channel](bool success) {
        if (!success) channel->Cancel();  // the client went away mid-stream
      });
}

void HandleCompletion(ServerState& st, Endpoint endpoint, const httplib::Request& req,
                      httplib::Response& res) {
  const std::string path = EndpointLabel(req.path);
  auto fail = [&](const ApiError& e) {
    SendError(res, e);
    st.metrics.CountRequest(path, e.http_status);
  };
  if (!st.ready || st.draining) {
    res.set_header("Retry-After", "5");
    return fail(ApiError{503, st.draining ? "the server is shutting down" : "the model is loading",
                         "server_error", "", "unavailable"});
  }
  CompletionRequest request;
  ApiError error;
  ParseLimits limits;
  limits.max_tokens_cap = st.engine->n_ctx_slot();
  if (!ParseCompletionRequest(req.body, endpoint, limits, &request, &error)) return fail(error);
  Job job;
  if (!PromptTokens(st, request, &job.prompt, &error)) return fail(error);
  if (!CheckFits(st, request, job.prompt.size(), &error)) return fail(error);
  job.max_tokens = request.max_tokens.value_or(-1);
  job.stop = request.stop;
  job.sampling.temp = static_cast<float>(request.temperature);
  job.sampling.top_p = static_cast<float>(request.top_p);
  job.sampling.top_k = 0;
  job.sampling.min_p = 0;
  job.sampling.seed = request.seed ? *request.seed : std::random_device{}();
  job.channel = std::make_shared<Channel>();
  job.on_done = [&st, path](const JobResult& r) { Record(st, path, r); };
  std::shared_ptr<Channel> channel = job.channel;
  if (!st.scheduler->Submit(std::move(job))) {
    res.set_header("Retry-After", "1");
    return fail(ApiError{503, "every sequence is busy and the queue is full; retry shortly",
                         "server_error", "", "queue_full"});
  }
  ResponseMeta meta;
  meta.endpoint = endpoint;
  meta.id = NewResponseId(endpoint);
  meta.created = UnixNow();
  meta.model = request.model.empty() ? st.model_id : request.model;
  if (request.stream) return Stream(meta, channel, request.include_usage, res);
  Respond(meta, channel, res);
}

std::string RenderMetrics(ServerState& st) {
  Gauges g;
  if (st.scheduler) {
    g.queue_length = st.scheduler->queue_length();
    g.active_sequences = st.scheduler->active();
  }
  g.n_parallel = st.engine ? st.engine->n_slots() : 0;
  if (st.store) {
    std::lock_guard<std::mutex> lock(st.store_mu);
    if (Clock::now() - st.store_read > std::chrono::seconds(5)) {
      auto stats = st.store->Stats();
      if (stats.ok()) {
        st.store_bytes = static_cast<int64_t>(stats->bytes);
        st.store_chunks = static_cast<int64_t>(stats->chunks);
      }
      st.store_read = Clock::now();
    }
    g.store_bytes = st.store_bytes;
    g.store_chunks = st.store_chunks;
    g.store_max_bytes = static_cast<int64_t>(st.options->cache_max_bytes);
    g.redis = st.store->redis_stats();
  }
  return st.metrics.Render(g);
}

void InstallRoutes(httplib::Server& http, ServerState& st) {
  const std::string key = st.options->api_key;
  // Every endpoint but /health needs the key when there is one.
  http.set_pre_routing_handler([&st, key](const httplib::Request& req, httplib::Response& res) {
    if (key.empty() || req.path == "/health") return httplib::Server::HandlerResponse::Unhandled;
    const std::string auth = req.get_header_value("Authorization");
    const std::string prefix = "Bearer ";
    if (auth.compare(0, prefix.size(), prefix) == 0 && KeyMatches(auth.substr(prefix.size()), key))
      return httplib::Server::HandlerResponse::Unhandled;
    SendError(res, ApiError{401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                            "authentication_error", "", "invalid_api_key"});
    st.metrics.CountRequest(EndpointLabel(req.path), 401);
    return httplib::Server::HandlerResponse::Handled;
  });
  http.Get("/health", [&st](const httplib::Request&, httplib::Response& res) {
    const bool ok = st.ready && !st.draining;
    res.status = ok ? 200 : 503;
    res.set_content(ok            ? R"({"status":"ok"})"
                    : st.draining ? R"({"status":"shutting down"})"
                                  : R"({"status":"loading model"})",
                    "application/json");
  });
  http.Get("/v1/models", [&st](const httplib::Request& req, httplib::Response& res) {
    res.set_content(RenderModels(st.model_id, st.created), "application/json");
    st.metrics.CountRequest(EndpointLabel(req.path), 200);
  });
  http.Get("/metrics", [&st](const httplib::Request&, httplib::Response& res) {
    res.set_content(RenderMetrics(st), "text/plain; version=0.0.4");
  });
  http.Post("/v1/chat/completions", [&st](const httplib::Request& req, httplib::Response& res) {
    HandleCompletion(st, Endpoint::kChat, req, res);
  });
  http.Post("/v1/completions", [&st](const httplib::Request& req, httplib::Response& res) {
    HandleCompletion(st, Endpoint::kCompletion, req, res);
  });
  // Unknown paths, the body cap (413) and anything else httplib answers itself: OpenAI's shape.
  http.set_error_handler([&st](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return;
    const std::string msg = res.status == 404   ? "no such endpoint: " + req.method + " " + req.path
                            : res.status == 413 ? "the request body is larger than this server " +
                                                      std::string("accepts (--max-body)")
                                                : "the request could not be served";
    SendError(res, ApiError{res.status, msg,
                            res.status >= 500 ? "server_error" : "invalid_request_error", "", ""});
    st.metrics.CountRequest(EndpointLabel(req.path), res.status);
  });
  http.set_exception_handler(
      [](const httplib::Request&, httplib::Response& res, std::exception_ptr) {
        SendError(
            res, ApiError{500, "internal error while serving the request", "server_error", "", ""});
      });
}

// Loads the model, opens the store and starts the engine; /health turns 200 after.
Status Start(ServerState& st) {
  const ServeOptions& o = *st.options;
  ModelOptions model_options = o.model;
  if (o.engine.flash_attn == FlashAttention::kOff && engine::InvariantBuild()) {
    // The last two batch-size-dependent paths of ggml's CPU kernels, for quantized weights: the
    // repacked gemm/gemv split, and the "IQ panel" used for k- and i-quants from 8 rows on (both
    // off with repack_weights = false, kvstash/model.h).
    model_options.repack_weights = false;
  }
  auto model = Model::Load(o.model_path, model_options);
  if (!model.ok()) return model.status();
  st.model = *model;
  const std::string id = o.model_path.substr(o.model_path.find_last_of('/') + 1);
  st.model_id = id.empty() ? o.model_path : id;
  if (!o.no_cache) {
    const std::string dir = o.cache_dir.empty() ? DefaultStoreDir() : o.cache_dir;
    StoreOptions so;
    so.chunk_tokens = o.cache_chunk;
    so.max_bytes = o.cache_max_bytes;
    so.redis_url = o.cache_redis;
    so.warn = [](const std::string& line) { Log("warning: " + line); };
    auto store = dir.empty() ? Result<std::shared_ptr<Store>>(Status::InvalidArgument(
                                   "no cache directory: set --cache-dir or $HOME"))
                             : Store::Open(dir, so);
    if (store.ok()) {
      st.store = *store;
      Log("prefix store " + dir + " (" + std::to_string(st.store->chunk_tokens()) +
          "-token chunks)" + (o.cache_redis.empty() ? "" : RedisLine(o.cache_redis)));
    } else {
      Log("warning: serving without a prefix store: " + store.status().message());
    }
  }
  engine::BatchEngineOptions eo = o.engine;
  const uint32_t slots = std::max<uint32_t>(eo.n_slots, 1);
  eo.n_ctx_slot = o.n_ctx != 0 ? std::max<uint32_t>(o.n_ctx / slots, 1) : 4096;
  // A chat template llama.cpp cannot apply fails here, not on every chat request.
  auto probe = st.model->ApplyChatTemplate({{"user", "hello"}}, o.chat_template);
  if (!probe.ok()) return probe.status();
  auto engine = engine::BatchEngine::Create(st.model, eo, st.store);
  if (!engine.ok()) return engine.status();
  st.engine = std::move(*engine);
  st.scheduler = std::make_unique<Scheduler>(st.engine.get(), o.max_queue);
  Log("model " + o.model_path + ": " + st.engine->Describe());
  st.ready = true;
  return Status::Ok();
}

}  // namespace

std::string DefaultStoreDir() {
  const char* xdg = std::getenv("XDG_CACHE_HOME");
  if (xdg != nullptr && xdg[0] == '/') return std::string(xdg) + "/kvstash/store";
  const char* home = std::getenv("HOME");
  if (home != nullptr && home[0] == '/') return std::string(home) + "/.cache/kvstash/store";
  return "";
}

int RunServer(const ServeOptions& options) {
  // Signals are taken by sigwait; the threads created below inherit the mask.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  signal(SIGPIPE, SIG_IGN);  // a client that hangs up is a failed write, not a dead server

  ServerState st;
  st.options = &options;
  httplib::Server http;
  const int threads = options.http_threads > 0
                          ? options.http_threads
                          : static_cast<int>(options.engine.n_slots + options.max_queue + 8);
  http.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  http.set_payload_max_length(options.max_body_bytes);
  http.set_read_timeout(10, 0);   // a client that stops sending mid-request is dropped
  http.set_write_timeout(30, 0);  // and one that stops reading
  http.set_keep_alive_timeout(5);
  InstallRoutes(http, st);
  int port = options.port;
  if (port == 0) {
    port = http.bind_to_any_port(options.host);
  } else if (!http.bind_to_port(options.host, port)) {
    port = -1;
  }
  if (port < 0) {
    Log("error: cannot listen on " + options.host + ":" + std::to_string(options.port) +
        " (in use, or not an address of this machine); pick another --port or --host");
    return 1;
  }
  std::thread listener([&http] { http.listen_after_bind(); });
  Log("listening on http://" + options.host + ":" + std::to_string(port));

  const Status started = Start(st);
  if (!started.ok()) {
    Log("error: " + started.message());
    http.stop();
    listener.join();
    return 1;
  }
  int sig = 0;
  sigwait(&set, &sig);  // SIGINT or SIGTERM, blocked in every thread
  Log(std::string("got ") + (sig == SIGINT ? "SIGINT" : "SIGTERM") +
      ": finishing running requests");
  st.draining = true;
  const auto deadline = Clock::now() + std::chrono::milliseconds(
                                           static_cast<int64_t>(options.shutdown_timeout_s * 1000));
  while (!st.scheduler->Idle() && Clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  st.scheduler->Stop();  // cancels what is left
  http.stop();
  listener.join();
  st.scheduler.reset();
  st.engine.reset();
  if (st.store) {
    st.store->WaitForWrites();
    const WriterStats w = st.store->writer_stats();
    Log("store: " + std::to_string(w.chunks_written) + " chunks written, " +
        std::to_string(w.chunks_dropped) + " dropped");
  }
  Log("stopped");
  return 0;
}

}  // namespace kvstash::server
