"""Secret formats from a maintained scanner's catalogue: gitleaks' default rules, loaded as data.

`catalog/gitleaks.toml` is gitleaks' `config/gitleaks.toml` at tag v8.30.1, unchanged (MIT,
`catalog/LICENSE-gitleaks`); to update, replace the file and `CATALOG_VERSION`. Each rule
with a regex becomes a redaction `Rule`:

- class: the rule id with `_` for `-` (`gitlab-pat` -> placeholder `[SECRET:gitlab_pat]`);
- regex: translated from Go RE2 syntax to Python's (`translate`): inline `(?i)` in the middle
  of a pattern scopes to the rest of its group, `\\z` is `\\Z`, POSIX classes are spelled
  out; and, since prompts are prose rather than code, the end of a token may also be
  sentence punctuation (gitleaks accepts only a quote, a blank, `;` or the end);
- the secret group is redacted (gitleaks' `secretGroup`, else the first group that matched,
  else the whole match), so `api_key=` and the host around it stay readable;
- validator: gitleaks' `entropy` floor, its allowlists (regexes and stopwords on the secret or
  the match; path and commit conditions do not apply to a stream) and the global allowlist;
  like gitleaks, a `generic-*` rule also needs a digit in the secret;
- Hyperscan gate: the rule's keywords (caseless literals: cheap to compile and scan) when
  they are specific (`glpat-`, `twilio`); where a keyword is a common word or too short to
  say much (`ey` for JWTs, `s.`, `sk`, `jira`), the regex itself when it is bounded; the
  plain path without Hyperscan always uses the keywords, as gitleaks does. A match
  starts within the regex's width before a keyword and ends within it after.

Left out: rules that only match file paths (a stream has no paths), gitleaks'
`generic-api-key`, whose part our own keyed rule (`keyed_secret`: a credential word, then
a random-looking value) plays, and its `jwt`, which our `jwt` rule covers (see EXCLUDED). Pure: tomllib (or tomli on Python 3.10) and `re`.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple, Optional

from llmpulse.processors.redaction_rules import Rule, gate_width, shannon_entropy

try:
    import tomllib
except ImportError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

CATALOG = Path(__file__).resolve().parent / "catalog" / "gitleaks.toml"
CATALOG_VERSION = "gitleaks v8.30.1 config/gitleaks.toml (MIT)"
# Formats the catalogue does not know yet, in its format (see the file's header).
EXTRA = Path(__file__).resolve().parent / "catalog" / "llmpulse-extra.toml"
PRIORITY = 88  # below the hand rules for the same providers (90+), above JWT (85) and key=value (70)
GENERIC_PRIORITY = 65  # gitleaks' generic-api-key: below our own keyed rule
WINDOW = 512  # at most this many chars around a keyword a match may start before or run after
EXCLUDED = {
    "generic-api-key": "the keyed_secret rule plays its part",
    # Unbounded, and gated on the keyword "ey" (in most English words): our jwt rule covers it.
    "jwt": "the jwt rule covers it",
}
# Keywords that occur in ordinary prose or code: a gate on them would open windows everywhere.
COMMON_KEYWORDS = frozenset({"access", "api", "auth", "basic", "bearer", "credential", "creds", "jira", "key",
                             "passwd", "password", "secret", "token"})

_POSIX = {"alnum": "A-Za-z0-9", "alpha": "A-Za-z", "digit": "0-9", "xdigit": "0-9A-Fa-f", "upper": "A-Z",
          "lower": "a-z", "space": r"\s", "word": r"\w", "punct": r"!-/:-@\[-`{-~"}
# gitleaks' end of a token in code; prose also ends one with sentence punctuation.
_CODE_END = r"(?:[\x60'" '"' r"\s;]|\\[nr]|$)"
_PROSE_END = r"(?:[\x60'" '"' r"\s;.,:!?)\]}>]|\\[nr]|$)"


class CatalogRule(NamedTuple):
    id: str
    rule: Rule
    gate: str  # "regex": Hyperscan runs the rule's own regex; "keywords": its keywords


def translate(go: str, prose: bool = True) -> str:
    """A Go RE2 pattern as a Python one with the same meaning (on ASCII text)."""
    rx = go.replace(r"\z", r"\Z")
    for name, chars in _POSIX.items():
        rx = rx.replace(f"[:{name}:]", chars)
    if prose:
        rx = rx.replace(_CODE_END, _PROSE_END)
    # Go lets (?i) stand anywhere and apply to the rest of its group; Python wants it first.
    while True:
        j = rx.find("(?i)", 1)
        if j < 0:
            return rx
        end = _group_end(rx, j + 4)
        rx = f"{rx[:j]}(?i:{rx[j + 4:end]}){rx[end:]}"


def without_lookarounds(rx: str) -> str:
    """`rx` with its lookahead and lookbehind groups removed (a superset of its matches)."""
    for opener in ("(?=", "(?!", "(?<=", "(?<!"):
        while True:
            j = _find_unescaped(rx, opener)
            if j < 0:
                break
            rx = rx[:j] + rx[_group_end(rx, j + len(opener)) + 1 :]
    return rx


def _find_unescaped(rx: str, needle: str) -> int:
    j = rx.find(needle)
    while j > 0 and (len(rx[:j]) - len(rx[:j].rstrip("\\"))) % 2:  # preceded by an odd number of backslashes
        j = rx.find(needle, j + 1)
    return j


def _group_end(rx: str, k: int) -> int:
    depth, in_class, n = 0, False, len(rx)
    while k < n:
        c = rx[k]
        if c == "\\":
            k += 2
            continue
        if in_class:
            in_class = c != "]"
        elif c == "[":
            in_class = True
            if rx[k + 1 : k + 2] == "]":  # "[]...]": the first ] is literal
                k += 1
        elif c == "(":
            depth += 1
        elif c == ")":
            if depth == 0:
                return k
            depth -= 1
        k += 1
    return n


class _Allow(NamedTuple):
    regexes: tuple[re.Pattern[str], ...]
    stopwords: tuple[str, ...]
    target: str  # "secret" or "match" ("line": the match here)
    all_of: bool  # condition AND


def _allowlist(a: dict) -> Optional[_Allow]:
    all_of = a.get("condition", "OR").upper() == "AND"
    if all_of and (a.get("paths") or a.get("commits")):
        return None  # needs a path or commit to hold: never holds in a stream
    regexes = tuple(re.compile(translate(r, prose=False), re.ASCII) for r in a.get("regexes", ()))
    stopwords = tuple(w.lower() for w in a.get("stopwords", ()))
    if not regexes and not stopwords:
        return None
    target = "match" if a.get("regexTarget") in ("match", "line") else "secret"
    return _Allow(regexes, stopwords, target, all_of)


def _allowed(allows: tuple[_Allow, ...], secret: str, match: str) -> bool:
    r"""gitleaks searches an allowlist regex anywhere in its target. Ours on the secret describe
    a whole harmless secret (a documented example key, `s.` + 24 letters for a legacy Vault
    token), so they must match all of it: searched, `s\.[A-Za-z]{24}` also exempted every
    `hvs.` token whose body opens with 24 letters (about 1 in 120 tokens passed unredacted)."""
    low = secret.lower()
    for a in allows:
        checks = []
        if a.regexes:
            if a.target == "match":
                checks.append(any(r.search(match) for r in a.regexes))
            else:
                checks.append(any(r.fullmatch(secret) for r in a.regexes))
        if a.stopwords:
            checks.append(any(w in low for w in a.stopwords))
        if all(checks) if a.all_of else any(checks):
            return True
    return False


def _validator(group: int, entropy: float, allows: tuple[_Allow, ...], need_digit: bool):
    def check(_text: str, m: "re.Match[str]") -> Optional[tuple[int, int]]:
        g = group
        if g < 0:  # the first group that matched, else the whole match
            g = next((i for i in range(1, (m.re.groups or 0) + 1) if m.group(i)), 0)
        secret = m.group(g)
        if not secret:
            return None
        if entropy and shannon_entropy(secret) <= entropy:
            return None
        if need_digit and not any(c.isdigit() for c in secret):
            return None
        if allows and _allowed(allows, secret, m.group()):
            return None
        return m.span(g)

    return check


def _specific(keyword: str) -> bool:
    return keyword not in COMMON_KEYWORDS and (len(keyword) >= 5 or (len(keyword) >= 4 and not keyword.isalpha()))


def _rule(raw: dict, global_allows: tuple[_Allow, ...]) -> CatalogRule:
    rid = raw["id"]
    rx = translate(raw["regex"])
    regex = re.compile(rx, re.ASCII)
    allows = tuple(a for a in map(_allowlist, raw.get("allowlists", ())) if a) + global_allows
    generic = rid.startswith("generic")
    validate = _validator(raw.get("secretGroup", -1) or -1, float(raw.get("entropy", 0.0)), allows, generic)
    keywords = tuple(k.lower() for k in raw.get("keywords", ()))
    base = dict(cls=rid.replace("-", "_"), kind="secret", regex=regex, prefilter=keywords, lower=True,
                validate=validate, priority=GENERIC_PRIORITY if generic else PRIORITY)
    width = gate_width(rx)
    if width and not (keywords and all(map(_specific, keywords))):
        # Hyperscan has no lookarounds; without them (zero-width) the gate matches a superset
        # of the regex, from the same starts.
        return CatalogRule(rid, Rule(**base, gate=without_lookarounds(rx), back=0, fwd=0), "regex")  # type: ignore[arg-type]
    reach = min(width or WINDOW, WINDOW)
    gate = "|".join(re.escape(k) for k in keywords)
    return CatalogRule(rid, Rule(**base, gate=gate, gate_ci=True, back=reach, fwd=reach), "keywords")  # type: ignore[arg-type]


class Skipped(NamedTuple):
    id: str
    why: str


@lru_cache(maxsize=4)
def load(paths: tuple[Path, ...] = (CATALOG, EXTRA)) -> tuple[tuple[CatalogRule, ...], tuple[Skipped, ...]]:
    """The catalogues' rules, and those left out with the reason (the first file's global
    allowlist applies to all)."""
    cfgs = [tomllib.loads(p.read_text()) for p in paths]
    global_allows = tuple(a for a in [_allowlist(cfgs[0].get("allowlist", {}))] if a)
    rules: list[CatalogRule] = []
    skipped: list[Skipped] = []
    for raw in (raw for cfg in cfgs for raw in cfg.get("rules", ())):
        if raw["id"] in EXCLUDED:
            skipped.append(Skipped(raw["id"], EXCLUDED[raw["id"]]))
        elif not raw.get("regex"):
            skipped.append(Skipped(raw["id"], "matches file paths only"))
        elif raw.get("path"):
            skipped.append(Skipped(raw["id"], "needs a file path"))
        elif not raw.get("keywords") and not gate_width(translate(raw["regex"])):
            skipped.append(Skipped(raw["id"], "no keywords and unbounded: no gate"))
        else:
            try:
                rules.append(_rule(raw, global_allows))
            except re.error as exc:
                skipped.append(Skipped(raw["id"], f"Python re: {exc}"))
    return tuple(rules), tuple(skipped)


def summary() -> dict[str, Any]:
    rules, skipped = load()
    return {
        "version": CATALOG_VERSION,
        "extra": sum(1 for _ in tomllib.loads(EXTRA.read_text()).get("rules", ())),
        "rules": len(rules),
        "hyperscan_regex_gates": sum(r.gate == "regex" for r in rules),
        "keyword_gates": sorted(r.id for r in rules if r.gate == "keywords"),
        "skipped": [tuple(s) for s in skipped],
    }
