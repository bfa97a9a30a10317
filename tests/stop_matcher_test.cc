// StopMatcher on its own: matches across pieces, hold-back of partial matches, the cut.
#include "engine/stop_matcher.h"

#include <gtest/gtest.h>

namespace kvstash::engine {
namespace {

TEST(StopMatcherTest, NoStopsHoldsNothingBack) {
  StopMatcher m({});
  EXPECT_FALSE(m.Add("Hello"));
  EXPECT_FALSE(m.Add(" world"));
  EXPECT_EQ(m.text(), "Hello world");
  EXPECT_EQ(m.safe_size(), m.text().size());
}

TEST(StopMatcherTest, MatchAcrossPiecesCutsBeforeIt) {
  StopMatcher m({"END"});
  EXPECT_FALSE(m.Add("abcE"));
  EXPECT_EQ(m.safe_size(), 3u);  // "E" may start "END"
  EXPECT_FALSE(m.Add("N"));
  EXPECT_EQ(m.safe_size(), 3u);
  EXPECT_TRUE(m.Add("Dxyz"));
  EXPECT_TRUE(m.stopped());
  EXPECT_EQ(m.text(), "abc");
  EXPECT_EQ(m.safe_size(), 3u);
  EXPECT_TRUE(m.Add("more"));  // no change once stopped
  EXPECT_EQ(m.text(), "abc");
}

TEST(StopMatcherTest, EarliestOfSeveralStopsWins) {
  StopMatcher m({"world", "lo w", ""});
  EXPECT_TRUE(m.Add("Hello world"));
  EXPECT_EQ(m.text(), "Hel");
}

TEST(StopMatcherTest, PartialMatchThatFailsIsReleased) {
  StopMatcher m({"\n\n"});
  EXPECT_FALSE(m.Add("a\n"));
  EXPECT_EQ(m.safe_size(), 1u);
  EXPECT_FALSE(m.Add("b"));
  EXPECT_EQ(m.safe_size(), 3u);
}

TEST(StopMatcherTest, MatchEndingInALongPieceIsFound) {
  StopMatcher m({"xy"});
  EXPECT_FALSE(m.Add("aaaax"));
  EXPECT_TRUE(m.Add("bbbbbbbbxyccc"));
  EXPECT_EQ(m.text(), "aaaaxbbbbbbbb");
}

// What is shown is held back at a possible stop string's start and inside a UTF-8 character, is
// shown once, and adds up to the text.
TEST(StopMatcherTest, ShowsWholeCharactersOutsideStopPrefixesOnce) {
  StopMatcher m({"END"});
  const std::string euro = "\xe2\x82\xac";
  std::string shown;
  EXPECT_FALSE(m.Add("a" + euro.substr(0, 2)));
  EXPECT_EQ(m.TakeShowable(false), "a");  // half the euro sign waits
  shown += "a";
  EXPECT_FALSE(m.Add(euro.substr(2) + "E"));
  EXPECT_EQ(m.TakeShowable(false), euro);  // "E" may start "END"
  shown += euro;
  EXPECT_EQ(m.TakeShowable(false), "");  // nothing twice
  EXPECT_FALSE(m.Add("x"));
  const std::string_view rest = m.TakeShowable(false);
  EXPECT_EQ(rest, "Ex");
  shown += std::string(rest);
  EXPECT_FALSE(m.Add("\xf0\x9f"));  // half an emoji at the end: `final` shows it anyway
  shown += std::string(m.TakeShowable(true));
  EXPECT_EQ(shown, m.text());
}

TEST(StopMatcherTest, TextBeforeAStopIsShownWholeAtTheEnd) {
  StopMatcher m({"\n\n"});
  EXPECT_FALSE(m.Add("ab\n"));
  EXPECT_EQ(m.TakeShowable(false), "ab");
  EXPECT_TRUE(m.Add("\nignored"));
  EXPECT_EQ(m.TakeShowable(true), "");
  EXPECT_EQ(m.text(), "ab");
}

// ---- Utf8CompletePrefix ----

TEST(Utf8Test, CompleteSequencesOfEveryLength) {
  for (const std::string s : {"", "a", "ab", "\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\x98\x80",
                              "x\xf4\x8f\xbf\xbf", "\xef\xbf\xbd"}) {
    EXPECT_EQ(Utf8CompletePrefix(s), s.size()) << s;
  }
}

TEST(Utf8Test, IncompleteSequencesAreHeldBack) {
  // Every proper prefix of a 2-, 3- and 4-byte character, after some text.
  for (const std::string ch : {"\xc3\xa9", "\xe2\x82\xac", "\xed\x9f\xbf", "\xf0\x9f\x98\x80",
                               "\xf4\x8f\xbf\xbf", "\xe0\xa0\x80", "\xf0\x90\x80\x80"}) {
    for (size_t cut = 1; cut < ch.size(); ++cut) {
      const std::string text = "ok" + ch.substr(0, cut);
      EXPECT_EQ(Utf8CompletePrefix(text), 2u) << "len " << ch.size() << " cut " << cut;
      EXPECT_EQ(Utf8CompletePrefix(ch.substr(0, cut)), 0u);
    }
    EXPECT_EQ(Utf8CompletePrefix("ok" + ch), 2 + ch.size());
  }
}

TEST(Utf8Test, InvalidBytesCountAsComplete) {
  const std::vector<std::string> invalid = {
      "\x80",           // a stray continuation
      "a\xbf\xbf\xbf",  // three continuations with no lead
      "\xc0",           // never-valid leads
      "\xc1",
      "\xf5",
      "\xff",
      "\xe0\x80",      // overlong 3-byte start
      "\xed\xa0",      // a surrogate
      "\xf0\x80",      // overlong 4-byte start
      "\xf4\x90",      // above U+10FFFF
      "\xc3\xa9\xa9",  // a finished character and one extra continuation
      "\xf0\x9f\x98\x80\x80",
  };
  for (const auto& s : invalid)
    EXPECT_EQ(Utf8CompletePrefix(s), s.size()) << testing::PrintToString(s);
  // A cut character after invalid bytes is still held back.
  EXPECT_EQ(Utf8CompletePrefix("\xff\xe2\x82"), 1u);
}

}  // namespace
}  // namespace kvstash::engine
