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

}  // namespace
}  // namespace kvstash::engine
