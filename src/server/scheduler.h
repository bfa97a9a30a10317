// Scheduler: the one thread that drives the BatchEngine for `kvstash serve`.
//
// HTTP threads Submit jobs (a tokenized prompt and how to sample) and read what comes back from
// the job's Channel; the scheduler admits queued jobs into free slots, runs continuous-batching
// steps, turns sampled tokens into text (stop strings held back and cut, UTF-8 never split) and
// finishes jobs. A job whose client went away (Channel::Cancel) frees its slot at the next step.
#ifndef KVSTASH_SERVER_SCHEDULER_H_
#define KVSTASH_SERVER_SCHEDULER_H_

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "engine/batch_engine.h"
#include "engine/stop_matcher.h"
#include "kvstash/status.h"

namespace kvstash::server {

enum class JobFinish { kStop, kLength, kCancelled, kError };

struct JobResult {
  Status status;  // not ok: kError
  JobFinish finish = JobFinish::kStop;
  size_t n_prompt = 0;
  size_t n_cached = 0;  // prompt tokens not decoded (slot cache or store)
  size_t n_generated = 0;
  double ttft_s = -1;  // submit to first token
  double duration_s = 0;
};

// What the scheduler hands to the HTTP thread of one job: text pieces as they become final, then
// the result. Thread-safe.
class Channel {
 public:
  // Waits up to `timeout` for text or the end. Appends new text to *text; returns the result once
  // the job is finished and all text was taken.
  std::optional<JobResult> Wait(std::string* text, std::chrono::milliseconds timeout);
  // The client is gone: the scheduler stops the job at its next step.
  void Cancel() { cancelled_ = true; }
  bool cancelled() const { return cancelled_; }

  // Scheduler side.
  void Push(const std::string& text);
  void Finish(JobResult result);

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::string pending_;
  std::optional<JobResult> result_;
  std::atomic<bool> cancelled_{false};
};

struct Job {
  std::vector<Token> prompt;
  SampleOptions sampling;   // only the sampler fields (temp, top_p, seed, ...)
  int64_t max_tokens = -1;  // < 0: until end of generation or the slot's context is full
  std::vector<std::string> stop;
  std::shared_ptr<Channel> channel;
  // Called on the scheduler thread when the job ends, however it ends (before the channel's
  // Finish): the place to count and log it, as its client may be gone.
  std::function<void(const JobResult&)> on_done;
  std::chrono::steady_clock::time_point submitted = std::chrono::steady_clock::now();
};

class Scheduler {
 public:
  // `max_queue`: jobs waiting for a slot beyond which Submit refuses.
  Scheduler(engine::BatchEngine* engine, size_t max_queue);
  ~Scheduler();  // Stop()
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // False when the queue is full (the caller answers 429/503 with Retry-After).
  bool Submit(Job job);
  // Cancels every job (queued or running) and waits for the thread; the engine publishes what
  // the running jobs decoded.
  void Stop();
  // Stops admitting: queued and running jobs finish; Idle() turns true when none is left.
  bool Idle() const;

  int64_t queue_length() const;
  int64_t active() const;

 private:
  struct Running {
    Job job;
    engine::StopMatcher matcher;  // the generated text, cut before a stop string
    size_t n_generated = 0;
    double ttft_s = -1;
  };
  void Loop();
  void Admit();
  void OnToken(int slot, Token token);
  void Finish(int slot, JobFinish finish, Status status = Status::Ok());
  void Emit(Running& r, bool final);

  engine::BatchEngine* engine_;
  const size_t max_queue_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Job> queue_;
  bool stop_ = false;
  std::vector<std::optional<Running>> running_;  // by slot
  std::atomic<int64_t> active_{0};
  std::thread thread_;
};

}  // namespace kvstash::server

#endif  // KVSTASH_SERVER_SCHEDULER_H_
