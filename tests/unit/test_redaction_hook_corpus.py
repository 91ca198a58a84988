"""The SDK hook over the redaction corpora: nothing the detectors find leaves the app, and the
clean-event fast path (one prefilter pass per event) gives exactly what the full pass gives."""

from __future__ import annotations

import copy
import random

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.redaction import values as V
from bench.redaction.corpus import generate
from bench.redaction.formats import CLEAN_SENTENCES, FORMATS, LOOKALIKES, SENTENCES_KEYWORD, SENTENCES_PLAIN
from bench.redaction.score import _covered, _leaks
from llmpulse.ingest import MemoryPublisher
from llmpulse.ingest.redaction_hook import _BASE_PLAN, _PLANS, _event_type, redaction_hook
from llmpulse.processors.redaction import Redactor

DETECTOR = Redactor()  # the default policy, the hook's default
BASE = {"trace_id": "t-1", "workflow": "support", "tenant": "acme", "model": "gpt-4o", "provider": "openai"}
CORPUS = generate(seed=7, n_docs=300, n_structs=0).docs


def _secret(draw: st.DrawFn) -> str:
    """A secret or personal value of a documented format, in one of the corpus's sentences."""
    r = random.Random(draw(st.integers(0, 2**32)))
    if draw(st.booleans()):
        value, _, _ = FORMATS[draw(st.sampled_from(sorted(FORMATS)))](r)
    else:
        value = draw(st.sampled_from([*V.SECRETS.values(), *V.PII.values()]))(r)
    return value


# Where a text can sit in an event, as an app would put it there.
PLACES = {
    "output.content": lambda t: {"event_type": "output", "status": "ok", "content": t},
    "prompt.message": lambda t: {"event_type": "prompt", "messages": [
        {"role": "system", "content": "You are helpful."}, {"role": "user", "content": t}]},
    "tool.arguments": lambda t: {"event_type": "tool_call", "tool_name": "search", "arguments": {"q": {"text": [t]}}},
    "tool.result": lambda t: {"event_type": "tool_call", "tool_name": "search", "result": t},
    "unknown field": lambda t: {"event_type": "output", "status": "ok", "debug": {"note": t}},
    "attributes": lambda t: {"event_type": "output", "status": "ok", "attributes": {"gen_ai.note": t}},
    "error_type": lambda t: {"event_type": "output", "status": "error", "error_type": t},
    # A key that tells what its value is: redacted whatever the text scan says.
    "keyed argument": lambda t: {"event_type": "tool_call", "tool_name": "login", "arguments": {"password": t}},
    "keyed unknown field": lambda t: {"event_type": "output", "status": "ok", "customer_phone": t},
    "keyed number": lambda t: {"event_type": "output", "status": "ok", "pin": len(t) * 1000 + 7},
}


@st.composite
def placed(draw: st.DrawFn, text: st.SearchStrategy[str]) -> tuple[str, dict]:
    t = draw(text)
    return t, {**BASE, **PLACES[draw(st.sampled_from(sorted(PLACES)))](t)}


@st.composite
def seeded(draw: st.DrawFn) -> tuple[str, str]:
    value = _secret(draw)
    sentence = draw(st.sampled_from(SENTENCES_KEYWORD + SENTENCES_PLAIN))
    return value, sentence.format(v=value)


def _full_pass(hook, event: dict) -> dict:  # type: ignore[no-untyped-def]
    """The hook's walk without its fast path: the oracle for the fast path."""
    redactor = hook._redactor_for(event.get("tenant") or "default", event.get("workflow") or "")
    return hook._redact_fields(event, redactor, _PLANS.get(_event_type(event), _BASE_PLAN))[0]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_no_detected_secret_leaves_the_app(data: st.DataObject) -> None:
    value, text = data.draw(seeded())
    _, event = data.draw(placed(st.just(text)))
    pub = MemoryPublisher()  # the publisher's default hooks: redaction on
    assert pub.publish(copy.deepcopy(event))
    raw = orjson.dumps(pub.events[-1])
    at = text.index(value)
    if _covered(at, at + len(value), DETECTOR.find(text)):  # what the detectors find in the text alone
        assert not _leaks(value, raw), (value, raw)
    # Fast path or not, the same bytes as the full walk.
    assert raw == orjson.dumps(_full_pass(pub.redaction, {**copy.deepcopy(event), **_stamps(pub.events[-1])}))


def _stamps(out: dict) -> dict:
    return {k: out[k] for k in ("event_id", "ts", "schema_version")}


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_fast_path_equals_full_pass_on_corpus_and_lookalikes(data: st.DataObject) -> None:
    r = random.Random(data.draw(st.integers(0, 2**32)))
    choice = data.draw(st.sampled_from(["corpus", "lookalike", "name"]))
    if choice == "corpus":
        text = data.draw(st.sampled_from(CORPUS)).text
    else:
        value = LOOKALIKES[data.draw(st.sampled_from(sorted(LOOKALIKES)))](r)
        text = r.choice(CLEAN_SENTENCES).format(v=value)
    _, event = data.draw(placed(st.just(text)))
    if choice == "name":  # names are scanned for secrets only; an e-mail as a user id stays
        event["user_id"] = data.draw(st.sampled_from([V.email(r), _secret(data.draw), "u-42"]))
    event = {**event, "event_id": "e" * 32, "ts": 1_764_000_000_000, "schema_version": "1"}
    hook = redaction_hook()
    fast = hook(copy.deepcopy(event))
    assert orjson.dumps(fast) == orjson.dumps(_full_pass(redaction_hook(), copy.deepcopy(event)))


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300), st.sampled_from(sorted(PLACES)))
def test_fast_path_equals_full_pass_on_any_text(text: str, place: str) -> None:
    event = {**BASE, **PLACES[place](text), "event_id": "e" * 32, "ts": 1, "schema_version": "1"}
    assert orjson.dumps(redaction_hook()(copy.deepcopy(event)), option=orjson.OPT_NON_STR_KEYS) == orjson.dumps(
        _full_pass(redaction_hook(), copy.deepcopy(event)), option=orjson.OPT_NON_STR_KEYS)


def test_a_clean_event_is_passed_on_as_it_is() -> None:
    event = {**BASE, "event_type": "output", "status": "ok", "content": "The order shipped on Tuesday.",
             "usage": {"input_tokens": 12, "output_tokens": 3}, "event_id": "e" * 32, "ts": 1, "schema_version": "1"}
    assert redaction_hook()(event) is event


def test_usage_keys_outside_the_contract_are_scanned() -> None:
    # usage is admitted by class only under the contract's own keys: a key is text too.
    token = "ghp_7Yt3Rk9Wq2Lp5Zx8Cv1Bn4Mj6Hg0Fd2Sa3Qe"
    event = {**BASE, "event_type": "output", "status": "ok", "usage": {token: 1, "input_tokens": 3},
             "event_id": "e" * 32, "ts": 1, "schema_version": "1"}
    out = redaction_hook()(event)
    assert token not in orjson.dumps(out).decode()
