# The two commands of the README's quick start, and the benchmarks.
PYTHON ?= python3

.PHONY: demo test unit bench-proxy bench-failover bench-replication deps

deps:
	bash tools/install-deps

# The main job: the namespace lab on the shipped services, real traffic through every one.
demo: deps
	$(PYTHON) -m hapair.demo

# Installs what the tests need, then runs them all (unit and integration; integration needs root).
test: deps
	$(PYTHON) -m pytest -q -p no:cacheprovider tests

unit:
	$(PYTHON) -m pytest -q -p no:cacheprovider tests/unit

bench-proxy: deps
	$(PYTHON) bench/proxy_vs_haproxy.py

bench-failover: deps
	$(PYTHON) bench/failover_vs_keepalived.py

bench-replication: deps
	$(PYTHON) bench/replication_latency.py
