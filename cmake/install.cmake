# The installed library: libkvstash.so and libkvstash.a, the public headers, the CMake package
# (find_package(kvstash) -> kvstash::kvstash, kvstash::kvstash_static) and kvstash.pc.
#
# Both libraries are made of the objects of kvstash's parts (CMakeLists.txt) and carry the pinned
# llama.cpp inside, so a user links one library:
#   - libkvstash.so hides llama.cpp's and ggml's symbols (--exclude-libs): a program that also
#     links its own llama.cpp gets no clash, and each copy keeps its own state.
#   - libkvstash.a holds llama.cpp's and ggml's objects as they are: a program that links
#     another llama.cpp statically should use the shared library, or add_subdirectory(kvstash)
#     next to its own `llama` target (cmake/llama.cmake then uses that one).
# With a llama.cpp that kvstash did not build (KVSTASH_LLAMA_SYSTEM, or a parent's target), the
# libraries link it instead of carrying it.

include(CMakePackageConfigHelpers)

set(kvstash_parts kvstash kvstash_store kvstash_format kvstash_env)
set(kvstash_objects "")
foreach(part ${kvstash_parts})
  list(APPEND kvstash_objects $<TARGET_OBJECTS:${part}>)
endforeach()

# llama.cpp's own libraries, when kvstash built them (ggml's backends by name: whichever exist).
set(kvstash_llama_parts "")
if(kvstash_owns_llama)
  foreach(lib llama ggml ggml-base ggml-cpu ggml-blas ggml-cuda ggml-hip ggml-metal ggml-musa
              ggml-opencl ggml-rpc ggml-sycl ggml-vulkan)
    if(TARGET ${lib})
      list(APPEND kvstash_llama_parts ${lib})
    endif()
  endforeach()
endif()

# What the static library needs at link time beyond its objects (Libs.private in kvstash.pc).
set(kvstash_static_deps PkgConfig::XXHASH PkgConfig::HIREDIS OpenSSL::Crypto Threads::Threads
    ${CMAKE_DL_LIBS} m)
set(kvstash_pc_libs_private "-lxxhash -lhiredis -lcrypto -lpthread -ldl -lm -lstdc++")
set(kvstash_needs_openmp OFF)
if(kvstash_owns_llama AND GGML_OPENMP)
  find_package(OpenMP COMPONENTS CXX)
  if(OpenMP_FOUND)
    set(kvstash_needs_openmp ON)
    list(APPEND kvstash_static_deps OpenMP::OpenMP_CXX)
    string(APPEND kvstash_pc_libs_private " -fopenmp")
  endif()
endif()

# libkvstash.so.0.2.0 (SONAME libkvstash.so.0.2: during 0.x a minor version may change the ABI).
add_library(kvstash_shared SHARED ${kvstash_objects})
set_target_properties(kvstash_shared PROPERTIES
  OUTPUT_NAME kvstash
  EXPORT_NAME kvstash
  VERSION ${PROJECT_VERSION}
  SOVERSION ${PROJECT_VERSION_MAJOR}.${PROJECT_VERSION_MINOR})
target_include_directories(kvstash_shared PUBLIC
  $<BUILD_INTERFACE:${PROJECT_SOURCE_DIR}/include> $<BUILD_INTERFACE:${PROJECT_BINARY_DIR}/include>
  $<INSTALL_INTERFACE:${CMAKE_INSTALL_INCLUDEDIR}>)
target_link_libraries(kvstash_shared PRIVATE kvstash::llama PkgConfig::XXHASH PkgConfig::HIREDIS
                                             OpenSSL::Crypto
                                             Threads::Threads)
target_link_options(kvstash_shared PRIVATE -Wl,--exclude-libs,ALL -Wl,--no-undefined)
target_compile_features(kvstash_shared INTERFACE cxx_std_17)

# libkvstash.a: kvstash's objects and, when kvstash built it, llama.cpp's.
set(kvstash_static_objects ${kvstash_objects})
foreach(lib ${kvstash_llama_parts})
  list(APPEND kvstash_static_objects $<TARGET_OBJECTS:${lib}>)
endforeach()
add_library(kvstash_static STATIC ${kvstash_static_objects})
set_target_properties(kvstash_static PROPERTIES OUTPUT_NAME kvstash EXPORT_NAME kvstash_static)
target_include_directories(kvstash_static PUBLIC
  $<BUILD_INTERFACE:${PROJECT_SOURCE_DIR}/include> $<BUILD_INTERFACE:${PROJECT_BINARY_DIR}/include>
  $<INSTALL_INTERFACE:${CMAKE_INSTALL_INCLUDEDIR}>)
target_link_libraries(kvstash_static INTERFACE ${kvstash_static_deps})
if(NOT kvstash_owns_llama)
  target_link_libraries(kvstash_static INTERFACE kvstash::llama)
endif()
target_compile_features(kvstash_static INTERFACE cxx_std_17)

install(TARGETS kvstash_shared kvstash_static EXPORT kvstashTargets
        LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
        INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(FILES include/kvstash/chat.h include/kvstash/import.h include/kvstash/kvstash.h
              include/kvstash/messages.h
              include/kvstash/model.h
              include/kvstash/process.h
              include/kvstash/runner.h
              include/kvstash/session.h include/kvstash/session_file.h include/kvstash/status.h
              include/kvstash/store.h ${PROJECT_BINARY_DIR}/include/kvstash/version.h
        DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/kvstash)

set(kvstash_cmake_dir ${CMAKE_INSTALL_LIBDIR}/cmake/kvstash)
install(EXPORT kvstashTargets NAMESPACE kvstash:: DESTINATION ${kvstash_cmake_dir})
configure_package_config_file(cmake/kvstashConfig.cmake.in
                              ${PROJECT_BINARY_DIR}/kvstashConfig.cmake
                              INSTALL_DESTINATION ${kvstash_cmake_dir})
# 0.x: only the same minor version is compatible (SameMinorVersion), as with the SONAME.
write_basic_package_version_file(${PROJECT_BINARY_DIR}/kvstashConfigVersion.cmake
                                 COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/kvstashConfig.cmake
              ${PROJECT_BINARY_DIR}/kvstashConfigVersion.cmake
        DESTINATION ${kvstash_cmake_dir})

# kvstash.pc finds its prefix from its own place, so the installed tree can be moved.
file(RELATIVE_PATH kvstash_pc_up /p/${CMAKE_INSTALL_LIBDIR}/pkgconfig /p)
string(REGEX REPLACE "/$" "" kvstash_pc_up "${kvstash_pc_up}")
configure_file(cmake/kvstash.pc.in ${PROJECT_BINARY_DIR}/kvstash.pc @ONLY)
install(FILES ${PROJECT_BINARY_DIR}/kvstash.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
