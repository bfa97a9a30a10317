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

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <string>

#include "kvstash/chat.h"

namespace kvstash::cli {
namespace {

enum class ReadResult { kLine, kEnd, kInterrupted };

// Waits until stdin can be read; false when SIGINT or SIGTERM stopped the chat. The signals are
// blocked between the look at CancelFlag() and the wait, and ppoll unblocks them atomically: one
// that arrives just after the look would otherwise leave read(2) waiting for input that never
// comes.
bool WaitForInput() {
  sigset_t signals, previous;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  while (true) {
    pthread_sigmask(SIG_BLOCK, &signals, &previous);
    int ready = 0;
    if (!CancelFlag().load()) {
      pollfd input{STDIN_FILENO, POLLIN, 0};
      ready = ppoll(&input, 1, nullptr, &previous);
    }
    pthread_sigmask(SIG_SETMASK, &previous, nullptr);
    if (CancelFlag().load()) return false;
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
      if (n < 0 && errno == EINTR) continue;  // CancelFlag() says whether it was ours
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
    return written && !CancelFlag().load();
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
    ClearSignal();
    if (run.interactive && !Out("> ")) break;
    const ReadResult read = reader.Next(&line);
    if (read == ReadResult::kEnd) break;
    if (read == ReadResult::kInterrupted) {
      rc = 128 + (SignalCaught() != 0 ? SignalCaught() : SIGINT);
      break;
    }
    if (line.empty()) continue;
    if (line[0] == '/' && line.rfind("//", 0) != 0) {
      if (!Command(run, line)) break;
      continue;
    }
    if (!Turn(run, line[0] == '/' ? line.substr(1) : line)) break;
    if (SignalCaught() == SIGTERM) rc = 128 + SIGTERM;
  }
  if (run.interactive && rc != 0) Out("\n");
  if (run.dirty && run.flags.session) Save(run, *run.flags.session);
  return rc != 0 ? rc : run.rc;
}

Result<std::unique_ptr<Chat>> MakeChat(const ChatFlags& flags, std::shared_ptr<Model> model,
                                       std::shared_ptr<Store> store) {
  ChatOpenOptions o;
  ApplyContextFlags(flags.context, &o.context);
  o.chat.template_name = flags.chat_template;
  o.chat.sample = flags.sample;
  o.chat.store = std::move(store);
  o.chat.cancel = &CancelFlag();  // a prefill; the answer stops through the piece callback
  o.system_prompt = flags.system_prompt.value_or("");
  if (!flags.session) {
    auto session = Session::Create(model, o.context);
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
  auto model = LoadModel(flags.common, &flags.context);
  if (!model.ok()) return Fail(model.status());
  auto store = OpenStore(flags.store, /*create=*/true);
  if (!store.ok()) return Fail(store.status());
  auto chat = MakeChat(flags, *model, *store);
  if (!chat.ok()) return Fail(chat.status());
  InstallSignalHandlers(/*restart_calls=*/false);
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
