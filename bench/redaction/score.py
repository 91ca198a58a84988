"""Score redaction on the labelled corpus: recall, false redactions, throughput.

    .venv/bin/python -m bench.redaction.score [--seeds 1 2 3] [--docs 4000]

Recall: a seeded value counts as caught when redacted spans cover all of it (text
documents) or when it no longer occurs in the encoded redacted event (tool calls with
dict arguments). False redaction: a tricky clean value (UUID, hash, order number, date,
version, price...) touched by any redacted span, and clean fields changed at all.
Throughput: `Redactor.redact_text` over every document, one core (process CPU time, so
other jobs on a shared machine do not count), best of 3, on a traffic mix (same document
kinds and tricky values, sensitive values at realistic rates: the floor), and on the
labelled corpus itself (dense with positives: a worst case, printed for information).

Formats (`formats.py`): every secret format of widely used services, generated from its
documented shape, in sentences with and without a credential word nearby, and clean
look-alikes (UUIDs, git SHAs, hashes, base64 images, order numbers, trace ids...): recall
per format (the secret part fully covered by redacted spans) and false redaction (a
look-alike touched by any span). Exits non-zero when a floor is missed.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections import Counter
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import msgspec  # noqa: E402

from bench.redaction.corpus import Corpus, generate, generate_traffic  # noqa: E402
from bench.redaction.formats import (  # noqa: E402
    CLEAN_KEYWORD_SENTENCES, CLEAN_SENTENCES, CONTEXT_FORMATS, FORMATS, LOOKALIKES, SENTENCES_CONTEXT,
    SENTENCES_KEYWORD, SENTENCES_PLAIN,
)
from llmpulse.processors.redaction import Redactor  # noqa: E402
from llmpulse.schemas.contract import encode_event  # noqa: E402

FLOORS = {"secret_recall": 0.99, "pii_recall": 0.95, "false_rate": 0.01, "mb_per_s": 20.0}
FORMAT_FLOORS = {"recall": 0.99, "per_format": 0.95, "false_rate": 0.005}


def score(corpus: Corpus, redactor: Redactor) -> dict:
    hits: Counter = Counter()
    totals: Counter = Counter()
    missed: Counter = Counter()
    false_items: Counter = Counter()
    clean_fields = changed_clean_fields = 0
    for doc in corpus.docs:
        spans = redactor.find(doc.text)
        if not any(it.kind != "clean" for it in doc.items):
            clean_fields += 1
            changed_clean_fields += bool(spans)
        for it in doc.items:
            if it.kind == "clean":
                totals["clean"] += 1
                if any(s.start < it.end and it.start < s.end for s in spans):
                    false_items[it.cls] += 1
                    hits["false"] += 1
                continue
            totals[it.kind] += 1
            if _covered(it.start, it.end, spans):
                hits[it.kind] += 1
            else:
                missed[it.cls] += 1
    for sample in corpus.structs:
        red, _ = redactor.redact_event(sample.event)
        raw = encode_event(red)
        for value, cls, kind in sample.seeded:
            totals[kind] += 1
            if _leaks(value, raw):
                missed[cls] += 1
            else:
                hits[kind] += 1
        for value in sample.clean:
            totals["clean"] += 1
            if not _leaks(value, raw):
                false_items["struct:" + value[:3]] += 1
                hits["false"] += 1
    return {
        "secret_recall": hits["secret"] / max(totals["secret"], 1),
        "pii_recall": hits["pii"] / max(totals["pii"], 1),
        "false_rate": hits["false"] / max(totals["clean"], 1),
        "clean_field_rate": changed_clean_fields / max(clean_fields, 1),
        "n_secret": totals["secret"],
        "n_pii": totals["pii"],
        "n_clean": totals["clean"],
        "n_clean_fields": clean_fields,
        "missed": dict(missed.most_common(8)),
        "false_items": dict(false_items.most_common(8)),
    }


def _covered(start: int, end: int, spans: list) -> bool:
    pos = start
    for s in spans:  # sorted, non-overlapping
        if s.start <= pos < s.end:
            pos = s.end
        if pos >= end:
            return True
    return False


def _leaks(value: str, raw: bytes) -> bool:
    return value.encode() in raw or msgspec.json.encode(value)[1:-1] in raw


def throughput(texts: list[str], redactor: Redactor, rounds: int = 3) -> tuple[float, float]:
    mb = sum(len(t.encode()) for t in texts) / 1e6
    best = float("inf")
    for _ in range(rounds):
        t0 = time.process_time()
        for t in texts:
            redactor.redact_text(t)
        best = min(best, time.process_time() - t0)
    return mb / best, mb


def score_formats(seed: int, redactor: Redactor, per_format: int = 60, per_lookalike: int = 200) -> dict:
    """Recall per format (a third of the sentences name a credential word) and false redaction."""
    r = random.Random(seed)
    recall: dict[str, float] = {}
    texts: list[str] = []
    for name, gen in {**FORMATS, **CONTEXT_FORMATS}.items():
        hit = 0
        for i in range(per_format):
            value, a, b = gen(r)
            if name in CONTEXT_FORMATS:  # only a credential word can tell these
                sentences = SENTENCES_CONTEXT
            else:
                sentences = SENTENCES_KEYWORD if i % 3 == 0 else SENTENCES_PLAIN
            text = r.choice(sentences).format(v=value)
            at = text.index(value)
            hit += _covered(at + a, at + b, redactor.find(text))
            texts.append(text)
        recall[name] = hit / per_format
    false: Counter = Counter()
    n_clean = 0
    for name, make in LOOKALIKES.items():
        for i in range(per_lookalike):
            value = make(r)
            text = r.choice(CLEAN_KEYWORD_SENTENCES if i % 4 == 0 else CLEAN_SENTENCES).format(v=value)
            at = text.index(value)
            n_clean += 1
            if any(s.start < at + len(value) and at < s.end for s in redactor.find(text)):
                false[name] += 1
            texts.append(text)
    mbps, _ = throughput(texts, redactor)
    return {
        "recall": sum(recall.values()) / len(recall),
        "per_format": min(recall.values()),
        "by_format": recall,
        "false_rate": sum(false.values()) / n_clean,
        "false": dict(false),
        "n_clean": n_clean,
        "mb_per_s": mbps,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--docs", type=int, default=4000)
    ap.add_argument("--per-format", action="store_true", help="print the recall of every format")
    args = ap.parse_args(argv)
    redactor = Redactor()
    engine = "hyperscan gate" if redactor.accelerated else "plain re (install hyperscan for speed)"
    print(f"engine: {engine}")
    ok = True
    for seed in args.seeds:
        corpus = generate(seed, n_docs=args.docs)
        res = score(corpus, redactor)
        mbps, mb = throughput(generate_traffic(seed, n_docs=args.docs), redactor)
        dense, _ = throughput([d.text for d in corpus.docs], redactor)
        res["mb_per_s"] = mbps
        fails = [
            k for k, floor in FLOORS.items() if (res[k] > floor if k == "false_rate" else res[k] < floor)
        ] + (["clean_field_rate"] if res["clean_field_rate"] > FLOORS["false_rate"] else [])
        ok = ok and not fails
        print(
            f"seed {seed}: secrets recall {res['secret_recall']:.4f} (n={res['n_secret']}, floor 0.99)  "
            f"PII recall {res['pii_recall']:.4f} (n={res['n_pii']}, floor 0.95)  "
            f"false redactions {res['false_rate']:.4%} of {res['n_clean']} tricky clean values, "
            f"{res['clean_field_rate']:.2%} of {res['n_clean_fields']} clean fields (floor 1%)  "
            f"throughput {mbps:.1f} MB/s on {mb:.1f} MB of traffic mix (floor 20), "
            f"{dense:.1f} MB/s on the dense labelled corpus  {'OK' if not fails else 'FAIL ' + ','.join(fails)}"
        )
        if res["missed"]:
            print(f"    missed by class: {res['missed']}")
        if res["false_items"]:
            print(f"    false redactions by clean type: {res['false_items']}")
        fm = score_formats(seed, redactor)
        fails = [k for k, floor in FORMAT_FLOORS.items() if (fm[k] > floor if k == "false_rate" else fm[k] < floor)]
        ok = ok and not fails
        print(
            f"seed {seed}, {len(FORMATS) + len(CONTEXT_FORMATS)} secret formats: recall {fm['recall']:.4f} (floor 0.99), lowest format "
            f"{fm['per_format']:.2f} (floor 0.95), false redactions {fm['false_rate']:.3%} of {fm['n_clean']} "
            f"look-alikes (floor 0.5%), {fm['mb_per_s']:.1f} MB/s on these sentences  {'OK' if not fails else 'FAIL ' + ','.join(fails)}"
        )
        if args.per_format or fails:
            print("    recall by format: " + ", ".join(f"{k} {v:.2f}" for k, v in sorted(fm["by_format"].items(), key=lambda kv: kv[1])))
        if fm["false"]:
            print(f"    false redactions by look-alike: {fm['false']}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
