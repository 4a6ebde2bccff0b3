# memsnap: the two quick-start commands are `make demo` and `make test`.
SWIFT ?= swift

.PHONY: demo test build release test-tsan test-asan sanitize benchmarks fuzz fuzz-smoke deps clean

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

test-asan: deps
	LSAN_OPTIONS=suppressions=$(CURDIR)/scripts/lsan.supp $(SWIFT) test --sanitize=address --scratch-path .build-asan

sanitize: test-tsan test-asan

# libFuzzer on the checkpoint reader: `make fuzz FUZZ_SECONDS=600` for a longer run.
FUZZ_SECONDS ?= 30
FUZZ_BUILD := .build-fuzz
fuzz: deps
	$(SWIFT) build --scratch-path $(FUZZ_BUILD) --product checkpoint-fuzzer-replay \
		-Xswiftc -sanitize=fuzzer,address -Xswiftc -DFUZZING -Xswiftc -parse-as-library
	mkdir -p $(FUZZ_BUILD)/corpus
	cp Tests/Fuzz/corpus/* $(FUZZ_BUILD)/corpus/
	LSAN_OPTIONS=suppressions=$(CURDIR)/scripts/lsan.supp \
		$$($(SWIFT) build --scratch-path $(FUZZ_BUILD) --show-bin-path)/checkpoint-fuzzer-replay \
		-max_total_time=$(FUZZ_SECONDS) -max_len=65536 -rss_limit_mb=4096 $(FUZZ_BUILD)/corpus

# The short run CI does.
fuzz-smoke:
	$(MAKE) fuzz FUZZ_SECONDS=30

# The package-benchmark suite (its own package, so `make test` never builds the harness).
benchmarks: deps
	cd Benchmarks && $(SWIFT) package --allow-writing-to-package-directory benchmark

deps:
	@scripts/install-deps.sh

clean:
	rm -rf .build .build-tsan .build-asan .build-fuzz
