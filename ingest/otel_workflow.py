"""Which workflow (and agent) a span belongs to, whatever order spans arrive in.

Spans are exported when they *end*, so a chat span usually reaches us before the
`invoke_agent`/`invoke_workflow` span that names it, often in an earlier batch.
The resolver remembers, for a bounded number of recent spans, each span's parent
and its own names; `observe()` is fed every span of a batch before any is
resolved (any order within a batch works) and, through `WorkflowTracker`, every
span at *start* (parents start before children, so names are known in time).

Rule: the workflow is the outermost `gen_ai.workflow.name` on the span's chain
of ancestors, else the outermost agent name, else a name already seen in the
same trace, else the fallback (resource `service.name`).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Mapping, NamedTuple

MAX_DEPTH = 64  # guards against cycles in hostile input


class _Node(NamedTuple):
    parent: str
    workflow: str
    agent: str


def own_names(attrs: Mapping[str, Any], span_name: str = "") -> tuple[str, str]:
    """(workflow name, agent name) declared by the span itself."""
    workflow = str(attrs.get("gen_ai.workflow.name") or attrs.get("traceloop.workflow.name") or "")
    agent = str(attrs.get("gen_ai.agent.name") or attrs.get("agent.name") or "")
    if not agent and attrs.get("traceloop.span.kind") == "agent":  # traceloop-sdk's @agent
        agent = str(attrs.get("traceloop.entity.name") or "")
    if not agent and str(attrs.get("openinference.span.kind", "")).upper() == "AGENT":
        agent = span_name  # OpenInference agents are named by their span
    if not workflow and attrs.get("gen_ai.operation.name") == "invoke_workflow" and span_name.startswith("invoke_workflow "):
        workflow = span_name[len("invoke_workflow "):]
    return workflow, agent


class WorkflowResolver:
    """Thread-safe, bounded memory of span → (parent, names) and trace → workflow."""

    def __init__(self, max_spans: int = 100_000, max_traces: int = 20_000) -> None:
        self.max_spans = max_spans
        self.max_traces = max_traces
        self._spans: OrderedDict[str, _Node] = OrderedDict()
        self._traces: OrderedDict[str, tuple[int, str]] = OrderedDict()  # trace → (rank, name)
        self._lock = threading.Lock()

    def observe(self, trace_id: str, span_id: str, parent_span_id: str, workflow: str, agent: str) -> None:
        if not span_id:
            return
        key = f"{trace_id}:{span_id}"
        with self._lock:
            old = self._spans.get(key)
            # A later sighting (at end) may add names set after start; keep what we knew.
            node = _Node(parent_span_id or (old.parent if old else ""),
                         workflow or (old.workflow if old else ""),
                         agent or (old.agent if old else ""))
            self._spans[key] = node
            self._spans.move_to_end(key)
            while len(self._spans) > self.max_spans:
                self._spans.popitem(last=False)
            # Trace-level fallback: a root workflow beats any workflow beats a root agent beats an agent.
            name, rank = (workflow, 2) if workflow else (agent, 0)
            if name:
                rank += 1 if not node.parent else 0
                prev = self._traces.get(trace_id)
                if prev is None or rank > prev[0]:
                    self._traces[trace_id] = (rank, name)
                    self._traces.move_to_end(trace_id)
                    while len(self._traces) > self.max_traces:
                        self._traces.popitem(last=False)

    def resolve(self, trace_id: str, span_id: str, fallback: str) -> tuple[str, str]:
        """(workflow, nearest agent name) for a span already observed."""
        outer_workflow = outer_agent = nearest_agent = ""
        seen: set[str] = set()
        with self._lock:
            current = span_id
            for _ in range(MAX_DEPTH):
                if not current or current in seen:
                    break
                seen.add(current)
                node = self._spans.get(f"{trace_id}:{current}")
                if node is None:
                    break
                if node.workflow:
                    outer_workflow = node.workflow
                if node.agent:
                    outer_agent = node.agent
                    nearest_agent = nearest_agent or node.agent
                current = node.parent
            trace_name = self._traces.get(trace_id, (0, ""))[1]
        return (outer_workflow or outer_agent or trace_name or fallback or "unknown"), nearest_agent
