# ppd — one plain Makefile.
#   make            build build/ppd
#   make test       install what is missing, fetch the default model, build, run every test
#   make run        install what is missing, fetch the model, build, serve on 127.0.0.1:8080
#   make test-integration  the server on loopback driven by the openai SDK (pytest, venv under build/)
#   make asan       the unit tests under AddressSanitizer + UBSan (objects in build-asan/)
#   make asan test  the whole test command (unit, fuzz seeds, integration) on that build
#   make check-deep  ppd generate and ppd serve under valgrind memcheck
#   make check-golden  every golden prompt against llama.cpp (make test runs a subset)
#   make check-logprobs  the server's logprobs against llama.cpp's on the F32 model (F32_MODEL)
#   make check-history  no tracked file tells how or when the project was built (part of make test)
#   make check-includes  includes point cli → server → engine → kernels → common, no cycle (part of make test)
#   make bench      decode/prefill speed and the row-scaling table (see BENCHMARKS.md)
#   make check-deploy  Docker/Kubernetes/Prometheus/Grafana artefacts against the real tools (docs/deploy.md)
#   make fuzz       the libFuzzer targets, FUZZ_SECONDS (default 60) each, or FUZZ_RUNS executions
# Variables: V=1 (echo commands), WERROR=1 (warnings are errors; CI sets it),
#            SAN=1 (sanitizers), CUDA=0 (never build the CUDA backend).

# `make asan test`: the whole test command, unit and integration, on a
# build with ASan + UBSan in build-asan/; `make asan` alone runs the unit tests there.
ifneq ($(filter asan,$(MAKECMDGOALS)),)
ifneq ($(filter test test-unit test-integration,$(MAKECMDGOALS)),)
ASAN_WITH_TESTS := 1
BUILD := build-asan
SAN := 1
# the sub-makes of `test` see only their own goal: hand them the build.  Under
# the sanitizers the golden and PPD comparisons run one prompt each (~10x slower).
export BUILD SAN
export PPD_TEST_GOLDEN_CASES ?= 1
export PPD_TEST_PPD_CASES ?= 1
export PPD_TEST_LOSSLESS_CASES ?= 1
export PPD_ST_EXAMPLES ?= 15
endif
endif
BUILD    ?= build
CC       ?= cc
PKGS     := libpcre2-8 jansson libuv libmicrohttpd check
MODEL    ?= models/SmolLM2-135M-Instruct.Q4_1.gguf

CFLAGS_BASE := -std=c11 -O2 -g -Wall -Wextra -Wshadow -Wno-unused-parameter \
               -D_GNU_SOURCE -pthread -ffp-contract=off -fno-math-errno -I. -MMD -MP
# -ffp-contract=off: the lossless guarantee needs every float operation to be the
# one written in the source, never a compiler-chosen fused multiply-add.
ifeq ($(WERROR),1)
CFLAGS_BASE += -Werror
endif
ifeq ($(SAN),1)
CFLAGS_BASE += -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
LDFLAGS_SAN := -fsanitize=address,undefined
endif
PKG_CFLAGS = $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   = $(shell pkg-config --libs libpcre2-8 jansson libuv libmicrohttpd 2>/dev/null)
CHECK_LIBS = $(shell pkg-config --libs check 2>/dev/null)
CFLAGS   += $(CFLAGS_BASE) $(PKG_CFLAGS)
LDLIBS   += $(PKG_LIBS) -lm -pthread $(LDFLAGS_SAN)

ifeq ($(V),1)
Q :=
else
Q := @
endif

# nvcc on PATH, else where the CUDA toolkit installs it
NVCC_FOUND := $(shell command -v nvcc 2>/dev/null || { [ -x /usr/local/cuda/bin/nvcc ] && echo /usr/local/cuda/bin/nvcc; })
NVCC := $(NVCC_FOUND)
ifeq ($(CUDA),0)
NVCC :=
endif
# With nvcc: kernels/cuda/*.cu and engine/model/backend_cuda.c join the library (sm_80
# and sm_90), linked to the CUDA runtime and cuBLAS; without it (or CUDA=0)
# engine/model/backend_cuda_stub.c answers "unsupported".  A CUDA-enabled binary
# touches the GPU only when the CUDA backend is asked for.
ifneq ($(NVCC),)
CUDA_HOME  ?= $(patsubst %/bin/nvcc,%,$(NVCC))
CUDA_SRC   := $(sort $(wildcard kernels/cuda/*.cu))
CUDA_OBJ   := $(CUDA_SRC:%.cu=$(BUILD)/%.o)
CUDA_SKIP  := engine/model/backend_cuda_stub.c
NVCCFLAGS  := -O2 -std=c++17 -fmad=false -I. -MMD -MP -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90
ifeq ($(WERROR),1)
NVCCFLAGS  += -Werror all-warnings -Xcompiler -Wall,-Wextra,-Werror
endif
LDLIBS     += -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcublasLt -lcublas -lcudart -lstdc++
else
CUDA_OBJ   :=
CUDA_SKIP  := engine/model/backend_cuda.c
endif

LIB_SRC  := $(filter-out $(CUDA_SKIP),$(sort $(wildcard common/*.c engine/*.c engine/*/*.c kernels/cpu/*.c)))
SRV_SRC  := $(sort $(wildcard server/*.c))
CLI_SRC  := $(sort $(wildcard cli/*.c))
TEST_SRC := $(sort $(wildcard tests/unit/test_*.c))
TEST_COMMON := $(sort $(wildcard tests/unit/common_*.c))

LIB_OBJ  := $(LIB_SRC:%.c=$(BUILD)/%.o) $(CUDA_OBJ)
SRV_OBJ  := $(SRV_SRC:%.c=$(BUILD)/%.o)
CLI_OBJ  := $(CLI_SRC:%.c=$(BUILD)/%.o)
TEST_COMMON_OBJ := $(TEST_COMMON:%.c=$(BUILD)/%.o)
TEST_BIN := $(TEST_SRC:tests/unit/%.c=$(BUILD)/tests/%)
BENCH_SRC := $(sort $(wildcard tests/bench/bench_*.c))
BENCH_BIN := $(BENCH_SRC:tests/bench/%.c=$(BUILD)/bench/%)
LIB      := $(BUILD)/libppd.a
GPU_BIN  := $(BUILD)/gpu/test_cuda_ops $(BUILD)/gpu/bench_7b

.PHONY: check-history check-includes check-ppd check-golden check-logprobs bench-bins gpu-bins all deps model test test-unit test-integration test-golden run asan bench bench-serve soak soak-serve check-deep check-deploy fuzz adapter bench-adapter clean features
all: features $(BUILD)/ppd $(if $(NVCC),$(GPU_BIN))

# Under CI a machine with nvcc builds the CUDA backend: CUDA=0 there fails the
# build (ALLOW_NO_CUDA=1 for the builds that leave it out on purpose, as
# check-deep's valgrind build does).
features:
	@echo "ppd build: $(if $(NVCC),CUDA backend built ($(NVCC); sm_80 sm_90),CUDA not built) | $(if $(filter 1,$(SAN)),sanitizers on,sanitizers off)"
	@if [ "$(CI)" = true ] && [ -n "$(NVCC_FOUND)" ] && [ -z "$(NVCC)" ] && [ "$(ALLOW_NO_CUDA)" != 1 ]; then \
	  echo "CI=true: nvcc is installed ($(NVCC_FOUND)) but this build leaves the CUDA backend out (CUDA=0)" >&2; exit 1; fi

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  CC    $<")
	$(Q)$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/kernels/cuda/%.o: kernels/cuda/%.cu
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  NVCC  $<")
	$(Q)$(NVCC) $(NVCCFLAGS) -c $< -o $@

$(BUILD)/engine/model/backend_cuda.o: CFLAGS += -I$(CUDA_HOME)/include

# The SIMD matmul tiles under ASan run ~10x slower (72% of a sanitized forward
# pass, which made `make asan test` an hour long): they are left uninstrumented
# there, as in the fuzzers.  What checks them instead: test_matmul (bit-equal to
# the plain C kernels, which are instrumented) and valgrind (make check-deep).
ifeq ($(SAN),1)
$(BUILD)/kernels/cpu/matmul_avx2.o $(BUILD)/kernels/cpu/matmul_avx512.o \
$(BUILD)/kernels/cpu/matmul_k_avx2.o $(BUILD)/kernels/cpu/matmul_k_avx512.o: CFLAGS += -fno-sanitize=address,undefined
endif

# The library is rebuilt when the CUDA choice changes (the object lists differ).
CUDA_STATE := $(BUILD)/cuda-state
$(shell mkdir -p $(BUILD) && s='$(if $(NVCC),on,off)' && [ "$$(cat $(CUDA_STATE) 2>/dev/null)" = "$$s" ] || echo "$$s" > $(CUDA_STATE))

$(LIB): $(LIB_OBJ) $(CUDA_STATE)
	@mkdir -p $(dir $@)
	$(Q)rm -f $@ && ar rcs $@ $(filter %.o,$^)

$(BUILD)/ppd: $(CLI_OBJ) $(SRV_OBJ) $(LIB)
	@$(if $(Q),echo "  LINK  $@")
	$(Q)$(CC) $(CFLAGS) -o $@ $(CLI_OBJ) $(SRV_OBJ) $(LIB) $(LDLIBS)

$(BUILD)/tests/%: $(BUILD)/tests/unit/%.o $(TEST_COMMON_OBJ) $(LIB)
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  LINK  $@")
	$(Q)$(CC) $(CFLAGS) -o $@ $< $(TEST_COMMON_OBJ) $(LIB) $(CHECK_LIBS) $(LDLIBS)

# test_families also links the tiny-model generator that tests/golden/gen_families.py runs through it.
FAMILY_OBJ := $(BUILD)/tests/unit/family_model.o
$(BUILD)/tests/test_families: $(BUILD)/tests/unit/test_families.o $(FAMILY_OBJ) $(TEST_COMMON_OBJ) $(LIB)
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  LINK  $@")
	$(Q)$(CC) $(CFLAGS) -o $@ $< $(FAMILY_OBJ) $(TEST_COMMON_OBJ) $(LIB) $(CHECK_LIBS) $(LDLIBS)

$(BUILD)/bench/%: $(BUILD)/tests/bench/%.o $(LIB)
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  LINK  $@")
	$(Q)$(CC) $(CFLAGS) -o $@ $< $(LIB) $(LDLIBS)

bench-bins: $(BENCH_BIN)

# The GPU check's programs (tests/gpu/run.sh runs them on a machine with a GPU);
# built with `all` whenever the CUDA backend is, so CI compiles them too.
$(BUILD)/gpu/%: $(BUILD)/tests/gpu/%.o $(BUILD)/tests/gpu/random_model.o $(LIB)
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  LINK  $@")
	$(Q)$(CC) $(CFLAGS) -o $@ $< $(BUILD)/tests/gpu/random_model.o $(LIB) $(LDLIBS)
gpu-bins: $(GPU_BIN)

deps:
	@scripts/install-deps.sh

model:
	@scripts/fetch-model.sh

test: deps model
	@scripts/check-history.sh
	@scripts/check-includes.py
	@$(MAKE) --no-print-directory all
	@$(MAKE) --no-print-directory test-unit
	@PPD_TEST_MODEL=$(MODEL) scripts/fuzz.sh --seeds-only
	@$(MAKE) --no-print-directory test-integration

# The integration tests' Python side (openai SDK, pytest, requests) lives in a
# venv under build/, rebuilt when tests/integration/requirements.txt changes.
ITEST_VENV := $(BUILD)/itest-venv
$(ITEST_VENV)/.ok: tests/integration/requirements.txt
	@rm -rf $(ITEST_VENV)
	python3 -m venv $(ITEST_VENV)
	$(ITEST_VENV)/bin/pip install -q -r tests/integration/requirements.txt
	@touch $@

test-integration: $(BUILD)/ppd $(ITEST_VENV)/.ok
	@PPD_TEST_MODEL=$(MODEL) PPD_BIN=$(BUILD)/ppd $(ITEST_VENV)/bin/python -m pytest -q -rs -p no:cacheprovider tests/integration

test-unit: $(TEST_BIN) $(BUILD)/ppd
	@PPD_TEST_MODEL=$(MODEL) PPD_BIN=$(BUILD)/ppd PPD_CALIB_CACHE=$(BUILD)/calib-cache scripts/run-tests.sh $(TEST_BIN)

# Under the sanitizers the golden comparisons run on one prompt each (they are
# ~10x slower there); `make check-golden` runs them all at full speed.
ifeq ($(ASAN_WITH_TESTS),1)
asan:
	@echo "make asan: the tests below run on the sanitized build in build-asan/"
else
asan: deps model
	@PPD_TEST_GOLDEN_CASES=1 PPD_TEST_PPD_CASES=1 PPD_TEST_LOSSLESS_CASES=1 $(MAKE) --no-print-directory BUILD=build-asan SAN=1 test-unit
endif

# The lossless check at scale: PPD == plain decoding on MT-Bench + HumanEval first turns.
check-ppd: deps model
	@$(MAKE) --no-print-directory all
	python3 scripts/check-ppd.py --count 50 -n 256 --temps 0,0.7,1.0

# ppd generate (plain and PPD) and ppd serve under valgrind memcheck, on a
# CUDA-less build in build-deep/ (scripts/check-deep.sh says why).
check-deep: deps model
	@$(MAKE) --no-print-directory BUILD=build-deep CUDA=0 ALLOW_NO_CUDA=1 all
	scripts/check-deep.sh build-deep/ppd $(MODEL)

# No tracked file tells how or when the project was built (make test runs it first).
check-history:
	@scripts/check-history.sh

# Includes point one way, cli → server → engine → kernels → common, and no
# modules include each other (make test runs it next to check-history).
check-includes:
	@scripts/check-includes.py

check-golden: deps model
	@$(MAKE) --no-print-directory $(BUILD)/tests/test_forward
	@PPD_TEST_GOLDEN_CASES=24 PPD_TEST_MODEL=$(MODEL) $(BUILD)/tests/test_forward

# The server's logprobs against llama.cpp's (llama-cpp-python in the golden
# venv) on the model with every weight in F32: F32_MODEL, a file no other
# target needs (tests/integration/test_logprobs_llamacpp.py).
F32_MODEL ?= models/quants/SmolLM2-135M-Instruct.F32.gguf
check-logprobs: deps model
	@$(MAKE) --no-print-directory $(BUILD)/ppd $(ITEST_VENV)/.ok
	@test -f $(F32_MODEL) || { echo "check-logprobs: $(F32_MODEL) is missing (F32_MODEL=PATH)" >&2; exit 1; }
	PPD_LLAMACPP_PYTHON=$$(tests/golden/setup-venv.sh) PPD_F32_MODEL=$(F32_MODEL) PPD_TEST_MODEL=$(MODEL) \
	  PPD_BIN=$(BUILD)/ppd $(ITEST_VENV)/bin/python -m pytest -q -s -p no:cacheprovider tests/integration/test_logprobs_llamacpp.py

run: deps model
	@$(MAKE) --no-print-directory all
	$(BUILD)/ppd serve -m $(MODEL) --host 127.0.0.1 --port 8080

# The committed PPD adapter and tree, reproduced from the training prompts
# (scripts/make-adapter.sh; about PPD_DISTILL_COUNT answers, see README).
adapter: deps model
	@$(MAKE) --no-print-directory all
	scripts/make-adapter.sh

# Trained vs untrained adapter vs plain decoding on the four evaluation sets:
# the results table and docs/ppd-speedup.png (scripts/bench-adapter.sh).
bench-adapter: deps model
	@$(MAKE) --no-print-directory all
	scripts/bench-adapter.sh

bench: deps model
	@$(MAKE) --no-print-directory all
	@$(MAKE) --no-print-directory bench-bins
	scripts/bench.sh 3

# The server through HTTP streaming at 1, 4 and 16 clients, plain and PPD, and
# HTTP at 1 client against `ppd generate` (scripts/bench-serve.py).
bench-serve: deps model
	@$(MAKE) --no-print-directory all $(ITEST_VENV)/.ok
	$(ITEST_VENV)/bin/python scripts/bench-serve.py --json $(BUILD)/bench-serve/samples.json

# The deployment checks: test_deploy.py plus a 60 s load whose scraped data draws
# docs/deploy-dashboard.png, and the rendered manifests in build/deploy/ (scripts/check-deploy.sh).
check-deploy: deps model
	@$(MAKE) --no-print-directory all $(ITEST_VENV)/.ok
	PPD_TEST_MODEL=$(MODEL) PPD_BIN=$(BUILD)/ppd scripts/check-deploy.sh $(ITEST_VENV)/bin/python

# libFuzzer targets (tests/fuzz/) under clang + ASan + UBSan, FUZZ_SECONDS each
# (build-fuzz/; scripts/fuzz.sh).  make test runs each once over its seed corpus.
FUZZ_SECONDS ?= 60
FUZZ_RUNS ?= -1
fuzz: deps model
	@FUZZ_SECONDS=$(FUZZ_SECONDS) FUZZ_RUNS=$(FUZZ_RUNS) PPD_TEST_MODEL=$(MODEL) scripts/fuzz.sh

# The soak (tests/integration/test_soak.py at full length; make test runs 12 s of
# it): 64 clients for 10 minutes (`make soak`), or 5 minutes (`make soak-serve`).
# SOAK_SECONDS and SOAK_CLIENTS change it.
SOAK_SECONDS ?= 600
SOAK_CLIENTS ?= 64
soak: deps model
	@$(MAKE) --no-print-directory all $(ITEST_VENV)/.ok
	PPD_SOAK_SECONDS=$(SOAK_SECONDS) PPD_SOAK_CLIENTS=$(SOAK_CLIENTS) PPD_TEST_MODEL=$(MODEL) \
	  PPD_BIN=$(BUILD)/ppd $(ITEST_VENV)/bin/python -m pytest -q -s -p no:cacheprovider tests/integration/test_soak.py

soak-serve:
	@$(MAKE) --no-print-directory soak SOAK_SECONDS=300

clean:
	rm -rf build build-asan build-deep build-fuzz

-include $(LIB_OBJ:.o=.d) $(SRV_OBJ:.o=.d) $(CLI_OBJ:.o=.d) $(TEST_BIN:$(BUILD)/tests/%=$(BUILD)/tests/unit/%.d) $(TEST_COMMON_OBJ:.o=.d) $(FAMILY_OBJ:.o=.d) $(BENCH_BIN:$(BUILD)/bench/%=$(BUILD)/tests/bench/%.d)
