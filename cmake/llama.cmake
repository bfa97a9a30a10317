# Finds llama.cpp for kvstash, in this order:
#   1. -DKVSTASH_LLAMA_DIR=<path>: a user's own llama.cpp checkout (e.g. a CUDA build), added as a
#      subdirectory with the user's own GGML_* options.
#   2. third_party/llama.cpp, fetched and pinned by scripts/fetch-llama.sh (the default).
#   3. An installed llama.cpp through find_package(llama) (-DKVSTASH_LLAMA_SYSTEM=ON).
#   4. As a subproject: the parent's own `llama` target, when it already has one.
# Whatever the source, the target `kvstash::llama` links llama and ggml.
#
# The pinned tree is configured with normal variables, never cache entries: as a subproject,
# kvstash changes none of its parent's cache (BUILD_SHARED_LIBS, GGML_*, LLAMA_*).

option(KVSTASH_LLAMA_SYSTEM "use an installed llama.cpp (find_package(llama))" OFF)
option(KVSTASH_BATCH_INVARIANT
       "build the pinned llama.cpp with one matmul path for any batch, so answers do not depend on load"
       ON)
set(KVSTASH_LLAMA_DIR "" CACHE PATH "a llama.cpp source tree to build instead of the pinned one")

function(kvstash_cpu_flags)
  # ggml's -march=native build picks AMX on CPUs that report it, and its AMX matmul crashes with
  # q8_0 weights (and is slower for small f16 batches) on the machines we run on. So we build with
  # GGML_NATIVE=OFF and switch on, one by one, the x86 extensions this machine reports, never AMX.
  set(GGML_NATIVE OFF PARENT_SCOPE)
  # llamafile's tinyBLAS (fast prompts) on, as upstream. Upstream sends one-row products to ggml's
  # vec_dot instead, which rounds differently, so a token's logits depended on what else shared its
  # batch; patches/llama.cpp/0001 (GGML_CPU_BATCH_INVARIANT) gives every product one path on x86,
  # so `kvstash serve` answers independently of load (docs/SERVER.md) at llamafile's speed. Other
  # CPUs keep llamafile's own row-count gates: there invariance means llamafile off (vec_dot only).
  set(GGML_CPU_BATCH_INVARIANT ${KVSTASH_BATCH_INVARIANT} PARENT_SCOPE)
  if(KVSTASH_BATCH_INVARIANT AND NOT CMAKE_SYSTEM_PROCESSOR MATCHES "x86_64|AMD64")
    set(GGML_LLAMAFILE OFF PARENT_SCOPE)
  else()
    set(GGML_LLAMAFILE ON PARENT_SCOPE)
  endif()
  # The same choices as -D flags, for building llama.cpp's own tools like for like (scripts/bench.sh).
  set(defines "-DGGML_NATIVE=OFF")
  foreach(amx AMX_TILE AMX_INT8 AMX_BF16)
    set(GGML_${amx} OFF PARENT_SCOPE)
    string(APPEND defines " -DGGML_${amx}=OFF")
  endforeach()
  set(KVSTASH_GGML_CPU_DEFINES "${defines}" CACHE INTERNAL "")
  if(NOT CMAKE_SYSTEM_PROCESSOR MATCHES "x86_64|AMD64" OR NOT EXISTS /proc/cpuinfo)
    return()
  endif()
  file(STRINGS /proc/cpuinfo cpu_flag_lines REGEX "^flags" LIMIT_COUNT 1)
  string(REPLACE " " ";" cpu_flags "${cpu_flag_lines}")
  # ggml option <- /proc/cpuinfo flag
  set(pairs AVX:avx AVX2:avx2 FMA:fma F16C:f16c BMI2:bmi2 AVX_VNNI:avx_vnni AVX512:avx512f
            AVX512_VBMI:avx512vbmi AVX512_VNNI:avx512_vnni AVX512_BF16:avx512_bf16)
  set(chosen "")
  foreach(pair ${pairs})
    string(REPLACE ":" ";" kv ${pair})
    list(GET kv 0 option)
    list(GET kv 1 flag)
    if(flag IN_LIST cpu_flags)
      set(GGML_${option} ON PARENT_SCOPE)
      list(APPEND chosen ${option})
      string(APPEND defines " -DGGML_${option}=ON")
    else()
      set(GGML_${option} OFF PARENT_SCOPE)
      string(APPEND defines " -DGGML_${option}=OFF")
    endif()
  endforeach()
  set(KVSTASH_GGML_CPU_DEFINES "${defines}" CACHE INTERNAL "")
  string(REPLACE ";" " " chosen "${chosen}")
  message(STATUS "kvstash: ggml CPU features (no AMX, GGML_NATIVE=OFF): ${chosen}")
  set(KVSTASH_CPU_FEATURES "${chosen}" CACHE INTERNAL "")
endfunction()

# Stops the configure when the pinned tree lacks one of patches/llama.cpp/*.patch (a tree fetched
# before the patch existed): a build without them would compute other values than the tests expect.
function(kvstash_check_patches tree)
  file(GLOB patches ${PROJECT_SOURCE_DIR}/patches/llama.cpp/*.patch)
  foreach(patch ${patches})
    execute_process(COMMAND git -C ${tree} apply --reverse --check ${patch}
                    RESULT_VARIABLE not_applied OUTPUT_QUIET ERROR_QUIET)
    if(not_applied)
      get_filename_component(name ${patch} NAME)
      message(FATAL_ERROR "third_party/llama.cpp lacks patches/llama.cpp/${name}: run "
                          "scripts/fetch-llama.sh (make does it for you), which applies it")
    endif()
  endforeach()
endfunction()

set(kvstash_owns_llama OFF)  # whether kvstash builds llama.cpp itself (and may bundle it)
if(TARGET llama)
  message(STATUS "kvstash: using the existing llama target")
  add_library(kvstash_llama INTERFACE)
  target_link_libraries(kvstash_llama INTERFACE llama)
elseif(KVSTASH_LLAMA_SYSTEM)
  find_package(llama REQUIRED)
  add_library(kvstash_llama INTERFACE)
  target_link_libraries(kvstash_llama INTERFACE llama)
else()
  if(KVSTASH_LLAMA_DIR)
    set(llama_src ${KVSTASH_LLAMA_DIR})
  else()
    set(llama_src ${PROJECT_SOURCE_DIR}/third_party/llama.cpp)
    kvstash_cpu_flags()
  endif()
  if(NOT EXISTS ${llama_src}/CMakeLists.txt)
    message(FATAL_ERROR "llama.cpp not found at ${llama_src}: run scripts/fetch-llama.sh (make does "
                        "it for you) or pass -DKVSTASH_LLAMA_DIR=<your llama.cpp checkout>")
  endif()
  if(NOT KVSTASH_LLAMA_DIR)
    kvstash_check_patches(${llama_src})
  endif()
  # Static and position-independent: libkvstash.so and libkvstash.a carry llama.cpp inside.
  set(BUILD_SHARED_LIBS OFF)
  foreach(part COMMON TESTS TOOLS EXAMPLES SERVER APP)
    set(LLAMA_BUILD_${part} OFF)
  endforeach()
  set(LLAMA_OPENSSL OFF)
  set(LLAMA_CURL OFF)
  set(GGML_BUILD_TESTS OFF)
  set(GGML_BUILD_EXAMPLES OFF)
  # llama.cpp is third-party code: build it without our warning flags.
  add_subdirectory(${llama_src} ${CMAKE_BINARY_DIR}/llama.cpp EXCLUDE_FROM_ALL SYSTEM)
  add_library(kvstash_llama INTERFACE)
  target_link_libraries(kvstash_llama INTERFACE llama ggml)
  set(kvstash_owns_llama ON)
endif()
add_library(kvstash::llama ALIAS kvstash_llama)
