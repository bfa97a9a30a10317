#include "server/scheduler.h"

#include <algorithm>

#include "server/protocol.h"

namespace kvstash::server {
namespace {

double SecondsSince(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

// Ends a job: counted (on_done) before its client can see the result.
void Complete(Job& job, JobResult result) {
  if (job.on_done) job.on_done(result);
  job.channel->Finish(std::move(result));
}

// A job cancelled before it reached a slot.
void CancelQueued(Job& job) {
  JobResult r;
  r.finish = JobFinish::kCancelled;
  r.n_prompt = job.prompt.size();
  r.duration_s = SecondsSince(job.submitted);
  Complete(job, std::move(r));
}

}  // namespace

std::optional<JobResult> Channel::Wait(std::string* text, std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait_for(lock, timeout, [&] { return !pending_.empty() || result_.has_value(); });
  text->append(pending_);
  pending_.clear();
  return result_;
}

void Channel::Push(const std::string& text) {
  if (text.empty()) return;
  {
    std::lock_guard<std::mutex> lock(mu_);
    pending_ += text;
  }
  cv_.notify_all();
}

void Channel::Finish(JobResult result) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    result_ = std::move(result);
  }
  cv_.notify_all();
}

Scheduler::Scheduler(engine::BatchEngine* engine, size_t max_queue)
    : engine_(engine), max_queue_(max_queue), running_(engine->n_slots()) {
  thread_ = std::thread([this] { Loop(); });
}

Scheduler::~Scheduler() { Stop(); }

bool Scheduler::Submit(Job job) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stop_ || queue_.size() >= max_queue_) return false;
    queue_.push_back(std::move(job));
  }
  cv_.notify_all();
  return true;
}

void Scheduler::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

bool Scheduler::Idle() const {
  std::lock_guard<std::mutex> lock(mu_);
  return queue_.empty() && active_ == 0;
}

int64_t Scheduler::queue_length() const {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<int64_t>(queue_.size());
}

int64_t Scheduler::active() const { return active_; }

// Moves queued jobs into free slots (the slot whose cache shares most with the prompt).
void Scheduler::Admit() {
  std::vector<bool> busy(running_.size());
  for (size_t i = 0; i < running_.size(); ++i) busy[i] = running_[i].has_value();
  while (true) {
    Job job;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (queue_.empty()) return;
      const int slot = engine_->PickSlot(queue_.front().prompt, busy);
      if (slot < 0) return;
      job = std::move(queue_.front());
      queue_.pop_front();
      if (job.channel->cancelled()) {
        CancelQueued(job);
        continue;
      }
      busy[slot] = true;
      engine::StopMatcher matcher(job.stop);
      Running run{std::move(job), std::move(matcher)};
      engine_->Begin(slot, run.job.prompt, run.job.sampling);
      running_[slot] = std::move(run);
      ++active_;
    }
  }
}

void Scheduler::Loop() {
  std::vector<int> ready, failed;
  while (true) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      if (stop_) break;
      if (queue_.empty() && !engine_->HasWork()) {
        cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
        if (stop_) break;
      }
    }
    Admit();
    for (size_t i = 0; i < running_.size(); ++i)
      if (running_[i] && running_[i]->job.channel->cancelled())
        Finish(static_cast<int>(i), JobFinish::kCancelled);
    if (!engine_->HasWork()) continue;  // every job was cancelled
    const Status status = engine_->Step(&ready, &failed);
    for (int slot : failed)
      if (running_[slot]) Finish(slot, JobFinish::kError, status);
    for (int slot : ready)
      if (running_[slot]) OnToken(slot, engine_->Sample(slot));
  }
  // Stopping: every job still here is cancelled; the engine keeps what was decoded.
  for (size_t i = 0; i < running_.size(); ++i)
    if (running_[i]) Finish(static_cast<int>(i), JobFinish::kCancelled);
  std::lock_guard<std::mutex> lock(mu_);
  for (Job& job : queue_) CancelQueued(job);
  queue_.clear();
}

void Scheduler::OnToken(int slot, Token token) {
  Running& r = *running_[slot];
  const engine::BatchEngine& e = *engine_;
  const bool first = r.ttft_s < 0;
  if (first) r.ttft_s = SecondsSince(r.job.submitted);
  std::optional<JobFinish> finish;
  if (e.model().IsEndOfGeneration(token)) {
    finish = JobFinish::kStop;
  } else {
    ++r.n_generated;
    if (r.matcher.Add(e.model().TokenToPiece(token))) finish = JobFinish::kStop;
  }
  if (!finish) {
    Emit(r, false);
    if (r.job.max_tokens >= 0 && static_cast<int64_t>(r.n_generated) >= r.job.max_tokens)
      finish = JobFinish::kLength;
    // The sampled token is decoded next step: it needs a cell of its own.
    else if (e.tokens(slot).size() >= e.n_ctx_slot())
      finish = JobFinish::kLength;
  }
  if (finish) return Finish(slot, *finish);  // End publishes
  // The prompt's new chunks are copied out for the store after the first token went to the
  // client: the copy takes tens of ms the first token need not wait for.
  if (first) engine_->PublishPrompt(slot);
}

// Pushes the text no later token can change (engine::StopMatcher::TakeShowable); `final`:
// everything that is left.
void Scheduler::Emit(Running& r, bool final) {
  const std::string_view piece = r.matcher.TakeShowable(final);
  if (!piece.empty()) r.job.channel->Push(std::string(piece));
}

void Scheduler::Finish(int slot, JobFinish finish, Status status) {
  Running& r = *running_[slot];
  if (finish != JobFinish::kCancelled && finish != JobFinish::kError) Emit(r, true);
  const engine::SlotReport& report = engine_->report(slot);
  JobResult result;
  result.status = std::move(status);
  result.finish = finish;
  result.n_prompt = report.n_prompt;
  result.n_cached = report.n_reused;
  result.n_generated = r.n_generated;
  result.ttft_s = r.ttft_s;
  result.duration_s = SecondsSince(r.job.submitted);
  Job job = std::move(r.job);
  running_[slot].reset();
  --active_;
  engine_->End(slot);
  Complete(job, std::move(result));
}

}  // namespace kvstash::server
