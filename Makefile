# Gate a change the way code is gated:  make eval && make test && <your deploy>
# `make eval` runs the eval gate (llmpulse gate, README "Gate a prompt change in CI") on the eval
# results your eval job wrote as JSON lines; no Kafka or ClickHouse needed. Exit codes: 0 pass,
# 1 the candidate is worse, 3 not enough evidence, 2 bad input. Override any variable:
#   make eval WORKFLOW=rag BASELINE=prompt:v7 CANDIDATE=prompt:v8 EVALS=out/evals.jsonl
LLMPULSE ?= .venv/bin/llmpulse
WORKFLOW ?= support-bot
BASELINE ?= prompt:main
CANDIDATE ?= prompt:candidate
EVALS ?= evals/results.jsonl
GATE_ARGS ?=
REPORTS ?= reports

.PHONY: eval test

eval:
	@mkdir -p $(REPORTS)
	$(LLMPULSE) gate $(WORKFLOW) --baseline $(BASELINE) --candidate $(CANDIDATE) --evals $(EVALS) \
		--junit $(REPORTS)/eval-gate.xml --markdown $(REPORTS)/eval-gate.md $(GATE_ARGS)

test:
	./dev test
