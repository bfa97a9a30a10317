#include "store/chain_hash.h"

#include <openssl/evp.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace kvstash::store {
namespace {

constexpr char kNamespacePrefix[] = "kvstash-store 1\n";

// One EVP context per call: SHA-256 of a few KiB is microseconds, and a context shared across
// threads would need a lock. Failures here mean libcrypto itself is broken (out of memory in
// EVP_MD_CTX_new); no name can be computed, and a wrong name would poison the store, so stop.
class Sha256 {
 public:
  Sha256() : ctx_(EVP_MD_CTX_new()) {
    if (ctx_ == nullptr || EVP_DigestInit_ex(ctx_, EVP_sha256(), nullptr) != 1) Fail();
  }
  ~Sha256() { EVP_MD_CTX_free(ctx_); }
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;
  void Update(const void* data, size_t n) {
    if (n != 0 && EVP_DigestUpdate(ctx_, data, n) != 1) Fail();
  }
  format::Hash256 Final() {
    format::Hash256 out{};
    unsigned int len = 0;
    if (EVP_DigestFinal_ex(ctx_, out.data(), &len) != 1 || len != out.size()) Fail();
    return out;
  }

 private:
  [[noreturn]] static void Fail() {
    std::fprintf(stderr, "kvstash: OpenSSL's SHA-256 failed; cannot name store chunks\n");
    std::abort();
  }
  EVP_MD_CTX* ctx_;
};

}  // namespace

format::Hash256 NamespaceHash(std::string_view namespace_text) {
  Sha256 sha;
  sha.Update(kNamespacePrefix, sizeof(kNamespacePrefix) - 1);
  sha.Update(namespace_text.data(), namespace_text.size());
  return sha.Final();
}

format::Hash256 ChunkHash(const format::Hash256& parent, const int32_t* tokens, size_t n) {
  Sha256 sha;
  sha.Update(parent.data(), parent.size());
  // Tokens as u32 little-endian: the host is little-endian (CMakeLists.txt refuses others), so
  // the int32 array's bytes are already that encoding.
  static_assert(sizeof(int32_t) == 4);
  sha.Update(tokens, n * sizeof(int32_t));
  return sha.Final();
}

format::Hash256 TailHash(const format::Hash256& parent, const int32_t* tokens, size_t n) {
  static constexpr char kTailPrefix[] = "kvstash-tail 1\n";
  Sha256 sha;
  sha.Update(kTailPrefix, sizeof(kTailPrefix) - 1);
  sha.Update(parent.data(), parent.size());
  sha.Update(tokens, n * sizeof(int32_t));
  return sha.Final();
}

std::vector<format::Hash256> ChainHashes(const format::Hash256& h0, const int32_t* tokens,
                                         size_t n_tokens, uint32_t chunk_tokens) {
  std::vector<format::Hash256> chain;
  if (chunk_tokens == 0) return chain;
  const size_t k = n_tokens / chunk_tokens;
  chain.reserve(k);
  format::Hash256 parent = h0;
  for (size_t i = 0; i < k; ++i) {
    parent = ChunkHash(parent, tokens + i * chunk_tokens, chunk_tokens);
    chain.push_back(parent);
  }
  return chain;
}

}  // namespace kvstash::store
