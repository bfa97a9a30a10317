// The pure compatibility decisions: LongRoPE regimes (src/format/compat.h) and the kinds of model
// memory kvstash supports (src/engine/memory_support.h).
#include "format/compat.h"

#include <gtest/gtest.h>

#include "engine/memory_support.h"

namespace kvstash::engine {
namespace {

using format::CheckRopeRegime;
using format::PaddedContextSize;

TEST(CompatTest, RopeRegimeRefusesAContextOnTheOtherSideOfTheLine) {
  // n_ctx_orig 1024: contexts up to 1024 use the short factors, larger ones the long factors.
  EXPECT_TRUE(CheckRopeRegime(512, 1024, 1024, true, "a.kvs").ok());
  EXPECT_TRUE(CheckRopeRegime(2048, 4096, 1024, true, "a.kvs").ok());
  Status grow = CheckRopeRegime(512, 2048, 1024, true, "a.kvs");
  ASSERT_FALSE(grow.ok());
  EXPECT_EQ(grow.code(), Status::Code::kIncompatible);
  EXPECT_NE(grow.message().find("session 'a.kvs'"), std::string::npos) << grow.message();
  EXPECT_NE(grow.message().find("LongRoPE"), std::string::npos);
  EXPECT_NE(grow.message().find("use -c 1024 or less"), std::string::npos) << grow.message();
  Status shrink = CheckRopeRegime(2048, 1024, 1024, true, "a.kvs");
  ASSERT_FALSE(shrink.ok());
  EXPECT_NE(shrink.message().find("use -c 1025 or more"), std::string::npos) << shrink.message();
  // Models without LongRoPE have no line.
  EXPECT_TRUE(CheckRopeRegime(512, 8192, 1024, false, "a.kvs").ok());
}

TEST(CompatTest, RopeRegimeComparesPaddedContextSizes) {
  EXPECT_EQ(PaddedContextSize(1000), 1024u);
  EXPECT_EQ(PaddedContextSize(1025), 1280u);
  EXPECT_EQ(PaddedContextSize(256), 256u);
  // 1000 becomes 1024: still short. 1025 becomes 1280: long.
  EXPECT_TRUE(CheckRopeRegime(512, 1000, 1024, true, "a.kvs").ok());
  EXPECT_FALSE(CheckRopeRegime(512, 1025, 1024, true, "a.kvs").ok());
  // An n_ctx_orig that is not a multiple of the padding: 1100 pads to 1280 > 1100.
  EXPECT_FALSE(CheckRopeRegime(1024, 1100, 1100, true, "a.kvs").ok());
}

TEST(CompatTest, OnlyPlainAttentionCachesAreSupported) {
  EXPECT_TRUE(CheckSupportedMemory({}, "m.gguf", "llama").ok());
  ModelMemoryKind recurrent;
  recurrent.recurrent = true;
  Status r = CheckSupportedMemory(recurrent, "m.gguf", "mamba");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.code(), Status::Code::kIncompatible);
  EXPECT_NE(r.message().find("model 'm.gguf' (mamba) is a recurrent model"), std::string::npos)
      << r.message();
  ModelMemoryKind hybrid;
  hybrid.recurrent = true;  // llama.cpp reports hybrids as neither or both; hybrid wins
  hybrid.hybrid = true;
  EXPECT_NE(CheckSupportedMemory(hybrid, "m.gguf", "jamba").message().find("hybrid"),
            std::string::npos);
  ModelMemoryKind swa;
  swa.n_swa = 4096;
  EXPECT_NE(CheckSupportedMemory(swa, "m.gguf", "gemma2").message().find("sliding-window"),
            std::string::npos);
}

}  // namespace
}  // namespace kvstash::engine
