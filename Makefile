# membench: common tasks. `make install` then `make test`; `make table1` rebuilds results/table1.
PYTHON ?= python3
RESULTS ?= results
DATA ?= ../shared/data

.PHONY: install test bench table1 table1-classical table1-learned table1-gpu figures readme throughput throughput-gpu clean

# torch first: a CPU build where none is importable (an unpinned `torch` would pull CUDA wheels);
# an existing torch install is kept as it is.
install:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install "torch==2.13.0"
	$(PYTHON) -m pip install -e ".[dev]"

test:
	$(PYTHON) -m pytest --benchmark-disable

bench:
	$(PYTHON) -m pytest tests/benchmarks --benchmark-only

table1-classical:
	membench run --suite table1 --seeds 0,1,2 --queries 1000 --out $(RESULTS)/table1 --no-progress
	membench run --suite table1-modern --seeds 0,1,2 --queries 1000 --out $(RESULTS)/table1 --no-progress

table1-learned:
	membench run --suite table1-learned --seeds 0 --queries 3000 --preset quick --out $(RESULTS)/table1 --no-progress

# EBMM's gpu preset on a CUDA machine, in commands of at most 8 minutes of training each: exit
# status 3 means "paused at the time limit, checkpointed": run `make table1-gpu` again to continue.
table1-gpu:
	membench run --suite table1-learned --model ebmm --preset gpu --queries 3000 --device cuda --out $(RESULTS)/table1 --no-progress --train-time-limit 480

table1: table1-classical table1-learned
	membench report --out $(RESULTS)/table1
	membench readme --results $(RESULTS)

# meta-training throughput (episodes/s) into results/bench/throughput.csv: CPU rows here,
# CUDA rows (gpu preset, growing meta-batches, eager and CUDA-graph) on a CUDA machine
throughput:
	membench throughput --model ebmm --model memory_networks --model mann --model lstm \
		--model differentiable_plasticity --preset quick --device cpu --steps 10

throughput-gpu:
	membench throughput --model ebmm --preset gpu --device cuda --batch-sizes 32,128,512 --steps 20
	membench throughput --model ebmm --preset gpu --device cuda --batch-sizes 32,128,512 --steps 20 --cuda-graph

# the README's result tables, rewritten from the records in $(RESULTS)
readme:
	membench readme --results $(RESULTS)

# Figure 3: rate sweeps on Omniglot and CIFAR-10 (DATA holds omniglot/ and cifar-10-batches-py/)
figures:
	membench run --suite fig3-omniglot --seeds 0 --preset quick --data-dir $(DATA) --out $(RESULTS)/fig3 --no-progress
	membench run --suite fig3-cifar --seeds 0 --preset quick --data-dir $(DATA) --out $(RESULTS)/fig3 --no-progress
	membench figures --out $(RESULTS)/fig3 --data-dir $(DATA)
	membench readme --results $(RESULTS)

clean:
	rm -rf membench-results .pytest_cache .benchmarks
