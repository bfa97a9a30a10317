// `kvstash import`: llama.cpp's own state files, written here through llama.cpp's API exactly as
// its programs write them, become kvstash sessions that continue bit-identically to a cold run;
// broken, foreign and hostile files are refused with a Status naming the file, never a crash.
#include "kvstash/import.h"

#include <cstring>
#include <functional>

#include "engine/model_impl.h"
#include "engine/session_internals.h"
#include "format/llama_file.h"
#include "format/session_format.h"
#include "llama.h"
#include "test_util.h"

namespace kvstash {
namespace {

using testing::kPrefix;
using testing::ReadFile;
using testing::TempDir;
using testing::TinyModel;
using testing::WriteFile;

constexpr const char* kSuffix = " Q: What is kvstash? A:";

struct WriterOptions {
  bool flash = false;
  ggml_type type_k = GGML_TYPE_F16;
  ggml_type type_v = GGML_TYPE_F16;
  // llama-completion --prompt-cache: the prompt's last token is decoded after the file is saved.
  bool before_last = false;
  uint32_t n_seq_max = 1;
  bool second_sequence = false;  // decode the prompt into sequence 1 too (a unified cache)
};

// What llama.cpp's own programs do: a context with llama.cpp's defaults (n_batch 2048, n_ubatch
// 512), the prompt decoded as one batch, then llama_state_save_file and llama_state_seq_save_file.
void WriteLlamaFiles(const Model& model, const std::vector<Token>& prompt, const WriterOptions& w,
                     const std::string& full_path, const std::string& seq_path) {
  llama_context_params cp = llama_context_default_params();
  cp.n_ctx = 4096;
  cp.n_seq_max = w.n_seq_max;
  cp.kv_unified = w.n_seq_max > 1;
  cp.type_k = w.type_k;
  cp.type_v = w.type_v;
  cp.flash_attn_type = w.flash ? LLAMA_FLASH_ATTN_TYPE_ENABLED : LLAMA_FLASH_ATTN_TYPE_DISABLED;
  llama_context* ctx = llama_init_from_model(ImplOf(model)->model, cp);
  ASSERT_NE(ctx, nullptr);
  std::vector<Token> tokens = prompt;
  const int32_t n = static_cast<int32_t>(tokens.size()) - (w.before_last ? 1 : 0);
  llama_batch batch = llama_batch_init(n, 0, 2);
  batch.n_tokens = n;
  for (int32_t i = 0; i < n; ++i) {
    batch.token[i] = tokens[i];
    batch.pos[i] = i;
    batch.n_seq_id[i] = w.second_sequence ? 2 : 1;
    batch.seq_id[i][0] = 0;
    batch.seq_id[i][1] = 1;
    batch.logits[i] = i == n - 1;
  }
  ASSERT_EQ(llama_decode(ctx, batch), 0);
  llama_batch_free(batch);
  ASSERT_TRUE(llama_state_save_file(ctx, full_path.c_str(), tokens.data(), tokens.size()));
  ASSERT_GT(llama_state_seq_save_file(ctx, seq_path.c_str(), 0, tokens.data(), tokens.size()), 0u);
  llama_free(ctx);
}

SessionOptions ColdOptions(const WriterOptions& w) {
  SessionOptions o;
  o.flash_attn = w.flash ? FlashAttention::kOn : FlashAttention::kOff;
  o.cache_type_k = ggml_type_name(w.type_k);
  o.cache_type_v = ggml_type_name(w.type_v);
  return o;
}

class ImportTest : public ::testing::Test {
 protected:
  static std::vector<Token> Prompt() {
    auto t = TinyModel()->Tokenize(kPrefix, /*add_bos=*/true);
    EXPECT_TRUE(t.ok());
    return *t;
  }
  static std::string Path(const std::string& name) { return TempDir() + "/" + name; }

  // import + Save + Open + Append(kSuffix) against a cold session that appended the prompt in
  // the writer's groups, then kSuffix: logits bit for bit, then greedy text.
  static void ExpectWarmEqualsCold(const std::string& file, const WriterOptions& w) {
    auto imported = ImportLlamaFile(TinyModel(), file);
    ASSERT_TRUE(imported.ok()) << imported.status().ToString();
    const std::string kvs = file + ".kvs";
    ASSERT_TRUE((*imported)->Save(kvs).ok());
    auto warm = Session::Open(TinyModel(), kvs);
    ASSERT_TRUE(warm.ok()) << warm.status().ToString();
    const std::vector<Token> prompt = Prompt();
    EXPECT_EQ((*warm)->tokens(), prompt);
    ASSERT_TRUE((*warm)->Append(kSuffix).ok());

    auto cold = Session::Create(TinyModel(), ColdOptions(w));
    ASSERT_TRUE(cold.ok()) << cold.status().ToString();
    if (w.before_last) {
      ASSERT_TRUE((*cold)->AppendTokens({prompt.begin(), prompt.end() - 1}).ok());
      ASSERT_TRUE((*cold)->AppendTokens({prompt.back()}).ok());
    } else {
      ASSERT_TRUE((*cold)->AppendTokens(prompt).ok());
    }
    ASSERT_TRUE((*cold)->Append(kSuffix).ok());
    auto warm_logits = (*warm)->Logits();
    auto cold_logits = (*cold)->Logits();
    ASSERT_TRUE(warm_logits.ok() && cold_logits.ok());
    ASSERT_EQ(warm_logits->size(), cold_logits->size());
    EXPECT_EQ(std::memcmp(warm_logits->data(), cold_logits->data(), warm_logits->size() * 4), 0)
        << file << ": warm and cold logits differ";
    SampleOptions greedy;
    greedy.n_predict = 12;
    auto a = (*warm)->Generate(greedy);
    auto b = (*cold)->Generate(greedy);
    ASSERT_TRUE(a.ok() && b.ok());
    EXPECT_EQ(a->text, b->text);
  }

  // Import refuses the file, naming it; the process goes on.
  static Status ExpectRefused(const std::string& bytes, const std::string& what,
                              std::shared_ptr<Model> model = TinyModel()) {
    const std::string path = Path("hostile.bin");
    WriteFile(path, bytes);
    auto imported = ImportLlamaFile(model, path);
    EXPECT_FALSE(imported.ok()) << what;
    if (imported.ok()) return Status::Ok();
    EXPECT_NE(imported.status().message().find(path), std::string::npos)
        << what << ": " << imported.status().message();
    return imported.status();
  }

  static void Write(const WriterOptions& w, const std::string& stem) {
    WriteLlamaFiles(*TinyModel(), Prompt(), w, Path(stem + ".nsgg"), Path(stem + ".qsgg"));
  }
};

TEST_F(ImportTest, ConstantsAreLlamaCpps) {
  EXPECT_EQ(format::kLlamaSessionMagic, LLAMA_SESSION_MAGIC);
  EXPECT_EQ(format::kLlamaSessionVersion, uint32_t{LLAMA_SESSION_VERSION});
  EXPECT_EQ(format::kLlamaSeqFileMagic, LLAMA_STATE_SEQ_MAGIC);
  EXPECT_EQ(format::kLlamaSeqFileVersion, uint32_t{LLAMA_STATE_SEQ_VERSION});
}

TEST_F(ImportTest, WarmEqualsColdForBothFilesAndBothVLayouts) {
  for (bool flash : {false, true}) {
    WriterOptions w;
    w.flash = flash;
    const std::string stem = flash ? "fa" : "nofa";
    Write(w, stem);
    ExpectWarmEqualsCold(Path(stem + ".nsgg"), w);
    ExpectWarmEqualsCold(Path(stem + ".qsgg"), w);
  }
}

TEST_F(ImportTest, LlamaCompletionFileSavedBeforeItsLastToken) {
  WriterOptions w;
  w.before_last = true;
  Write(w, "completion");
  ExpectWarmEqualsCold(Path("completion.nsgg"), w);
}

TEST_F(ImportTest, QuantizedCache) {
  WriterOptions w;
  w.flash = true;
  w.type_k = GGML_TYPE_Q8_0;
  w.type_v = GGML_TYPE_Q8_0;
  Write(w, "q8");
  ExpectWarmEqualsCold(Path("q8.qsgg"), w);
}

TEST_F(ImportTest, ExportedSessionPassesInspectAndVerify) {
  WriterOptions w;
  Write(w, "inspect");
  auto imported = ImportLlamaFile(TinyModel(), Path("inspect.qsgg"));
  ASSERT_TRUE(imported.ok()) << imported.status().ToString();
  ASSERT_TRUE((*imported)->Save(Path("inspect.kvs")).ok());
  auto info = InspectSessionFile(Path("inspect.kvs"));
  ASSERT_TRUE(info.ok()) << info.status().ToString();
  EXPECT_EQ(info->tokens, Prompt());
  EXPECT_FALSE(info->meta.flash_attn);
  EXPECT_EQ(info->meta.type_k, "f16");
}

// Every prefix of both files is refused by the parser (no model needed), and a sample by import.
TEST_F(ImportTest, TruncatedFilesAreRefused) {
  WriterOptions w;
  Write(w, "cut");
  for (const char* ext : {".nsgg", ".qsgg"}) {
    const std::string good = ReadFile(Path(std::string("cut") + ext));
    for (size_t n = 0; n < good.size(); ++n) {
      auto parsed = format::ParseLlamaFile(reinterpret_cast<const uint8_t*>(good.data()), n, "cut",
                                           TinyModel()->n_vocab(), 4095);
      ASSERT_FALSE(parsed.ok()) << ext << " cut at " << n;
    }
    for (size_t n : {size_t{0}, size_t{3}, size_t{8}, size_t{13}, good.size() / 2, good.size() - 1})
      (void)ExpectRefused(good.substr(0, n), std::string(ext) + " cut at " + std::to_string(n));
    (void)ExpectRefused(good + std::string(1, '\0'), std::string(ext) + " with a trailing byte");
  }
}

TEST_F(ImportTest, CorruptHeadersAndCountsAreRefused) {
  WriterOptions w;
  Write(w, "bad");
  const std::string seq = ReadFile(Path("bad.qsgg"));
  const std::string full = ReadFile(Path("bad.nsgg"));
  auto patched = [](std::string bytes, size_t at, uint32_t value) {
    std::memcpy(&bytes[at], &value, 4);
    return bytes;
  };
  const size_t n_tokens = Prompt().size();
  const size_t kv_at = 12 + 4 * n_tokens;  // the seq file's n_stream
  struct Case {
    std::string bytes;
    const char* what;
    const char* says;
  } cases[] = {
      {patched(seq, 0, 0x12345678), "wrong magic", "not a llama.cpp session or sequence file"},
      {patched(seq, 4, 2), "old seq version", "has version 2"},
      {patched(full, 4, 9), "old session version", "has version 9"},
      {patched(seq, 8, 0), "no tokens", "holds no tokens"},
      {patched(seq, 8, 0xFFFFFFFF), "huge token count", "tokens"},
      {patched(seq, 8, uint32_t(n_tokens + 5)), "token count too large", ""},
      {patched(seq, 8, uint32_t(n_tokens - 3)), "token count too small", ""},
      {patched(seq, 12, 999999), "token out of vocabulary", "outside this model's vocabulary"},
      {patched(seq, 12, 0x80000000), "negative token", "outside this model's vocabulary"},
      {patched(full, kv_at, 0), "empty arch name", "architecture name"},
      {patched(full, kv_at, 0x7FFFFFFF), "huge arch name", "architecture name"},
      {patched(seq, kv_at, 0), "no streams", "KV streams"},
      {patched(seq, kv_at, 1000), "too many streams", "KV streams"},
      {patched(seq, kv_at + 4, 0), "no cells", "KV"},
      {patched(seq, kv_at + 4, 0xFFFFFFF0), "huge cell count", "cut short"},
      {patched(seq, kv_at + 8, 7), "position out of range", "positions"},
      {patched(seq, kv_at + 12, 3), "cell of 3 sequences", ""},
      {patched(seq, kv_at + 8 + 12 * n_tokens, 5), "bad v_trans", "V layout"},
      {patched(seq, kv_at + 12 + 12 * n_tokens, 3), "wrong layer count", ""},
      {patched(seq, kv_at + 16 + 12 * n_tokens, 0), "K type f32 with f16 rows", ""},
      {patched(seq, kv_at + 20 + 12 * n_tokens, 1 << 20), "huge K row", ""},
  };
  for (const Case& c : cases) {
    Status s = ExpectRefused(c.bytes, c.what);
    EXPECT_NE(s.message().find(c.says), std::string::npos) << c.what << ": " << s.message();
  }
}

TEST_F(ImportTest, ForeignFilesAreRefusedByName) {
  WriterOptions w;
  Write(w, "foreign");
  // A kvstash session, a GGUF model, text, an empty file.
  const std::string kvs = Path("already.kvs");
  testing::SaveTinyPrefix(kvs);
  Status s = ExpectRefused(ReadFile(kvs), "a kvstash session");
  EXPECT_NE(s.message().find("already a kvstash session"), std::string::npos) << s.message();
  s = ExpectRefused(ReadFile(TinyModel()->path()).substr(0, 4096), "a model");
  EXPECT_NE(s.message().find("GGUF model"), std::string::npos) << s.message();
  (void)ExpectRefused("hello, world\n", "text");
  (void)ExpectRefused("", "empty");
  // Another model of the same architecture and shape: only its values give it away.
  s = ExpectRefused(ReadFile(Path("foreign.qsgg")), "seed-7 model", TinyModel(7));
  EXPECT_NE(s.message().find("was not computed by model"), std::string::npos) << s.message();
  s = ExpectRefused(ReadFile(Path("foreign.nsgg")), "seed-7 model", TinyModel(7));
  EXPECT_NE(s.message().find("was not computed by model"), std::string::npos) << s.message();
  // A model with a sliding window: its files hold a window import does not translate.
  TestModelSpec spec;
  spec.arch = TestArch::kGemma2Swa;
  ASSERT_TRUE(WriteTestModel(spec, Path("gemma2.gguf")).ok());
  auto gemma = Model::Load(Path("gemma2.gguf"));
  ASSERT_TRUE(gemma.ok()) << gemma.status().ToString();
  s = ExpectRefused(ReadFile(Path("foreign.nsgg")), "an iSWA model", *gemma);
  EXPECT_EQ(s.code(), Status::Code::kIncompatible) << s.message();
  EXPECT_NE(s.message().find("keeps memory of kind iswa"), std::string::npos) << s.message();
}

TEST_F(ImportTest, DamagedLastCellIsRefused) {
  WriterOptions w;
  Write(w, "damaged");
  std::string seq = ReadFile(Path("damaged.qsgg"));
  // The last K row of layer 0 (f16, 32 values) becomes large garbage; sizes stay valid.
  const size_t n_tokens = Prompt().size();
  const size_t k0 = 12 + 4 * n_tokens + 8 + 12 * n_tokens + 8 + 12;
  const size_t row = 64;
  for (size_t i = 0; i < row; i += 2) seq[k0 + (n_tokens - 1) * row + i + 1] = 0x5B;
  Status s = ExpectRefused(seq, "garbage in the last cell");
  EXPECT_NE(s.message().find("was not computed by model"), std::string::npos) << s.message();
  // NaN in it.
  for (size_t i = 0; i < row; i += 2) {
    seq[k0 + (n_tokens - 1) * row + i] = 0x00;
    seq[k0 + (n_tokens - 1) * row + i + 1] = 0x7E;
  }
  (void)ExpectRefused(seq, "NaN in the last cell");
}

TEST_F(ImportTest, SeveralSequencesAreRefusedByCount) {
  WriterOptions w;
  w.n_seq_max = 2;
  w.second_sequence = true;
  Write(w, "two");
  Status s = ExpectRefused(ReadFile(Path("two.nsgg")), "two sequences");
  EXPECT_NE(s.message().find("2 sequences"), std::string::npos) << s.message();
  // Its sequence file holds sequence 0 alone (shared cells are written for that sequence only).
  auto imported = ImportLlamaFile(TinyModel(), Path("two.qsgg"));
  EXPECT_TRUE(imported.ok()) << imported.status().ToString();
}

}  // namespace
}  // namespace kvstash
