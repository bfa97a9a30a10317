#include "import_command.h"

#include <cstdio>
#include <nlohmann/json.hpp>

#include "env/atomic_file.h"
#include "env/env.h"
#include "format/session_format.h"
#include "kvstash/process.h"

namespace kvstash::cli {

int RunImport(const ImportFlags& flags) {
  // The output is checked before the model loads, as for save: never the model or the input,
  // never a file that is not a session without --force.
  AtomicWriteOptions destination;
  destination.required_magic =
      std::string_view(reinterpret_cast<const char*>(format::kMagic), sizeof(format::kMagic));
  destination.replace_any = flags.force;
  destination.protected_paths = {flags.common.model, flags.input};
  destination.protected_names = {"the model file", "the file to import"};
  Status usable = CheckDestination(Env::Default(), flags.output, destination);
  if (!usable.ok()) return Fail(usable);
  if (flags.common.verbose) SetLlamaLogs(LlamaLogs::kStderr);
  ModelOptions model_options;
  model_options.n_gpu_layers = flags.common.n_gpu_layers;
  auto model = Model::Load(flags.common.model, model_options);
  if (!model.ok()) return Fail(model.status());
  auto session = engine::ImportLlamaFile(*model, flags.input, flags.import);
  if (!session.ok()) return Fail(session.status());
  SaveOptions save;
  save.sync = !flags.no_sync;
  save.replace_any = flags.force;
  Status saved = (*session)->Save(flags.output, save);
  if (!saved.ok()) return Fail(saved);
  const size_t n_tokens = (*session)->tokens().size();
  if (flags.common.json) {
    std::printf("%s\n", nlohmann::json({{"input", flags.input},
                                        {"session", flags.output},
                                        {"n_tokens", n_tokens},
                                        {"n_ctx", (*session)->n_ctx()}})
                            .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace)
                            .c_str());
  } else {
    std::fprintf(stderr, "imported %zu tokens from '%s' to '%s'\n", n_tokens, flags.input.c_str(),
                 flags.output.c_str());
  }
  return 0;
}

}  // namespace kvstash::cli
