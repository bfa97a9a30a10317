// The prefix store's files: publishing, verified loading, hostile chunk files, eviction, temp
// sweeping, faults and concurrency. No llama.cpp: chunks are random bytes in a fixed layout.
#include "kvstash/store.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <thread>

#include "env/env.h"
#include "store/chain_hash.h"
#include "store/gc.h"
#include "store/namespace_text.h"
#include "store/store_files.h"
#include "store/store_impl.h"

namespace kvstash {
namespace {

constexpr uint32_t kC = 16;

format::ChunkLayout TestLayout() {
  format::ChunkLayout l;
  l.n_layer = 2;
  l.k_type = 1;  // f16
  l.v_type = 1;
  l.k_row_bytes = 64;
  l.v_row_bytes = 64;
  return l;
}

std::string TestDir() {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  const std::string dir = "/tmp/kvstash_store_test." + std::to_string(getuid()) + "/" +
                          info->test_suite_name() + "." + info->name();
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir + "/store";
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}
void WriteAll(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), std::streamsize(bytes.size()));
}

// One prompt: its tokens, chain hashes and the chunks a writer would publish for it.
struct Prompt {
  format::Hash256 ns{};
  std::string ns_text;
  std::vector<int32_t> tokens;
  std::vector<format::Hash256> chain;
  std::vector<ChunkWrite> writes;
};

// `shared` first chunks come from seed 0, the rest from `seed`: prompts with equal `shared`
// share that prefix.
Prompt MakePrompt(const std::string& ns_text, size_t n_chunks, uint32_t seed, size_t shared = 0) {
  Prompt p;
  p.ns_text = ns_text;
  p.ns = store::NamespaceHash(ns_text);
  const format::ChunkLayout layout = TestLayout();
  for (size_t j = 0; j < n_chunks; ++j) {
    std::mt19937 rng(j < shared ? uint32_t(j) * 7919 : seed * 1000003 + uint32_t(j));
    for (uint32_t t = 0; t < kC; ++t) p.tokens.push_back(int32_t(rng() % 32000));
  }
  p.chain = store::ChainHashes(p.ns, p.tokens.data(), p.tokens.size(), kC);
  for (size_t j = 0; j < n_chunks; ++j) {
    ChunkWrite w;
    w.header.hash = p.chain[j];
    w.header.parent = j == 0 ? p.ns : p.chain[j - 1];
    w.header.ns = p.ns;
    w.header.index = uint32_t(j + 1);
    w.header.n_tokens = kC;
    w.header.layout = layout;
    w.tokens.resize(kC);
    std::memcpy(w.tokens.data(), p.tokens.data() + j * kC, kC * sizeof(int32_t));
    // KV bytes depend on the chunk's name, so equal chunks have equal bytes.
    std::mt19937 rng(p.chain[j][0] | (uint32_t(p.chain[j][1]) << 8) |
                     (uint32_t(p.chain[j][2]) << 16));
    w.kv.resize(layout.KvBytes(kC));
    for (char& c : w.kv) c = char(rng());
    p.writes.push_back(std::move(w));
  }
  return p;
}

class StoreTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = TestDir(); }
  // On `env` (fault injection), or the POSIX Env.
  std::shared_ptr<Store> OpenStore(StoreOptions options = {}, Env* env = Env::Default()) {
    if (options.chunk_tokens == 0) options.chunk_tokens = kC;
    if (!options.warn) options.warn = [this](const std::string& w) { warnings_.push_back(w); };
    auto store = StoreInternals::Open(dir_, options, env);
    EXPECT_TRUE(store.ok()) << store.status().ToString();
    return store.ok() ? *store : nullptr;
  }
  void PublishAll(Store* store, const Prompt& p, size_t n = SIZE_MAX) {
    std::vector<ChunkWrite> writes(p.writes.begin(),
                                   p.writes.begin() + long(std::min(n, p.writes.size())));
    std::vector<format::Hash256> chain(p.chain.begin(), p.chain.begin() + long(writes.size()));
    ImplOf(*store)->Publish(p.ns, p.ns_text, std::move(writes), chain);
    store->WaitForWrites();
  }
  LoadedPrefix Load(Store* store, const Prompt& p) {
    return ImplOf(*store)->LoadPrefix(p.ns, p.chain, p.tokens.data(), p.chain.size(), TestLayout());
  }
  std::string ChunkPath(const Prompt& p, size_t j) {
    return store::StorePaths{dir_}.ChunkPath(p.chain[j], uint32_t(j + 1));
  }
  // kv bytes of every loaded chunk equal what was published.
  void ExpectLoadedBytes(const LoadedPrefix& loaded, const Prompt& p) {
    for (size_t j = 0; j < loaded.chunks.size(); ++j) {
      ASSERT_EQ(loaded.chunks[j].kv_size, p.writes[j].kv.size());
      EXPECT_EQ(0, std::memcmp(loaded.chunks[j].kv, p.writes[j].kv.data(), p.writes[j].kv.size()));
      EXPECT_EQ(loaded.chunks[j].tokens, p.writes[j].tokens);
    }
  }

  std::string dir_;
  std::vector<std::string> warnings_;
};

// The text of a context of `model` described as "m".
std::string Text(const format::ModelFacts& model, const format::SessionMeta& p, bool v_trans,
                 uint32_t chunk, const char* build) {
  return store::NamespaceText({model, "m", p, v_trans, chunk, build, {}});
}

// A store's namespace changes with everything that changes the KV bytes or the decode grouping,
// and with nothing else (the thread count and, outside LongRoPE, the context size).
TEST(NamespaceTextTest, CoversWhatDecidesTheKvBytes) {
  format::ModelFacts model;
  model.arch = "llama";
  model.n_layer = 2;
  model.llama_state_version = 3;
  format::SessionMeta p;
  p.n_ctx = 4096;
  p.n_batch = 2048;
  p.n_ubatch = 512;
  p.type_k = 1;
  p.type_v = 1;
  p.rope_freq_base = 10000.0f;
  const std::string base = Text(model, p, false, 256, "b1");
  EXPECT_NE(base.find("rope.freq_base=0x1.388p+13\n"), std::string::npos) << base;  // exact
  auto differs = [&](const std::string& text, const char* what) { EXPECT_NE(text, base) << what; };
  differs(Text(model, p, true, 256, "b1"), "V layout");
  differs(Text(model, p, false, 128, "b1"), "chunk size");
  differs(Text(model, p, false, 256, "b2"), "llama.cpp build");
  format::SessionMeta q = p;
  q.type_k = 8;
  differs(Text(model, q, false, 256, "b1"), "K type");
  q = p;
  q.n_ubatch = 128;
  differs(Text(model, q, false, 256, "b1"), "micro-batch split");
  q = p;
  q.rope_freq_base = std::nextafter(10000.0f, 20000.0f);
  differs(Text(model, q, false, 256, "b1"), "one ulp of RoPE base");
  format::ModelFacts other = model;
  other.fingerprint.bytes[0] ^= 1;
  differs(Text(other, p, false, 256, "b1"), "model");
  // Not in it: the context size (outside LongRoPE) and a batch beyond the chunk.
  q = p;
  q.n_ctx = 8192;
  q.n_batch = 4096;
  EXPECT_EQ(Text(model, q, false, 256, "b1"), base);
  // With LongRoPE, which factors rotate the keys (the context size decides) is in it.
  model.long_rope = true;
  model.n_ctx_orig = 4096;
  const std::string short_f = Text(model, p, false, 256, "b1");
  q = p;
  q.n_ctx = 8192;
  EXPECT_NE(Text(model, q, false, 256, "b1"), short_f);
}

// The bytes are hashed into every chunk's namespace: these are the ones existing stores hold.
TEST(NamespaceTextTest, BytesNeverChange) {
  store::NamespaceParams ns;
  ns.model.arch = "llama";
  ns.model.n_layer = 2;
  ns.model.n_embd_k_gqa = 256;
  ns.model.n_embd_v_gqa = 128;
  ns.model.llama_state_version = 3;
  ns.model.fingerprint.bytes[0] = 0xab;
  ns.model.long_rope = true;
  ns.model.n_ctx_orig = 4096;
  ns.model_description = "m\n2";
  ns.context.n_ctx = 8192;
  ns.context.n_batch = 2048;
  ns.context.n_ubatch = 512;
  ns.context.type_k = 1;
  ns.context.type_v = 8;
  ns.context.rope_freq_base = 10000.0f;
  ns.context.rope_freq_scale = 0.5f;
  ns.context.yarn_ext_factor = -1.0f;
  ns.context.yarn_attn_factor = 1.0f;
  ns.context.yarn_beta_fast = 32.0f;
  ns.context.yarn_beta_slow = 1.0f;
  ns.context.rope_scaling_type = 2;
  ns.v_trans = true;
  ns.chunk_tokens = 256;
  ns.llama_build = "b1";
  const std::string plain =
      "model.fingerprint=ab000000000000000000000000000000\n"
      "model.arch=llama\n"
      "model.description=m\\x0a2\n"
      "model.n_layer=2\n"
      "model.n_embd_k_gqa=256\n"
      "model.n_embd_v_gqa=128\n"
      "llama.build=b1\n"
      "llama.state_version=3\n"
      "cache.type_k=f16\n"
      "cache.type_v=q8_0\n"
      "cache.v_trans=1\n"
      "rope.scaling_type=2\n"
      "rope.freq_base=0x1.388p+13\n"
      "rope.freq_scale=0x1p-1\n"
      "rope.factors=long\n"
      "yarn.ext_factor=-0x1p+0\n"
      "yarn.attn_factor=0x1p+0\n"
      "yarn.beta_fast=0x1p+5\n"
      "yarn.beta_slow=0x1p+0\n"
      "yarn.orig_ctx=0\n"
      "store.chunk_tokens=256\n"
      "decode.n_ubatch=256\n"
      "decode.n_batch=256\n";
  EXPECT_EQ(store::NamespaceText(ns), plain);
  ns.memory = {"iswa", 4096, 0};
  EXPECT_EQ(store::NamespaceText(ns),
            plain + "memory.kind=iswa\nmemory.n_swa=4096\nstore.snapshot_every=0\n");
  EXPECT_EQ(store::ParseNamespaceText(plain).at("model.description"), "m\\x0a2");
  EXPECT_EQ(store::NamespaceSummary(plain),
            "m\\x0a2 (llama, fingerprint ab0000000000), K f16, V q8_0, flash attention off");
  EXPECT_EQ(store::NamespaceSummary(""), "(no description)");
}

TEST(ChainHashTest, KnownVectorsAndChaining) {
  // SHA-256("kvstash-store 1\n"), computed with sha256sum.
  EXPECT_EQ(format::HashHex(store::NamespaceHash("")),
            "61daf20f3b1a5ea49c45b4b7c64814261d6286e8b108dfef0ca0bb52bb780087");
  std::vector<int32_t> tokens(64);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = int32_t(i);
  const auto h0 = store::NamespaceHash("model x");
  const auto chain = store::ChainHashes(h0, tokens.data(), 40, kC);  // 2 full chunks
  ASSERT_EQ(chain.size(), 2u);
  EXPECT_EQ(chain[0], store::ChunkHash(h0, tokens.data(), kC));
  EXPECT_EQ(chain[1], store::ChunkHash(chain[0], tokens.data() + kC, kC));
  EXPECT_NE(store::NamespaceHash("model y"), h0);
}

TEST_F(StoreTest, PublishThenLoadReturnsTheSameBytes) {
  auto store = OpenStore();
  const Prompt p = MakePrompt("ns a", 3, 1);
  PublishAll(store.get(), p);
  EXPECT_EQ(store->writer_stats().chunks_written, 3u);
  LoadedPrefix loaded = Load(store.get(), p);
  ASSERT_EQ(loaded.chunks.size(), 3u);
  EXPECT_EQ(loaded.first_bad, -1);
  EXPECT_TRUE(loaded.Intact());
  ExpectLoadedBytes(loaded, p);
  // The namespace was recorded, nothing was left in tmp/, Verify agrees.
  EXPECT_EQ(ReadAll(dir_ + "/ns/" + format::HashHex(p.ns) + ".txt"), "ns a");
  EXPECT_TRUE(std::filesystem::is_empty(dir_ + "/tmp"));
  auto report = store->Verify();
  ASSERT_TRUE(report.ok());
  EXPECT_EQ(report->chunks_ok, 3u);
  EXPECT_TRUE(report->bad.empty());
  auto stats = store->Stats();
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->chunks, 3u);
  ASSERT_EQ(stats->namespaces.size(), 1u);
  EXPECT_EQ(stats->namespaces[0].description, "ns a");
  EXPECT_TRUE(warnings_.empty());
}

// Chunks removed after LoadPrefix accepted them: the held files still give the verified bytes.
// Both ways of holding a file: a read lease and a private copy.
TEST_F(StoreTest, ChunksRemovedWhileRestoringStillGiveTheVerifiedBytes) {
  for (bool leases : {true, false}) {
    SCOPED_TRACE(leases ? "leased" : "copied");
    Syscalls sys;
    Env env(&sys);
    env.set_read_leases(leases);
    StoreOptions options;
    auto store = OpenStore(options, &env);
    const Prompt p = MakePrompt(leases ? "leased" : "copied", 3, 1);
    PublishAll(store.get(), p);
    LoadedPrefix loaded = Load(store.get(), p);
    ASSERT_EQ(loaded.chunks.size(), 3u);
    ASSERT_EQ(*store->Clear(format::HashHex(p.ns)), 3u);
    ExpectLoadedBytes(loaded, p);
    EXPECT_TRUE(loaded.Intact());
    EXPECT_EQ(Load(store.get(), p).chunks.size(), 0u);  // now a clean miss
  }
}

TEST_F(StoreTest, LoadStopsAtMaxChunksAndAtAMissingMiddleChunk) {
  auto store = OpenStore();
  const Prompt p = MakePrompt("ns", 4, 1);
  PublishAll(store.get(), p);
  EXPECT_EQ(
      ImplOf(*store)->LoadPrefix(p.ns, p.chain, p.tokens.data(), 2, TestLayout()).chunks.size(),
      2u);
  ASSERT_EQ(unlink(ChunkPath(p, 2).c_str()), 0);
  LoadedPrefix loaded = Load(store.get(), p);
  EXPECT_EQ(loaded.chunks.size(), 2u);
  EXPECT_EQ(loaded.first_bad, -1);  // missing is a plain miss
  ExpectLoadedBytes(loaded, p);
}

TEST_F(StoreTest, FirstWriterWins) {
  auto a = OpenStore();
  auto b = OpenStore();
  Prompt p = MakePrompt("ns", 2, 1);
  PublishAll(a.get(), p);
  const std::string before = ReadAll(ChunkPath(p, 0));
  struct stat st1;
  ASSERT_EQ(stat(ChunkPath(p, 0).c_str(), &st1), 0);
  PublishAll(b.get(), p);
  EXPECT_EQ(b->writer_stats().chunks_existing, 2u);
  EXPECT_EQ(b->writer_stats().chunks_written, 0u);
  struct stat st2;
  ASSERT_EQ(stat(ChunkPath(p, 0).c_str(), &st2), 0);
  EXPECT_EQ(st1.st_ino, st2.st_ino);
  EXPECT_EQ(ReadAll(ChunkPath(p, 0)), before);
  EXPECT_TRUE(std::filesystem::is_empty(dir_ + "/tmp"));
}

TEST_F(StoreTest, SharedPrefixIsStoredOnce) {
  auto store = OpenStore();
  const Prompt a = MakePrompt("ns", 3, 1, /*shared=*/2);
  const Prompt b = MakePrompt("ns", 3, 2, /*shared=*/2);
  ASSERT_EQ(a.chain[1], b.chain[1]);
  ASSERT_NE(a.chain[2], b.chain[2]);
  PublishAll(store.get(), a);
  PublishAll(store.get(), b);
  EXPECT_EQ(store->writer_stats().chunks_existing, 2u);
  EXPECT_EQ(store->Stats()->chunks, 4u);
  EXPECT_EQ(Load(store.get(), b).chunks.size(), 3u);
}

// Each hostile file in place of chunk 2 (index 1) of p: a miss with first_bad == 1, and Verify
// names it.
class HostileChunkTest : public StoreTest {
 protected:
  void Check(const std::function<void(const std::string& path)>& plant, const char* what) {
    SCOPED_TRACE(what);
    std::filesystem::remove_all(dir_);
    store_ = OpenStore();
    p_ = MakePrompt("ns", 3, 1);
    PublishAll(store_.get(), p_);
    const std::string path = ChunkPath(p_, 1);
    plant(path);
    LoadedPrefix loaded = Load(store_.get(), p_);
    EXPECT_EQ(loaded.chunks.size(), 1u);
    EXPECT_EQ(loaded.first_bad, 1);
    EXPECT_FALSE(loaded.first_bad_reason.empty());
    ExpectLoadedBytes(loaded, p_);
    auto report = store_->Verify();
    ASSERT_TRUE(report.ok()) << report.status().ToString();
    ASSERT_FALSE(report->bad.empty());
    EXPECT_NE(report->bad[0].find(path), std::string::npos) << report->bad[0];
  }
  std::shared_ptr<Store> store_;
  Prompt p_;
};

TEST_F(HostileChunkTest, CorruptTruncatedForeignAndPlantedFilesAreMisses) {
  Check(
      [](const std::string& path) {
        std::string b = ReadAll(path);
        WriteAll(path, b.substr(0, b.size() - 100));
      },
      "truncated");
  Check(
      [](const std::string& path) {
        std::string b = ReadAll(path);
        b[b.size() - 7] ^= 0x10;
        WriteAll(path, b);
      },
      "one flipped bit in the KV");
  Check([](const std::string& path) { WriteAll(path, "short"); }, "not a chunk");
  // A well-formed chunk with other tokens, under this name.
  Check(
      [this](const std::string& path) {
        Prompt other = MakePrompt("ns", 3, 9);
        ChunkWrite w = other.writes[1];
        w.header.hash = p_.chain[1];
        w.header.parent = p_.chain[0];
        const std::string head = format::EncodeChunkHead(
            w.header, w.tokens.data(), reinterpret_cast<const uint8_t*>(w.kv.data()), w.kv.size());
        WriteAll(path, head + w.kv);
      },
      "tokens not the request's");
  Check(
      [this](const std::string& path) {
        ChunkWrite w = p_.writes[1];
        w.header.parent = p_.chain[1];  // wrong parent
        const std::string head = format::EncodeChunkHead(
            w.header, w.tokens.data(), reinterpret_cast<const uint8_t*>(w.kv.data()), w.kv.size());
        WriteAll(path, head + w.kv);
      },
      "wrong parent");
  // Another namespace's chunk 2, copied under this chunk's name.
  Check(
      [this](const std::string& path) {
        Prompt other = MakePrompt("another model", 3, 1);
        Store* s = store_.get();
        PublishAll(s, other);
        std::filesystem::copy_file(ChunkPath(other, 1), path,
                                   std::filesystem::copy_options::overwrite_existing);
      },
      "another namespace's chunk");
  Check(
      [](const std::string& path) {
        unlink(path.c_str());
        mkdir(path.c_str(), 0755);
      },
      "a directory");
  Check(
      [](const std::string& path) {
        unlink(path.c_str());
        ASSERT_EQ(mkfifo(path.c_str(), 0644), 0);
      },
      "a FIFO");
  Check(
      [](const std::string& path) {
        const std::string copy = path + ".elsewhere";
        std::filesystem::rename(path, copy);
        ASSERT_EQ(symlink(copy.c_str(), path.c_str()), 0);
      },
      "a symbolic link to the right bytes");
}

TEST_F(StoreTest, ReplaceBadRepairsAChunk) {
  auto store = OpenStore();
  Prompt p = MakePrompt("ns", 2, 1);
  PublishAll(store.get(), p);
  WriteAll(ChunkPath(p, 1), "garbage");
  LoadedPrefix loaded = Load(store.get(), p);
  ASSERT_EQ(loaded.first_bad, 1);
  std::vector<ChunkWrite> writes = {p.writes[1]};
  writes[0].replace_bad = true;
  ImplOf(*store)->Publish(p.ns, p.ns_text, std::move(writes), p.chain);
  store->WaitForWrites();
  EXPECT_EQ(Load(store.get(), p).chunks.size(), 2u);
}

TEST_F(StoreTest, VerifyFindsPlantedAndMisnamedFiles) {
  auto store = OpenStore();
  Prompt p = MakePrompt("ns", 2, 1);
  PublishAll(store.get(), p);
  // A self-consistent chunk whose name is not the hash of its parent and tokens.
  ChunkWrite w = p.writes[1];
  w.header.hash[5] ^= 1;
  const std::string planted = store::StorePaths{dir_}.ChunkPath(w.header.hash, 2);
  std::filesystem::create_directories(DirName(planted));
  WriteAll(planted,
           format::EncodeChunkHead(w.header, w.tokens.data(),
                                   reinterpret_cast<const uint8_t*>(w.kv.data()), w.kv.size()) +
               w.kv);
  WriteAll(DirName(planted) + "/notes.txt", "hello");
  auto report = store->Verify();
  ASSERT_TRUE(report.ok());
  EXPECT_EQ(report->chunks_ok, 2u);
  ASSERT_EQ(report->bad.size(), 2u);
  // Gc leaves files that are not chunks alone.
  ASSERT_TRUE(store->Gc(0).ok());
  EXPECT_TRUE(std::filesystem::exists(DirName(planted) + "/notes.txt"));
}

TEST_F(StoreTest, GcEvictsLeastRecentlyUsedLeafFirst) {
  auto store = OpenStore();
  const Prompt a = MakePrompt("ns", 3, 1);
  const Prompt b = MakePrompt("ns", 2, 2);
  PublishAll(store.get(), a);
  PublishAll(store.get(), b);
  const uint64_t chunk = std::filesystem::file_size(ChunkPath(a, 0));
  Env* env = Env::Default();
  // b is older than a; within each chain all share one time (as the writer leaves them).
  for (size_t j = 0; j < 3; ++j)
    ASSERT_TRUE(env->SetMtime(ChunkPath(a, j), 2'000'000'000'000'000'000).ok());
  for (size_t j = 0; j < 2; ++j)
    ASSERT_TRUE(env->SetMtime(ChunkPath(b, j), 1'000'000'000'000'000'000).ok());
  // Budget for 4 chunks: b's leaf goes first.
  auto r = store->Gc(4 * chunk);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->chunks_removed, 1u);
  EXPECT_EQ(r->bytes_left, 4 * chunk);
  EXPECT_FALSE(std::filesystem::exists(ChunkPath(b, 1)));
  EXPECT_TRUE(std::filesystem::exists(ChunkPath(b, 0)));
  // Then b's root, then a's leaf: a lookup always finds a prefix.
  r = store->Gc(2 * chunk);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->chunks_removed, 2u);
  EXPECT_FALSE(std::filesystem::exists(ChunkPath(b, 0)));
  EXPECT_FALSE(std::filesystem::exists(ChunkPath(a, 2)));
  EXPECT_EQ(Load(store.get(), a).chunks.size(), 2u);
  EXPECT_EQ(store->Gc(0)->bytes_left, 0u);
}

TEST_F(StoreTest, WriterKeepsParentsAsNewAsChildrenAndEvictsToBudget) {
  StoreOptions options;
  const Prompt a = MakePrompt("ns", 2, 1);
  const Prompt b = MakePrompt("ns", 2, 2, /*shared=*/1);
  options.chunk_tokens = kC;
  {
    auto store = OpenStore(options);
    PublishAll(store.get(), a);
  }
  const uint64_t chunk = std::filesystem::file_size(ChunkPath(a, 0));
  options.max_bytes = 2 * chunk;
  auto store = OpenStore(options);
  usleep(20000);
  PublishAll(store.get(), b);  // touches the shared root: a's leaf is now the oldest
  EXPECT_EQ(store->Stats()->bytes, 2 * chunk);
  EXPECT_FALSE(std::filesystem::exists(ChunkPath(a, 1)));
  EXPECT_EQ(Load(store.get(), b).chunks.size(), 2u);
}

// The writer lists the store only when it may be over budget (its own estimate, or every 10 s);
// its own writes past the budget must still trigger eviction at once.
TEST_F(StoreTest, WriterEvictsWhenItsOwnWritesExceedTheBudget) {
  StoreOptions options;
  options.chunk_tokens = kC;
  const Prompt a = MakePrompt("ns", 2, 1);
  const Prompt c = MakePrompt("ns", 2, 3);
  {
    auto probe = OpenStore(options);
    PublishAll(probe.get(), a);
  }
  const uint64_t chunk = std::filesystem::file_size(ChunkPath(a, 0));
  ASSERT_TRUE(OpenStore(options)->Gc(0).ok());
  options.max_bytes = 3 * chunk;
  auto store = OpenStore(options);
  PublishAll(store.get(), a);  // 2 chunks: under budget
  EXPECT_EQ(store->Stats()->chunks, 2u);
  usleep(20000);
  PublishAll(store.get(), c);  // 4 chunks: over, a's leaf (the oldest) goes
  EXPECT_EQ(store->Stats()->chunks, 3u);
  EXPECT_FALSE(std::filesystem::exists(ChunkPath(a, 1)));
}

// A new store is private (0700): its chunks hold prompts, and write access means control of the
// answers. An existing directory keeps its mode.
TEST_F(StoreTest, NewStoreDirectoryIsPrivate) {
  const std::string fresh = dir_ + "/fresh/store";
  auto store = Store::Open(fresh);
  ASSERT_TRUE(store.ok()) << store.status().ToString();
  EXPECT_EQ(std::filesystem::status(fresh).permissions() & std::filesystem::perms::all,
            std::filesystem::perms::owner_all);
}

TEST_F(StoreTest, SweepRemovesOnlyUnlockedTempFiles) {
  auto store = OpenStore();
  Env* env = Env::Default();
  const std::string dead = dir_ + "/tmp/1.dead.tmp";
  const std::string alive = dir_ + "/tmp/2.alive.tmp";
  const std::string foreign = dir_ + "/tmp/readme";
  WriteAll(dead, "x");
  WriteAll(alive, "y");
  WriteAll(foreign, "z");
  auto lock = env->LockFile(alive, /*wait=*/true);  // a live writer, as far as anyone can tell
  ASSERT_TRUE(lock.ok());
  auto r = store->Gc(UINT64_MAX);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->temp_files_removed, 1u);
  EXPECT_FALSE(std::filesystem::exists(dead));
  EXPECT_TRUE(std::filesystem::exists(alive));
  EXPECT_TRUE(std::filesystem::exists(foreign));
  lock->reset();
  EXPECT_EQ(store->Gc(UINT64_MAX)->temp_files_removed, 1u);
}

// Fails writes (ENOSPC) or every creation (EROFS), as a full or read-only disk would.
class FullDiskSyscalls : public Syscalls {
 public:
  int write_errno = 0;
  int create_errno = 0;
  ssize_t Write(int fd, const void* buf, size_t n) override {
    if (write_errno != 0) {
      errno = write_errno;
      return -1;
    }
    return Syscalls::Write(fd, buf, n);
  }
  int Open(const char* path, int flags, mode_t mode) override {
    if (create_errno != 0 && (flags & O_CREAT) != 0) {
      errno = create_errno;
      return -1;
    }
    return Syscalls::Open(path, flags, mode);
  }
  int Link(const char* from, const char* to) override {
    if (create_errno != 0) {
      errno = create_errno;
      return -1;
    }
    return Syscalls::Link(from, to);
  }
  int Mkdir(const char* path, mode_t mode) override {
    if (create_errno != 0) {
      errno = create_errno;
      return -1;
    }
    return Syscalls::Mkdir(path, mode);
  }
};

TEST_F(StoreTest, FullDiskDropsWithOneWarningAndNoTemp) {
  { OpenStore(); }  // the store exists
  FullDiskSyscalls sys;
  Env env(&sys);
  StoreOptions options;
  auto store = OpenStore(options, &env);
  sys.write_errno = ENOSPC;
  const Prompt a = MakePrompt("ns", 3, 1);
  const Prompt b = MakePrompt("ns", 2, 2);
  PublishAll(store.get(), a);
  PublishAll(store.get(), b);
  EXPECT_EQ(store->writer_stats().chunks_dropped, 5u);
  ASSERT_EQ(warnings_.size(), 1u);
  EXPECT_NE(warnings_[0].find("disk full"), std::string::npos) << warnings_[0];
  EXPECT_NE(warnings_[0].find(dir_), std::string::npos) << warnings_[0];
  EXPECT_TRUE(std::filesystem::is_empty(dir_ + "/tmp"));
  EXPECT_EQ(store->Stats()->chunks, 0u);
  // Space again: publishing works.
  sys.write_errno = 0;
  PublishAll(store.get(), a);
  EXPECT_EQ(Load(store.get(), a).chunks.size(), 3u);
}

TEST_F(StoreTest, ReadOnlyStoreServesReadsAndDropsWrites) {
  const Prompt a = MakePrompt("ns", 2, 1);
  const Prompt b = MakePrompt("ns", 2, 2);
  {
    auto store = OpenStore();
    PublishAll(store.get(), a);
  }
  FullDiskSyscalls sys;
  sys.create_errno = EROFS;
  Env env(&sys);
  StoreOptions options;
  auto store = OpenStore(options, &env);
  ASSERT_NE(store, nullptr);
  EXPECT_EQ(Load(store.get(), a).chunks.size(), 2u);
  PublishAll(store.get(), b);
  PublishAll(store.get(), b);
  EXPECT_EQ(store->writer_stats().chunks_dropped, 4u);
  EXPECT_EQ(warnings_.size(), 1u);
  EXPECT_EQ(Load(store.get(), b).chunks.size(), 0u);
}

TEST_F(StoreTest, ReadOnlyDiscoveredOnWrite) {
  { OpenStore(); }
  FullDiskSyscalls sys;
  Env env(&sys);
  StoreOptions options;
  auto store = OpenStore(options, &env);
  sys.create_errno = EROFS;
  const Prompt a = MakePrompt("ns", 2, 1);
  PublishAll(store.get(), a);
  EXPECT_EQ(ImplOf(*store)->Publish(a.ns, a.ns_text, a.writes, a.chain), 0u);
  store->WaitForWrites();
  EXPECT_EQ(store->writer_stats().chunks_dropped, 4u);
  ASSERT_EQ(warnings_.size(), 1u);
  EXPECT_NE(warnings_[0].find("read-only"), std::string::npos) << warnings_[0];
}

TEST_F(StoreTest, QueueBoundDrops) {
  StoreOptions options;
  options.max_pending_bytes = 1;  // not even one chunk fits
  auto store = OpenStore(options);
  const Prompt a = MakePrompt("ns", 2, 1);
  EXPECT_EQ(ImplOf(*store)->Publish(a.ns, a.ns_text, a.writes, a.chain), 0u);
  store->WaitForWrites();
  EXPECT_EQ(store->writer_stats().chunks_dropped, 2u);
  EXPECT_EQ(store->writer_stats().chunks_written, 0u);
}

TEST_F(StoreTest, ManifestIsCheckedAndChunkSizeKept) {
  { OpenStore(); }
  EXPECT_EQ(ReadAll(dir_ + "/STORE"), "kvstash store\nversion 1\nchunk_tokens 16\n");
  StoreOptions options;
  auto reopened = Store::Open(dir_, options);  // 0: the store's own
  ASSERT_TRUE(reopened.ok());
  EXPECT_EQ((*reopened)->chunk_tokens(), kC);
  options.chunk_tokens = 32;
  auto mismatch = Store::Open(dir_, options);
  ASSERT_FALSE(mismatch.ok());
  EXPECT_EQ(mismatch.status().code(), Status::Code::kInvalidArgument);
  EXPECT_NE(mismatch.status().message().find("16"), std::string::npos);
  EXPECT_NE(mismatch.status().message().find("32"), std::string::npos);
  options.chunk_tokens = 20;
  EXPECT_EQ(Store::Open(dir_ + "2", options).status().code(), Status::Code::kInvalidArgument);

  for (const char* bad :
       {"kvstash store\nversion 1\nchunk_tokens 17\n", "garbage",
        "kvstash store\nversion 1\nchunk_tokens 99999999999\n", "kvstash store\nversion 1\n"}) {
    WriteAll(dir_ + "/STORE", bad);
    auto opened = Store::Open(dir_, {});
    ASSERT_FALSE(opened.ok()) << bad;
    EXPECT_EQ(opened.status().code(), Status::Code::kCorruption) << bad;
    EXPECT_NE(opened.status().message().find("STORE"), std::string::npos);
  }
  WriteAll(dir_ + "/STORE", "kvstash store\nversion 2\nchunk_tokens 16\n");
  auto newer = Store::Open(dir_, {});
  ASSERT_FALSE(newer.ok());
  EXPECT_NE(newer.status().message().find("version 2"), std::string::npos);
  StoreOptions no_create;
  no_create.create = false;
  EXPECT_EQ(Store::Open(dir_ + "-missing", no_create).status().code(), Status::Code::kNotFound);
}

TEST_F(StoreTest, ClearRemovesOneNamespaceOrAll) {
  auto store = OpenStore();
  const Prompt a = MakePrompt("model a", 2, 1);
  const Prompt b = MakePrompt("model b", 3, 1);
  PublishAll(store.get(), a);
  PublishAll(store.get(), b);
  auto cleared = store->Clear(format::HashHex(a.ns));
  ASSERT_TRUE(cleared.ok());
  EXPECT_EQ(*cleared, 2u);
  EXPECT_EQ(Load(store.get(), b).chunks.size(), 3u);
  EXPECT_EQ(*store->Clear(), 3u);
  EXPECT_EQ(store->List()->size(), 0u);
  EXPECT_FALSE(store->Clear("xyz").ok());
}

// A tail of `p`: `tokens` (fewer than kC) after its first j whole chunks.
ChunkWrite MakeTail(const Prompt& p, uint32_t j, const std::vector<int32_t>& tokens) {
  ChunkWrite w;
  w.header.tail = true;
  w.header.parent = j == 0 ? p.ns : p.chain[j - 1];
  w.header.hash = store::TailHash(w.header.parent, tokens.data(), tokens.size());
  w.header.ns = p.ns;
  w.header.index = j + 1;
  w.header.n_tokens = uint32_t(tokens.size());
  w.header.chunk_tokens = kC;
  w.header.layout = TestLayout();
  w.tokens = tokens;
  w.kv.resize(TestLayout().KvBytes(w.header.n_tokens));
  std::mt19937 rng(w.header.hash[0] | (uint32_t(w.header.hash[1]) << 8));
  for (char& c : w.kv) c = char(rng());
  return w;
}

class TailTest : public StoreTest {
 protected:
  void SetUp() override {
    StoreTest::SetUp();
    store_ = OpenStore();
    p_ = MakePrompt("ns", 2, 1);
    PublishAll(store_.get(), p_);
  }
  // `n` tokens sharing the first `shared` with `rest_`, then others.
  std::vector<int32_t> Sharing(size_t shared, size_t n, int32_t other = 77) const {
    std::vector<int32_t> t(rest_.begin(), rest_.begin() + long(shared));
    while (t.size() < n) t.push_back(other + int32_t(t.size()));
    return t;
  }
  void PublishTail(const ChunkWrite& w) {
    ImplOf(*store_)->Publish(p_.ns, p_.ns_text, {w}, p_.chain);
    store_->WaitForWrites();
  }
  std::string PathOf(const ChunkWrite& w) const {
    return store::StorePaths{dir_}.TailPath(w.header.parent, w.header.index - 1, w.header.n_tokens,
                                            w.header.hash);
  }
  LoadedTail Lookup() {
    return ImplOf(*store_)->LoadTail(p_.ns, p_.chain[1], 2, rest_.data(), rest_.size(),
                                     TestLayout(), store::NowNs());
  }
  std::shared_ptr<Store> store_;
  Prompt p_;
  const std::vector<int32_t> rest_ = {5, 6, 7, 8, 9, 10, 11, 12, 13, 14};
};

// The tail sharing the most tokens with the request wins, cut to what it shares; its bytes are the
// published ones; Stats, Verify, Gc and Clear know tails.
TEST_F(TailTest, BestTailWinsAndIsCutToWhatItShares) {
  const ChunkWrite a = MakeTail(p_, 2, Sharing(3, 9)), b = MakeTail(p_, 2, Sharing(7, 12)),
                   c = MakeTail(p_, 2, Sharing(5, 6));
  for (const ChunkWrite* w : {&a, &b, &c}) PublishTail(*w);
  ASSERT_TRUE(std::filesystem::exists(PathOf(b)));
  LoadedTail tail = Lookup();
  ASSERT_NE(tail.file, nullptr);
  EXPECT_EQ(tail.usable, 7u);
  EXPECT_EQ(tail.view.header.n_tokens, 12u);
  ASSERT_EQ(tail.view.kv_size, b.kv.size());
  EXPECT_EQ(0, std::memcmp(tail.view.kv, b.kv.data(), b.kv.size()));
  EXPECT_TRUE(tail.refused.empty());
  // Under another parent (chunk 1) nothing is found; nor when nothing is shared.
  EXPECT_EQ(ImplOf(*store_)
                ->LoadTail(p_.ns, p_.chain[0], 1, rest_.data(), rest_.size(), TestLayout(),
                           store::NowNs())
                .file,
            nullptr);
  const std::vector<int32_t> other = {99, 98};
  EXPECT_EQ(ImplOf(*store_)
                ->LoadTail(p_.ns, p_.chain[1], 2, other.data(), other.size(), TestLayout(),
                           store::NowNs())
                .file,
            nullptr);
  auto stats = store_->Stats();
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->tails, 3u);
  EXPECT_EQ(stats->chunks, 2u);
  EXPECT_EQ(store_->List()->size(), 2u) << "List is chunks only";
  auto verify = store_->Verify();
  ASSERT_TRUE(verify.ok());
  EXPECT_EQ(verify->chunks_ok, 5u);
  EXPECT_TRUE(verify->bad.empty());
  // Same mtime for the chain and its tails: eviction takes the tails (leaves) first.
  const int64_t now = store::NowNs();
  for (const ChunkWrite* w : {&a, &b, &c})
    ASSERT_TRUE(Env::Default()->SetMtime(PathOf(*w), now).ok());
  for (size_t j = 0; j < 2; ++j) ASSERT_TRUE(Env::Default()->SetMtime(ChunkPath(p_, j), now).ok());
  const uint64_t chunk_bytes = std::filesystem::file_size(ChunkPath(p_, 0));
  ASSERT_TRUE(store_->Gc(2 * chunk_bytes).ok());
  EXPECT_EQ(store_->Stats()->tails, 0u);
  EXPECT_EQ(store_->Stats()->chunks, 2u);
  PublishTail(a);
  EXPECT_EQ(*store_->Clear(format::HashHex(p_.ns)), 3u) << "two chunks and a tail";
  EXPECT_EQ(Lookup().file, nullptr);
}

// The writer touches every parent of what it wrote, tails' included, after writing them: a chunk
// written with the answer's tail, followed in the same publish by an earlier tail (the prompt's),
// is never older than its own tail, so eviction cannot strand the tail.
TEST_F(StoreTest, WriterTouchesTheParentsOfTails) {
  auto store = OpenStore();
  const Prompt p = MakePrompt("ns", 3, 1);
  PublishAll(store.get(), p, 2);
  std::vector<ChunkWrite> writes = {p.writes[2], MakeTail(p, 3, {1, 2, 3}), MakeTail(p, 1, {4, 5})};
  const std::string tail3 =
      store::StorePaths{dir_}.TailPath(p.chain[2], 3, 3, writes[1].header.hash);
  ImplOf(*store)->Publish(p.ns, p.ns_text, std::move(writes), p.chain);
  store->WaitForWrites();
  auto chunk = Env::Default()->LinkStat(ChunkPath(p, 2));
  auto tail = Env::Default()->LinkStat(tail3);
  ASSERT_TRUE(chunk.ok() && tail.ok());
  EXPECT_GT(chunk->mtime_ns, tail->mtime_ns) << "chunk 3 was not touched after its tail";
}

// A tail file that is damaged, planted or misplaced is a miss (reported for replacement when it
// was the choice), and Verify lists it; a publish with replace_bad repairs it.
TEST_F(TailTest, HostileTailsAreMisses) {
  const ChunkWrite good = MakeTail(p_, 2, Sharing(6, 8));
  auto encode = [](const ChunkWrite& w) {
    return format::EncodeChunkHead(w.header, w.tokens.data(),
                                   reinterpret_cast<const uint8_t*>(w.kv.data()), w.kv.size()) +
           w.kv;
  };
  const std::vector<std::pair<const char*, std::function<void(const std::string&)>>> plants = {
      {"one flipped bit in the KV",
       [](const std::string& path) {
         std::string b = ReadAll(path);
         b[b.size() - 5] ^= 0x10;
         WriteAll(path, b);
       }},
      {"a chunk's magic",
       [&](const std::string& path) {
         std::string b = encode(good);
         b[3] = 'C';
         WriteAll(path, b);
       }},
      {"other tokens under this name",
       [&](const std::string& path) {
         ChunkWrite w = MakeTail(p_, 2, Sharing(6, 8, 55));
         w.header.hash = good.header.hash;
         WriteAll(path, encode(w));
       }},
      {"another parent in the header",
       [&](const std::string& path) {
         ChunkWrite w = good;
         w.header.parent = p_.chain[0];
         WriteAll(path, encode(w));
       }},
      {"another chunk size",
       [&](const std::string& path) {
         ChunkWrite w = good;
         w.header.chunk_tokens = 2 * kC;
         WriteAll(path, encode(w));
       }},
      {"a symbolic link to the right bytes",
       [](const std::string& path) {
         const std::string copy = path + ".elsewhere";
         std::filesystem::rename(path, copy);
         ASSERT_EQ(symlink(copy.c_str(), path.c_str()), 0);
       }},
      {"a FIFO",
       [](const std::string& path) {
         unlink(path.c_str());
         ASSERT_EQ(mkfifo(path.c_str(), 0644), 0);
       }},
  };
  for (const auto& [what, plant] : plants) {
    SCOPED_TRACE(what);
    std::filesystem::remove_all(dir_ + "/tails");
    std::filesystem::create_directory(dir_ + "/tails");
    PublishTail(good);
    ASSERT_EQ(Lookup().usable, 6u);
    plant(PathOf(good));
    LoadedTail tail = Lookup();
    EXPECT_EQ(tail.file, nullptr);
    EXPECT_EQ(tail.usable, 0u);
    auto verify = store_->Verify();
    ASSERT_TRUE(verify.ok());
    ASSERT_FALSE(verify->bad.empty());
    EXPECT_TRUE(std::any_of(verify->bad.begin(), verify->bad.end(), [&](const std::string& line) {
      return line.rfind(PathOf(good) + ": ", 0) == 0;
    })) << verify->bad[0];
  }
  // The last one (a FIFO) is skipped by name and type before it is opened; a damaged regular file
  // is reported for replacement, and replaced.
  std::filesystem::remove_all(dir_ + "/tails");
  std::filesystem::create_directory(dir_ + "/tails");
  PublishTail(good);
  std::string b = ReadAll(PathOf(good));
  b[b.size() - 5] ^= 0x10;
  WriteAll(PathOf(good), b);
  EXPECT_EQ(Lookup().refused, PathOf(good));
  ChunkWrite repair = good;
  repair.replace_bad = true;
  PublishTail(repair);
  EXPECT_EQ(Lookup().usable, 6u);
}

// Writers, readers and a collector with a tiny budget at once: every load is a verified prefix
// of what was published, and the store verifies clean afterwards.
TEST_F(StoreTest, ConcurrentPublishLoadAndGc) {
  StoreOptions options;
  options.sync = false;
  auto first = OpenStore(options);
  const uint64_t chunk = store::ChunkFileBytes(TestLayout(), kC);
  std::vector<Prompt> prompts;
  for (uint32_t i = 0; i < 8; ++i) prompts.push_back(MakePrompt("ns", 4, i, /*shared=*/i % 3));
  std::atomic<bool> stop{false};
  std::atomic<int> loads{0}, bad{0}, hits{0};
  std::thread gc([&] {
    auto store = OpenStore(options);
    while (!stop.load()) (void)store->Gc(12 * chunk);
  });
  std::vector<std::thread> workers;
  for (int t = 0; t < 4; ++t) {
    workers.emplace_back([&, t] {
      auto store = OpenStore(options);  // one Store per "process"
      for (int round = 0; round < 40; ++round) {
        const Prompt& p = prompts[size_t(t + round / 2) % prompts.size()];
        LoadedPrefix loaded = Load(store.get(), p);
        for (size_t j = 0; j < loaded.chunks.size(); ++j) {
          if (std::memcmp(loaded.chunks[j].kv, p.writes[j].kv.data(), p.writes[j].kv.size()) != 0) {
            ++bad;
          }
        }
        if (!loaded.Intact() || loaded.first_bad != -1) ++bad;
        ++loads;
        hits += int(loaded.chunks.size());
        std::vector<ChunkWrite> writes(p.writes.begin() + long(loaded.chunks.size()),
                                       p.writes.end());
        ImplOf(*store)->Publish(p.ns, p.ns_text, std::move(writes), p.chain);
        // Every other round, wait: the next round then often finds what was just published.
        if (round % 2 == 1) store->WaitForWrites();
      }
      store->WaitForWrites();
    });
  }
  for (auto& w : workers) w.join();
  stop = true;
  gc.join();
  EXPECT_EQ(bad.load(), 0);
  EXPECT_EQ(loads.load(), 160);
  EXPECT_GT(hits.load(), 0);
  auto report = first->Verify();
  ASSERT_TRUE(report.ok());
  EXPECT_TRUE(report->bad.empty()) << report->bad[0];
  EXPECT_TRUE(std::filesystem::is_empty(dir_ + "/tmp"));
}

// The same with processes: 3 publishing and loading, 1 collecting. Each child exits 0 only when
// every prefix it loaded had the published bytes.
TEST_F(StoreTest, ConcurrentProcesses) {
  std::vector<Prompt> prompts;
  for (uint32_t i = 0; i < 6; ++i) prompts.push_back(MakePrompt("ns", 4, i, /*shared=*/i % 3));
  const uint64_t chunk = store::ChunkFileBytes(TestLayout(), kC);
  std::vector<pid_t> children;
  for (int c = 0; c < 4; ++c) {
    const pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid != 0) {
      children.push_back(pid);
      continue;
    }
    StoreOptions options;
    options.chunk_tokens = kC;
    options.sync = false;
    options.warn = [](const std::string&) {};
    auto store = Store::Open(dir_, options);
    if (!store.ok()) _exit(2);
    for (int round = 0; round < 30; ++round) {
      if (c == 3) {
        if (!(*store)->Gc(10 * chunk).ok()) _exit(3);
        continue;
      }
      const Prompt& p = prompts[size_t(c + round / 2) % prompts.size()];
      LoadedPrefix loaded = Load(store->get(), p);
      for (size_t j = 0; j < loaded.chunks.size(); ++j) {
        if (std::memcmp(loaded.chunks[j].kv, p.writes[j].kv.data(), p.writes[j].kv.size()) != 0) {
          _exit(4);
        }
      }
      if (loaded.first_bad != -1 || !loaded.Intact()) _exit(5);
      std::vector<ChunkWrite> writes(p.writes.begin() + long(loaded.chunks.size()), p.writes.end());
      ImplOf(**store)->Publish(p.ns, p.ns_text, std::move(writes), p.chain);
      (*store)->WaitForWrites();
    }
    store->reset();
    _exit(0);
  }
  for (pid_t pid : children) {
    int status = 0;
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "status " << status;
  }
  auto store = OpenStore();
  auto report = store->Verify();
  ASSERT_TRUE(report.ok());
  EXPECT_TRUE(report->bad.empty()) << report->bad[0];
  EXPECT_GT(report->chunks_ok, 0u);
  EXPECT_TRUE(std::filesystem::is_empty(dir_ + "/tmp"));
}

TEST_F(StoreTest, EnvLinkStatAndLinkFile) {
  Env* env = Env::Default();
  std::filesystem::create_directories(dir_);
  WriteAll(dir_ + "/a", "x");
  auto linked = env->LinkFile(dir_ + "/a", dir_ + "/b");
  ASSERT_TRUE(linked.ok());
  EXPECT_TRUE(*linked);
  linked = env->LinkFile(dir_ + "/a", dir_ + "/b");
  ASSERT_TRUE(linked.ok());
  EXPECT_FALSE(*linked);  // EEXIST: reported, not an error
  ASSERT_EQ(symlink("a", (dir_ + "/l").c_str()), 0);
  EXPECT_EQ(env->LinkStat(dir_ + "/l")->type, FileInfo::Type::kSymlink);
  EXPECT_EQ(env->Stat(dir_ + "/l")->type, FileInfo::Type::kRegular);
  ASSERT_TRUE(env->SetMtime(dir_ + "/a", 1'500'000'000'123'456'789).ok());
  EXPECT_EQ(env->LinkStat(dir_ + "/a")->mtime_ns, 1'500'000'000'123'456'789);
  // A link's own time, never its target's.
  ASSERT_TRUE(env->SetMtime(dir_ + "/l", 1'600'000'000'000'000'000).ok());
  EXPECT_EQ(env->LinkStat(dir_ + "/a")->mtime_ns, 1'500'000'000'123'456'789);
  EXPECT_EQ(env->LinkStat(dir_ + "/l")->mtime_ns, 1'600'000'000'000'000'000);
  EXPECT_TRUE(env->CreateDir(dir_ + "/x/y/z").ok());
  EXPECT_TRUE(env->CreateDir(dir_ + "/x/y/z").ok());
  EXPECT_FALSE(env->CreateDir(dir_ + "/a/q").ok());
}

// Attack: D/tmp replaced by a symbolic link to a directory outside the store. The sweep must not
// follow it and remove the outside directory's *.tmp files (e.g. someone's editor files).
TEST_F(StoreTest, GcDoesNotSweepThroughASymlinkedTmpDir) {
  { OpenStore(); }
  const std::string outside = dir_ + ".outside_tmp";
  std::filesystem::create_directories(outside);
  WriteAll(outside + "/notes.tmp", "user data");
  WriteAll(outside + "/1.0123456789abcdef.tmp", "user data");
  std::filesystem::remove_all(dir_ + "/tmp");
  ASSERT_EQ(symlink(outside.c_str(), (dir_ + "/tmp").c_str()), 0);
  auto store = OpenStore();
  (void)store->Gc(0);
  EXPECT_TRUE(std::filesystem::exists(outside + "/notes.tmp"));
  EXPECT_TRUE(std::filesystem::exists(outside + "/1.0123456789abcdef.tmp"));
  // The writer's own eviction (max_bytes set) sweeps too.
  StoreOptions options;
  options.max_bytes = 1;
  auto evicting = OpenStore(options);
  PublishAll(evicting.get(), MakePrompt("ns", 1, 1));
  EXPECT_TRUE(std::filesystem::exists(outside + "/notes.tmp"));
}

// Attack: D/chunks replaced by a symbolic link to another store's chunks/. gc and rm of this
// store must not remove the other store's files.
TEST_F(StoreTest, GcAndClearDoNotDeleteThroughASymlinkedChunksDir) {
  const std::string victim = dir_ + ".victim";
  {
    auto other = Store::Open(victim, [] {
      StoreOptions o;
      o.chunk_tokens = kC;
      return o;
    }());
    ASSERT_TRUE(other.ok());
    PublishAll(other->get(), MakePrompt("ns", 3, 1));
  }
  const auto count = [&] {
    size_t n = 0;
    for (auto& e : std::filesystem::recursive_directory_iterator(victim + "/chunks"))
      n += e.is_regular_file();
    return n;
  };
  ASSERT_EQ(count(), 3u);
  { OpenStore(); }
  std::filesystem::remove_all(dir_ + "/chunks");
  ASSERT_EQ(symlink((victim + "/chunks").c_str(), (dir_ + "/chunks").c_str()), 0);
  auto store = OpenStore();
  (void)store->Gc(0);
  EXPECT_EQ(count(), 3u) << "gc deleted files outside the store";
  (void)store->Clear("");
  EXPECT_EQ(count(), 3u) << "rm deleted files outside the store";
}

// Attack (design): anyone who can write D can plant a chunk under its right name, with the right
// header and tokens, but other KV bytes and recomputed checksums (xxh3 is not keyed). LoadPrefix
// and Verify both accept it, so the restored cache (and the answer) is the attacker's. This test
// documents the trust boundary: it passes today; it would fail only if the store gained a way to
// authenticate KV bytes.
TEST_F(StoreTest, ForgedKvWithRecomputedChecksumsIsAcceptedDocumentedTrustBoundary) {
  auto store = OpenStore();
  const Prompt p = MakePrompt("ns", 2, 1);
  PublishAll(store.get(), p);
  ChunkWrite forged = p.writes[1];
  for (char& c : forged.kv) c = char(~c);
  const std::string head =
      format::EncodeChunkHead(forged.header, forged.tokens.data(),
                              reinterpret_cast<const uint8_t*>(forged.kv.data()), forged.kv.size());
  const std::string path = ChunkPath(p, 1);
  ASSERT_EQ(unlink(path.c_str()), 0);
  WriteAll(path, head + forged.kv);
  auto loaded = Load(store.get(), p);
  ASSERT_EQ(loaded.chunks.size(), 2u);
  EXPECT_EQ(0, std::memcmp(loaded.chunks[1].kv, forged.kv.data(), forged.kv.size()))
      << "the forged KV bytes are what a run restores";
  auto verified = store->Verify();
  ASSERT_TRUE(verified.ok());
  EXPECT_TRUE(verified->bad.empty()) << "Verify does not notice forged KV bytes";
}

// Attack: ns/<h_0>.txt replaced by a symbolic link to a file outside the store: stats must not
// print the target's bytes (a private file of whoever runs 'cache stats').
TEST_F(StoreTest, StatsDoesNotFollowASymlinkedNamespaceFile) {
  auto store = OpenStore();
  const Prompt p = MakePrompt("ns", 1, 1);
  PublishAll(store.get(), p);
  const std::string secret = dir_ + ".secret";
  WriteAll(secret, "SECRET=hunter2\n");
  const std::string ns_file = store::StorePaths{dir_}.NamespacePath(p.ns);
  ASSERT_EQ(unlink(ns_file.c_str()), 0);
  ASSERT_EQ(symlink(secret.c_str(), ns_file.c_str()), 0);
  auto stats = store->Stats();
  ASSERT_TRUE(stats.ok());
  ASSERT_EQ(stats->namespaces.size(), 1u);
  EXPECT_EQ(stats->namespaces[0].description.find("SECRET"), std::string::npos);
}

}  // namespace
}  // namespace kvstash
