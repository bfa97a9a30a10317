// Chat: a multi-turn conversation over a Session, rendered with a chat template.
//
// The messages are the truth and the session is a cache of their tokens. Each turn renders the
// whole conversation (ending with the opening of the assistant's turn), tokenizes it and Syncs
// the session to it: what the session already holds is kept and only the new turn is decoded.
// A template that renders the history differently from what was decoded (one that strips
// whitespace from answers, a generated token sequence that tokenizes differently as text) costs
// a re-decode from the first difference, never a wrong answer. There are no positions anywhere.
//
// Warm == cold: a conversation saved after some turns (Save) and continued in another process
// (Open) decodes every later turn in the same groups as one process running all of it, so greedy
// answers are bit-identical. Sampled answers too: each turn's sampler starts from the seed.
//
// Persistence: Save(path) writes the messages to ChatFilePath(path) and then the session to path,
// each atomically. The conversation file is a small length-prefixed text file, not JSON: answers
// need not be valid UTF-8 (a token can end inside a character) and must come back byte for byte,
// or the history would no longer render to the tokens the session holds. The library has no JSON
// dependency either. Two files can disagree (a crash between the writes, a copied session): the
// next turn then re-decodes from the first difference; a cache is never used for other tokens.
//
// Threading: a Chat is used by one thread at a time.
#ifndef KVSTASH_CHAT_H_
#define KVSTASH_CHAT_H_

#include <atomic>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "kvstash/model.h"
#include "kvstash/session.h"
#include "kvstash/status.h"
#include "kvstash/store.h"

namespace kvstash {

struct ChatOptions {
  std::string template_name;  // a built-in llama.cpp template; "": the model's own, else ChatML
  SampleOptions sample;       // each turn's sampler starts from sample.seed
  // When set, each turn syncs through the store (Session::Sync(tokens, store)): the longest
  // stored prefix is restored, the rest decoded in chunk-aligned groups, new chunks published.
  std::shared_ptr<Store> store;
  // When it turns true (e.g. from a signal handler) a turn's prefill stops and Say fails with
  // kCancelled, the conversation as it was. The answer is stopped by on_piece instead, so that
  // what was generated is kept: a cancel flag would undo it. nullptr: never.
  const std::atomic<bool>* cancel = nullptr;
};

// What one turn did.
struct ChatTurn {
  Generation generation;       // the answer; stop_reason kCancelled when on_piece returned false
  size_t n_prompt_tokens = 0;  // the whole rendered conversation
  size_t n_reused = 0;         // kept from the session (or restored from the store)
  size_t n_decoded = 0;        // decoded for this turn's prompt
  size_t n_restored = 0;       // of n_reused: from the store
};

// Where Chat::Save puts the messages of the session saved at `session_path`.
std::string ChatFilePath(const std::string& session_path);

// The conversation file's contents.
struct ChatFile {
  std::string template_name;
  std::vector<ChatMessage> messages;
};
// Atomic (temp file + rename); refuses to replace a file that is not a conversation file.
Status WriteChatFile(const std::string& path, const ChatFile& file, bool sync = true);
// kNotFound when there is no file; kCorruption, naming the file and byte, for a damaged one.
Result<ChatFile> ReadChatFile(const std::string& path);

// How Chat::Open makes the session.
struct ChatOpenOptions {
  SessionOptions context;  // a new session or a saved one
  // chat.template_name, when not empty, replaces the saved conversation's template.
  ChatOptions chat;
  // Replaces the saved conversation's system prompt (or starts a new one with it). Empty: keep.
  std::string system_prompt;
};

class Chat {
 public:
  // A conversation in `session`, which may already hold tokens (they are reused where the
  // conversation's tokens match). The template is tried once here, so that an unknown one fails
  // now rather than at the first turn.
  static Result<std::unique_ptr<Chat>> Create(std::unique_ptr<Session> session,
                                              std::vector<ChatMessage> messages,
                                              const ChatOptions& options);

  // Resumes the conversation saved at `session_path` by Save, or starts one:
  //   - session and conversation file: both are loaded; nothing is decoded until the next turn,
  //     which decodes only what is new;
  //   - neither (or a store chat without the session file): a new conversation;
  //   - a session without a conversation file: a new conversation in it, reusing its tokens where
  //     they match (e.g. a saved system prompt);
  //   - a conversation file without a session: the history is decoded at the next turn.
  // A damaged or incompatible file is an error; nothing is replaced. `notes` (optional) gets one
  // line for each case that is not the first or second.
  static Result<std::unique_ptr<Chat>> Open(std::shared_ptr<const Model> model,
                                            const std::string& session_path,
                                            const ChatOpenOptions& options,
                                            std::vector<std::string>* notes = nullptr);

  // One turn: the user's `text`, then the answer, streamed through on_piece. When on_piece
  // returns false the answer stops and what was generated stays in the conversation (the user saw
  // it). On failure (a full context, a prefill cancelled through options.cancel) the
  // conversation is as it was before the call.
  Result<ChatTurn> Say(std::string_view text, const PieceCallback& on_piece = {});

  // Forgets every message but the system prompt. The session keeps its tokens: the next turn
  // reuses the system prompt's.
  void Reset();

  // Writes ChatFilePath(path), then the session to `path`. options.cancel applies to the session.
  Status Save(const std::string& path, const SaveOptions& options = {});

  const std::vector<ChatMessage>& messages() const { return messages_; }
  const std::string& template_name() const { return options_.template_name; }
  Session& session() { return *session_; }

 private:
  Chat(std::unique_ptr<Session> session, std::vector<ChatMessage> messages, ChatOptions options);
  Result<std::vector<Token>> Render() const;
  Result<SyncResult> SyncTo(const std::vector<Token>& tokens);

  std::unique_ptr<Session> session_;
  std::vector<ChatMessage> messages_;
  ChatOptions options_;
};

}  // namespace kvstash

#endif  // KVSTASH_CHAT_H_
