# memsnap: the two quick-start commands are `make demo` and `make test`.
SWIFT ?= swift

.PHONY: demo test build release test-tsan test-asan sanitize benchmarks deps clean

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

# The package-benchmark suite (its own package, so `make test` never builds the harness).
benchmarks: deps
	cd Benchmarks && $(SWIFT) package --allow-writing-to-package-directory benchmark

deps:
	@scripts/install-deps.sh

clean:
	rm -rf .build .build-tsan .build-asan
