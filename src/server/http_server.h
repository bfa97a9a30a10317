// `kvstash serve`: the OpenAI-compatible HTTP server (docs/SERVER.md).
//
// RunServer binds, answers /health with 503 while the model loads, then serves
// /v1/chat/completions, /v1/completions, /v1/models and /metrics until SIGINT or SIGTERM: it then
// stops accepting, lets running requests finish (cancelling what is left at the deadline),
// flushes the store's pending chunk writes and returns 0.
#ifndef KVSTASH_SERVER_HTTP_SERVER_H_
#define KVSTASH_SERVER_HTTP_SERVER_H_

#include <cstdint>
#include <string>

#include "engine/batch_engine.h"
#include "kvstash/model.h"

namespace kvstash::server {

struct ServeOptions {
  std::string model_path;
  ModelOptions model;
  std::string host = "127.0.0.1";
  int port = 8080;     // 0: any free port (the chosen one is printed)
  uint32_t n_ctx = 0;  // the whole context, shared by the slots; 0: 4096 per slot
  engine::BatchEngineOptions engine;
  // The prefix store: cache_dir empty and !no_cache: the default under $XDG_CACHE_HOME/kvstash.
  std::string cache_dir;
  bool no_cache = false;
  uint64_t cache_max_bytes = 0;  // 0: the store's default
  uint32_t cache_chunk = 0;      // 0: the store's default
  std::string cache_redis;       // --cache-redis URL: the store's second tier (empty: none)
  std::string api_key;           // empty: none
  std::string chat_template;     // empty: the model's own
  size_t max_body_bytes = 8u << 20;
  size_t max_queue = 64;  // requests waiting for a slot before 503
  double shutdown_timeout_s = 10;
  int http_threads = 0;  // 0: enough for every slot and the queue
};

// Runs the server; returns the process exit code (0 after a signal-driven shutdown, 1 when it
// could not start). Messages go to stderr.
int RunServer(const ServeOptions& options);

// The store directory `serve` uses when --cache-dir is not given: $XDG_CACHE_HOME/kvstash/store,
// else $HOME/.cache/kvstash/store ("" when neither variable is set).
std::string DefaultStoreDir();

}  // namespace kvstash::server

#endif  // KVSTASH_SERVER_HTTP_SERVER_H_
