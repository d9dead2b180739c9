# FuseBench: `make demo` (install, build the tiny zoo, fuse, evaluate, leaderboard) and `make test`.
SHELL := /bin/bash
VENV ?= .venv
# Any Python 3.10-3.13, e.g. `make test PYTHON=python3.12 VENV=.venv312`.
PYTHON ?= python3
PY := $(VENV)/bin/python
BENCH := $(VENV)/bin/bench
# The CPU build of torch first (a bare `torch` requirement would pull a multi-GB CUDA build).
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.fusebench-installed

.PHONY: install demo test typecheck lint regress table7 methods venv-vllm claims

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev,logging]"
	@touch $(STAMP)

install: $(STAMP)

# vLLM pins its own torch and transformers, so the vllm backend gets its own environment, on a CUDA machine
# (make test never needs it): `make venv-vllm`, then `.venv-vllm/bin/bench eval --backend vllm ...`.
VLLM_VENV ?= .venv-vllm
venv-vllm:
	@test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install -q -e ".[vllm]"

# MT-Bench in the demo: judged by zoo:$(DEMO_JUDGE) (SmolLM2-135M-Instruct) when, and only when, `bench zoo has` finds
# it already in the zoo (`bench zoo add smollm2-135m` adds it; the demo never downloads it); otherwise the answers are
# stored "not judged". All 24 questions with 1024-token judge replies would take hours on 2 cores, so the demo judges
# only what DEMO_JUDGE_SET selects: the writing category (3 questions, 6 answers a model), answers and judge replies
# capped at 64 tokens (measured: about 80 s more for the demo's 6 models). `make demo DEMO_JUDGE=` turns judging off.
DEMO_JUDGE ?= smollm2-135m
# The demo's suites: the zoo's domains (perplexity) and skills (bbh-mini, answer-only; humaneval-mini, run in the
# sandbox), and MT-Bench. Per task, `bench skills` then says whether the fused model inherited each source's skill.
DEMO_SUITES ?= --suite perplexity --suite bbh-mini --suite humaneval-mini --allow-code-exec --suite mtbench
DEMO_JUDGE_SET ?= --set 'mtbench.categories=[writing]' --set mtbench.max_gen_toks=64 --set mtbench.judge_max_tokens=64
# The zoo members the demo's FuseChat run uses (pivot and sources); `bench zoo build` trains all seven (~6 min).
DEMO_MEMBERS ?= gpt2-code,neox-docs,mpt-math
demo: install
	$(BENCH) zoo build --only $(DEMO_MEMBERS)
	@judge=(); \
	if [ -z "$(DEMO_JUDGE)" ]; then \
	  echo "demo: MT-Bench answers are stored, not judged (DEMO_JUDGE is empty)"; \
	else \
	  $(BENCH) zoo has $(DEMO_JUDGE); found=$$?; \
	  if [ $$found = 0 ]; then \
	    judge=(--judge-model zoo:$(DEMO_JUDGE) $(DEMO_JUDGE_SET)); \
	    echo "demo: MT-Bench judged by zoo:$(DEMO_JUDGE), a small local model, on a part only, to keep the demo short: $(DEMO_JUDGE_SET)"; \
	  elif [ $$found = 1 ]; then \
	    echo "demo: so MT-Bench answers are stored, not judged"; \
	  else exit $$found; fi; \
	fi; \
	echo "$(BENCH) run --fuser fusechat --name demo-fusechat $(DEMO_SUITES) --per-task $${judge[*]}"; \
	$(BENCH) run --fuser fusechat --name demo-fusechat $(DEMO_SUITES) --per-task "$${judge[@]}"
	$(BENCH) skills demo-fusechat

test: install typecheck
	$(PY) -m pytest -q -p no:cacheprovider
	$(MAKE) regress

# Static types of the harness package: mypy, configured in pyproject.toml ([tool.mypy]); 30-45 s on 2 cores the
# first time, about a second with its cache (.mypy_cache/).
typecheck: install
	$(VENV)/bin/mypy

# Quality gate: a short, seeded fusion on the micro zoo (its Llama family only; a fresh temp BENCH_HOME),
# checked against the committed baseline; exits non-zero when a fuser got worse beyond noise.
# After an intended change of the numbers: `make regress REGRESS_UPDATE=1` rewrites the baseline.
# REGRESS_ZOO=DIR keeps the trained micro zoo in DIR between runs (a CI cache); fused models and
# evaluations are always recomputed, so a changed fuser cannot hide behind a cached result.
REGRESS_BASELINE ?= results/baselines/ci_micro.json
REGRESS_SET := --set perplexity.max_docs=8 --set perplexity.max_chars_per_doc=1000
REGRESS_ZOO ?=
regress: install
	@set -e; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	export BENCH_CORPUS_DIR="$${BENCH_CORPUS_DIR:-$${BENCH_HOME:-$$HOME/.cache/fusebench}/corpus}"; \
	export BENCH_HOME="$$tmp/home" BENCH_ZOO_PRESET=micro; db="$$tmp/ci.db"; \
	if [ -n "$(REGRESS_ZOO)" ]; then mkdir -p "$(REGRESS_ZOO)" "$$BENCH_HOME"; ln -s "$(abspath $(REGRESS_ZOO))" "$$BENCH_HOME/zoo"; fi; \
	$(BENCH) zoo build --preset micro --only llama-code,llama-docs,llama-math; \
	$(BENCH) run --fuser merge --name ci-merge $(REGRESS_SET) --db "$$db" >/dev/null; \
	$(BENCH) run --fuser ensemble --name ci-ensemble $(REGRESS_SET) --db "$$db" >/dev/null; \
	if [ "$(REGRESS_UPDATE)" = 1 ]; then \
	  $(BENCH) regress --save-baseline ci-merge,ci-ensemble $(REGRESS_BASELINE) --db "$$db"; \
	else \
	  $(BENCH) regress --baseline $(REGRESS_BASELINE) --candidate ci-merge --candidate ci-ensemble --db "$$db"; \
	fi

lint: install typecheck
	$(VENV)/bin/ruff check harness fusers evals tests benchmarks

# FuseLLM Table 7 at toy scale (homogeneous family): ensemble, weight merging and FuseLLM vs base and experts.
table7: install
	$(BENCH) zoo build
	$(BENCH) run --config configs/table7_ensemble.yaml
	$(BENCH) run --config configs/table7_merge.yaml
	$(BENCH) run --config configs/table7_fusellm.yaml
	$(BENCH) leaderboard --suite perplexity

# The fusion families side by side (issue 20): FuseLLM, ULD, DSKD (cross-tokenizer distillation on FuseLLM's
# pipeline), FuseChat (pairwise + SCE) and FuseChat-3.0 (SFT + DPO on the sources' sampled answers), each with its
# control (λ = 1, or SFT only), one budget (150 steps x 8 sequences, configs/methods/*.yaml), the same sources,
# target, seeds and suites; then the leaderboard (seed means ± 95% CI) and the paired comparisons over the seeds.
METHODS_DB ?= results/methods.db
METHODS_SEEDS ?= 0,1,2
METHODS := fusellm uld dskd fusechat fusechat3 fusechat3-wrpo
methods: install
	$(BENCH) zoo build --only gpt2-code,neox-docs,mpt-math
	for m in $(METHODS); do $(BENCH) run --config configs/methods/$$m.yaml --seeds $(METHODS_SEEDS) --db $(METHODS_DB) || exit $$?; done
	$(BENCH) leaderboard --suite perplexity --suite bbh-mini --db $(METHODS_DB)
	for m in $(METHODS); do $(BENCH) compare control@methods-$$m fused@methods-$$m --suite perplexity --db $(METHODS_DB) || exit $$?; done
	for m in uld dskd fusechat fusechat3 fusechat3-wrpo; do \
		$(BENCH) compare fused@methods-fusellm fused@methods-$$m --suite perplexity --db $(METHODS_DB) || exit $$?; done

# The README's claims, re-measured over 3 seeds with the data-only control (about 40 minutes on 2 cores), each
# stated with a paired confidence interval and p-value (`bench compare`). CLAIMS_DB holds every run.
CLAIMS_DB ?= results/claims.db
CLAIMS_SEEDS ?= 0,1,2
claims: install
	$(BENCH) zoo build
	$(BENCH) run --config configs/table7_ensemble.yaml --db $(CLAIMS_DB)
	$(BENCH) run --config configs/table7_merge.yaml --db $(CLAIMS_DB)
	$(BENCH) run --config configs/table7_fusellm.yaml --seeds $(CLAIMS_SEEDS) --control --db $(CLAIMS_DB)
	$(BENCH) run --fuser fusellm --suite perplexity --seeds $(CLAIMS_SEEDS) --control --name fusellm-hetero --db $(CLAIMS_DB)
	$(BENCH) run --fuser fusechat --suite perplexity --seeds $(CLAIMS_SEEDS) --control --name fusechat-demo --db $(CLAIMS_DB)
	$(BENCH) run --fuser profuser --suite perplexity --seeds $(CLAIMS_SEEDS) --control --name profuser-demo --db $(CLAIMS_DB)
	$(BENCH) leaderboard --suite perplexity --db $(CLAIMS_DB)
	$(BENCH) compare table7-merge fused@table7-fusellm --suite perplexity --db $(CLAIMS_DB)
	$(BENCH) compare table7-ensemble fused@table7-fusellm --suite perplexity --db $(CLAIMS_DB)
	$(BENCH) compare table7-ensemble table7-merge --suite perplexity --db $(CLAIMS_DB)
	for group in table7-fusellm fusellm-hetero fusechat-demo profuser-demo; do \
		$(BENCH) compare control@$$group fused@$$group --suite perplexity --db $(CLAIMS_DB); done
