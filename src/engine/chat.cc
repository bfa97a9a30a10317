#include "kvstash/chat.h"

#include <algorithm>
#include <cstdlib>
#include <utility>

#include "env/atomic_file.h"
#include "env/env.h"

namespace kvstash {
namespace {

// The conversation file: a header line, then records of `<name> [role] <length>\n<bytes>\n`, then
// "end\n" (a reader tells a whole file from a cut one without trusting the writer):
//   kvstash chat 1
//   template 6
//   chatml
//   message user 5
//   Hello
//   end
// Lengths are bytes, so any content (newlines, NUL, invalid UTF-8) comes back exactly.
constexpr std::string_view kChatMagic = "kvstash chat 1\n";
constexpr uint64_t kMaxChatFileBytes = uint64_t{1} << 31;  // what a template can render at most
constexpr size_t kMaxRoleBytes = 64;

std::string Record(const std::string& head, const std::string& bytes) {
  return head + " " + std::to_string(bytes.size()) + "\n" + bytes + "\n";
}

bool ValidRole(std::string_view role) {
  if (role.empty() || role.size() > kMaxRoleBytes) return false;
  return std::all_of(role.begin(), role.end(), [](char c) { return c > ' ' && c <= '~'; });
}

// Reads the records of a conversation file; every deviation is an error naming the byte.
class ChatFileParser {
 public:
  ChatFileParser(const std::string& path, std::string_view bytes) : path_(path), in_(bytes) {}

  Result<ChatFile> Parse() {
    if (in_.substr(0, kChatMagic.size()) != kChatMagic) {
      return Bad(
          "it does not start with 'kvstash chat 1' (not a kvstash conversation file, or "
          "one from a newer kvstash)");
    }
    pos_ = kChatMagic.size();
    ChatFile file;
    bool have_template = false;
    while (true) {
      const size_t at = pos_;
      std::string line;
      if (!Line(&line)) return Bad("the file is truncated", at);
      if (line == "end") break;
      const size_t space = line.find(' ');
      const std::string name = line.substr(0, space);
      std::string rest = space == std::string::npos ? "" : line.substr(space + 1);
      std::string role;
      if (name == "message") {
        const size_t role_end = rest.find(' ');
        role = rest.substr(0, role_end);
        rest = role_end == std::string::npos ? "" : rest.substr(role_end + 1);
        if (!ValidRole(role)) return Bad("a message has an invalid role", at);
      } else if (name != "template" || have_template || !file.messages.empty()) {
        return Bad("unexpected record '" + name.substr(0, 32) + "'", at);
      }
      std::string value;
      KVSTASH_RETURN_IF_ERROR(Value(rest, at, &value));
      if (name == "template") {
        file.template_name = std::move(value);
        have_template = true;
      } else {
        file.messages.push_back({std::move(role), std::move(value)});
      }
    }
    if (pos_ != in_.size()) return Bad("bytes follow the 'end' line", pos_);
    return file;
  }

 private:
  bool Line(std::string* line) {
    const size_t nl = in_.find('\n', pos_);
    if (nl == std::string_view::npos) return false;
    *line = std::string(in_.substr(pos_, nl - pos_));
    pos_ = nl + 1;
    return true;
  }

  // The `length` bytes after a record's line and the newline that ends them.
  Status Value(const std::string& length, size_t at, std::string* value) {
    if (length.empty() || length.size() > 10 ||
        length.find_first_not_of("0123456789") != std::string::npos) {
      return Bad("a record has no valid length", at).status();
    }
    const uint64_t n = std::strtoull(length.c_str(), nullptr, 10);
    if (n >= in_.size() - pos_ || in_[pos_ + n] != '\n') {
      return Bad("a record's length runs past its bytes", at).status();
    }
    *value = std::string(in_.substr(pos_, n));
    pos_ += n + 1;
    return Status::Ok();
  }

  Result<ChatFile> Bad(const std::string& why, size_t at = 0) const {
    return Status::Corruption("conversation file '" + path_ + "' is damaged at byte " +
                              std::to_string(at) + ": " + why +
                              "; restore it, or delete it to start a new conversation");
  }

  const std::string path_;
  const std::string_view in_;
  size_t pos_ = 0;
};

}  // namespace

std::string ChatFilePath(const std::string& session_path) { return session_path + ".chat"; }

Status WriteChatFile(const std::string& path, const ChatFile& file, bool sync) {
  std::string text(kChatMagic);
  text += Record("template", file.template_name);
  for (const ChatMessage& m : file.messages) {
    if (!ValidRole(m.role)) {
      return Status::InvalidArgument("cannot write conversation file '" + path +
                                     "': a message's role is not 1 to 64 printable characters "
                                     "without spaces");
    }
    text += Record("message " + m.role, m.content);
  }
  text += "end\n";
  AtomicWriteOptions options;
  options.sync = sync;
  // Never replaces a file of another kind that happens to have the name (e.g. notes.kvs.chat).
  options.required_magic = kChatMagic;
  return AtomicWriteFile(Env::Default(), path, {text}, options);
}

Result<ChatFile> ReadChatFile(const std::string& path) {
  Env* env = Env::Default();
  auto info = env->Stat(path);
  if (!info.ok()) {
    if (info.status().code() != Status::Code::kNotFound) return info.status();
    return Status::NotFound("conversation file '" + path + "' does not exist");
  }
  if (info->type != FileInfo::Type::kRegular) {
    return Status::InvalidArgument("conversation file '" + path +
                                   "' is not a regular file; remove it or pass another --session");
  }
  if (info->size > kMaxChatFileBytes) {
    return Status::Corruption("conversation file '" + path + "' has " + std::to_string(info->size) +
                              " bytes, more than a conversation can hold; restore it, or delete "
                              "it to start a new conversation");
  }
  auto bytes = env->ReadFilePrefix(path, info->size + 1);
  if (!bytes.ok()) return bytes.status();
  return ChatFileParser(path, *bytes).Parse();
}

Chat::Chat(std::unique_ptr<Session> session, std::vector<ChatMessage> messages, ChatOptions options)
    : session_(std::move(session)), messages_(std::move(messages)), options_(std::move(options)) {}

Result<std::unique_ptr<Chat>> Chat::Create(std::unique_ptr<Session> session,
                                           std::vector<ChatMessage> messages,
                                           const ChatOptions& options) {
  if (!session) return Status::InvalidArgument("Chat::Create needs a session");
  auto probe = session->model().ApplyChatTemplate({{"user", "hello"}}, options.template_name);
  if (!probe.ok()) return probe.status();
  return std::unique_ptr<Chat>(new Chat(std::move(session), std::move(messages), options));
}

namespace {

// The saved conversation with the command line's system prompt and template applied.
void ApplyOverrides(const ChatOpenOptions& options, ChatFile* file,
                    std::vector<std::string>* notes) {
  if (!options.chat.template_name.empty()) file->template_name = options.chat.template_name;
  if (options.system_prompt.empty()) return;
  auto& m = file->messages;
  if (!m.empty() && m[0].role == "system") {
    if (m[0].content != options.system_prompt && notes != nullptr) {
      notes->push_back(
          "the system prompt differs from the saved conversation's: it replaces it, "
          "and the next turn decodes the conversation again from there");
    }
    m[0].content = options.system_prompt;
  } else {
    m.insert(m.begin(), {"system", options.system_prompt});
  }
}

// The saved session at `path`, or a new one when there is none (or a store makes the KV).
Result<std::unique_ptr<Session>> OpenSession(std::shared_ptr<const Model> model,
                                             const std::string& path, bool have_messages,
                                             const ChatOpenOptions& options,
                                             std::vector<std::string>* notes) {
  auto info = Env::Default()->Stat(path);
  if (!info.ok() && info.status().code() != Status::Code::kNotFound) return info.status();
  if (!info.ok() || options.chat.store) {
    if (!info.ok() && have_messages && notes != nullptr) {
      notes->push_back("session '" + path + "' does not exist: the next turn decodes the saved " +
                       "conversation again");
    }
    return Session::Create(std::move(model), options.context);
  }
  if (!have_messages && notes != nullptr) {
    notes->push_back("session '" + path + "' has no conversation file ('" + ChatFilePath(path) +
                     "'): a new conversation starts in it, reusing its tokens where they match");
  }
  return Session::Open(std::move(model), path, options.context);
}

}  // namespace

Result<std::unique_ptr<Chat>> Chat::Open(std::shared_ptr<const Model> model,
                                         const std::string& session_path,
                                         const ChatOpenOptions& options,
                                         std::vector<std::string>* notes) {
  if (!model) return Status::InvalidArgument("Chat::Open needs a loaded model");
  ChatFile file;
  auto read = ReadChatFile(ChatFilePath(session_path));
  if (read.ok()) {
    file = std::move(read.value());
  } else if (read.status().code() != Status::Code::kNotFound) {
    return read.status();
  }
  const bool have_messages = read.ok();
  ApplyOverrides(options, &file, notes);
  auto session = OpenSession(std::move(model), session_path, have_messages, options, notes);
  if (!session.ok()) return session.status();
  ChatOptions chat = options.chat;
  chat.template_name = file.template_name;
  return Create(std::move(session.value()), std::move(file.messages), chat);
}

Result<std::vector<Token>> Chat::Render() const {
  auto text = session_->model().ApplyChatTemplate(messages_, options_.template_name,
                                                  /*add_assistant=*/true);
  if (!text.ok()) return text.status();
  // BOS as the model asks for it; special tokens in the template's text ("<|im_start|>") parse as
  // such, as llama-server does.
  return session_->model().Tokenize(*text, /*add_bos=*/true);
}

Result<SyncResult> Chat::SyncTo(const std::vector<Token>& tokens) {
  // Only the prefill is cancelled through the session: a cancelled Generate undoes the answer.
  session_->SetCancelFlag(options_.cancel);
  auto synced = options_.store ? session_->Sync(tokens, *options_.store) : session_->Sync(tokens);
  session_->SetCancelFlag(nullptr);
  return synced;
}

Result<ChatTurn> Chat::Say(std::string_view text, const PieceCallback& on_piece) {
  messages_.push_back({"user", std::string(text)});
  ChatTurn turn;
  auto tokens = Render();
  auto synced = tokens.ok() ? SyncTo(*tokens) : Result<SyncResult>(tokens.status());
  if (!synced.ok()) {
    messages_.pop_back();
    return synced.status();
  }
  turn.n_prompt_tokens = tokens->size();
  turn.n_reused = synced->n_reused;
  turn.n_decoded = synced->n_decoded;
  turn.n_restored = synced->n_restored;
  auto generation = session_->Generate(options_.sample, on_piece);
  if (!generation.ok()) {
    messages_.pop_back();  // Generate undid its tokens; the next turn's Sync drops the prompt's
    return generation.status();
  }
  turn.generation = std::move(generation.value());
  messages_.push_back({"assistant", turn.generation.text});
  // The answer's last token is decoded now, alone, as a save would: every process then starts the
  // next turn from the same cache, and each turn's counts are its own. A failure here (a signal)
  // leaves the token pending for the next call.
  (void)session_->AppendTokens({});
  return turn;
}

void Chat::Reset() {
  messages_.erase(std::remove_if(messages_.begin(), messages_.end(),
                                 [](const ChatMessage& m) { return m.role != "system"; }),
                  messages_.end());
}

Status Chat::Save(const std::string& path, const SaveOptions& options) {
  // The messages first: if the session's write fails or a crash comes between the two, the
  // conversation is whole and the next turn re-decodes what the older session lacks.
  KVSTASH_RETURN_IF_ERROR(
      WriteChatFile(ChatFilePath(path), {options_.template_name, messages_}, options.sync));
  if (session_->tokens().empty()) return Status::Ok();  // nothing decoded yet: no session file
  return session_->Save(path, options);
}

}  // namespace kvstash
