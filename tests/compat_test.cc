// The pure compatibility decisions: LongRoPE regimes (src/format/compat.h) and the kinds of model
// memory kvstash supports (src/engine/memory_support.h).
#include "format/compat.h"

#include <gtest/gtest.h>

#include "engine/memory_support.h"

namespace kvstash::engine {
namespace {

using format::CheckRopeRegime;
using format::PaddedContextSize;

TEST(CompatTest, CreatedContextSizeIsPaddedAndZeroMeansTheTrainingContext) {
  EXPECT_EQ(format::CreatedContextSize(1000, 8192), 1024u);
  EXPECT_EQ(format::CreatedContextSize(0, 8000), 8192u);
  EXPECT_EQ(format::CreatedContextSize(4096, 8000), 4096u);
}

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

TEST(CompatTest, MemoryKindsFollowWhatLlamaCppReports) {
  using format::MemoryKind;
  EXPECT_EQ(*ClassifyMemory({}, "m.gguf", "llama"), MemoryKind::kKv);
  ModelMemoryKind recurrent;
  recurrent.recurrent = true;
  EXPECT_EQ(*ClassifyMemory(recurrent, "m.gguf", "mamba2"), MemoryKind::kRecurrent);
  ModelMemoryKind hybrid;
  hybrid.recurrent = true;  // llama.cpp reports some hybrids as both; hybrid wins
  hybrid.hybrid = true;
  EXPECT_EQ(*ClassifyMemory(hybrid, "m.gguf", "jamba"), MemoryKind::kHybrid);
  ModelMemoryKind swa;
  swa.n_swa = 4096;
  EXPECT_EQ(*ClassifyMemory(swa, "m.gguf", "gemma2"), MemoryKind::kIswa);
  // A hybrid with a sliding window is a layout kvstash does not read: refused up front.
  hybrid.n_swa = 512;
  auto r = ClassifyMemory(hybrid, "m.gguf", "x");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Status::Code::kIncompatible);
  EXPECT_NE(r.status().message().find("model 'm.gguf' (x) is a hybrid"), std::string::npos)
      << r.status().message();
}

// What inspect prints per kind: each part a kind has, with its positions and bytes.
TEST(CompatTest, DescribePartsNamesEachPartOfAKind) {
  using format::MemoryKind;
  format::SeqLayout l;
  l.kv.cell_count = 700;
  l.kv.bytes = 3 << 20;
  EXPECT_EQ(DescribeParts(l), "KV cells 700 (positions 0..699, 3.00 MiB)");
  l.kind = MemoryKind::kIswa;
  l.swa.cell_count = 64;
  l.swa.first_pos = 636;
  l.swa.bytes = 2048;
  EXPECT_EQ(DescribeParts(l),
            "KV cells 700 (positions 0..699, 3.00 MiB), window cells 64 (positions 636..699, "
            "2.0 KiB)");
  l.partial = true;  // a snapshot: the window alone
  EXPECT_EQ(DescribeParts(l), "window cells 64 (positions 636..699, 2.0 KiB)");
  l.partial = false;
  l.kind = MemoryKind::kRecurrent;
  l.rs.n_r = l.rs.n_s = 2;
  l.rs.r_row_bytes = 512;
  l.rs.s_row_bytes = 0;  // LFM2
  l.rs.bytes = 1092;
  EXPECT_EQ(DescribeParts(l),
            "recurrent state 1.1 KiB (2 layers with a state: R rows of 512 bytes, S rows of 0 "
            "bytes)");
  l.kind = MemoryKind::kHybrid;
  l.rs.n_s = 0;
  EXPECT_EQ(DescribeParts(l),
            "KV cells 700 (positions 0..699, 3.00 MiB), recurrent state 1.1 KiB (2 layers with a "
            "state: R rows of 512 bytes, no S rows)");
  EXPECT_NE(ReuseRule(MemoryKind::kIswa, 64).find("64-token window"), std::string::npos);
}

}  // namespace
}  // namespace kvstash::engine
