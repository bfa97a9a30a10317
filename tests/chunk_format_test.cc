// Chunk files and the cutting of llama.cpp sequence states, no model involved (the engine tests
// check the same against llama.cpp's own bytes).
#include "format/chunk_format.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <random>

#include "format/llama_state.h"

namespace kvstash::format {
namespace {

ChunkLayout SampleLayout(bool v_trans) {
  ChunkLayout l;
  l.n_layer = 3;
  l.v_trans = v_trans;
  l.k_type = 1;  // f16
  l.v_type = 1;
  l.k_row_bytes = 8;
  if (v_trans) {
    l.v_elem_bytes = 2;
    l.n_embd_v = 5;
  } else {
    l.v_row_bytes = 10;
  }
  return l;
}

std::vector<uint8_t> RandomBytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> out(n);
  for (auto& b : out) b = static_cast<uint8_t>(rng());
  return out;
}

std::string MakeChunk(const ChunkLayout& layout, uint32_t c, uint32_t index,
                      const std::vector<uint8_t>& kv, std::vector<int32_t>* tokens_out = nullptr) {
  ChunkHeader h;
  h.hash.fill(0xAB);
  h.parent.fill(0xCD);
  h.ns.fill(0xEF);
  h.index = index;
  h.n_tokens = c;
  h.layout = layout;
  std::vector<int32_t> tokens(c);
  for (uint32_t i = 0; i < c; ++i) tokens[i] = static_cast<int32_t>(i * 7 + index);
  if (tokens_out) *tokens_out = tokens;
  std::string file = EncodeChunkHead(h, tokens.data(), kv.data(), kv.size());
  file.append(reinterpret_cast<const char*>(kv.data()), kv.size());
  return file;
}

TEST(ChunkFormatTest, RoundTrip) {
  for (bool v_trans : {false, true}) {
    const ChunkLayout layout = SampleLayout(v_trans);
    const auto kv = RandomBytes(layout.KvBytes(16), 1);
    std::vector<int32_t> tokens;
    const std::string file = MakeChunk(layout, 16, 2, kv, &tokens);
    ASSERT_EQ(file.size(), kChunkHeaderSize + 16 * 4 + kv.size());
    auto view = ParseChunk(reinterpret_cast<const uint8_t*>(file.data()), file.size(), "c", true);
    ASSERT_TRUE(view.ok()) << view.status().message();
    EXPECT_EQ(view->header.index, 2u);
    EXPECT_EQ(view->header.layout, layout);
    EXPECT_EQ(view->tokens, tokens);
    ASSERT_EQ(view->kv_size, kv.size());
    EXPECT_EQ(std::memcmp(view->kv, kv.data(), kv.size()), 0);
  }
}

// A bit flipped anywhere (header, tokens or KV) is refused, and so is any other length.
TEST(ChunkFormatTest, EveryFlippedBitAndEveryLengthIsRefused) {
  const ChunkLayout layout = SampleLayout(true);
  const std::string file = MakeChunk(layout, 16, 1, RandomBytes(layout.KvBytes(16), 2));
  for (size_t byte = 0; byte < file.size(); ++byte) {
    for (int bit = 0; bit < 8; ++bit) {
      std::string bad = file;
      bad[byte] = static_cast<char>(bad[byte] ^ (1 << bit));
      auto view = ParseChunk(reinterpret_cast<const uint8_t*>(bad.data()), bad.size(), "c", true);
      ASSERT_FALSE(view.ok()) << "byte " << byte << " bit " << bit;
    }
  }
  for (size_t n : {size_t{0}, size_t{100}, kChunkHeaderSize, file.size() - 1, file.size() + 1}) {
    std::string bad = file;
    bad.resize(n, '\0');
    auto view = ParseChunk(reinterpret_cast<const uint8_t*>(bad.data()), bad.size(), "c", true);
    ASSERT_FALSE(view.ok()) << n;
    EXPECT_NE(view.status().message().find("chunk file 'c'"), std::string::npos);
  }
}

// A sequence's state from a cache with a stream per sequence is the one-stream state with empty
// blocks around it; ToOneStream and StateToStreams convert in place both ways, and cells in another
// stream are refused.
TEST(ChunkFormatTest, StreamsConvertInPlace) {
  const ChunkLayout layout = SampleLayout(false);
  const uint32_t c = 16;
  const std::vector<uint8_t> kv = RandomBytes(layout.KvBytes(c), 7);
  std::vector<uint8_t> one(SeqStateSize(layout, c));
  AssembleSeqState(layout, c, {kv.data()}, one.data());
  for (uint32_t n_stream : {1u, 2u, 4u}) {
    for (uint32_t stream = 0; stream < n_stream; ++stream) {
      // As llama.cpp writes it: magic, seq, n_stream, empty blocks, the block, empty blocks.
      std::vector<uint8_t> multi(one.begin(), one.begin() + 8);
      const uint8_t n[4] = {uint8_t(n_stream), 0, 0, 0};
      multi.insert(multi.end(), n, n + 4);
      multi.insert(multi.end(), 4 * stream, 0);
      multi.insert(multi.end(), one.begin() + 12, one.end());
      multi.insert(multi.end(), 4 * (n_stream - 1 - stream), 0);
      auto offset = ToOneStream(multi.data(), multi.size(), n_stream, stream);
      ASSERT_TRUE(offset.ok()) << offset.status().message();
      EXPECT_EQ(std::vector<uint8_t>(multi.begin() + *offset, multi.begin() + *offset + one.size()),
                one);
      if (n_stream > 1) {  // a cell in another stream
        std::vector<uint8_t> other(multi.size(), 0);
        std::copy(one.begin(), one.begin() + 8, other.begin());
        other[8] = uint8_t(n_stream);
        std::copy(one.begin() + 12, one.end(), other.begin() + 12 + 4 * stream);
        other[stream == 0 ? other.size() - 1 : 12] = 1;
        EXPECT_FALSE(ToOneStream(other.data(), other.size(), n_stream, stream).ok());
      }
    }
    std::vector<uint8_t> spare(one);
    spare.resize(one.size() + 4 * (n_stream - 1), 0xee);
    StateToStreams(spare.data(), one.size(), MemoryKind::kKv, /*partial=*/false, n_stream);
    EXPECT_EQ(spare[8], n_stream);
    EXPECT_TRUE(
        std::all_of(spare.begin() + one.size(), spare.end(), [](uint8_t b) { return b == 0; }));
  }
  uint8_t tiny[8] = {};
  EXPECT_FALSE(ToOneStream(tiny, sizeof tiny, 2, 0).ok());
  EXPECT_FALSE(ToOneStream(one.data(), one.size(), 2, 2).ok());
}

// Cutting a state into chunks and assembling them again gives llama.cpp's bytes back, and the
// assembled state is one ParseLlamaSeqState accepts.
TEST(ChunkFormatTest, CutAndAssembleAreInverse) {
  for (bool v_trans : {false, true}) {
    const ChunkLayout layout = SampleLayout(v_trans);
    const uint32_t c = 16, n_chunks = 3, cells = c * n_chunks;
    std::vector<std::vector<uint8_t>> chunks;
    std::vector<const uint8_t*> pointers;
    for (uint32_t j = 0; j < n_chunks; ++j) {
      chunks.push_back(RandomBytes(layout.KvBytes(c), 10 + j));
      pointers.push_back(chunks.back().data());
    }
    std::vector<uint8_t> state(SeqStateSize(layout, cells));
    AssembleSeqState(layout, c, pointers, state.data());
    for (int threads : {2, 3}) {  // the layers split among threads: the same bytes
      std::vector<uint8_t> threaded(state.size());
      AssembleSeqState(layout, c, pointers, threaded.data(), threads);
      EXPECT_EQ(threaded, state) << threads << " threads";
    }
    auto parsed = ParseLlamaSeqState(state.data(), state.size(), "state");
    ASSERT_TRUE(parsed.ok()) << parsed.status().message();
    EXPECT_EQ(parsed->cell_count, cells);
    EXPECT_EQ(ChunkLayout::From(*parsed), layout);
    for (uint32_t j = 0; j < n_chunks; ++j) {
      std::vector<uint8_t> cut(layout.KvBytes(c));
      ASSERT_TRUE(CutChunkKv(state.data(), state.size(), *parsed, j * c, c, cut.data()).ok());
      EXPECT_EQ(cut, chunks[j]) << "chunk " << j << " v_trans " << v_trans;
    }
    // Two chunks assembled are a prefix of the three (up to the cell count and layer offsets):
    // cutting the shorter state gives the same first two chunks.
    std::vector<uint8_t> shorter(SeqStateSize(layout, 2 * c));
    AssembleSeqState(layout, c, {pointers[0], pointers[1]}, shorter.data());
    auto parsed2 = ParseLlamaSeqState(shorter.data(), shorter.size(), "state");
    ASSERT_TRUE(parsed2.ok());
    std::vector<uint8_t> cut(layout.KvBytes(c));
    ASSERT_TRUE(CutChunkKv(shorter.data(), shorter.size(), *parsed2, c, c, cut.data()).ok());
    EXPECT_EQ(cut, chunks[1]);
    // Out of range, and cells out of position order, are refused.
    EXPECT_FALSE(CutChunkKv(state.data(), state.size(), *parsed, 2 * c + 1, c, cut.data()).ok());
    std::vector<uint8_t> swapped = state;
    std::memcpy(swapped.data() + 16, state.data() + 16 + 12, 4);
    std::memcpy(swapped.data() + 16 + 12, state.data() + 16, 4);
    EXPECT_FALSE(CutChunkKv(swapped.data(), swapped.size(), *parsed, 0, c, cut.data()).ok());
  }
}

TEST(ChunkFormatTest, HashHex) {
  Hash256 h;
  for (size_t i = 0; i < 32; ++i) h[i] = static_cast<uint8_t>(i * 9);
  const std::string hex = HashHex(h);
  EXPECT_EQ(hex.size(), 64u);
  Hash256 back{};
  ASSERT_TRUE(ParseHashHex(hex, &back));
  EXPECT_EQ(back, h);
  std::string upper = hex;
  upper[2] = 'A';
  EXPECT_FALSE(ParseHashHex(upper, &back));
  EXPECT_FALSE(ParseHashHex(hex.substr(1), &back));
}

}  // namespace
}  // namespace kvstash::format
