// Save, open and generate through the C++ API of an installed kvstash; warm must equal cold.
#include <cstdio>
#include <string>

#include "kvstash/model.h"
#include "kvstash/session.h"
#include "kvstash/version.h"

static int Fail(const kvstash::Status& status) {
  std::fprintf(stderr, "consumer: %s\n", status.message().c_str());
  return 1;
}

int main(int argc, char** argv) {
  if (argc != 3) return 2;
  auto model = kvstash::Model::Load(argv[1]);
  if (!model.ok()) return Fail(model.status());
  kvstash::SampleOptions sample;
  sample.n_predict = 8;
  std::string answers[2];
  for (int warm = 0; warm < 2; ++warm) {
    auto session = warm ? kvstash::Session::Open(*model, argv[2])
                        : kvstash::Session::Create(*model, kvstash::SessionOptions{});
    if (!session.ok()) return Fail(session.status());
    if (!warm) {
      if (auto s = (*session)->Append("You are a terse assistant."); !s.ok()) return Fail(s);
      if (auto s = (*session)->Save(argv[2]); !s.ok()) return Fail(s);
    }
    if (auto s = (*session)->Append(" Question: why?"); !s.ok()) return Fail(s);
    auto answer = (*session)->Generate(sample);
    if (!answer.ok()) return Fail(answer.status());
    answers[warm] = answer->text;
  }
  std::printf("kvstash %s (header %s): warm == cold: %s\n", kvstash_version(),
              KVSTASH_VERSION_STRING, answers[0] == answers[1] ? "yes" : "no");
  return answers[0] == answers[1] ? 0 : 1;
}
