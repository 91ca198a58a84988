"""Random but well-formed values for the labelled corpus: secrets, PII, tricky clean tokens.

Every generator takes a `random.Random` so a seed fixes the corpus. Secrets follow the
published formats of each provider (prefix, alphabet, length); cards pass Luhn, IBANs
pass mod-97, so the detectors are tested on what they will meet, not on strawmen.
"""

from __future__ import annotations

import base64
import json
import random
import string
from typing import Callable

from llmpulse.processors.redaction_rules import IBAN_LENGTHS, luhn_valid

ALNUM = string.ascii_letters + string.digits
URLSAFE = ALNUM + "-_"
B64 = ALNUM + "+/"
HEX = "0123456789abcdef"
UPPER32 = string.ascii_uppercase + "234567"


def rand(r: random.Random, alphabet: str, n: int) -> str:
    return "".join(r.choice(alphabet) for _ in range(n))


def pick(r: random.Random, options: list) -> object:
    return r.choice(options)


# ---------------------------------------------------------------- secrets


def openai_key(r: random.Random) -> str:
    kind = r.random()
    if kind < 0.6:
        return "sk-proj-" + rand(r, URLSAFE, 74) + "T3BlbkFJ" + rand(r, URLSAFE, 74)
    if kind < 0.8:
        return "sk-svcacct-" + rand(r, URLSAFE, 74) + "T3BlbkFJ" + rand(r, URLSAFE, 74)
    return "sk-" + rand(r, ALNUM, 20) + "T3BlbkFJ" + rand(r, ALNUM, 20)


def anthropic_key(r: random.Random) -> str:
    return "sk-ant-api03-" + rand(r, URLSAFE, 93) + "AA"


def aws_access_key(r: random.Random) -> str:
    return pick(r, ["AKIA", "ASIA"]) + rand(r, UPPER32, 16)


def aws_secret(r: random.Random) -> str:
    return rand(r, B64, 40)


def gcp_api_key(r: random.Random) -> str:
    return "AIza" + rand(r, URLSAFE, 35)


def gcp_oauth(r: random.Random) -> str:
    return "ya29." + rand(r, URLSAFE, r.randint(80, 160))


def azure_storage_key(r: random.Random) -> str:
    return rand(r, B64, 86) + "=="


def azure_client_secret(r: random.Random) -> str:
    return rand(r, ALNUM, 3) + str(r.randint(0, 9)) + "Q~" + rand(r, ALNUM + "_~.-", 34)


def github_token(r: random.Random) -> str:
    if r.random() < 0.7:
        return pick(r, ["ghp_", "gho_", "ghs_", "ghu_"]) + rand(r, ALNUM, 36)
    return "github_pat_" + rand(r, ALNUM, 22) + "_" + rand(r, ALNUM, 59)


def slack_token(r: random.Random) -> str:
    if r.random() < 0.75:
        return f"xox{pick(r, ['b', 'p'])}-{r.randint(10**11, 10**12)}-{r.randint(10**12, 10**13)}-{rand(r, ALNUM, 24)}"
    return f"https://hooks.slack.com/services/T{rand(r, UPPER32, 8)}/B{rand(r, UPPER32, 10)}/{rand(r, ALNUM, 24)}"


def stripe_key(r: random.Random) -> str:
    if r.random() < 0.8:
        return f"{pick(r, ['sk', 'rk'])}_{pick(r, ['live', 'test'])}_" + rand(r, ALNUM, r.choice([24, 99]))
    return "whsec_" + rand(r, ALNUM, 32)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt(r: random.Random) -> str:
    header = _b64url(json.dumps({"alg": pick(r, ["HS256", "RS256"]), "typ": "JWT"}).encode())
    claims = {"sub": str(r.randint(1, 10**9)), "iat": r.randint(1_600_000_000, 1_800_000_000), "scope": "read write"}
    payload = _b64url(json.dumps(claims).encode())
    return f"{header}.{payload}.{_b64url(r.randbytes(32))}"


def private_key(r: random.Random) -> str:
    label = pick(r, ["RSA PRIVATE KEY", "PRIVATE KEY", "EC PRIVATE KEY", "OPENSSH PRIVATE KEY"])
    body = base64.b64encode(r.randbytes(r.choice([120, 300, 600]))).decode()
    lines = "\n".join(body[i : i + 64] for i in range(0, len(body), 64))
    return f"-----BEGIN {label}-----\n{lines}\n-----END {label}-----"


def password(r: random.Random) -> str:
    words = ["Summer", "Tiger", "Blue", "Rocket", "Maple", "Orion", "Falcon", "Delta"]
    style = r.random()
    if style < 0.4:
        return pick(r, words) + str(r.randint(10, 9999)) + pick(r, ["!", "#", "$", "@", "?", ""])
    if style < 0.7:  # symbols inside; a leading "$" or "%" reads as a variable reference
        return rand(r, ALNUM, 2) + rand(r, ALNUM + "!#$%^*", r.randint(8, 20)) + rand(r, ALNUM, 1)
    return "-".join(r.sample(["correct", "horse", "battery", "staple", "velvet", "quartz", "lunar"], 4))


def generic_token(r: random.Random) -> str:
    return pick(r, [rand(r, HEX, 32), rand(r, ALNUM, 40), rand(r, HEX, 64), rand(r, URLSAFE, 48)])  # type: ignore[return-value]


# ---------------------------------------------------------------- PII

FIRST = ["james", "maria", "wei", "aisha", "lars", "sofia", "kenji", "olivia", "mateo", "priya", "noah", "fatima"]
LAST = ["smith", "garcia", "chen", "okafor", "nilsson", "rossi", "tanaka", "brown", "silva", "patel", "muller"]
DOMAINS = ["gmail.com", "outlook.com", "acme-corp.com", "example.co.uk", "mail.uni-berlin.de", "proton.me", "yahoo.fr"]


def email(r: random.Random) -> str:
    f, last = pick(r, FIRST), pick(r, LAST)
    local = pick(r, [f"{f}.{last}", f"{f[0]}{last}", f"{f}_{last}{r.randint(1, 99)}", f"{f}+{pick(r, ['news', 'work'])}"])
    return f"{local}@{pick(r, DOMAINS)}"


def phone(r: random.Random) -> str:
    d = lambda n: "".join(str(r.randint(0, 9)) for _ in range(n))  # noqa: E731
    area = f"{r.randint(2, 9)}{d(2)}"
    exch = f"{r.randint(2, 9)}{d(2)}"
    forms = [
        f"+1 {area} {exch} {d(4)}",
        f"+1-{area}-{exch}-{d(4)}",
        f"({area}) {exch}-{d(4)}",
        f"{area}-{exch}-{d(4)}",
        f"{area}.{exch}.{d(4)}",
        f"1-800-{exch}-{d(4)}",
        f"+44 20 {d(4)} {d(4)}",
        f"+44 7{d(3)} {d(6)}",
        f"020 {d(4)} {d(4)}",
        f"+49 30 {d(8)}",
        f"+49 (0)89 {d(7)}",
        f"030 {d(8)}",
        f"+33 1 {d(2)} {d(2)} {d(2)} {d(2)}",
        f"06 {d(2)} {d(2)} {d(2)} {d(2)}",
        f"+91 9{d(4)} {d(5)}",
        f"+81 3-{d(4)}-{d(4)}",
        f"+61 4{d(2)} {d(3)} {d(3)}",
        f"+{r.randint(30, 99)}{d(9)}",
    ]
    return pick(r, forms)  # type: ignore[return-value]


_IINS = [("4", 16), ("51", 16), ("55", 16), ("2221", 16), ("34", 15), ("37", 15), ("6011", 16), ("65", 16), ("3530", 16)]


def card_number(r: random.Random) -> str:
    prefix, length = pick(r, _IINS)  # type: ignore[misc]
    body = prefix + "".join(str(r.randint(0, 9)) for _ in range(length - len(prefix) - 1))
    digits = next(body + c for c in "0123456789" if luhn_valid(body + c))
    sep = pick(r, [" ", "-", ""])
    if length == 15:
        return sep.join([digits[:4], digits[4:10], digits[10:]])
    return sep.join(digits[i : i + 4] for i in range(0, 16, 4))


def iban(r: random.Random) -> str:
    cc = pick(r, ["DE", "GB", "FR", "NL", "ES", "IT", "CH", "BE", "PL", "SE", "IE", "AT"])
    n = IBAN_LENGTHS[cc] - 4  # type: ignore[index]
    if cc in ("GB", "NL", "IE"):
        bban = rand(r, string.ascii_uppercase, 4) + rand(r, string.digits, n - 4)
    elif cc == "IT":
        bban = rand(r, string.ascii_uppercase, 1) + rand(r, string.digits, n - 1)
    else:
        bban = rand(r, string.digits, n)
    num = int("".join(str(int(c, 36)) for c in bban + cc + "00"))
    compact = f"{cc}{98 - num % 97:02d}{bban}"
    if r.random() < 0.5:
        return compact
    return " ".join(compact[i : i + 4] for i in range(0, len(compact), 4))


def ssn(r: random.Random) -> str:
    area = r.choice([x for x in range(1, 900) if x != 666])
    return f"{area:03d}-{r.randint(1, 99):02d}-{r.randint(1, 9999):04d}"


def nino(r: random.Random) -> str:
    a, b = "Z", "Z"
    while a + b in ("BG", "GB", "KN", "NK", "NT", "TN", "ZZ"):  # prefixes HMRC never issues
        a, b = pick(r, list("ABCEHJKLMPRSTWXYZ")), pick(r, list("ABCEHJKLMNPRSTWXYZ"))
    digits = rand(r, string.digits, 6)
    if r.random() < 0.5:
        return f"{a}{b}{digits}{pick(r, list('ABCD'))}"
    return f"{a}{b} {digits[:2]} {digits[2:4]} {digits[4:]} {pick(r, list('ABCD'))}"


def ipv4(r: random.Random) -> str:
    first = pick(r, [r.randint(1, 223), 10, 172, 192, 203, 81])
    if first in (127, 0):
        first = 8
    return f"{first}.{r.randint(0, 255)}.{r.randint(0, 255)}.{r.randint(1, 254)}"


def ipv6(r: random.Random) -> str:
    groups = [f"{r.randint(0, 0xFFFF):x}" for _ in range(8)]
    groups[0] = pick(r, ["2001", "2a00", "2604", "fe80", "2a02"])  # type: ignore[assignment]
    if r.random() < 0.5:
        return ":".join(groups)
    return ":".join(groups[:3]) + "::" + ":".join(groups[6:])


SECRETS: dict[str, Callable[[random.Random], str]] = {
    "openai_key": openai_key,
    "anthropic_key": anthropic_key,
    "aws_access_key": aws_access_key,
    "aws_secret_key": aws_secret,
    "gcp_api_key": gcp_api_key,
    "gcp_oauth_token": gcp_oauth,
    "azure_storage_key": azure_storage_key,
    "azure_client_secret": azure_client_secret,
    "github_token": github_token,
    "slack_token": slack_token,
    "stripe_key": stripe_key,
    "jwt": jwt,
    "private_key": private_key,
    "url_password": password,
    "password": password,
    "generic_secret": generic_token,
}
PII: dict[str, Callable[[random.Random], str]] = {
    "email": email,
    "phone": phone,
    "card_number": card_number,
    "iban": iban,
    "ssn": ssn,
    "nino": nino,
    "ipv4": ipv4,
    "ipv6": ipv6,
}


# ---------------------------------------------------------------- tricky clean values


def _date(r: random.Random) -> str:
    y, m, d = r.randint(2019, 2026), r.randint(1, 12), r.randint(1, 28)
    months = ["January", "February", "March", "April", "May", "June", "July", "August", "September"]
    return pick(r, [  # type: ignore[return-value]
        f"{y}-{m:02d}-{d:02d}", f"{d:02d}/{m:02d}/{y}", f"{m}/{d}/{y}", f"{pick(r, months)} {d}, {y}",
        f"{y}-{m:02d}-{d:02d}T{r.randint(0, 23):02d}:{r.randint(0, 59):02d}:{r.randint(0, 59):02d}Z",
        f"{y}{m:02d}{d:02d}", f"{d:02d}.{m:02d}.{y}",
    ])


def _version(r: random.Random) -> str:
    a, b, c = r.randint(0, 20), r.randint(0, 40), r.randint(0, 99)
    return pick(r, [  # type: ignore[return-value]
        f"v{a}.{b}.{c}", f"{a}.{b}.{c}", f"{a}.{b}.{c}-beta.{r.randint(1, 9)}", f"Python 3.{r.randint(8, 13)}.{c}",
        f"Version={a}.{b}.0.0", f"{a}.{b}.{c}rc{r.randint(1, 3)}", f"node v{r.randint(16, 22)}.{b}.{c}",
        f"react@{r.randint(16, 19)}.{b}.{c}", f"build {a}.{b}.{c}.{r.randint(1000, 30000)}",
    ])


def _price(r: random.Random) -> str:
    v = r.randint(1, 2_000_000) / 100
    return pick(r, [f"${v:,.2f}", f"€{v:.2f}", f"USD {v:,.2f}", f"£{int(v):,}", f"{v:.2f} EUR", f"¥{int(v * 100):,}"])  # type: ignore[return-value]


def _order(r: random.Random) -> str:
    return pick(r, [  # type: ignore[return-value]
        f"ORD-{r.randint(2019, 2026)}-{r.randint(0, 999999):06d}", f"#{r.randint(100000, 99999999)}",
        f"PO-{r.randint(10000, 99999)}", f"INV-{r.randint(2019, 2026)}-{r.randint(1, 9999):04d}",
        f"1Z{rand(r, UPPER32, 6)}{r.randint(10**9, 10**10)}", f"order {r.randint(10**9, 10**12)}",
        f"ticket JIRA-{r.randint(100, 9999)}", f"case {r.randint(10**6, 10**8)}",
        f"{r.randint(10**12, 10**16)}",  # bare long numeric id, sometimes card-shaped
    ])


def _uuid(r: random.Random) -> str:
    h = rand(r, HEX, 32)
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{pick(r, list('89ab'))}{h[17:20]}-{h[20:]}"


def _misc(r: random.Random) -> str:
    return pick(r, [  # type: ignore[return-value]
        f"{r.randint(0, 23):02d}:{r.randint(0, 59):02d}:{r.randint(0, 59):02d}",
        f"{r.randint(1, 99)}.{r.randint(0, 9)}%", f"{r.randint(1, 9)}h{r.randint(1, 59)}m",
        f"max_tokens={pick(r, [256, 512, 1024, 4096])}", f"token count: {r.randint(10, 99999)}",
        f"temperature={r.randint(0, 10) / 10}", f"127.0.0.1:{r.randint(1024, 65535)}", "0.0.0.0:8080",
        f"localhost:{r.randint(3000, 9000)}", f"#{rand(r, HEX, 6)}", f"978-{r.randint(0, 1)}-{r.randint(10, 99)}-{r.randint(100000, 999999)}-{r.randint(0, 9)}",
        f"{r.randint(-90, 90)}.{r.randint(1000, 9999)}, {r.randint(-180, 180)}.{r.randint(1000, 9999)}",
        f"gpt-4o-{r.randint(2024, 2025)}-{r.randint(1, 12):02d}-{r.randint(1, 28):02d}",
        f"claude-3-5-sonnet-{r.randint(2024, 2025)}{r.randint(1, 12):02d}{r.randint(1, 28):02d}",
        f"api-{rand(r, HEX, 9)}-{rand(r, 'bcdfghjklmnpqrstvwxz2456789', 5)}", "logo@2x.png", "git@github.com:acme/api.git",
        f"@{pick(r, FIRST)}", "a[1::2]", f"{r.randint(1, 9)},{r.randint(100, 999)},{r.randint(100, 999)}",
        f"{':'.join(rand(r, HEX, 2) for _ in range(6))}", "x86_64", f"python:3.{r.randint(9, 13)}-slim",
        f"req_{rand(r, UPPER32, 26)}", f"sha256:{rand(r, HEX, 64)}", f"/var/log/app/{_date(r)}.log",
        f"https://docs.example.com/v{r.randint(1, 3)}/api?page={r.randint(1, 50)}&limit=50",
        f"{r.randint(1_600_000_000, 1_800_000_000)}", f"{r.randint(1_600_000_000_000, 1_800_000_000_000)}",
        "password reset link", "the key insight", f"ext. {r.randint(100, 9999)}", "std::vector<int>",
        f"{rand(r, 'ABCDEFGHJKLMNPRSTUVWXYZ', 3)}-{r.randint(1000, 9999)}", f"task-{r.randint(1, 999)}-review",
    ])


CLEAN: dict[str, Callable[[random.Random], str]] = {
    "uuid": _uuid,
    "commit": lambda r: rand(r, HEX, pick(r, [7, 12, 40])),  # type: ignore[arg-type]
    "trace_id": lambda r: rand(r, HEX, 32),
    "order": _order,
    "date": _date,
    "version": _version,
    "price": _price,
    "misc": _misc,
}
