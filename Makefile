# lss - build, tests, benchmarks and the demo. See README.md.
#   make demo       build and run the demo on built-in simulated data (out/demo/REPORT.md)
#   make test       build and run the whole test suite
#   make test-asan  the same under AddressSanitizer + UndefinedBehaviorSanitizer
#   make bench      benchmarks (figures go to BENCHMARKS.md by hand, with the machine)
#   make cuda       compile lss_gpu.cu with nvcc (a no-op message when nvcc is absent)
#   make deps       install the Debian packages the build needs (as root), or say how
#   make fuzz       libFuzzer on every reader, FUZZ_SECONDS each (clang; make deps FUZZ=1 installs it)
#   make mpi        the drivers built with MPI into bin/mpi/ (mpicc; make deps MPI=1 installs OpenMPI)

CC       ?= cc
NVCC     ?= $(shell command -v nvcc 2>/dev/null || ls /usr/local/cuda/bin/nvcc 2>/dev/null)
CUDA_HOME ?= $(patsubst %/bin/nvcc,%,$(NVCC))
STB_INC  ?= /usr/include/stb
ARCH     ?= -march=native
OPT      ?= -O2
WARN      = -Wall -Wextra -Werror
CFLAGS_ALL = -std=c11 $(OPT) $(ARCH) $(WARN) -fopenmp -I. -I$(STB_INC) $(CFLAGS)
LDLIBS_ALL = -lfftw3f -lfftw3 -lcfitsio -lm $(LDLIBS)
SAN       = -O1 -g -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer

HEADERS  := $(wildcard lss_*.h)
DRIVERS  := $(patsubst drivers/%.c,bin/%,$(wildcard drivers/*.c))
TESTSRC  := $(wildcard tests/test_*.c)
TESTS    := $(patsubst tests/%.c,build/tests/%,$(TESTSRC))
ATESTS   := $(patsubst tests/%.c,build/asan/%,$(TESTSRC))
BENCHES  := $(patsubst bench/%.c,build/bench/%,$(wildcard bench/*.c))
DEBS      = libfftw3-dev libcfitsio-dev libstb-dev

# MPI is a build option: the serial build never needs it. With mpicc and FFTW's MPI library present,
# `make test` also builds the MPI programs (build/mpi/, bin/mpi/) and tests/test_mpi runs them under mpirun.
MPICC    ?= $(shell command -v mpicc 2>/dev/null)
FFTW_MPI_H := $(wildcard /usr/include/fftw3-mpi.h)
MPI_LIBS  = -lfftw3f_mpi $(LDLIBS_ALL)
MPI_DRIVERS := $(patsubst drivers/%.c,bin/mpi/%,$(wildcard drivers/*.c))
ifneq ($(strip $(MPICC)),)
ifneq ($(FFTW_MPI_H),)
MPI_TEST_BINS = build/mpi/mpi_check build/mpi/mpi_check_serial bin/mpi/lss-sim bin/mpi/deeplss bin/mpi/massmap bin/mpi/flowgen bin/mpi/cgan
endif
endif

# CUDA objects join the tests when nvcc exists (lss_gpu.cu compiled for sm_90 plus PTX).
ifneq ($(strip $(NVCC)),)
ifneq ($(wildcard lss_gpu.cu),)
GPU_OBJ   = build/lss_gpu.o
GPU_FLAGS = -DLSS_CUDA
GPU_LIBS  = -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcudnn -lcublas -lcudart -lstdc++
endif
endif

.PHONY: all demo test test-asan bench bench-deps cuda clean deps check-headers docs fuzz fuzz-seeds mpi

# Builds use every core (the tests and drivers compile independently; each needs about 0.3 GB).
MAKEFLAGS += -j$(shell nproc 2>/dev/null || echo 1)

all: deps $(DRIVERS)

deps:
	@missing=""; \
	[ -f /usr/include/fftw3.h ] || missing="$$missing libfftw3-dev"; \
	[ -f /usr/include/fitsio.h ] || missing="$$missing libcfitsio-dev"; \
	[ -f $(STB_INC)/stb_image_write.h ] || missing="$$missing libstb-dev"; \
	if [ -n "$(MPI)" ]; then command -v mpicc >/dev/null || missing="$$missing libopenmpi-dev"; \
	  command -v mpirun >/dev/null || missing="$$missing openmpi-bin"; \
	  [ -f /usr/include/fftw3-mpi.h ] || missing="$$missing libfftw3-mpi-dev"; fi; \
	if [ -n "$(FUZZ)" ]; then command -v $(FUZZ_CC) >/dev/null || missing="$$missing clang"; \
	  printf 'int LLVMFuzzerTestOneInput(const unsigned char *d, unsigned long n) { (void)d; (void)n; return 0; }\n' | \
	  $(FUZZ_CC) -fsanitize=fuzzer -x c - -o /dev/null 2>/dev/null || missing="$$missing libclang-rt-dev"; fi; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "deps: installing$$missing"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null) || exit 1; \
	  else \
	    echo "deps: missing$$missing; install with: sudo apt-get install -y$$missing"; exit 1; \
	  fi; \
	fi

bin/%: drivers/%.c $(HEADERS) drivers/lss_driver.h | deps
	@mkdir -p bin
	$(CC) $(CFLAGS_ALL) $< -o $@ $(LDLIBS_ALL)

build/tests/%: tests/%.c $(HEADERS) tests/lss_test.h tests/lss_e2e.h $(GPU_OBJ) | deps
	@mkdir -p build/tests
	$(CC) $(CFLAGS_ALL) $(GPU_FLAGS) $< $(GPU_OBJ) -o $@ $(LDLIBS_ALL) $(GPU_LIBS)

# the SGEMM kernel test is built for the baseline x86-64 instruction set: its vector kernels are chosen at run time
ifeq ($(shell uname -m),x86_64)
build/tests/test_gemm_kernels build/asan/test_gemm_kernels: ARCH = -march=x86-64
endif

build/asan/%: tests/%.c $(HEADERS) tests/lss_test.h tests/lss_e2e.h | deps
	@mkdir -p build/asan
	$(CC) -std=c11 $(ARCH) $(WARN) -fopenmp -I. -I$(STB_INC) $(SAN) $< -o $@ $(LDLIBS_ALL)

build/bench/%: bench/%.c $(HEADERS) | deps
	@mkdir -p build/bench
	$(CC) $(CFLAGS_ALL) $< -o $@ $(LDLIBS_ALL)

bin/mpi/%: drivers/%.c $(HEADERS) drivers/lss_driver.h | deps
	@mkdir -p bin/mpi
	$(MPICC) $(CFLAGS_ALL) -DLSS_MPI $< -o $@ $(MPI_LIBS)

build/mpi/mpi_check: tests/mpi_check.c $(HEADERS) | deps
	@mkdir -p build/mpi
	$(MPICC) $(CFLAGS_ALL) -DLSS_MPI $< -o $@ $(MPI_LIBS)

build/mpi/mpi_check_serial: tests/mpi_check.c $(HEADERS) | deps
	@mkdir -p build/mpi
	$(CC) $(CFLAGS_ALL) $< -o $@ $(LDLIBS_ALL)

build/mpi/%: bench/%.c $(HEADERS) | deps
	@mkdir -p build/mpi
	$(MPICC) $(CFLAGS_ALL) -DLSS_MPI $< -o $@ $(MPI_LIBS)

mpi: deps $(if $(and $(strip $(MPICC)),$(FFTW_MPI_H)),$(MPI_DRIVERS))
	@if [ -z "$(strip $(MPICC))" ] || [ -z "$(FFTW_MPI_H)" ]; then echo "mpi: mpicc or fftw3-mpi.h not found; install OpenMPI and FFTW-MPI with: make deps MPI=1 (as root)"; exit 1; fi
	@echo "mpi: drivers built with MPI in bin/mpi/ (run them with mpirun -np N)"

build/runner: tests/runner.c
	@mkdir -p build
	$(CC) -std=c11 -O2 $(WARN) $< -o $@

build/lss_gpu.o: lss_gpu.cu $(HEADERS)
	@mkdir -p build
	$(NVCC) -O2 -std=c++17 -I. -gencode arch=compute_90,code=sm_90 -gencode arch=compute_90,code=compute_90 -c $< -o $@

cuda:
	@if [ -n "$(strip $(NVCC))" ] && [ -f lss_gpu.cu ]; then $(MAKE) --no-print-directory build/lss_gpu.o && echo "cuda: build/lss_gpu.o built with $(NVCC)"; \
	elif [ -f lss_gpu.cu ]; then echo "cuda: nvcc not found; nothing to build (the CPU build is complete without it)"; \
	else echo "cuda: no lss_gpu.cu in this tree; nothing to build"; fi

# Each header compiles alone, with its implementation, under -pedantic.
check-headers: | deps
	@mkdir -p build/hdr
	@for h in $(HEADERS); do \
	  n=$$(basename $$h .h); m=$$(echo $$n | tr a-z A-Z)_IMPLEMENTATION; \
	  printf '#define %s\n#include "%s"\n' $$m $$h > build/hdr/$$n.c; \
	  $(CC) -std=c11 -O2 $(WARN) -pedantic -I. -I$(STB_INC) -c build/hdr/$$n.c -o build/hdr/$$n.o || exit 1; \
	  echo "check-headers: $$h compiles alone with -pedantic"; \
	done
	@printf '#define LSS_IMPLEMENTATION\n' > build/hdr/all.c; \
	for h in $(HEADERS); do printf '#include "%s"\n' $$h >> build/hdr/all.c; done; \
	$(CC) -std=c11 -O0 $(WARN) -pedantic -fopenmp -I. -I$(STB_INC) -c build/hdr/all.c -o build/hdr/all.o && \
	echo "check-headers: all headers implemented together in one file"
	@printf '#define LSS_IMPLEMENTATION\n#define LSS_NO_FITS\n#include "lss_massmap.h"\n' > build/hdr/nofits.c; \
	$(CC) -std=c11 -O2 $(WARN) -pedantic -I. -I$(STB_INC) -c build/hdr/nofits.c -o build/hdr/nofits.o && \
	echo "check-headers: lss_massmap.h with LSS_NO_FITS (FITS compiled out, no cfitsio)"

test: deps check-headers build/runner $(TESTS) $(DRIVERS) $(MPI_TEST_BINS)
	@./build/runner $(TESTS)

test-asan: deps build/runner $(ATESTS) $(DRIVERS)
	@ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 LSS_TEST_ASAN=1 ./build/runner $(ATESTS)

# The references the benchmarks compare against (OpenBLAS, PyTorch, emcee) are installed for the
# benchmarks only; the library never needs them.
BENCH_DEBS = libopenblas0 python3-numpy python3-torch python3-emcee python3-scipy python3-skimage
bench-deps: deps
	@missing=""; for p in $(BENCH_DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "bench-deps: installing$$missing"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null) || exit 1; \
	  else echo "bench-deps: missing$$missing (benchmarks skip those references); install with: sudo apt-get install -y$$missing"; fi; \
	fi

bench: deps bench-deps $(BENCHES)
	@for b in $(BENCHES); do echo "== $$b"; $$b || exit 1; done

demo: deps $(DRIVERS)
	@sh drivers/demo.sh

# The pictures the README shows.
docs: deps bin/lss-theory bin/lss-sim
	@mkdir -p docs
	bin/lss-theory cl --nell 60 --lmin 20 --lmax 5000 --png docs/cl_deeplss.png > /dev/null
	bin/lss-sim --out build/docs_sim --n 1 --seed 1 && cp build/docs_sim/example.png docs/sim_example.png

clean:
	rm -rf build bin out/demo

# Fuzzing: one libFuzzer harness per reader (tests/fuzz/fuzz_*.c), built with clang and ASan + UBSan. make test replays
# the committed seeds (tests/fuzz/corpus/<name>/) and every past finding (tests/fuzz/regress/<name>/) with gcc through
# tests/test_fuzz_corpus.c, so the serial build never needs clang.
#   make fuzz [FUZZ_SECONDS=60] [FUZZ_TARGETS="npy csv ..."]   run each harness; findings land in build/fuzz/<name>/
#   make fuzz-seeds                                            rewrite the seed corpora (tests/fuzz/mkseeds.c)
FUZZ_CC      ?= clang
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= $(patsubst tests/fuzz/fuzz_%.c,%,$(wildcard tests/fuzz/fuzz_*.c))
FUZZ_CFLAGS   = -std=c11 -O1 -g -Wno-unknown-pragmas -I. -I$(STB_INC) -fsanitize=fuzzer,address,undefined \
                -fno-sanitize-recover=undefined -fno-omit-frame-pointer
FUZZ_SRC      = tests/fuzz/fuzz_common.h $(HEADERS)

build/fuzz/bin/%: tests/fuzz/fuzz_%.c $(FUZZ_SRC)
	@mkdir -p build/fuzz/bin
	$(FUZZ_CC) $(FUZZ_CFLAGS) $< -o $@ $(LDLIBS_ALL)

fuzz:
	@$(MAKE) --no-print-directory deps FUZZ=1
	@$(MAKE) --no-print-directory $(patsubst %,build/fuzz/bin/%,$(FUZZ_TARGETS))
	@for t in $(FUZZ_TARGETS); do \
	  mkdir -p build/fuzz/$$t/corpus build/fuzz/$$t/tmp; \
	  echo "== fuzz $$t ($(FUZZ_SECONDS) s)"; \
	  TMPDIR=$$PWD/build/fuzz/$$t/tmp ./build/fuzz/bin/$$t -max_total_time=$(FUZZ_SECONDS) -timeout=10 -rss_limit_mb=2048 \
	    -artifact_prefix=build/fuzz/$$t/ -print_final_stats=1 build/fuzz/$$t/corpus tests/fuzz/corpus/$$t \
	    $$( [ -d tests/fuzz/regress/$$t ] && echo tests/fuzz/regress/$$t ) > build/fuzz/$$t/log 2>&1; st=$$?; \
	  grep -E '^(Done [0-9]+ runs|==[0-9]+==ERROR|SUMMARY)' build/fuzz/$$t/log; \
	  [ $$st = 0 ] || echo "fuzz $$t: exit status $$st (log: build/fuzz/$$t/log)"; \
	  if ls build/fuzz/$$t/crash-* build/fuzz/$$t/leak-* build/fuzz/$$t/timeout-* build/fuzz/$$t/oom-* >/dev/null 2>&1; then \
	    echo "fuzz $$t: FINDINGS in build/fuzz/$$t/ (copy each input to tests/fuzz/regress/$$t/ once fixed)"; exit 1; fi; \
	done

build/fuzz_mkseeds: tests/fuzz/mkseeds.c tests/fuzz/fuzz_ckpt.c $(FUZZ_SRC) | deps
	@mkdir -p build
	$(CC) -std=c11 -O1 $(WARN) -fopenmp -I. -I$(STB_INC) $< -o $@ $(LDLIBS_ALL)

fuzz-seeds: build/fuzz_mkseeds
	./build/fuzz_mkseeds

# the replay test compiles the harnesses in
build/tests/test_fuzz_corpus build/asan/test_fuzz_corpus: $(wildcard tests/fuzz/*.c tests/fuzz/*.h)
# the hardening tests also catch float-to-int casts of NaN or 1e300 under gcc (clang's UBSan has it by default)
build/asan/test_fuzz_corpus build/asan/test_hardening_input: SAN += -fsanitize=float-cast-overflow
