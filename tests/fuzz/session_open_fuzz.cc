// libFuzzer harness for the semantic layer: a custom mutator recomputes every checksum after each
// mutation, so a mutated file is not stopped by a checksum but reaches the range checks, the
// payload-vs-META checks, the checks against a real model, and llama.cpp's restore
// (Session::Open on a generated tiny model). Checksums are integrity, not trust: this is the
// attacker who recomputes them.
//
// At exit it prints how many inputs got past the checksums, parsed, and opened, for make test's
// log.
#include <fcntl.h>
#include <unistd.h>
#include <xxhash.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>

#include "format/session_format.h"
#include "kvstash/session.h"
#include "testmodel/test_model.h"

extern "C" size_t LLVMFuzzerMutate(uint8_t* data, size_t size, size_t max_size);

namespace {

using kvstash::format::kHeaderSize;
using kvstash::format::kSectionEntrySize;

std::shared_ptr<kvstash::Model> g_model;
std::string g_path;
// Inputs run; not stopped by a checksum mismatch; accepted by ParseFile; opened by Session::Open.
uint64_t g_runs = 0, g_past_checksums = 0, g_parsed = 0, g_opened = 0;

uint64_t Get64(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}
uint32_t Get32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// Recomputes the section checksums, the table checksum and the header checksum of whatever parts
// of `data` lie inside it, the way a forger would.
void FixChecksums(uint8_t* data, size_t size) {
  if (size < kHeaderSize) return;
  const uint32_t n_sections = Get32(data + 20);
  const uint64_t table = kHeaderSize;
  if (n_sections == 0 || n_sections > 64 || table + n_sections * kSectionEntrySize + 8 > size) {
    const uint64_t sum = XXH3_64bits(data, 56);
    std::memcpy(data + 56, &sum, 8);
    return;
  }
  for (uint32_t i = 0; i < n_sections; ++i) {
    uint8_t* e = data + table + i * kSectionEntrySize;
    const uint64_t off = Get64(e + 8), len = Get64(e + 16);
    if (off > size || len > size - off) continue;
    const uint64_t sum = kvstash::format::SectionChecksum(data + off, len);
    std::memcpy(e + 24, &sum, 8);
  }
  const size_t table_len = n_sections * kSectionEntrySize;
  const uint64_t table_sum = XXH3_64bits(data + table, table_len);
  std::memcpy(data + table + table_len, &table_sum, 8);
  const uint64_t header_sum = XXH3_64bits(data, 56);
  std::memcpy(data + 56, &header_sum, 8);
}

void PrintStats() {
  std::fprintf(
      stderr,
      "semantic fuzz: %llu inputs, %llu not stopped by a checksum, %llu parsed, %llu opened\n",
      static_cast<unsigned long long>(g_runs), static_cast<unsigned long long>(g_past_checksums),
      static_cast<unsigned long long>(g_parsed), static_cast<unsigned long long>(g_opened));
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  // The model `kvstash make-test-model` writes by default, so seed sessions saved with it pass the
  // fingerprint check and reach llama.cpp.
  const std::string dir =
      std::getenv("KVSTASH_FUZZ_DIR") ? std::getenv("KVSTASH_FUZZ_DIR") : "/tmp";
  const std::string model_path = dir + "/fuzz-model-" + std::to_string(getpid()) + ".gguf";
  g_path = dir + "/fuzz-input-" + std::to_string(getpid()) + ".kvs";
  kvstash::Status made = kvstash::WriteTestModel({}, model_path);
  if (!made.ok()) {
    std::fprintf(stderr, "fuzz: cannot write the model: %s\n", made.ToString().c_str());
    std::abort();
  }
  auto model = kvstash::Model::Load(model_path);
  unlink(model_path.c_str());
  if (!model.ok()) {
    std::fprintf(stderr, "fuzz: cannot load the model: %s\n", model.status().ToString().c_str());
    std::abort();
  }
  g_model = *model;
  std::atexit(PrintStats);
  return 0;
}

extern "C" size_t LLVMFuzzerCustomMutator(uint8_t* data, size_t size, size_t max_size,
                                          unsigned int seed) {
  size = LLVMFuzzerMutate(data, size, max_size);
  // Now and then leave the checksums as they are, so the checksum checks stay covered too.
  if (seed % 16 != 0) FixChecksums(data, size);
  return size;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  ++g_runs;
  auto parsed = kvstash::format::ParseFile(data, size, "fuzz.kvs", /*verify_checksums=*/true, 1);
  if (parsed.ok() || parsed.status().message().find("checksum") == std::string::npos) {
    ++g_past_checksums;
  }
  if (!parsed.ok()) return 0;
  ++g_parsed;
  const int fd = open(g_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0 || write(fd, data, size) != static_cast<ssize_t>(size)) std::abort();
  close(fd);
  kvstash::SessionOptions options;
  options.n_room = 1;  // a context sized to the tokens: a forged n_ctx must not cost gigabytes here
  options.n_threads = 1;
  auto opened = kvstash::Session::Open(g_model, g_path, options);
  if (opened.ok()) {
    ++g_opened;
    // What a user does next: the restored cache must be usable, or the decode over it must say
    // that its values are not finite (NaN or infinities in the KV data pass every file check;
    // Session refuses the logits they produce).
    auto logits = (*opened)->Logits();
    if (!logits.ok()) std::abort();
    const kvstash::Status appended = (*opened)->AppendTokens({1});
    if (!appended.ok() && appended.code() != kvstash::Status::Code::kCorruption) {
      std::fprintf(stderr, "fuzz: decoding after a restore failed: %s\n",
                   appended.ToString().c_str());
      std::abort();
    }
  }
  return 0;
}
