// save -> open -> generate with kvstash, end to end.
//
//   kvstash make-test-model -o tiny.gguf          (or any llama.cpp GGUF model)
//   kvstash_example tiny.gguf
//
// Step 1 decodes a system prompt once and saves its KV cache. Step 2, which would normally run in
// another process later, opens the file and answers a question without decoding the system prompt
// again. Step 3 does the same cold and checks that both give the same text.
#include <chrono>
#include <cstdio>
#include <string>

#include "kvstash/model.h"
#include "kvstash/session.h"

using Clock = std::chrono::steady_clock;

static double MsSince(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

static int Fail(const kvstash::Status& status) {
  std::fprintf(stderr, "error: %s\n", status.message().c_str());
  return 1;
}

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s MODEL.gguf [SESSION.kvs]\n", argv[0]);
    return 2;
  }
  const std::string model_path = argv[1];
  const std::string session_path = argc > 2 ? argv[2] : "example.kvs";
  const std::string system_prompt =
      "You are a helpful assistant for a hardware store. Answer in one sentence. "
      "Opening hours are 8am to 6pm, Monday to Saturday.";
  const std::string question = " Customer: When do you open on Saturday? Assistant:";

  // Load the model once; sessions share it.
  auto model = kvstash::Model::Load(model_path);
  if (!model.ok()) return Fail(model.status());
  kvstash::SessionOptions options;  // Open takes what decides the KV bytes from the file
  options.n_ctx = 4096;

  // 1. Save: decode the system prompt once (BOS is added because the session is empty).
  {
    auto session = kvstash::Session::Create(*model, options);
    if (!session.ok()) return Fail(session.status());
    const auto start = Clock::now();
    if (auto s = (*session)->Append(system_prompt); !s.ok()) return Fail(s);
    const double prefill_ms = MsSince(start);
    if (auto s = (*session)->Save(session_path); !s.ok()) return Fail(s);
    std::printf("saved %zu tokens to %s (prefill %.1f ms)\n", (*session)->tokens().size(),
                session_path.c_str(), prefill_ms);
  }

  kvstash::SampleOptions sampling;
  sampling.n_predict = 32;
  sampling.temp = 0;  // greedy, so the warm and cold answers can be compared
  sampling.stop = {"\nCustomer:"};

  // 2. Open: the context is re-created from the file; no positions, no re-decoding.
  std::string warm_text;
  {
    const auto start = Clock::now();
    auto session = kvstash::Session::Open(*model, session_path);
    if (!session.ok()) return Fail(session.status());
    const double open_ms = MsSince(start);
    if (auto s = (*session)->Append(question); !s.ok()) return Fail(s);
    std::printf("warm (open %.1f ms):", open_ms);
    auto answer = (*session)->Generate(sampling, [](std::string_view piece) {
      std::fwrite(piece.data(), 1, piece.size(), stdout);
      std::fflush(stdout);
      return true;
    });
    if (!answer.ok()) return Fail(answer.status());
    std::printf("\n  [%zu tokens, stopped by %s, %zu decoded in this run]\n", answer->tokens.size(),
                kvstash::StopReasonName(answer->stop_reason), (*session)->n_decoded_total());
    warm_text = answer->text;
  }

  // 3. Cold: the same token sequence decoded from scratch, in the same two groups.
  {
    auto session = kvstash::Session::Create(*model, options);
    if (!session.ok()) return Fail(session.status());
    const auto start = Clock::now();
    if (auto s = (*session)->Append(system_prompt); !s.ok()) return Fail(s);
    if (auto s = (*session)->Append(question); !s.ok()) return Fail(s);
    auto answer = (*session)->Generate(sampling);
    if (!answer.ok()) return Fail(answer.status());
    std::printf("cold (%.1f ms): same answer: %s\n", MsSince(start),
                answer->text == warm_text ? "yes" : "NO");
    return answer->text == warm_text ? 0 : 1;
  }
}
