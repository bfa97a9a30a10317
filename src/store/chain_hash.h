// The names of chunks: chained SHA-256 (docs/STORE.md, "Names").
//   h_0 = SHA-256("kvstash-store 1\n" || namespace text)
//   h_i = SHA-256(h_{i-1} || tokens of chunk i as u32 little-endian)
// so h_i stands for the namespace and every token up to the end of chunk i: equal names mean equal
// prefixes (up to SHA-256 collisions), and a chunk is found only through all of its ancestors.
#ifndef KVSTASH_STORE_CHAIN_HASH_H_
#define KVSTASH_STORE_CHAIN_HASH_H_

#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

#include "format/chunk_format.h"

namespace kvstash::store {

format::Hash256 NamespaceHash(std::string_view namespace_text);
format::Hash256 ChunkHash(const format::Hash256& parent, const int32_t* tokens, size_t n);
// The name of a tail (the T < C tokens after whole chunk j, docs/STORE.md "Tails"):
//   t = SHA-256("kvstash-tail 1\n" || h_j || its tokens as u32 little-endian)
// The prefix keeps a tail's name from ever being a chunk's.
format::Hash256 TailHash(const format::Hash256& parent, const int32_t* tokens, size_t n);
// h_1..h_k for the k = n_tokens / chunk_tokens full chunks of `tokens`.
std::vector<format::Hash256> ChainHashes(const format::Hash256& h0, const int32_t* tokens,
                                         size_t n_tokens, uint32_t chunk_tokens);

}  // namespace kvstash::store

#endif  // KVSTASH_STORE_CHAIN_HASH_H_
