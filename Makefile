# memsnap: the two quick-start commands are `make demo` and `make test`.
SWIFT ?= swift

.PHONY: proto demo test build release test-tsan test-asan sanitize benchmarks fuzz fuzz-build fuzz-run fuzz-smoke deps clean wasm-guests docs api

demo: deps
	$(SWIFT) build -c release --product memsnap
	$$($(SWIFT) build -c release --show-bin-path)/memsnap demo

test: deps
	$(SWIFT) build --build-tests
	$(SWIFT) test --skip-build

build: deps
	$(SWIFT) build

release: deps
	$(SWIFT) build -c release

# Concurrency is real here: signal handlers, fault handlers, worker threads.
test-tsan: deps
	$(SWIFT) test --sanitize=thread --scratch-path .build-tsan

# A trap (SIGILL) under ASan is reported by ASan with its stack: Swift's own backtracer would read
# the crashed thread's stack through ASan's checked memcpy, stop at the first redzone and hang.
test-asan: deps
	LSAN_OPTIONS=suppressions=$(CURDIR)/scripts/lsan.supp ASAN_OPTIONS=handle_sigill=1 SWIFT_BACKTRACE=enable=no \
		$(SWIFT) test --sanitize=address --scratch-path .build-asan

sanitize: test-tsan test-asan

# libFuzzer on one target: `make fuzz FUZZ_TARGET=arena FUZZ_SECONDS=600` for a longer run.
# Targets (Sources/MemSnapFuzzTargets): $(FUZZ_TARGETS).
FUZZ_TARGETS := checkpoint-file checkpoint-stream diff-batch arena
FUZZ_TARGET ?= checkpoint-file
FUZZ_SECONDS ?= 30
FUZZ_BUILD := .build-fuzz
fuzz: fuzz-build
	$(MAKE) fuzz-run FUZZ_TARGET=$(FUZZ_TARGET) FUZZ_SECONDS=$(FUZZ_SECONDS)

fuzz-build: deps
	$(SWIFT) build --scratch-path $(FUZZ_BUILD) --product memsnap-fuzz \
		-Xswiftc -sanitize=fuzzer,address -Xswiftc -DFUZZING -Xswiftc -parse-as-library

fuzz-run:
	mkdir -p $(FUZZ_BUILD)/corpus/$(FUZZ_TARGET)
	cp Tests/Fuzz/corpus/$(FUZZ_TARGET)/* $(FUZZ_BUILD)/corpus/$(FUZZ_TARGET)/
	MEMSNAP_FUZZ_TARGET=$(FUZZ_TARGET) LSAN_OPTIONS=suppressions=$(CURDIR)/scripts/lsan.supp \
		$$($(SWIFT) build --scratch-path $(FUZZ_BUILD) --show-bin-path)/memsnap-fuzz \
		-max_total_time=$(FUZZ_SECONDS) -max_len=65536 -rss_limit_mb=4096 -timeout=20 $(FUZZ_BUILD)/corpus/$(FUZZ_TARGET)

# The short run CI does: every target for FUZZ_SMOKE_SECONDS.
FUZZ_SMOKE_SECONDS ?= 30
fuzz-smoke: fuzz-build
	for target in $(FUZZ_TARGETS); do $(MAKE) fuzz-run FUZZ_TARGET=$$target FUZZ_SECONDS=$(FUZZ_SMOKE_SECONDS) || exit 1; done

# The package-benchmark suite (its own package, so `make test` never builds the harness).
benchmarks: deps
	cd Benchmarks && $(SWIFT) package --allow-writing-to-package-directory benchmark

# A DocC archive per library product (Sources/<Module>/<Module>.docc) into .build/docs/<Module>,
# with swift-docc-plugin; any DocC warning (a broken symbol link, say) fails the target.
DOC_TARGETS := MemSnap MemSnapCheckpoint MemSnapArena MemSnapArenaCheckpoint MemSnapRemote MemSnapWasm
docs: deps
	mkdir -p .build/docs
	for target in $(DOC_TARGETS); do \
		rm -rf .build/docs/$$target; \
		$(SWIFT) package --allow-writing-to-directory .build/docs generate-documentation --target $$target \
			--output-path .build/docs/$$target --warnings-as-errors || exit 1; \
	done

# The public API of every library product, from the symbol graph: counts and sorted symbols
# per module (scripts/public-api.sh; `make api > before.txt`, change, `make api | diff before.txt -`).
api:
	@scripts/public-api.sh

# Regenerates the gRPC service's Swift code from Protos/ (committed; CI never needs protoc).
proto:
	scripts/generate-proto.sh

# The WebAssembly guests (Guests/*.c -> Guests/*.wasm, and the bytes MemSnapWasm embeds), built by
# the toolchain's clang for wasm32 without libc. The built modules are committed: only run this
# after changing a guest (GuestBinaryTests checks they match their sources).
wasm-guests:
	scripts/build-wasm-guests.sh

deps:
	@scripts/install-deps.sh

clean:
	rm -rf .build .build-tsan .build-asan .build-fuzz
