/* Save, open and generate through the C API, built with `cc $(pkg-config --cflags --libs kvstash)`.
 */
#include <stdio.h>
#include <string.h>

#include "kvstash/kvstash.h"

#define CHECK(call)                                                       \
  do {                                                                    \
    if ((call) != KVSTASH_OK) {                                           \
      fprintf(stderr, "consumer: %s: %s\n", #call, kvstash_last_error()); \
      return 1;                                                           \
    }                                                                     \
  } while (0)

int main(int argc, char** argv) {
  if (argc != 3) return 2;
  kvstash_model* model = NULL;
  CHECK(kvstash_model_load(argv[1], NULL, &model));
  const char* prefix = "You are a terse assistant.";
  const char* question = " Question: why?";
  kvstash_sample_options sample;
  kvstash_sample_options_init(&sample, sizeof sample);
  sample.n_predict = 8;
  kvstash_generation answers[2];
  memset(answers, 0, sizeof(answers));
  for (int warm = 0; warm < 2; ++warm) {
    kvstash_session* session = NULL;
    if (warm) {
      CHECK(kvstash_session_open(model, argv[2], NULL, &session));
    } else {
      CHECK(kvstash_session_create(model, NULL, &session));
      CHECK(kvstash_session_append_text(session, prefix, strlen(prefix)));
      CHECK(kvstash_session_save(session, argv[2], NULL));
    }
    CHECK(kvstash_session_append_text(session, question, strlen(question)));
    CHECK(kvstash_session_generate(session, &sample, NULL, NULL, &answers[warm]));
    kvstash_session_free(session);
  }
  const int same = strcmp(answers[0].text, answers[1].text) == 0;
  printf("kvstash %s (C API): warm == cold: %s\n", kvstash_version(), same ? "yes" : "no");
  kvstash_generation_clear(&answers[0]);
  kvstash_generation_clear(&answers[1]);
  kvstash_model_free(model);
  return same ? 0 : 1;
}
