"""Detectors for secrets and personal data: regexes, checksums, and a cheap prefilter.

Pure and I/O-free. Each rule is one compiled regex run only when one of its literal
prefilters occurs in the text, so clean prose costs a few `str.find` calls per rule.
Checksums (Luhn, IBAN mod-97) and shape checks run on the few candidates left, which
is what keeps order numbers, dates and versions from being redacted.
"""

from __future__ import annotations

import ipaddress
import math
import re
import string
from collections import Counter
from typing import Callable, Iterable, Literal, NamedTuple, Optional

Kind = Literal["secret", "pii"]
# A validator sees the text and the match; it returns the span to redact, or None.
Validator = Callable[[str, "re.Match[str]"], Optional[tuple[int, int]]]


class Rule(NamedTuple):
    cls: str  # class label, e.g. "aws_access_key", "email"
    kind: Kind
    regex: re.Pattern[str]
    prefilter: tuple[str, ...] = ()  # run only if one of these occurs; () = always
    lower: bool = False  # prefilter against the lower-cased text
    validate: Optional[Validator] = None
    priority: int = 50  # wins overlaps; secrets outrank PII
    # Gate for the multi-pattern scanner (redaction_scan): an ASCII pattern that matches
    # wherever `regex` can, near its start. A match of `regex` starts in
    # [gate start - back, gate end] and ends before gate end + fwd.
    gate: str = ""
    gate_ci: bool = False
    back: int = 0
    fwd: int = 64


class Span(NamedTuple):
    start: int
    end: int
    cls: str
    kind: Kind
    priority: int


# ---------------------------------------------------------------- checks


def luhn_valid(digits: str) -> bool:
    """Luhn mod-10 over a string of digits (payment cards, some national ids)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0 and len(digits) > 1


# Official IBAN lengths per country (SWIFT registry); an unknown country is no IBAN.
IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28,
    "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23,
    "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26,
    "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20,
    "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MR": 27, "MT": 31, "MU": 30, "NL": 18,
    "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24,
    "SC": 31, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "ST": 25, "SV": 28, "TL": 23, "TN": 24,
    "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}  # fmt: skip


def iban_valid(iban: str) -> bool:
    """ISO 13616: known country, its length, and mod-97 == 1 over the rearranged digits."""
    s = iban.replace(" ", "").upper()
    if IBAN_LENGTHS.get(s[:2]) != len(s) or not s[2:4].isdigit() or not s.isalnum():
        return False
    rearranged = s[4:] + s[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


def shannon_entropy(s: str) -> float:
    """Bits per character; random base64 is ~5-6, English words ~3-4, 'aaaa' 0."""
    n = len(s)
    if not n:
        return 0.0
    return -sum(c / n * math.log2(c / n) for c in Counter(s).values())


_LOWER = frozenset(string.ascii_lowercase)
_UPPER = frozenset(string.ascii_uppercase)
_DIGITS = frozenset(string.digits)


def _char_classes(s: str) -> int:
    chars = set(s)  # set operations in C: validators run on every candidate
    return (not _LOWER.isdisjoint(chars)) + (not _UPPER.isdisjoint(chars)) + (not _DIGITS.isdisjoint(chars))


def _has_digit(s: str) -> bool:
    return not _DIGITS.isdisjoint(s)


def _count_digits(s: str) -> int:
    return len(s) - len(s.translate(_DROP_DIGITS))


_DROP_DIGITS = str.maketrans("", "", string.digits)


# Values that are references or placeholders, not the secret itself.
_PLACEHOLDER = re.compile(
    r"""^(?:[$%<\[{*#]|x{3,}|\.{3}|(?:none|null|nil|true|false|undefined|redacted|masked|hidden|
    your[_-]?\w*|changeme_placeholder|example|string|str|env|secret|password|token|os\.\w+|
    process\.env\w*|getenv\w*|settings\.\w+|config\.\w+|self\.\w+)$)""",
    re.IGNORECASE | re.VERBOSE,
)


def is_placeholder(value: str) -> bool:
    return not value or bool(_PLACEHOLDER.match(value)) or len(set(value)) <= 2


def looks_random(value: str, min_len: int = 16, min_entropy: float = 3.0) -> bool:
    """A token-like value: long, mixed character classes, high entropy, not a placeholder.

    Without a digit it must be longer and richer: a 40-char base64 secret can lack
    digits, a snake_case identifier in prose has an entropy under 4 bits.
    """
    if len(value) < min_len or is_placeholder(value):
        return False
    entropy = shannon_entropy(value)
    if _has_digit(value):
        return _char_classes(value) >= 2 and entropy >= min_entropy
    return len(value) >= 24 and _char_classes(value) >= 2 and entropy >= 4.0


def _password_like(value: str) -> bool:
    # Short prose after "password:" ("reset", "the") is not a password; real ones
    # are longer or carry a digit or symbol.
    if is_placeholder(value) or len(value) < 4 or "://" in value:
        return False
    return len(value) >= 8 or not value.isalpha()


# ---------------------------------------------------------------- validators


def _whole(_text: str, m: re.Match[str]) -> tuple[int, int]:
    return m.span()


def _group(n: int | str) -> Validator:
    def check(_text: str, m: re.Match[str]) -> Optional[tuple[int, int]]:
        return m.span(n) if m.group(n) and not is_placeholder(m.group(n)) else None

    return check


def _random_token(_text: str, m: re.Match[str]) -> Optional[tuple[int, int]]:
    return m.span() if _char_classes(m.group()) == 3 else None


def _bearer(_text: str, m: re.Match[str]) -> Optional[tuple[int, int]]:
    return m.span(1) if looks_random(m.group(1), 16, 3.0) else None


# Keyword of a key=value pair -> class and how strict the value check is.
_PASSWORD_WORDS = ("pass", "pwd")


def _keyed_value(text: str, m: re.Match[str]) -> Optional[tuple[int, int]]:
    gi = "dq" if m.group("dq") is not None else "sq" if m.group("sq") is not None else "bare"
    value = m.group(gi)
    keyword = m.group("kw").lower()
    if keyword.startswith(_PASSWORD_WORDS):
        ok = _password_like(value)
        if ok and "=" not in m.group("sep") and ":" not in m.group("sep"):
            # "my password is ..." in prose: only values no sentence would hold (a digit,
            # a symbol, or a passphrase of 3+ joined words; not "auto-generated").
            core = value.rstrip(".!?")
            ok = (
                _has_digit(core)
                or not core.replace("-", "").isalpha()
                or core.count("-") >= 2
            )
    else:
        ok = looks_random(value, 16, 3.0)
    return m.span(gi) if ok else None


def keyed_class(text: str, m: re.Match[str]) -> str:
    """Class of a key=value secret, from its key (and the few chars before it)."""
    keyword = m.group("kw").lower()
    if keyword.startswith(_PASSWORD_WORDS):
        return "password"
    if "aws" in text[max(0, m.start() - 24) : m.start()].lower():
        return "aws_secret_key"
    return "generic_secret"


# Credential words (lower case; the rule is case-insensitive) and the verbs that may stand
# between one and its value ("the password is ...", "la clave es ...", "das Token lautet ...").
_CREDENTIAL_WORDS = (
    "passwords?", "passwd", "passphrase", "pwd", "secrets?", "tokens?", r"api[ _-]?keys?", r"access[ _-]?keys?",
    "keys?", "credentials?", "passwort", "kennwort", "schlüssel", r"api-schlüssel", "zugangsdaten", "mot de passe",
    "jeton", "clé", r"clé api", "clé secrète", "contraseña", "clave", "clave secreta", "secreto", "chiave",
    "chiave segreta", "segreto", "senha", "chave", "segredo",
    "wachtwoord", "sleutel", "hasło", "klucz", "пароль", "ключ", "токен", "секрет", "パスワード", "トークン",
    "キー", "密码", "密钥", "令牌", "비밀번호", "토큰",
)  # fmt: skip
_COPULAS = ("is", "was", "are", "ist", "lautet", "est", "es", "era", "è", "é", "er", "jest", "это", "は", "是", "는")
# Literal starts of the words, for the prefilter and the Hyperscan gate (both cased first
# letters of the non-ASCII words: the gate folds ASCII case only).
_CREDENTIAL_PREFIXES = (
    "pass", "pwd", "secret", "token", "key", "credential", "kennwort", "schl\u00fcssel", "zugangsdaten",
    "mot de passe", "jeton", "cl\u00e9", "contrase\u00f1a", "clave", "secreto", "chiave", "segreto", "senha",
    "chave", "segredo", "wachtwoord", "sleutel", "has\u0142o", "klucz", "\u043f\u0430\u0440\u043e\u043b\u044c",
    "\u041f\u0430\u0440\u043e\u043b\u044c", "\u043a\u043b\u044e\u0447", "\u041a\u043b\u044e\u0447",
    "\u0442\u043e\u043a\u0435\u043d", "\u0422\u043e\u043a\u0435\u043d", "\u0441\u0435\u043a\u0440\u0435\u0442",
    "\u0421\u0435\u043a\u0440\u0435\u0442", "\u30d1\u30b9\u30ef\u30fc\u30c9", "\u30c8\u30fc\u30af\u30f3",
    "\u30ad\u30fc", "\u5bc6\u7801", "\u5bc6\u94a5", "\u4ee4\u724c", "\ube44\ubc00\ubc88\ud638", "\ud1a0\ud070",
)  # fmt: skip
_EXPLICIT = frozenset(":=\uff1a")


def _contextual(text: str, m: re.Match[str]) -> Optional[tuple[int, int]]:
    if m.start() and text[m.start() - 1].isalpha():  # "monkey ...", "passkey": inside a word
        return None
    start = m.start("v")
    value = m.group("v").rstrip(".")  # a sentence's full stop is not part of it
    if not value[:1].isalnum() or not looks_random(value, 16, 3.0):
        return None
    # Only a ":" or "=" makes a value of two character classes (hex, lower+digits) a secret;
    # after a bare word ("the token abc123...") it needs all three and must not look like an
    # object id or a digest ("req_...", "sha512-..."). A bare "key" is a cache, primary or
    # idempotency key unless a ":" or "=" follows, and even then needs all three classes.
    explicit = not _EXPLICIT.isdisjoint(m.group("sep"))
    if m.group("kw").lower().startswith("key"):
        if not explicit:
            return None
        explicit = False
    if not explicit and (_char_classes(value) < 3 or shannon_entropy(value) < 3.5 or _ID_SHAPE.match(value)):
        return None
    return start, start + len(value)


_ID_SHAPE = re.compile(r"(?:[a-z]{2,12}[_:-]|sha\d{1,3}[-:]|md5[-:])")


_CARD_GROUPINGS = {(4, 4, 4, 4), (4, 6, 5), (4, 6, 4), (4, 4, 4, 4, 3), (4, 4, 4, 4, 2), (4, 4, 4, 1)}


def _card(_text: str, m: re.Match[str]) -> Optional[tuple[int, int]]:
    raw = m.group()
    digits = raw.replace(" ", "").replace("-", "")
    if not 13 <= len(digits) <= 19 or not _card_iin(digits) or not luhn_valid(digits):
        return None
    groups = tuple(len(g) for g in re.split(r"[ -]", raw))
    # Cards are written whole or in 4s (Amex 4-6-5); other groupings are phones, ids.
    if len(groups) > 1 and groups not in _CARD_GROUPINGS:
        return None
    return m.span()


def _card_iin(d: str) -> bool:
    # Issuer prefixes: Visa, Mastercard, Amex, Discover, JCB, Diners, UnionPay, Maestro.
    if d[0] == "4":
        return True
    two, four = int(d[:2]), int(d[:4])
    return (
        51 <= two <= 55
        or 2221 <= four <= 2720
        or two in (34, 37, 36, 38, 62, 65)
        or four == 6011
        or 644 <= int(d[:3]) <= 649
        or 3528 <= four <= 3589
        or 300 <= int(d[:3]) <= 305
        or two in (50, 56, 57, 58, 63, 67)
    )


def _iban(_text: str, m: re.Match[str]) -> Optional[tuple[int, int]]:
    raw = m.group()
    want = IBAN_LENGTHS.get(raw[:2])
    if want is None:
        return None
    # The candidate may run into a following word; cut it at the country's length.
    n, end = 0, 0
    for i, ch in enumerate(raw):
        if ch != " ":
            n += 1
            if n == want:
                end = i + 1
                break
    if not end or (end < len(raw) and raw[end] != " "):
        return None
    return (m.start(), m.start() + end) if iban_valid(raw[:end]) else None


def _ssn(_text: str, m: re.Match[str]) -> Optional[tuple[int, int]]:
    area, group, serial = m.group(1), m.group(3), m.group(4)
    if area in ("000", "666") or area[0] == "9" or group == "00" or serial == "0000":
        return None
    return m.span()


# "Version=4.0.0.0", "build 1.2.3.4": four-part version strings, not addresses.
_VERSION_BEFORE = re.compile(r"(?:\bversion|\bver|\brelease|\bbuild|\bv)\s*[:=]?\s*[\"']?$")


def _ipv4(text: str, m: re.Match[str]) -> Optional[tuple[int, int]]:
    first = m.group().split(".", 1)[0]
    if first in ("0", "127", "255"):  # unspecified, loopback, netmasks: not about anyone
        return None
    if _VERSION_BEFORE.search(text[max(0, m.start() - 12) : m.start()].lower()):
        return None
    return m.span()


def _ipv6(_text: str, m: re.Match[str]) -> Optional[tuple[int, int]]:
    raw = m.group()
    groups = [g for g in raw.split(":") if g]
    # "1::2" in a slice, "12:30:45" times: require a real-looking address.
    if len(groups) < 3 and not (groups and len(groups[0]) == 4 and "::" in raw):
        return None
    try:
        addr = ipaddress.IPv6Address(raw)
    except ValueError:
        return None
    if addr.is_loopback or addr.is_unspecified:
        return None
    return m.span()


def _phone(_text: str, m: re.Match[str]) -> Optional[tuple[int, int]]:
    raw = m.group(m.lastindex or 0) if m.lastindex else m.group()
    n = _count_digits(raw)
    if not 7 <= n <= 15:
        return None
    return m.span(m.lastindex) if m.lastindex else m.span()


_FILE_TLDS = {"png", "jpg", "jpeg", "gif", "svg", "webp", "ico", "js", "css", "map", "json", "txt"}


def _email(text: str, m: re.Match[str]) -> Optional[tuple[int, int]]:
    local, _, domain = m.group().partition("@")
    if domain.rsplit(".", 1)[-1].lower() in _FILE_TLDS:  # logo@2x.png
        return None
    if local == "git" and text[m.end() : m.end() + 1] == ":":  # git@github.com:org/repo
        return None
    return m.span()


def _nino(_text: str, m: re.Match[str]) -> Optional[tuple[int, int]]:
    prefix = m.group()[:2]
    if prefix in ("BG", "GB", "NK", "KN", "TN", "NT", "ZZ"):
        return None
    return m.span()


# ---------------------------------------------------------------- rules

_TOK = r"(?<![A-Za-z0-9_-])"  # start of a token-like value
_TOK_END = r"(?![A-Za-z0-9_-])"


def _rx(pattern: str, flags: int = 0) -> re.Pattern[str]:
    # ASCII classes: faster, and the same \d \s \w as the byte-level gate scanner.
    return re.compile(pattern, flags | re.ASCII)


SECRET_RULES: tuple[Rule, ...] = (
    Rule(
        "private_key",
        "secret",
        _rx(
            r"-----BEGIN[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----"
            r"(?:.{0,20000}?-----END[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----|[A-Za-z0-9+/=\s\\:,.-]{0,20000})",
            re.DOTALL,
        ),
        ("-----BEGIN",),
        priority=100,
        gate=r"-----BEGIN[A-Z0-9 ]{0,40}PRIVATE KEY",
        fwd=20_100,
    ),
    Rule(
        "anthropic_key",
        "secret",
        _rx(_TOK + r"sk-ant-(?:api|admin|sid|oat)\d{2}-[A-Za-z0-9_-]{20,}"),
        ("sk-ant-",),
        priority=95,
        gate=r"sk-ant-",
        fwd=1024,
    ),
    Rule(
        "openai_key",
        "secret",
        _rx(_TOK + r"sk-(?!ant-)(?:proj-|svcacct-|admin-|None-)?[A-Za-z0-9_-]{20,}" + _TOK_END),
        ("sk-",),
        validate=_random_token,
        priority=90,
        gate=r"sk-[A-Za-z0-9_-]{20}",
        fwd=1024,
    ),
    Rule(
        "aws_access_key",
        "secret",
        _rx(r"(?<![A-Za-z0-9])(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}(?![A-Za-z0-9])"),
        ("AKIA", "ASIA", "ABIA", "ACCA"),
        priority=90,
        gate=r"A(?:KIA|SIA|BIA|CCA)[A-Z0-9]{16}",
    ),
    Rule(
        "gcp_api_key",
        "secret",
        _rx(_TOK + r"AIza[0-9A-Za-z_-]{35}" + _TOK_END),
        ("AIza",),
        priority=90,
        gate=r"AIza[0-9A-Za-z_-]{35}",
    ),
    Rule(
        "gcp_oauth_token",
        "secret",
        _rx(_TOK + r"ya29\.[0-9A-Za-z_-]{20,}"),
        ("ya29.",),
        priority=90,
        gate=r"ya29\.",
        fwd=4096,
    ),
    Rule(
        "gcp_client_secret",
        "secret",
        _rx(r"GOCSPX-[0-9A-Za-z_-]{24,}"),
        ("GOCSPX-",),
        priority=90,
        gate=r"GOCSPX-",
        fwd=256,
    ),
    Rule(
        "azure_storage_key",
        "secret",
        _rx(r"(?:AccountKey|SharedAccessKey)\s*=\s*([A-Za-z0-9+/]{20,}={0,2})"),
        ("AccountKey", "SharedAccessKey"),
        validate=_group(1),
        priority=90,
        gate=r"AccountKey|SharedAccessKey",
        fwd=512,
    ),
    Rule(
        "azure_sas_token",
        "secret",
        _rx(r"[?&]sig=([A-Za-z0-9%+/]{20,}(?:%3[Dd]|=){0,2})"),
        ("sig=",),
        validate=_group(1),
        priority=90,
        gate=r"[?&]sig=",
        fwd=512,
    ),
    Rule(
        "azure_client_secret",
        "secret",
        # A "." that ends a sentence is not part of the secret (one followed by a token char is).
        _rx(r"(?<![A-Za-z0-9_~.-])[A-Za-z0-9_~.-]{3}\dQ~[A-Za-z0-9_~.-]{31,34}(?![A-Za-z0-9_~-]|\.[A-Za-z0-9_~-])"),
        ("Q~",),
        priority=90,
        gate=r"[0-9]Q~",
        back=4,
        fwd=40,
    ),
    Rule(
        "github_token",
        "secret",
        _rx(r"(?<![A-Za-z0-9_])(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{50,255})"),
        ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
        priority=90,
        gate=r"gh[pousr]_|github_pat_",
        fwd=300,
    ),
    Rule(
        "slack_token",
        "secret",
        _rx(
            r"(?<![A-Za-z0-9])(?:xox[abposr]-[A-Za-z0-9-]{10,}|xapp-\d-[A-Za-z0-9-]{10,}"
            r"|https://hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9/_-]{20,})"
        ),
        ("xox", "xapp-", "hooks.slack.com"),
        priority=90,
        gate=r"xox[abposr]-|xapp-|hooks\.slack\.com",
        back=8,
        fwd=512,
    ),
    Rule(
        "stripe_key",
        "secret",
        _rx(r"(?<![A-Za-z0-9_])(?:(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{10,}|whsec_[A-Za-z0-9]{20,})"),
        ("_live_", "_test_", "whsec_"),
        priority=90,
        gate=r"[sr]k_(?:live|test)_|whsec_",
        fwd=512,
    ),
    Rule(
        "jwt",
        "secret",
        _rx(_TOK + r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*"),
        ("eyJ",),
        priority=85,
        gate=r"eyJ[A-Za-z0-9_-]{8}",
        fwd=16_384,
    ),
    # scheme://user:password@host: redact the password only, keep the host for debugging.
    Rule(
        "url_password",
        "secret",
        _rx(r"://[^\s:/@?#\"'<>]*:([^\s/@?#\"'<>]+)@"),
        ("://",),
        validate=_group(1),
        priority=80,
        gate=r"://",
        fwd=1024,
    ),
    Rule(
        "bearer_token",
        "secret",
        _rx(r"(?i)\bbearer\s+([A-Za-z0-9._~+/-]{16,}=*)"),
        ("bearer",),
        lower=True,
        validate=_bearer,
        priority=75,
        gate=r"bearer\s+[A-Za-z0-9._~+/-]{16}",
        gate_ci=True,
        fwd=24,
    ),
    Rule(
        "basic_auth",
        "secret",
        _rx(r"(?i)authorization[\"']?\s*[:=]\s*[\"']?basic\s+([A-Za-z0-9+/]{8,}={0,2})"),
        ("basic",),
        lower=True,
        validate=_group(1),
        priority=75,
        gate=r"basic\s+[A-Za-z0-9+/]{8}",
        gate_ci=True,
        back=40,
        fwd=24,
    ),
    # key = value where the key names a credential (env files, YAML, JSON, connection
    # strings, CLI flags). The class comes from the key (see keyed_class).
    Rule(
        "keyed_secret",
        "secret",
        _rx(
            # snake, kebab and UPPER keys after a boundary; camelCase humps after a letter;
            # glued UPPER names (PGPASSWORD); then =, :, := or => (or "is" for prose).
            r"(?P<kw>(?<![A-Za-z0-9])(?i:passwd|password|passphrase|pass|pwd|secret|token|api[_-]?key|"
            r"access[_-]?key|private[_-]?key|signing[_-]?key|encryption[_-]?key|master[_-]?key|"
            r"client[_-]?secret|credentials?)"
            r"|(?<=[a-z0-9])(?:Pass(?:wd|word|phrase)?|Pwd|Secret|Token|Api[_-]?[Kk]ey|"
            r"Access[_-]?[Kk]ey|Private[_-]?[Kk]ey|Credentials?)"
            r"|(?<=[A-Z])(?:PASSWORD|PASSWD|PWD|SECRET|TOKEN|APIKEY))"
            r"(?:[_.-][A-Za-z0-9]+|[A-Z][a-z0-9]*){0,3}[\"']?(?P<sep>\s*(?:=|:=|=>|:)\s*|\s+is\s+)"
            r"(?:\"(?P<dq>[^\"\n]{1,512})\"?|'(?P<sq>[^'\n]{1,512})'?|(?P<bare>[^\s\"'`,;&<>(){}\[\]\\]{1,512}))"
        ),
        ("pass", "pwd", "secret", "token", "key", "credential"),
        lower=True,
        validate=_keyed_value,
        priority=70,
        # Keyword, an optional key suffix, then the separator: most prose mentions of
        # "token" or "key" never reach a window. Bounded (a key suffix of <= 64 chars, <= 32
        # blanks before the separator: aligned config files), so Hyperscan needs no
        # start-of-match tracking, which cost this one gate 4x the scan of all the others.
        gate=r"(?:pass|pwd|secret|token|key|credential)[A-Za-z0-9_.-]{0,64}[\"']?(?:\s{0,32}[=:]|\s{1,32}is\s)",
        gate_ci=True,
        back=16,
        fwd=24,
    ),
    # A random-looking token of no known format right after a credential word, in the
    # languages prompts are written in: "Passwort: ...", "la clave es ...", "токен: ...",
    # "the token ... expired". Stricter than key=value: see _contextual.
    Rule(
        "contextual_secret",
        "secret",
        re.compile(
            # A first-character class in front lets `re` skip ahead (3x faster than the bare
            # case-insensitive alternation); no lookbehind there, the validator checks that no
            # letter precedes the word.
            r"(?i)(?=[" + "".join(sorted({c for w in _CREDENTIAL_WORDS for c in (w[0], w[0].upper())})) + "])"
            r"(?P<kw>" + "|".join(_CREDENTIAL_WORDS) + r")(?![^\W\d_])"
            r"(?P<sep>[^\S\n]{0,3}(?:[:=\uff1a]|=>)?[^\S\n]{0,3}(?:(?:" + "|".join(_COPULAS) + r")[^\S\n]{1,3})?)"
            # The value as one run, never backtracked into (a lookahead-captured run: an atomic
            # group on every Python): a long blob after a keyword costs one pass, not 255.
            r"[\"'`]?(?=(?P<v>[A-Za-z0-9_\-+/=.~]{16,256}))(?P=v)(?![A-Za-z0-9_\-+/=.~])"
        ),
        _CREDENTIAL_PREFIXES,
        lower=True,
        validate=lambda t, m: _contextual(t, m),
        priority=68,
        # A credential word, then within a few chars a run of 16 token characters: prose that
        # merely mentions a key or a password opens no window.
        gate="(?:" + "|".join(_CREDENTIAL_PREFIXES) + r")[^\n]{0,32}[A-Za-z0-9_+/=.~-]{16}",
        gate_ci=True,
        fwd=260,
    ),
)

PII_RULES: tuple[Rule, ...] = (
    Rule(
        "email",
        "pii",
        _rx(
            r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@"
            r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}(?![A-Za-z0-9-])"
        ),
        ("@",),
        validate=_email,
        priority=45,
        gate=r"[A-Za-z0-9._%+-]@[A-Za-z0-9]",
        back=64,
        fwd=300,
    ),
    Rule(
        "card_number",
        "pii",
        _rx(r"(?<![\w.,-])[2-6]\d{3}(?:[ -]?\d){9,15}(?![\w-]|[.,]\d)"),
        validate=_card,
        priority=55,
        gate=r"[2-6][0-9]{3}(?:[ -]?[0-9]){9}",
        fwd=40,
    ),
    Rule(
        "iban",
        "pii",
        _rx(r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?(?![A-Za-z0-9])"),
        validate=_iban,
        priority=55,
        gate=r"[A-Z]{2}[0-9]{2} ?[A-Z0-9]{4} ?[A-Z0-9]{4}",
        fwd=48,
    ),
    Rule(
        "national_id",  # US SSN, dashed or spaced; bare 9 digits only with a keyword (below)
        "pii",
        _rx(r"(?<![\d-])(\d{3})([- ])(\d{2})\2(\d{4})(?![\d-])"),
        validate=_ssn,
        priority=55,
        gate=r"[0-9]{3}[- ][0-9]{2}[- ][0-9]{4}",
        fwd=4,
    ),
    Rule(
        "national_id",  # keyword then number: SSN, passport, tax ids
        "pii",
        _rx(
            r"(?<![A-Za-z])(?i:ssn|social security(?: number| no\.?)?|passport(?: number| no\.?)?|"
            r"national id(?: number)?|tax id|nino)\s*(?:is|:|#|=)?\s*"
            r"(\d[\d -]{4,12}\d|[A-Z]{1,2}\d{6,9})(?![A-Za-z0-9])"
        ),
        ("ssn", "social security", "passport", "national id", "tax id", "nino"),
        lower=True,
        validate=lambda t, m: m.span(1) if _count_digits(m.group(1)) >= 5 else None,
        priority=54,
        gate=r"ssn|social security|passport|national id|tax id|nino",
        gate_ci=True,
        fwd=24,
    ),
    Rule(
        "national_id",  # UK National Insurance number
        "pii",
        _rx(r"(?<![A-Za-z0-9])[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?\d{2} ?\d{2} ?\d{2} ?[A-D](?![A-Za-z0-9])"),
        validate=_nino,
        priority=50,
        gate=r"[A-Z]{2} ?[0-9]{2} ?[0-9]{2} ?[0-9]{2} ?[A-D]",
        fwd=4,
    ),
    Rule(
        "phone",  # international, with a leading +
        "pii",
        _rx(r"(?<![\w+])\+\d{1,3}(?:[ .-]?\(?\d{1,5}\)?){2,6}(?![\d])"),
        ("+",),
        validate=_phone,
        priority=40,
        gate=r"\+[0-9]{1,3}[ .-]?\(?[0-9]",
        fwd=48,
    ),
    Rule(
        "phone",  # North American: (415) 555-0132, 415-555-0132, 1-800-555-0199
        "pii",
        _rx(r"(?<![\w+.-])(?:1[-. ])?(?:\([2-9]\d{2}\) ?|[2-9]\d{2}[-. ])[2-9]\d{2}[-. ]\d{4}(?![\w-]|\.\d)"),
        validate=_phone,
        priority=40,
        gate=r"[2-9][0-9]{2}(?:\) ?|[-. ])[2-9][0-9]{2}[-. ][0-9]{4}",
        back=3,
        fwd=4,
    ),
    Rule(
        "phone",  # European national forms: 020 7946 0958, 030 12345678, 01 23 45 67 89
        "pii",
        _rx(r"(?<![\w.+-])(?:0\d{2,4}[ -]\d{3,4}[ -]?\d{3,4}|0[1-9](?:[ .]\d{2}){4})(?![\w-]|\.\d)"),
        validate=_phone,
        priority=40,
        gate=r"0[0-9]{2,4}[ -][0-9]{3,4}[ -]?[0-9]{3}|0[1-9][ .][0-9]{2}[ .][0-9]{2}[ .][0-9]{2}",
        fwd=8,
    ),
    Rule(
        "phone",  # keyword then digits in any layout: "phone: 4155550132"
        "pii",
        _rx(
            r"(?i)\b(?:phone|tel|telephone|mobile|cell|fax|whatsapp|sms)(?: no\.?| number| #)?\s*[:=#]?\s*"
            r"(\+?\(?\d[\d ().-]{5,18}\d)"
        ),
        ("phone", "tel", "mobile", "cell", "fax", "whatsapp", "sms"),
        lower=True,
        validate=_phone,
        priority=41,
        gate=r"(?:phone|tel|mobile|cell|fax|whatsapp|sms)[\sa-z.#:=]{0,24}\+?\(?[0-9]",
        gate_ci=True,
        fwd=24,
    ),
    Rule(
        "ip_address",
        "pii",
        _rx(
            r"(?<![\w.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
            r"(?![\w]|\.\d)"
        ),
        (".",),
        validate=_ipv4,
        priority=40,
        gate=r"[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]",
        fwd=4,
    ),
    Rule(
        "ip_address",
        "pii",
        _rx(r"(?<![\w:.])(?:[0-9A-Fa-f]{1,4}:|::?)(?:[0-9A-Fa-f]{0,4}:){1,7}[0-9A-Fa-f]{0,4}(?![\w:])"),
        (":",),
        validate=_ipv6,
        priority=40,
        gate=r"::|(?:[0-9A-Fa-f]{1,4}:){4}",
        back=40,
        fwd=48,
    ),
)

RULES: tuple[Rule, ...] = SECRET_RULES + PII_RULES
SECRET_CLASSES = frozenset({r.cls for r in SECRET_RULES if r.cls != "keyed_secret"}) | {
    "password",
    "aws_secret_key",
    "generic_secret",
}
PII_CLASSES = frozenset(r.cls for r in PII_RULES)
CLASS_KIND: dict[str, Kind] = {**{c: "secret" for c in SECRET_CLASSES}, **{c: "pii" for c in PII_CLASSES}}


def gate_width(pattern: str) -> int:
    """Longest text the gate can match, or 0 when unbounded."""
    try:
        from re import _parser as sre_parse  # type: ignore[attr-defined]
    except ImportError:  # Python 3.10
        import sre_parse  # type: ignore[no-redef]
    hi = sre_parse.parse(pattern).getwidth()[1]
    return 0 if hi >= 65535 else hi


def find_spans(text: str, rules: Iterable[Rule] = RULES) -> list[Span]:
    """All sensitive spans in `text`, non-overlapping, sorted by start.

    The plain path: every rule whose literal prefilter occurs runs over the whole text.
    `redaction_scan.Scanner` gives the same spans faster when Hyperscan is installed.
    """
    low: str | None = None
    found: list[Span] = []
    for rule in rules:
        if rule.prefilter:
            hay = text
            if rule.lower:
                if low is None:
                    low = text.lower()
                hay = low
            for lit in rule.prefilter:
                if lit in hay:
                    break
            else:
                continue
        for m in rule.regex.finditer(text):
            add_match(rule, text, m, found)
    return resolve(found)


def add_match(rule: Rule, text: str, m: re.Match[str], found: list[Span]) -> None:
    """Validate one regex match and append the span to redact, if any."""
    span = rule.validate(text, m) if rule.validate else m.span()
    if span is None or span[0] == span[1]:
        return
    cls = keyed_class(text, m) if rule.cls == "keyed_secret" else rule.cls
    found.append(Span(span[0], span[1], cls, rule.kind, rule.priority))


def resolve(spans: list[Span]) -> list[Span]:
    """Highest priority first, then longest; drop anything overlapping a kept span."""
    if len(spans) < 2:
        return spans
    kept: list[Span] = []
    for s in sorted(spans, key=lambda s: (-s.priority, s.start - s.end, s.start)):
        if all(s.end <= k.start or s.start >= k.end for k in kept):
            kept.append(s)
    kept.sort()
    return kept


# ---------------------------------------------------------------- keys in structured data

# Normalised key (lower case, letters and digits only) ending in one of these holds a
# credential whatever its value looks like: {"password": "hunter2"} has no other clue.
_SECRET_KEY_SUFFIXES = (
    "password", "passwd", "passphrase", "pwd", "secret", "token", "apikey", "accesskey",
    "secretkey", "privatekey", "signingkey", "encryptionkey", "masterkey", "authorization",
    "cookie", "credential", "credentials", "sessionid", "pin", "cvv", "cvc",
)  # fmt: skip
_PII_KEYS: dict[str, str] = {
    "ssn": "national_id", "socialsecuritynumber": "national_id", "nationalid": "national_id",
    "passportnumber": "national_id", "passportno": "national_id", "taxid": "national_id",
    "nino": "national_id", "phone": "phone", "phonenumber": "phone", "mobile": "phone",
    "telephone": "phone", "tel": "phone", "cardnumber": "card_number", "ccnumber": "card_number",
    "creditcard": "card_number", "pan": "card_number", "iban": "iban", "email": "email",
    "emailaddress": "email", "ip": "ip_address", "ipaddress": "ip_address", "clientip": "ip_address",
    "remoteaddr": "ip_address",
}  # fmt: skip
_NOT_SECRET_KEYS = ("maxtokens", "tokencount", "tokens", "tokentype", "tokenizer", "nextpagetoken", "pagetoken")
_NORM = re.compile(r"[^a-z0-9]")


def key_class(key: str, value: str) -> Optional[tuple[str, Kind]]:
    """Class of a structured value judged by its key, or None when the key tells nothing."""
    hint = key_hint(key)
    if hint is None or not value or is_placeholder(value):
        return None
    cls, kind = hint
    if kind == "secret":
        return hint
    if cls in ("phone", "national_id", "card_number") and _count_digits(value) < 6:
        return None
    if cls == "email" and "@" not in value:
        return None
    if cls == "ip_address" and not _is_ip(value):
        return None
    return hint


def key_hint(key: str) -> Optional[tuple[str, Kind]]:
    """The class a key announces for its value (before the value is looked at), or None.

    Memoised: the same few keys repeat in every event's arguments and attributes. Only
    keys shaped like words are kept (no digits, short), so no pasted token stays in memory.
    """
    hint = _KEY_HINTS.get(key, _UNSEEN)
    if hint is not _UNSEEN:
        return hint  # type: ignore[return-value]
    hint = _key_hint(key)
    if len(key) <= 48 and _WORDLIKE.fullmatch(key):
        if len(_KEY_HINTS) >= _MAX_KEY_HINTS:
            _KEY_HINTS.clear()
        _KEY_HINTS[key] = hint
    return hint


def _key_hint(key: str) -> Optional[tuple[str, Kind]]:
    k = _NORM.sub("", key.lower())
    if not k or k.endswith(_NOT_SECRET_KEYS):
        return None
    if k.endswith(_SECRET_KEY_SUFFIXES):
        return ("password" if "pass" in k or k.endswith("pwd") else "generic_secret"), "secret"
    cls = _PII_KEYS.get(k)
    if cls is None:
        # Suffix match for keys like customer_email, billing_phone, user_ssn.
        cls = next((c for s, c in _PII_KEYS.items() if len(s) > 3 and k.endswith(s)), None)
    return None if cls is None else (cls, "pii")


_UNSEEN = object()
_KEY_HINTS: dict[str, Optional[tuple[str, Kind]]] = {}
_MAX_KEY_HINTS = 65_536
_WORDLIKE = re.compile(r"[A-Za-z_. -]+")


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value.strip())
    except ValueError:
        return False
    return True
