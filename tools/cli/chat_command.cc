// kvstash chat: reads one user message per line (a terminal or a pipe), answers each through
// kvstash::Chat, saves the conversation after every turn when --session is given.
//
// stdout carries the answers only, one per line, so that a pipe gets nothing else; the prompt
// and, on resume, the history go to stdout only when stdin is a terminal (else the history goes
// to stderr). SIGINT during an answer (or its prefill) stops it and returns to the prompt (what
// was generated stays in the conversation: the user saw it); SIGINT at the prompt, /exit or end
// of input leave, saving first. SIGTERM stops the answer, saves and exits 143.
#include "chat_command.h"

#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <string>

#include "kvstash/chat.h"
#include "kvstash/process.h"

namespace kvstash::cli {
namespace {

static_assert(std::atomic<bool>::is_always_lock_free);
std::atomic<bool> g_stop{false};  // stop the running answer or prefill
volatile std::sig_atomic_t g_signal = 0;

void OnChatSignal(int sig) {
  if (g_stop.load()) {  // not yet taken up (a long prefill): the user means it, stop now
    std::signal(sig, SIG_DFL);
    std::raise(sig);
    return;
  }
  g_signal = sig;
  g_stop.store(true);
}

// Without SA_RESTART, so that a signal interrupts the read at the prompt.
void InstallChatSignals() {
  for (int sig : {SIGINT, SIGTERM}) {
    struct sigaction old;
    if (sigaction(sig, nullptr, &old) == 0 && old.sa_handler == SIG_IGN) continue;
    struct sigaction action = {};
    action.sa_handler = OnChatSignal;
    sigemptyset(&action.sa_mask);
    sigaction(sig, &action, nullptr);
  }
}

enum class ReadResult { kLine, kEnd, kInterrupted };

// Waits until stdin can be read; false when SIGINT or SIGTERM stopped the chat. The signals are
// blocked between the look at g_stop and the wait, and ppoll unblocks them atomically: one that
// arrives just after the look would otherwise leave read(2) waiting for input that never comes.
bool WaitForInput() {
  sigset_t signals, previous;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  while (true) {
    pthread_sigmask(SIG_BLOCK, &signals, &previous);
    int ready = 0;
    if (!g_stop.load()) {
      pollfd input{STDIN_FILENO, POLLIN, 0};
      ready = ppoll(&input, 1, nullptr, &previous);
    }
    pthread_sigmask(SIG_SETMASK, &previous, nullptr);
    if (g_stop.load()) return false;
    if (ready > 0) return true;  // readable, at its end, or in error: read(2) says which
  }
}

// Lines from stdin with read(2): a signal at the prompt must end the wait, which stdio retries.
class LineReader {
 public:
  ReadResult Next(std::string* line) {
    line->clear();
    while (true) {
      const size_t nl = buffer_.find('\n');
      if (nl != std::string::npos) {
        *line = buffer_.substr(0, nl);
        buffer_.erase(0, nl + 1);
        if (!line->empty() && line->back() == '\r') line->pop_back();
        return ReadResult::kLine;
      }
      if (!WaitForInput()) return ReadResult::kInterrupted;
      char chunk[4096];
      const ssize_t n = ::read(STDIN_FILENO, chunk, sizeof(chunk));
      if (n < 0 && errno == EINTR) continue;  // g_stop says whether it was ours
      if (n <= 0) {
        if (buffer_.empty()) return ReadResult::kEnd;
        line->swap(buffer_);  // a last line without a newline
        return ReadResult::kLine;
      }
      buffer_.append(chunk, static_cast<size_t>(n));
    }
  }

 private:
  std::string buffer_;
};

bool Out(std::string_view text) {
  return std::fwrite(text.data(), 1, text.size(), stdout) == text.size() &&
         std::fflush(stdout) == 0;
}

struct ChatRun {
  const ChatFlags& flags;
  Chat& chat;
  bool interactive = false;
  bool dirty = false;  // changed since the last save
  int rc = 0;
  int turns = 0;
};

bool Save(ChatRun& run, const std::string& path) {
  const Status saved = run.chat.Save(path);
  if (!saved.ok()) {
    std::fprintf(stderr, "error: %s\n", saved.message().c_str());
    run.rc = 1;
    return false;
  }
  if (run.flags.session && path == *run.flags.session) run.dirty = false;
  return true;
}

void PrintHistory(const ChatRun& run) {
  FILE* to = run.interactive ? stdout : stderr;
  for (const ChatMessage& m : run.chat.messages()) {
    std::fprintf(to, "%s: %s\n", m.role.c_str(), m.content.c_str());
  }
  std::fflush(to);
}

// One user message: the answer streamed to stdout, then a newline. False: stdout is gone.
bool Turn(ChatRun& run, const std::string& text) {
  bool written = true;
  auto turn = run.chat.Say(text, [&](std::string_view piece) {
    written = written && Out(piece);
    return written && !g_stop.load();
  });
  if (!turn.ok()) {
    // A signal during the prefill: nothing was answered and the message is not kept.
    if (turn.status().code() != Status::Code::kCancelled) {
      std::fprintf(stderr, "error: %s\n", turn.status().message().c_str());
      run.rc = 1;
    }
    return true;
  }
  ++run.turns;
  run.dirty = true;
  if (run.flags.common.verbose) {
    std::fprintf(stderr,
                 "chat: turn %d: %zu prompt tokens, %zu reused, %zu decoded, %zu generated (%s)\n",
                 run.turns, turn->n_prompt_tokens, turn->n_reused, turn->n_decoded,
                 turn->generation.tokens.size(), StopReasonName(turn->generation.stop_reason));
  }
  written = written && Out("\n");
  if (run.flags.session) Save(run, *run.flags.session);
  return written;
}

// A line that starts with '/': true when the chat goes on.
bool Command(ChatRun& run, const std::string& line) {
  if (line == "/exit" || line == "/quit") return false;
  if (line == "/reset") {
    run.chat.Reset();
    run.dirty = true;
    if (run.flags.session) Save(run, *run.flags.session);
    return true;
  }
  if (line.rfind("/save ", 0) == 0 && line.size() > 6) {
    const std::string path = line.substr(6);
    if (Save(run, path)) std::fprintf(stderr, "saved '%s'\n", path.c_str());
    return true;
  }
  std::fprintf(stderr,
               "error: unknown command '%s'; the commands are /save FILE, /reset and /exit (start "
               "a message with // to send a line that begins with /)\n",
               line.c_str());
  return true;
}

// Returns the exit code.
int Loop(ChatRun& run) {
  LineReader reader;
  std::string line;
  int rc = 0;
  while (rc == 0) {
    g_stop.store(false);
    g_signal = 0;
    if (run.interactive && !Out("> ")) break;
    const ReadResult read = reader.Next(&line);
    if (read == ReadResult::kEnd) break;
    if (read == ReadResult::kInterrupted) {
      rc = 128 + (g_signal != 0 ? g_signal : SIGINT);
      break;
    }
    if (line.empty()) continue;
    if (line[0] == '/' && line.rfind("//", 0) != 0) {
      if (!Command(run, line)) break;
      continue;
    }
    if (!Turn(run, line[0] == '/' ? line.substr(1) : line)) break;
    if (g_signal == SIGTERM) rc = 128 + SIGTERM;
  }
  if (run.interactive && rc != 0) Out("\n");
  if (run.dirty && run.flags.session) Save(run, *run.flags.session);
  return rc != 0 ? rc : run.rc;
}

Result<std::shared_ptr<Store>> OpenChatStore(const StoreFlags& flags) {
  if (!flags.dir) return std::shared_ptr<Store>();
  StoreOptions options;
  options.chunk_tokens = flags.chunk_tokens;
  options.max_bytes = flags.max_bytes;
  options.redis_url = flags.redis;
  options.warn = [](const std::string& message) {
    std::fprintf(stderr, "warning: %s\n", message.c_str());
  };
  return Store::Open(*flags.dir, options);
}

Result<std::unique_ptr<Chat>> MakeChat(const ChatFlags& flags, std::shared_ptr<Model> model,
                                       std::shared_ptr<Store> store) {
  ChatOpenOptions o;
  o.create.n_ctx = flags.n_ctx.value_or(4096);
  o.create.n_threads = flags.n_threads;
  o.open.n_ctx = flags.n_ctx.value_or(0);
  o.open.n_threads = flags.n_threads;
  if (flags.flash_attn) {
    const FlashAttention fa = *flags.flash_attn == "on"    ? FlashAttention::kOn
                              : *flags.flash_attn == "off" ? FlashAttention::kOff
                                                           : FlashAttention::kAuto;
    o.create.flash_attn = fa;
    o.open.flash_attn = fa;
  }
  o.chat.template_name = flags.chat_template;
  o.chat.sample = flags.sample;
  o.chat.store = std::move(store);
  o.chat.cancel = &g_stop;  // a prefill; the answer stops through the piece callback
  o.system_prompt = flags.system_prompt.value_or("");
  if (!flags.session) {
    auto session = Session::Create(model, o.create);
    if (!session.ok()) return session.status();
    std::vector<ChatMessage> messages;
    if (!o.system_prompt.empty()) messages.push_back({"system", o.system_prompt});
    return Chat::Create(std::move(session.value()), std::move(messages), o.chat);
  }
  std::vector<std::string> notes;
  auto chat = Chat::Open(model, *flags.session, o, &notes);
  for (const auto& note : notes) std::fprintf(stderr, "note: %s\n", note.c_str());
  return chat;
}

}  // namespace

int RunChat(const ChatFlags& flags) {
  if (flags.common.verbose) SetLlamaLogs(LlamaLogs::kStderr);
  ModelOptions model_options;
  model_options.n_gpu_layers = flags.n_gpu_layers;
  auto model = Model::Load(flags.common.model, model_options);
  if (!model.ok()) return Fail(model.status());
  auto store = OpenChatStore(flags.store);
  if (!store.ok()) return Fail(store.status());
  auto chat = MakeChat(flags, *model, *store);
  if (!chat.ok()) return Fail(chat.status());
  InstallChatSignals();
  ChatRun run{flags, **chat};
  run.interactive = isatty(STDIN_FILENO) != 0;
  if (run.interactive) {
    std::fprintf(stderr,
                 "kvstash chat: one message per line; /save FILE, /reset, /exit. Ctrl-C stops an "
                 "answer; Ctrl-C at the prompt or Ctrl-D leaves%s.\n",
                 flags.session ? " (the conversation is saved after every answer)" : "");
  }
  if (flags.session && run.chat.messages().size() > 1) PrintHistory(run);
  if (flags.common.verbose && flags.session) {
    std::fprintf(stderr, "chat: session '%s': %zu messages, %zu tokens held\n",
                 flags.session->c_str(), run.chat.messages().size(),
                 run.chat.session().tokens().size());
  }
  return Loop(run);
}

}  // namespace kvstash::cli
