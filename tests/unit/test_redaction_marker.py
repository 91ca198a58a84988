"""The redaction marker: what the SDK says of the pass it ran, and when a worker believes it."""

from __future__ import annotations

import subprocess
import sys

from hypothesis import given, settings
from hypothesis import strategies as st

from llmpulse.ingest import KafkaPublisher
from llmpulse.ingest.redaction_hook import redaction_hook
from llmpulse.processors.redaction import ACTIONS, Policy, Redactor
from llmpulse.processors.redaction_config import RedactionSettings

MARK = Redactor().marker


def test_the_marker_is_the_same_in_every_process() -> None:
    # Sets and code objects hash or print differently per process: the digest must not.
    code = "from llmpulse.processors.redaction import Redactor; print(Redactor().marker.decode())"
    got = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={"PYTHONHASHSEED": str(seed)}).stdout.strip() for seed in (1, 2)}
    assert got == {MARK.decode()}


@settings(max_examples=30, deadline=None)
@given(st.sampled_from(ACTIONS), st.sampled_from(ACTIONS), st.dictionaries(st.sampled_from(["email", "phone", "jwt"]),
                                                                          st.sampled_from(ACTIONS), max_size=2))
def test_trusted_only_for_a_listed_tenant_and_the_scopes_own_policy(secrets, pii, classes) -> None:
    key = "k" if "hash" in (secrets, pii, *classes.values()) else ""
    sdk = Redactor(Policy(secrets, pii, classes), key, "acme")
    worker = RedactionSettings(trust_upstream=["acme"], hash_key=key or "x",
                               defaults={"secrets": secrets, "pii": pii, "classes": classes})
    assert worker.trusts("acme", "wf", sdk.marker)
    assert not worker.trusts("globex", "wf", sdk.marker)  # tenant not listed
    assert not worker.trusts("acme", "wf", None)  # not marked
    assert not worker.trusts("acme", "wf", b"1:0000000000000000:" + sdk.marker.rsplit(b":", 1)[1])  # other rules
    assert not RedactionSettings(hash_key="x", defaults={"secrets": secrets, "pii": pii, "classes": classes}).trusts(
        "acme", "wf", sdk.marker)  # the default trusts no one
    stricter = "drop_content" if pii != "drop_content" else "mask"
    other = RedactionSettings(trust_upstream=["*"], hash_key=key or "x", defaults={"secrets": secrets, "pii": pii, "classes": classes},
                              overrides=[{"tenant": "acme", "pii": stricter}])
    assert not other.trusts("acme", "wf", sdk.marker)  # this scope's policy is another
    assert other.trusts("initech", "wf", Redactor(Policy(secrets, pii, classes), key, "initech").marker)  # "*": any tenant
    if key:  # `hash` output is keyed per tenant: another tenant's pass, or another key, is not this one
        assert not other.trusts("initech", "wf", sdk.marker)
        assert not worker.trusts("acme", "wf", Redactor(Policy(secrets, pii, classes), "other-key", "acme").marker)


def test_the_publisher_marks_only_when_redaction_runs_last() -> None:
    hook = redaction_hook()
    after = [hook, lambda e: {**e, "content": "added after the redaction"}]
    for hooks, redaction, marks in (((), True, True), ((), False, False), ((hook,), True, True), (after, True, False)):
        pub = KafkaPublisher("127.0.0.1:1", "t", hooks=hooks, redaction=redaction, config={"message.timeout.ms": 1000})
        try:
            assert pub._marks is marks
            if marks:
                assert pub.redaction.headers_for({"tenant": "acme"}) == [("llmpulse-redacted", MARK)]
        finally:
            pub.close(0)
