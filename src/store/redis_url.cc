#include "store/redis_url.h"

#include <cctype>
#include <cstdlib>

#include "store/store_files.h"

namespace kvstash::store {
namespace {

Status Bad(const std::string& what) {
  return Status::InvalidArgument("--cache-redis: " + what +
                                 "; expected redis://[user:password@]host:port[/db]");
}

// Decodes %XX escapes; false on a malformed one.
bool Unescape(const std::string& in, std::string* out) {
  out->clear();
  for (size_t i = 0; i < in.size(); ++i) {
    if (in[i] != '%') {
      out->push_back(in[i]);
      continue;
    }
    if (i + 2 >= in.size() || !std::isxdigit(static_cast<unsigned char>(in[i + 1])) ||
        !std::isxdigit(static_cast<unsigned char>(in[i + 2]))) {
      return false;
    }
    out->push_back(static_cast<char>(std::strtol(in.substr(i + 1, 2).c_str(), nullptr, 16)));
    i += 2;
  }
  return true;
}

// A decimal in [lo, hi], digits only.
bool ParseNumber(const std::string& s, int lo, int hi, int* out) {
  uint32_t v = 0;
  if (s.size() > 5 || !ParseDecimal(s, &v) || v < uint32_t(lo) || v > uint32_t(hi)) return false;
  *out = static_cast<int>(v);
  return true;
}

}  // namespace

std::string RedisUrl::Redacted() const {
  std::string s = "redis://";
  if (!user.empty() || !password.empty()) s += (user.empty() ? "" : user) + ":***@";
  s += host + ":" + std::to_string(port);
  if (db != 0) s += "/" + std::to_string(db);
  return s;
}

Result<RedisUrl> ParseRedisUrl(const std::string& url) {
  const std::string scheme = "redis://";
  if (url.compare(0, scheme.size(), scheme) != 0) {
    return Bad("the URL does not start with redis:// (TLS, rediss://, is not supported)");
  }
  for (char c : url) {
    if (static_cast<unsigned char>(c) <= 0x20 || c == 0x7f) {
      return Bad("the URL holds a space or a control character");
    }
  }
  std::string rest = url.substr(scheme.size());
  RedisUrl out;
  // The credentials end at the last '@' (a password may hold one, unescaped).
  const size_t at = rest.rfind('@');
  if (at != std::string::npos) {
    const std::string cred = rest.substr(0, at);
    rest = rest.substr(at + 1);
    const size_t colon = cred.find(':');
    const std::string user = colon == std::string::npos ? "" : cred.substr(0, colon);
    const std::string password = colon == std::string::npos ? cred : cred.substr(colon + 1);
    if (!Unescape(user, &out.user) || !Unescape(password, &out.password)) {
      return Bad("a malformed %-escape in the user or password");
    }
    if (out.password.empty()) return Bad("the credentials have no password");
  }
  const size_t slash = rest.find('/');
  const std::string hostport = rest.substr(0, slash);
  if (slash != std::string::npos) {
    const std::string db = rest.substr(slash + 1);
    if (!db.empty() && !ParseNumber(db, 0, 65535, &out.db)) {
      return Bad("the database '" + db + "' is not a number in 0..65535");
    }
  }
  const size_t colon = hostport.rfind(':');
  out.host = hostport.substr(0, colon);
  if (colon != std::string::npos) {
    const std::string port = hostport.substr(colon + 1);
    if (!ParseNumber(port, 1, 65535, &out.port)) {
      return Bad("the port '" + port + "' is not a number in 1..65535");
    }
  }
  if (out.host.size() > 2 && out.host.front() == '[' && out.host.back() == ']') {
    out.host = out.host.substr(1, out.host.size() - 2);  // [::1]
  }
  if (out.host.empty()) return Bad("the URL names no host");
  return out;
}

}  // namespace kvstash::store
