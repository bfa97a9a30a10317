#include "store/namespace_text.h"

#include <algorithm>
#include <cstdio>
#include <sstream>

#include "format/meta_check.h"

namespace kvstash::store {

std::string NamespaceText(const NamespaceParams& ns) {
  const format::ModelFacts& model = ns.model;
  const format::ContextParams& p = ns.context;
  auto exact = [](float f) {
    char buf[48];
    std::snprintf(buf, sizeof buf, "%a", static_cast<double>(f));
    return std::string(buf);
  };
  auto name = [](int32_t id) {
    const format::CacheType* t = format::FindCacheType(id);
    return t != nullptr ? std::string(t->name) : std::to_string(id);
  };
  // Which LongRoPE factors rotate the keys depends on the context size (CheckRopeRegime).
  const uint32_t orig = p.yarn_orig_ctx != 0 ? p.yarn_orig_ctx : model.n_ctx_orig;
  const char* rope_factors = !model.long_rope                            ? "none"
                             : format::PaddedContextSize(p.n_ctx) > orig ? "long"
                                                                         : "short";
  std::string t;
  auto line = [&t](const char* key, const std::string& value) {
    t += key;
    t += '=';
    t += format::Printable(value);
    t += '\n';
  };
  line("model.fingerprint", model.fingerprint.Hex());
  line("model.arch", model.arch);
  line("model.description", ns.model_description);
  line("model.n_layer", std::to_string(model.n_layer));
  line("model.n_embd_k_gqa", std::to_string(model.n_embd_k_gqa));
  line("model.n_embd_v_gqa", std::to_string(model.n_embd_v_gqa));
  line("llama.build", ns.llama_build);
  line("llama.state_version", std::to_string(model.llama_state_version));
  line("cache.type_k", name(p.type_k));
  line("cache.type_v", name(p.type_v));
  line("cache.v_trans", ns.v_trans ? "1" : "0");
  line("rope.scaling_type", std::to_string(p.rope_scaling_type));
  line("rope.freq_base", exact(p.rope_freq_base));
  line("rope.freq_scale", exact(p.rope_freq_scale));
  line("rope.factors", rope_factors);
  line("yarn.ext_factor", exact(p.yarn_ext_factor));
  line("yarn.attn_factor", exact(p.yarn_attn_factor));
  line("yarn.beta_fast", exact(p.yarn_beta_fast));
  line("yarn.beta_slow", exact(p.yarn_beta_slow));
  line("yarn.orig_ctx", std::to_string(p.yarn_orig_ctx));
  line("store.chunk_tokens", std::to_string(ns.chunk_tokens));
  // A chunk is one decode call; llama.cpp splits a call into micro-batches of n_ubatch tokens, and
  // the split changes the numbers.
  line("decode.n_ubatch", std::to_string(std::min(p.n_ubatch, ns.chunk_tokens)));
  line("decode.n_batch", std::to_string(std::min(p.n_batch, ns.chunk_tokens)));
  if (!ns.memory.kind.empty()) {
    line("memory.kind", ns.memory.kind);
    line("memory.n_swa", std::to_string(ns.memory.n_swa));
    line("store.snapshot_every", std::to_string(ns.memory.snapshot_every));
  }
  return t;
}

std::map<std::string, std::string> ParseNamespaceText(const std::string& text) {
  std::map<std::string, std::string> values;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    const size_t eq = line.find('=');
    if (eq != std::string::npos) values[line.substr(0, eq)] = line.substr(eq + 1);
  }
  return values;
}

std::string NamespaceSummary(const std::string& text) {
  std::map<std::string, std::string> v = ParseNamespaceText(text);
  if (v.empty()) return "(no description)";
  return v["model.description"] + " (" + v["model.arch"] + ", fingerprint " +
         v["model.fingerprint"].substr(0, 12) + "), K " + v["cache.type_k"] + ", V " +
         v["cache.type_v"] + ", flash attention " + (v["cache.v_trans"] == "0" ? "on" : "off");
}

}  // namespace kvstash::store
