// Shared test fixtures: generated models (made once per test process) and file helpers.
#ifndef KVSTASH_TESTS_TEST_UTIL_H_
#define KVSTASH_TESTS_TEST_UTIL_H_

#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "kvstash/model.h"
#include "kvstash/session.h"
#include "kvstash/store.h"
#include "testmodel/test_model.h"

namespace kvstash::testing {

// A directory removed at process exit.
inline const std::string& TempDir() {
  static const std::string dir = [] {
    char tmpl[] = "/tmp/kvstash-test-XXXXXX";
    const char* made = mkdtemp(tmpl);
    std::string d = made ? made : "/tmp";
    static struct Cleanup {
      std::string d;
      ~Cleanup() { std::system(("rm -rf '" + d + "'").c_str()); }
    } cleanup{d};
    return d;
  }();
  return dir;
}

inline std::string ModelPath(TestShape shape, TestVocab vocab, TestWeightType type, uint64_t seed) {
  static std::map<std::string, std::string> made;
  const std::string key = std::to_string(int(shape)) + "-" + std::to_string(int(vocab)) + "-" +
                          std::to_string(int(type)) + "-" + std::to_string(seed);
  auto it = made.find(key);
  if (it != made.end()) return it->second;
  const std::string path = TempDir() + "/model-" + key + ".gguf";
  TestModelSpec spec;
  spec.shape = shape;
  spec.vocab = vocab;
  spec.type = type;
  spec.seed = seed;
  Status status = WriteTestModel(spec, path);
  EXPECT_TRUE(status.ok()) << status.ToString();
  made[key] = path;
  return path;
}

// The tiny spm f16 model, loaded once.
inline std::shared_ptr<Model> TinyModel(uint64_t seed = 1) {
  static std::map<uint64_t, std::shared_ptr<Model>> models;
  auto& m = models[seed];
  if (!m) {
    auto loaded =
        Model::Load(ModelPath(TestShape::kTiny, TestVocab::kSpm, TestWeightType::kF16, seed));
    if (!loaded.ok()) {
      ADD_FAILURE() << loaded.status().ToString();
      return nullptr;
    }
    m = *loaded;
  }
  return m;
}

// A fresh prefix store under TempDir() (no fsync: tests do not survive power cuts).
inline std::shared_ptr<Store> NewTestStore(const std::string& name, uint32_t chunk) {
  static int counter = 0;
  StoreOptions options;
  options.chunk_tokens = chunk;
  options.sync = false;
  auto store = Store::Open(TempDir() + "/" + name + "-" + std::to_string(counter++), options);
  EXPECT_TRUE(store.ok()) << store.status().ToString();
  return store.ok() ? *store : nullptr;
}

inline std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

inline void WriteFile(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

inline const char* kPrefix =
    "You are kvstash's test assistant. Answer in one short sentence, and never invent facts. "
    "The following examples show the style: Q: What is two plus two? A: Four.";

// Saves kPrefix with the tiny model to `path` and returns the session's tokens.
inline std::vector<Token> SaveTinyPrefix(const std::string& path, SessionOptions options = {}) {
  auto s = Session::Create(TinyModel(), options);
  if (!s.ok()) {
    ADD_FAILURE() << s.status().ToString();
    return {};
  }
  EXPECT_TRUE((*s)->Append(kPrefix).ok());
  Status saved = (*s)->Save(path);
  EXPECT_TRUE(saved.ok()) << saved.ToString();
  return (*s)->tokens();
}

// A session of `lines` numbered sentences (about 8 tokens each) on the tiny model, saved to `path`.
inline std::unique_ptr<Session> SaveLongTinySession(const std::string& path, int lines) {
  std::string text;
  for (int i = 0; i < lines; ++i) text += " sentence " + std::to_string(i) + " of a long document.";
  auto s = Session::Create(TinyModel());
  if (!s.ok()) {
    ADD_FAILURE() << s.status().ToString();
    return nullptr;
  }
  EXPECT_TRUE((*s)->Append(text).ok());
  Status saved = (*s)->Save(path);
  EXPECT_TRUE(saved.ok()) << saved.ToString();
  return std::move(s.value());
}

}  // namespace kvstash::testing

#endif  // KVSTASH_TESTS_TEST_UTIL_H_
