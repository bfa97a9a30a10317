# kvstash: `make demo` and `make test` each do their own set-up (Debian packages, pinned llama.cpp,
# build), so both work from a fresh clone on a fresh Debian 12 machine.
BUILD ?= build
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=
FUZZ_SECONDS ?= 600

.PHONY: all setup build demo test bench fuzz asan clean

all: build

setup:
	@scripts/setup-deps.sh
	@scripts/fetch-llama.sh
	@scripts/setup-npm.sh

$(BUILD)/CMakeCache.txt:
	@$(MAKE) --no-print-directory setup
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release $(CMAKE_FLAGS)

build: setup $(BUILD)/CMakeCache.txt
	cmake --build $(BUILD) -j $(JOBS)

demo: build
	@scripts/demo.sh $(BUILD)

test: build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS) $(CTEST_ARGS)

bench: build
	@KVSTASH_WITH_BENCH_TOOLS=1 scripts/setup-deps.sh
	@scripts/bench.sh $(BUILD)

fuzz: build
	@scripts/fuzz.sh $(FUZZ_SECONDS) $(BUILD)

# The whole suite under ASan + UBSan (the fuzzer, already sanitized, runs in `make test`), then one
# small case of each benchmark, so the benchmarks' own code is checked too. Not here: the tests of
# the installed tree from outside (install, subproject, Rust, Python), whose programs are built
# without the sanitizer runtime; the C API's own test (capi_test) runs here. Nor EnginePaths, which
# compares numerics across the decode paths (Release proves that): their memory safety is the
# Session, StoreSession and BatchEngine tests' job here.
asan:
	@$(MAKE) --no-print-directory test BUILD=build-asan \
	  CTEST_ARGS="-E 'fuzz|install_test|subproject_test|binding_test|EnginePaths'" \
	  CMAKE_FLAGS="-DKVSTASH_SANITIZE=address,undefined -DCMAKE_BUILD_TYPE=RelWithDebInfo"
	build-asan/bench/kvstash-bench --shapes small --prefix-lengths 256 --cache-types f16 \
	  --reps 1 --cold-reps 1 --dir build-asan/bench-work >/dev/null
	build-asan/bench/kvstash-store-bench --quick --only restore --dir build-asan/store-bench-work \
	  --system-prompt demo/system-prompt.txt >/dev/null
	build-asan/bench/kvstash-family-bench --shape tiny --prefix-lengths 256 --reps 1 \
	  --dir build-asan/family-bench-work >/dev/null

clean:
	rm -rf $(BUILD) build-asan
