// Chat: turns over a session, the conversation file, and resuming a saved conversation warm.
#include "kvstash/chat.h"

#include <cstring>

#include "test_util.h"

namespace kvstash {
namespace {

using testing::ReadFile;
using testing::TempDir;
using testing::TinyModel;
using testing::WriteFile;

const char* kSystem = "You are a terse assistant. Answer in a few words.";
const char* kQuestions[] = {"What is the capital of France?", "And of Italy?",
                            "Which of the two is larger?", "Thank you. Anything else?"};

ChatOptions Greedy(int n) {
  ChatOptions options;
  options.sample.n_predict = n;
  options.sample.temp = 0;
  return options;
}

std::unique_ptr<Chat> NewChat(const ChatOptions& options = Greedy(8)) {
  auto session = Session::Create(TinyModel());
  EXPECT_TRUE(session.ok()) << session.status().ToString();
  if (!session.ok()) return nullptr;
  auto chat = Chat::Create(std::move(session.value()), {{"system", kSystem}}, options);
  EXPECT_TRUE(chat.ok()) << chat.status().ToString();
  return chat.ok() ? std::move(chat.value()) : nullptr;
}

std::string Path(const std::string& name) { return TempDir() + "/" + name; }

SaveOptions NoSync() {
  SaveOptions options;
  options.sync = false;  // tests do not survive power cuts
  return options;
}

TEST(ChatFileTest, RoundTripsAnyBytes) {
  ChatFile file;
  file.template_name = "chatml";
  file.messages = {{"system", "line one\nline two\n"},
                   {"user", std::string("nul \0 byte", 10)},
                   {"assistant", "half a character: \xe2\x82"},
                   {"user", ""}};
  const std::string path = Path("round.kvs.chat");
  ASSERT_TRUE(WriteChatFile(path, file, false).ok());
  auto read = ReadChatFile(path);
  ASSERT_TRUE(read.ok()) << read.status().ToString();
  EXPECT_EQ(read->template_name, "chatml");
  ASSERT_EQ(read->messages.size(), file.messages.size());
  for (size_t i = 0; i < file.messages.size(); ++i) {
    EXPECT_EQ(read->messages[i].role, file.messages[i].role);
    EXPECT_EQ(read->messages[i].content, file.messages[i].content);
  }
}

TEST(ChatFileTest, DamagedMissingAndForeignFilesAreRefusedByName) {
  const std::string path = Path("damaged.kvs.chat");
  ASSERT_TRUE(WriteChatFile(path, {"", {{"user", "hello"}, {"assistant", "hi"}}}, false).ok());
  const std::string good = ReadFile(path);
  for (const std::string& bad :
       {good.substr(0, good.size() - 1), good.substr(0, good.size() / 2), good + "x",
        "kvstash chat 2\n" + good.substr(15), std::string("hello"),
        good.substr(0, good.find("user 5")) + "user 9" + good.substr(good.find("user 5") + 6),
        good.substr(0, good.find("message user")) + "message a\x01 5\nhello\nend\n"}) {
    WriteFile(path, bad);
    auto read = ReadChatFile(path);
    ASSERT_FALSE(read.ok()) << bad;
    EXPECT_EQ(read.status().code(), Status::Code::kCorruption) << read.status().ToString();
    EXPECT_NE(read.status().message().find(path), std::string::npos);
    EXPECT_NE(read.status().message().find("delete it"), std::string::npos);
  }
  auto missing = ReadChatFile(Path("missing.kvs.chat"));
  EXPECT_EQ(missing.status().code(), Status::Code::kNotFound);
  // A file of another kind under the name is never replaced.
  WriteFile(path, "my notes");
  EXPECT_FALSE(WriteChatFile(path, {}, false).ok());
  EXPECT_EQ(ReadFile(path), "my notes");
}

TEST(ChatTest, EachTurnRendersTheWholeConversationAndDecodesOnlyTheNewTurn) {
  auto chat = NewChat();
  ASSERT_TRUE(chat);
  auto first = chat->Say(kQuestions[0]);
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  EXPECT_EQ(first->n_reused, 0u);
  EXPECT_EQ(first->n_decoded, first->n_prompt_tokens);
  ASSERT_EQ(chat->messages().size(), 3u);
  EXPECT_EQ(chat->messages()[1].content, kQuestions[0]);
  EXPECT_EQ(chat->messages()[2].role, "assistant");
  EXPECT_EQ(chat->messages()[2].content, first->generation.text);
  // The session holds the rendered prompt, then the answer.
  auto prompt = TinyModel()->ApplyChatTemplate({{"system", kSystem}, {"user", kQuestions[0]}});
  auto tokens = TinyModel()->Tokenize(*prompt, true);
  std::vector<Token> held = chat->session().tokens();
  ASSERT_GE(held.size(), tokens->size());
  EXPECT_EQ(std::vector<Token>(held.begin(), held.begin() + tokens->size()), *tokens);

  auto second = chat->Say(kQuestions[1]);
  ASSERT_TRUE(second.ok()) << second.status().ToString();
  EXPECT_GE(second->n_reused, tokens->size());  // the first turn's prompt at least
  EXPECT_EQ(second->n_reused + second->n_decoded, second->n_prompt_tokens);
}

// The test in the library: three turns, saved, resumed elsewhere for a fourth, against
// one chat running all four. Greedy answers are the same tokens and the resumed turn decodes just
// what the long run decodes for it.
TEST(ChatTest, ResumedConversationAnswersLikeOneLongRun) {
  std::vector<ChatTurn> long_run;
  auto whole = NewChat();
  ASSERT_TRUE(whole);
  for (const char* q : kQuestions) {
    auto turn = whole->Say(q);
    ASSERT_TRUE(turn.ok()) << turn.status().ToString();
    long_run.push_back(*turn);
  }
  const std::string path = Path("resume.kvs");
  {
    auto first = NewChat();
    ASSERT_TRUE(first);
    for (int i = 0; i < 3; ++i) {
      auto turn = first->Say(kQuestions[i]);
      ASSERT_TRUE(turn.ok());
      EXPECT_EQ(turn->generation.tokens, long_run[i].generation.tokens) << "turn " << i;
      ASSERT_TRUE(first->Save(path, NoSync()).ok());
    }
  }
  ChatOpenOptions open;
  open.chat = Greedy(8);
  std::vector<std::string> notes;
  auto resumed = Chat::Open(TinyModel(), path, open, &notes);
  ASSERT_TRUE(resumed.ok()) << resumed.status().ToString();
  EXPECT_TRUE(notes.empty()) << notes[0];
  EXPECT_EQ((*resumed)->messages().size(), 7u);
  EXPECT_EQ((*resumed)->session().n_decoded_total(), 0u);  // nothing decoded to resume
  auto fourth = (*resumed)->Say(kQuestions[3]);
  ASSERT_TRUE(fourth.ok()) << fourth.status().ToString();
  EXPECT_EQ(fourth->generation.tokens, long_run[3].generation.tokens);
  EXPECT_EQ(fourth->generation.text, long_run[3].generation.text);
  EXPECT_EQ(fourth->n_decoded, long_run[3].n_decoded);
  EXPECT_EQ(fourth->n_reused, long_run[3].n_reused);
  EXPECT_TRUE(std::memcmp((*resumed)->session().Logits()->data(), whole->session().Logits()->data(),
                          sizeof(float) * TinyModel()->n_vocab()) == 0);
}

TEST(ChatTest, AStoppedAnswerStaysInTheConversation) {
  auto chat = NewChat(Greedy(16));
  ASSERT_TRUE(chat);
  int pieces = 0;
  auto turn = chat->Say(kQuestions[0], [&](std::string_view) { return ++pieces < 3; });
  ASSERT_TRUE(turn.ok()) << turn.status().ToString();
  EXPECT_EQ(turn->generation.stop_reason, StopReason::kCancelled);
  ASSERT_EQ(chat->messages().size(), 3u);
  EXPECT_EQ(chat->messages()[2].content, turn->generation.text);
  auto next = chat->Say(kQuestions[1]);
  ASSERT_TRUE(next.ok()) << next.status().ToString();
  EXPECT_EQ(chat->messages().size(), 5u);
}

TEST(ChatTest, AFailedTurnLeavesTheConversationAsItWas) {
  SessionOptions tiny_ctx;
  tiny_ctx.n_ctx = 256;
  auto session = Session::Create(TinyModel(), tiny_ctx);
  ASSERT_TRUE(session.ok());
  auto chat = Chat::Create(std::move(session.value()), {}, Greedy(4));
  ASSERT_TRUE(chat.ok());
  auto turn = (*chat)->Say(std::string(4000, 'x'));
  ASSERT_FALSE(turn.ok());
  EXPECT_EQ(turn.status().code(), Status::Code::kContextFull);
  EXPECT_TRUE((*chat)->messages().empty());
  EXPECT_TRUE((*chat)->Say(kQuestions[0]).ok());
}

TEST(ChatTest, ResetKeepsTheSystemPromptAndItsTokens) {
  auto chat = NewChat();
  ASSERT_TRUE(chat);
  ASSERT_TRUE(chat->Say(kQuestions[0]).ok());
  ASSERT_TRUE(chat->Say(kQuestions[1]).ok());
  chat->Reset();
  ASSERT_EQ(chat->messages().size(), 1u);
  EXPECT_EQ(chat->messages()[0].role, "system");
  auto fresh = NewChat();
  auto again = chat->Say(kQuestions[2]);
  auto cold = fresh->Say(kQuestions[2]);
  ASSERT_TRUE(again.ok() && cold.ok());
  EXPECT_GT(again->n_reused, 10u);  // the system prompt's tokens
  EXPECT_EQ(again->n_prompt_tokens, cold->n_prompt_tokens);
}

TEST(ChatTest, UnknownTemplatesFailAtCreate) {
  auto session = Session::Create(TinyModel());
  ChatOptions options;
  options.template_name = "no-such-template";
  auto chat = Chat::Create(std::move(session.value()), {}, options);
  ASSERT_FALSE(chat.ok());
  EXPECT_NE(chat.status().message().find("no-such-template"), std::string::npos);
}

TEST(ChatOpenTest, FilesThatDoNotMatchFallBackToDecoding) {
  const std::string path = Path("mismatch.kvs");
  {
    auto chat = NewChat();
    ASSERT_TRUE(chat->Say(kQuestions[0]).ok());
    ASSERT_TRUE(chat->Save(path, NoSync()).ok());
  }
  // An edited answer: the session's tokens past the edit are not this conversation's.
  auto file = ReadChatFile(ChatFilePath(path));
  ASSERT_TRUE(file.ok());
  file->messages.back().content = "Rome, surely.";
  ASSERT_TRUE(WriteChatFile(ChatFilePath(path), *file, false).ok());
  ChatOpenOptions open;
  open.chat = Greedy(4);
  auto chat = Chat::Open(TinyModel(), path, open);
  ASSERT_TRUE(chat.ok()) << chat.status().ToString();
  auto turn = (*chat)->Say(kQuestions[1]);
  ASSERT_TRUE(turn.ok());
  EXPECT_LT(turn->n_reused, turn->n_prompt_tokens);
  // The cache now holds exactly this conversation's tokens, then the answer.
  std::vector<ChatMessage> asked((*chat)->messages().begin(), (*chat)->messages().end() - 1);
  auto tokens = TinyModel()->Tokenize(*TinyModel()->ApplyChatTemplate(asked), true);
  const auto& held = (*chat)->session().tokens();
  ASSERT_GE(held.size(), tokens->size());
  EXPECT_EQ(std::vector<Token>(held.begin(), held.begin() + tokens->size()), *tokens);
}

TEST(ChatOpenTest, MissingFilesStartOrResumeWithANote) {
  ChatOpenOptions open;
  open.chat = Greedy(4);
  open.system_prompt = kSystem;
  std::vector<std::string> notes;
  auto fresh = Chat::Open(TinyModel(), Path("nothing.kvs"), open, &notes);
  ASSERT_TRUE(fresh.ok()) << fresh.status().ToString();
  EXPECT_TRUE(notes.empty());
  ASSERT_EQ((*fresh)->messages().size(), 1u);
  EXPECT_EQ((*fresh)->messages()[0].content, kSystem);

  // A session saved by `kvstash save` (no conversation file): a new conversation in it.
  const std::string plain = Path("plain.kvs");
  testing::SaveTinyPrefix(plain);
  auto in_plain = Chat::Open(TinyModel(), plain, open, &notes);
  ASSERT_TRUE(in_plain.ok()) << in_plain.status().ToString();
  ASSERT_EQ(notes.size(), 1u);
  EXPECT_NE(notes[0].find("no conversation file"), std::string::npos);
  EXPECT_TRUE((*in_plain)->Say(kQuestions[0]).ok());

  // A conversation file without its session: decoded again, with a note.
  const std::string lost = Path("lost.kvs");
  ASSERT_TRUE(
      WriteChatFile(ChatFilePath(lost), {"", {{"user", "hi"}, {"assistant", "hello"}}}, false)
          .ok());
  notes.clear();
  auto relost = Chat::Open(TinyModel(), lost, open, &notes);
  ASSERT_TRUE(relost.ok());
  ASSERT_EQ(notes.size(), 1u);
  EXPECT_NE(notes[0].find("does not exist"), std::string::npos);
  EXPECT_EQ((*relost)->messages().size(), 3u);  // the system prompt was put first
  EXPECT_EQ((*relost)->messages()[0].role, "system");
}

TEST(ChatOpenTest, DamagedFilesAreErrorsAndStayAsTheyWere) {
  const std::string path = Path("damaged-session.kvs");
  {
    auto chat = NewChat();
    ASSERT_TRUE(chat->Say(kQuestions[0]).ok());
    ASSERT_TRUE(chat->Save(path, NoSync()).ok());
  }
  ChatOpenOptions open;
  const std::string session_bytes = ReadFile(path);
  WriteFile(ChatFilePath(path), "kvstash chat 1\ngarbage");
  auto chat = Chat::Open(TinyModel(), path, open);
  ASSERT_FALSE(chat.ok());
  EXPECT_EQ(chat.status().code(), Status::Code::kCorruption);
  EXPECT_NE(chat.status().message().find(ChatFilePath(path)), std::string::npos);

  ASSERT_TRUE(WriteChatFile(ChatFilePath(path), {"", {}}, false).ok());
  WriteFile(path, session_bytes.substr(0, 1000));
  chat = Chat::Open(TinyModel(), path, open);
  ASSERT_FALSE(chat.ok());
  EXPECT_EQ(chat.status().code(), Status::Code::kCorruption);
  EXPECT_EQ(ReadFile(path), session_bytes.substr(0, 1000));
}

}  // namespace
}  // namespace kvstash
