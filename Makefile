# lockstep: the commands a user types.  Meson and Ninja do the work; this
# file only installs what is missing on a fresh Debian machine and calls them.
#
#   make          build everything into build/
#   make check    all tests: unit + integration (with the demo and the docs'
#                 examples), then again under ASan/UBSan
#   make demo     the jobs (fleecing, replication, incremental backup),
#                 narrated; exit 1 if any does not hold
#   make install  install the programs into /usr/local (another prefix:
#                 MESON_OPTS=--prefix=DIR on the first make)
#   make bench    side-by-side benchmarks against QEMU (see bench/)
#   make iotests  QEMU's own iotests against lockstep-img and lockstep-io
#                 (fetches Debian's qemu source; writes docs/iotests.md)

BUILD      ?= build
BUILD_SAN  ?= build-san
MESON_OPTS ?=

.PHONY: all deps build check demo install clean bench iotests

all: build

deps:
	@scripts/install-deps.sh

build: deps
	@test -f $(BUILD)/build.ninja || meson setup $(BUILD) $(MESON_OPTS)
	@ninja -C $(BUILD)

check: build
	@scripts/run-tests.sh $(BUILD) $(BUILD_SAN)

demo: build
	@scripts/demo.sh $(BUILD)

install: build
	@meson install -C $(BUILD) --no-rebuild

bench: deps
	@bench/install-deps.sh
	@test -f build-bench/build.ninja || meson setup build-bench --buildtype=release -Db_ndebug=false -Dlock_debug=false
	@meson configure build-bench -Dlock_debug=false
	@ninja -C build-bench lockstepd lockstep-backup tests/vhost/vhost-client
	@python3 bench/bench.py --build build-bench

iotests: build
	@python3 scripts/iotests.py $(IOTESTS_ARGS)

clean:
	rm -rf $(BUILD) $(BUILD_SAN) build-fuzz build-bench
