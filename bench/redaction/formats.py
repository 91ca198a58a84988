"""Secret formats of widely used services, generated from their documented shapes.

Written from the providers' documentation of each token (prefix, length, alphabet, and the
checksum where one is published), not from any detector's regex, so the score shows what
the detectors miss. Each format yields `(value, start, end)`: the token and the part of it
that must be redacted (a literal prefix such as `ghp_` may stay visible; an URL keeps its
host). `SENTENCES` place a value in prose, with and without a keyword nearby, in several
languages; `LOOKALIKES` are clean values a detector must leave alone.
"""

from __future__ import annotations

import base64
import random
import string
import uuid
import zlib
from typing import Callable

B62 = string.ascii_letters + string.digits
LOWER_ALNUM = string.ascii_lowercase + string.digits
UPPER_ALNUM = string.ascii_uppercase + string.digits
HEX = "0123456789abcdef"
URLSAFE = B62 + "-_"
B64 = B62 + "+/"
BECH32 = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"

Gen = Callable[[random.Random], tuple[str, int, int]]


def rnd(r: random.Random, alphabet: str, n: int) -> str:
    return "".join(r.choice(alphabet) for _ in range(n))


def mixed(r: random.Random, alphabet: str, n: int) -> str:
    """Random, with lower, upper and digits where the alphabet has them (as real tokens do)."""
    while True:
        s = rnd(r, alphabet, n)
        if all(any(c in cls for c in s) for cls in (string.ascii_lowercase, string.ascii_uppercase, string.digits)
               if any(c in cls for c in alphabet)):
            return s


def prefixed(prefix: str, alphabet: str, n: int, suffix: str = "") -> Gen:
    def gen(r: random.Random) -> tuple[str, int, int]:
        v = prefix + mixed(r, alphabet, n) + suffix
        return v, len(prefix), len(v)

    return gen


def parts(prefix: str, body: Callable[[random.Random], str]) -> Gen:
    """A literal prefix (may stay visible), then a structured secret body."""
    def gen(r: random.Random) -> tuple[str, int, int]:
        v = prefix + body(r)
        return v, len(prefix), len(v)

    return gen


def _base62(n: int, width: int) -> str:
    out = ""
    while n:
        n, d = divmod(n, 62)
        out = B62[d] + out
    return out.rjust(width, "0")


def github(prefix: str) -> Gen:
    # 30 random base62 characters, then the CRC32 of them in base62 (6 chars), per GitHub's format.
    def gen(r: random.Random) -> tuple[str, int, int]:
        body = mixed(r, B62, 30)
        v = prefix + body + _base62(zlib.crc32(body.encode()), 6)
        return v, len(prefix), len(v)

    return gen


def npm(r: random.Random) -> tuple[str, int, int]:
    body = mixed(r, B62, 30)
    v = "npm_" + body + _base62(zlib.crc32(body.encode()), 6)
    return v, 4, len(v)


def pypi(r: random.Random) -> tuple[str, int, int]:
    # A macaroon: "pypi-" then base64url of a binary that starts with the location "pypi.org".
    raw = b"\x02\x01\x08pypi.org\x02\x01\x04" + r.randbytes(120)
    v = "pypi-" + base64.urlsafe_b64encode(raw).decode().rstrip("=")
    return v, 5, len(v)


def telegram(r: random.Random) -> tuple[str, int, int]:
    v = f"{r.randint(10**8, 10**10 - 1)}:AA{mixed(r, URLSAFE, 33)}"
    return v, 0, len(v)


def discord_bot(r: random.Random) -> tuple[str, int, int]:
    uid = base64.b64encode(str(r.randint(10**17, 10**19 - 1)).encode()).decode().rstrip("=")
    v = f"{uid}.{mixed(r, URLSAFE, 6)}.{mixed(r, URLSAFE, 38)}"
    return v, 0, len(v)


def discord_webhook(r: random.Random) -> tuple[str, int, int]:
    head = f"https://discord.com/api/webhooks/{r.randint(10**17, 10**18 - 1)}/"
    v = head + mixed(r, URLSAFE, 68)
    return v, len(head), len(v)


def teams_webhook(r: random.Random) -> tuple[str, int, int]:
    head = f"https://contoso.webhook.office.com/webhookb2/{uuid.UUID(int=r.getrandbits(128))}@{uuid.UUID(int=r.getrandbits(128))}/IncomingWebhook/"
    v = head + rnd(r, HEX, 32) + "/" + str(uuid.UUID(int=r.getrandbits(128)))
    return v, len(head), len(v)


def slack_webhook(r: random.Random) -> tuple[str, int, int]:
    head = "https://hooks.slack.com/services/"
    v = head + "T" + rnd(r, UPPER_ALNUM, 8) + "/B" + rnd(r, UPPER_ALNUM, 10) + "/" + mixed(r, B62, 24)
    return v, len(head), len(v)


def mailchimp(r: random.Random) -> tuple[str, int, int]:
    v = rnd(r, HEX, 32) + f"-us{r.randint(1, 21)}"
    return v, 0, len(v)


def braintree(r: random.Random) -> tuple[str, int, int]:
    v = f"access_token$production${rnd(r, LOWER_ALNUM, 16)}${rnd(r, HEX, 32)}"
    return v, len("access_token$production$"), len(v)


def age_key(r: random.Random) -> tuple[str, int, int]:
    v = "AGE-SECRET-KEY-1" + rnd(r, BECH32, 58).upper()
    return v, len("AGE-SECRET-KEY-1"), len(v)


def one_password_secret(r: random.Random) -> tuple[str, int, int]:
    v = "A3-" + "-".join([rnd(r, UPPER_ALNUM, 6), rnd(r, UPPER_ALNUM, 11)] + [rnd(r, UPPER_ALNUM, 5) for _ in range(3)])
    return v, 3, len(v)


def one_password_service(r: random.Random) -> tuple[str, int, int]:
    payload = base64.b64encode(b'{"signInAddress":"my.1password.com","userAuth":{"method":"SRPg-4096",'
                               + r.randbytes(140) + b"}}").decode().rstrip("=")
    v = "ops_" + payload
    return v, 4, len(v)


def terraform_cloud(r: random.Random) -> tuple[str, int, int]:
    v = f"{mixed(r, B62, 14)}.atlasv1.{mixed(r, URLSAFE, 67)}"
    return v, 0, len(v)


def airtable_pat(r: random.Random) -> tuple[str, int, int]:
    v = f"pat{mixed(r, B62, 14)}.{rnd(r, HEX, 64)}"
    return v, 3, len(v)


def dynatrace(r: random.Random) -> tuple[str, int, int]:
    v = f"dt0c01.{rnd(r, UPPER_ALNUM, 24)}.{rnd(r, UPPER_ALNUM, 64)}"
    return v, 7, len(v)


def postman(r: random.Random) -> tuple[str, int, int]:
    v = f"PMAK-{rnd(r, HEX, 24)}-{rnd(r, HEX, 34)}"
    return v, 5, len(v)


def cloudflare_origin_ca(r: random.Random) -> tuple[str, int, int]:
    v = f"v1.0-{rnd(r, HEX, 24)}-{rnd(r, HEX, 146)}"
    return v, 5, len(v)


def grafana_sa(r: random.Random) -> tuple[str, int, int]:
    v = f"glsa_{mixed(r, B62, 32)}_{rnd(r, HEX, 8)}"
    return v, 5, len(v)


def grafana_cloud(r: random.Random) -> tuple[str, int, int]:
    body = base64.b64encode(b'{"o":"' + str(r.randint(10**5, 10**7)).encode() + b'","n":"stack-'
                            + rnd(r, LOWER_ALNUM, 8).encode() + b'","k":"' + mixed(r, B62, 24).encode()
                            + b'","m":{"r":"prod-eu-west-2"}}').decode()
    v = "glc_" + body
    return v, 4, len(v)


def sentry_org(r: random.Random) -> tuple[str, int, int]:
    body = base64.b64encode(b'{"iat":1700000000.0,"url":"https://sentry.io","region_url":"https://us.sentry.io",'
                            b'"org":"acme"}').decode().rstrip("=")
    v = f"sntrys_{body}_{mixed(r, B62, 43)}"
    return v, 7, len(v)


def langsmith(kind: str) -> Gen:
    def gen(r: random.Random) -> tuple[str, int, int]:
        v = f"lsv2_{kind}_{rnd(r, HEX, 32)}_{rnd(r, HEX, 10)}"
        return v, 8, len(v)

    return gen


def langfuse(r: random.Random) -> tuple[str, int, int]:
    v = f"sk-lf-{uuid.UUID(int=r.getrandbits(128))}"
    return v, 6, len(v)


def plaid(r: random.Random) -> tuple[str, int, int]:
    v = f"access-production-{uuid.UUID(int=r.getrandbits(128))}"
    return v, len("access-production-"), len(v)


def hubspot(r: random.Random) -> tuple[str, int, int]:
    v = f"pat-na1-{uuid.UUID(int=r.getrandbits(128))}"
    return v, 8, len(v)


def circleci(r: random.Random) -> tuple[str, int, int]:
    v = f"CCIPAT_{mixed(r, B62, 22)}_{rnd(r, HEX, 40)}"
    return v, 7, len(v)


def doppler_service(r: random.Random) -> tuple[str, int, int]:
    v = f"dp.st.prd.{mixed(r, B62, 40)}"
    return v, 6, len(v)


def fcm_server_key(r: random.Random) -> tuple[str, int, int]:
    v = f"AAAA{mixed(r, URLSAFE, 7)}:APA91b{mixed(r, URLSAFE, 134)}"
    return v, 0, len(v)


def twitter_bearer(r: random.Random) -> tuple[str, int, int]:
    v = "AAAAAAAAAAAAAAAAAAAAA" + mixed(r, B62, 25) + "%3D" + mixed(r, B62, 50)
    return v, 0, len(v)


def mapbox_secret(r: random.Random) -> tuple[str, int, int]:
    claims = base64.urlsafe_b64encode(b'{"u":"' + rnd(r, LOWER_ALNUM, 8).encode() + b'","a":"'
                                      + rnd(r, LOWER_ALNUM, 25).encode() + b'"}').decode().rstrip("=")
    v = f"sk.{claims}.{mixed(r, URLSAFE, 22)}"
    return v, 3, len(v)


def harness(r: random.Random) -> tuple[str, int, int]:
    v = f"pat.{mixed(r, URLSAFE, 22)}.{rnd(r, HEX, 24)}.{mixed(r, B62, 20)}"
    return v, 4, len(v)


def tailscale(r: random.Random) -> tuple[str, int, int]:
    v = f"tskey-auth-k{mixed(r, B62, 16)}-{mixed(r, B62, 33)}"
    return v, 11, len(v)


def resend(r: random.Random) -> tuple[str, int, int]:
    v = f"re_{mixed(r, B62, 8)}_{mixed(r, B62, 24)}"
    return v, 3, len(v)


def pinecone(r: random.Random) -> tuple[str, int, int]:
    v = f"pcsk_{mixed(r, B62, 6)}_{mixed(r, B62, 63)}"
    return v, 5, len(v)


def notion_new(r: random.Random) -> tuple[str, int, int]:
    v = f"ntn_{rnd(r, string.digits, 11)}{mixed(r, B62, 35)}"
    return v, 4, len(v)


def bedrock(r: random.Random) -> tuple[str, int, int]:
    body = base64.b64encode(b"BedrockAPIKey-" + rnd(r, LOWER_ALNUM, 4).encode() + b"-at-"
                            + str(r.randint(10**11, 10**12 - 1)).encode() + b":" + r.randbytes(60)).decode()
    v = "ABSK" + body
    return v, 4, len(v)


def db_url(scheme: str, port: int) -> Gen:
    def gen(r: random.Random) -> tuple[str, int, int]:
        # URL-safe: a reserved character in a password is percent-encoded (RFC 3986).
        pw = mixed(r, B62, 10) + r.choice(["!", "*", "~", "-", "_", ".", "%23", "%40", "%2F"]) + mixed(r, B62, 4)
        head = f"{scheme}://svc_{rnd(r, string.ascii_lowercase, 5)}:"
        v = f"{head}{pw}@db-{r.randint(1, 9)}.internal:{port}/app"
        return v, len(head), len(head) + len(pw)

    return gen


def pem(label: str) -> Gen:
    def gen(r: random.Random) -> tuple[str, int, int]:
        body = base64.b64encode(r.randbytes(r.choice([180, 400]))).decode()
        lines = "\n".join(body[i : i + 64] for i in range(0, len(body), 64))
        head = f"-----BEGIN {label}-----\n"
        v = f"{head}{lines}\n-----END {label}-----"
        return v, len(head), len(head) + len(lines)

    return gen


# name -> generator; grouped as the issue lists them.
FORMATS: dict[str, Gen] = {
    # code hosts
    "github_classic_pat": github("ghp_"), "github_oauth": github("gho_"), "github_user_to_server": github("ghu_"),
    "github_server_to_server": github("ghs_"), "github_refresh": github("ghr_"),
    "github_fine_grained_pat": parts("github_pat_", lambda r: f"{mixed(r, B62, 22)}_{mixed(r, B62, 59)}"),
    "gitlab_pat": prefixed("glpat-", URLSAFE, 20), "gitlab_pipeline_trigger": prefixed("glptt-", HEX, 40),
    "gitlab_runner_registration": prefixed("GR1348941", URLSAFE, 20), "gitlab_runner_auth": prefixed("glrt-", URLSAFE, 20),
    "gitlab_deploy_token": prefixed("gldt-", URLSAFE, 20), "gitlab_feed_token": prefixed("glft-", URLSAFE, 20),
    "gitlab_oauth_secret": prefixed("gloas-", HEX, 64), "gitlab_scim_token": prefixed("glsoat-", URLSAFE, 20),
    "gitlab_agent_token": prefixed("glagent-", URLSAFE, 50), "gitlab_incoming_mail": prefixed("glimt-", LOWER_ALNUM, 25),
    "gitlab_feature_flags": prefixed("glffct-", URLSAFE, 20),
    # package and container registries
    "npm_token": npm, "pypi_token": pypi, "rubygems_key": prefixed("rubygems_", HEX, 48),
    "nuget_key": prefixed("oy2", LOWER_ALNUM, 43), "crates_io_token": prefixed("cio", B62, 32),
    "dockerhub_pat": prefixed("dckr_pat_", URLSAFE, 27), "clojars_token": prefixed("CLOJARS_", LOWER_ALNUM, 60),
    "artifactory_key": prefixed("AKCp", B62, 69), "pulumi_token": prefixed("pul-", HEX, 40),
    "prefect_key": prefixed("pnu_", B62, 36), "readme_key": prefixed("rdme_", HEX, 70),
    # ML hubs and model APIs
    "huggingface_user": prefixed("hf_", string.ascii_letters, 34), "huggingface_org": prefixed("api_org_", string.ascii_letters, 34),
    "replicate_token": prefixed("r8_", B62, 37), "groq_key": prefixed("gsk_", B62, 52),
    "perplexity_key": prefixed("pplx-", B62, 48), "xai_key": prefixed("xai-", B62, 80),
    "anthropic_admin_key": prefixed("sk-ant-admin01-", URLSAFE, 93, "AA"), "openrouter_key": prefixed("sk-or-v1-", HEX, 64),
    "langsmith_pat": langsmith("pt"), "langsmith_service_key": langsmith("sk"), "langfuse_secret": langfuse,
    "pinecone_key": pinecone, "deno_deploy_token": prefixed("ddp_", B62, 36),
    # payments
    "stripe_live_secret": prefixed("sk_live_", B62, 99), "stripe_restricted": prefixed("rk_live_", B62, 99),
    "stripe_webhook_secret": prefixed("whsec_", B62, 32), "square_access_token": prefixed("EAAA", URLSAFE, 60),
    "square_oauth_secret": prefixed("sq0csp-", URLSAFE, 43), "square_app_token": prefixed("sq0atp-", URLSAFE, 22),
    "braintree_token": braintree, "shopify_access_token": prefixed("shpat_", HEX, 32),
    "shopify_custom_app": prefixed("shpca_", HEX, 32), "shopify_private_app": prefixed("shppa_", HEX, 32),
    "shopify_shared_secret": prefixed("shpss_", HEX, 32), "flutterwave_secret": prefixed("FLWSECK-", HEX, 32, "-X"),
    "razorpay_key": prefixed("rzp_live_", B62, 14), "plaid_access_token": plaid,
    "shippo_token": prefixed("shippo_live_", HEX, 40), "easypost_key": prefixed("EZAK", B62, 54),
    "duffel_token": prefixed("duffel_live_", URLSAFE, 43),
    # messaging, e-mail and webhooks
    "slack_bot": parts("xoxb-", lambda r: f"{rnd(r, string.digits, 12)}-{rnd(r, string.digits, 13)}-{mixed(r, B62, 24)}"),
    "slack_user": parts("xoxp-", lambda r: f"{rnd(r, string.digits, 12)}-{rnd(r, string.digits, 12)}-{rnd(r, string.digits, 13)}-{rnd(r, HEX, 32)}"),
    "slack_app_token": parts("xapp-", lambda r: f"1-A{rnd(r, UPPER_ALNUM, 10)}-{rnd(r, string.digits, 13)}-{rnd(r, HEX, 64)}"),
    "slack_webhook": slack_webhook, "discord_bot_token": discord_bot, "discord_webhook": discord_webhook,
    "teams_webhook": teams_webhook, "telegram_bot_token": telegram, "twilio_api_key": prefixed("SK", HEX, 32),
    "sendgrid_key": parts("SG.", lambda r: f"{mixed(r, URLSAFE, 22)}.{mixed(r, URLSAFE, 43)}"),
    "mailgun_key": prefixed("key-", HEX, 32), "mailchimp_key": mailchimp,
    "brevo_key": parts("xkeysib-", lambda r: f"{rnd(r, HEX, 64)}-{mixed(r, B62, 16)}"),
    "resend_key": resend,
    # clouds
    "aws_access_key": prefixed("AKIA", UPPER_ALNUM, 16), "aws_session_key": prefixed("ASIA", UPPER_ALNUM, 16),
    "aws_bedrock_key": bedrock, "gcp_api_key": prefixed("AIza", URLSAFE, 35), "gcp_oauth_token": prefixed("ya29.", URLSAFE, 120),
    "gcp_fcm_server_key": fcm_server_key,
    "azure_ad_client_secret": parts("", lambda r: mixed(r, B62, 3) + str(r.randint(0, 9)) + "Q~" + mixed(r, B62 + "_~.-", 34)),
    "digitalocean_pat": prefixed("dop_v1_", HEX, 64), "digitalocean_oauth": prefixed("doo_v1_", HEX, 64),
    "digitalocean_refresh": prefixed("dor_v1_", HEX, 64), "alibaba_access_key": prefixed("LTAI", B62, 20),
    "cloudflare_origin_ca": cloudflare_origin_ca, "heroku_api_key": prefixed("HRKU-AA", URLSAFE, 58),
    "flyio_token": prefixed("fo1_", URLSAFE, 43), "netlify_pat": prefixed("nfp_", B62, 40),
    "supabase_pat": prefixed("sbp_", HEX, 40), "planetscale_token": prefixed("pscale_tkn_", URLSAFE, 43),
    "planetscale_password": prefixed("pscale_pw_", URLSAFE, 43), "databricks_token": prefixed("dapi", HEX, 32),
    "scalingo_token": prefixed("tk-us-", URLSAFE, 48), "tailscale_auth_key": tailscale,
    "mapbox_secret_token": mapbox_secret,
    # work tools, observability
    "linear_key": prefixed("lin_api_", B62, 40), "notion_secret_legacy": prefixed("secret_", B62, 43),
    "notion_token": notion_new, "airtable_pat": airtable_pat, "atlassian_token": prefixed("ATATT3", URLSAFE, 186),
    "sentry_user_token": prefixed("sntryu_", HEX, 64), "sentry_org_token": sentry_org,
    "new_relic_user_key": prefixed("NRAK-", UPPER_ALNUM, 27), "new_relic_insert_key": prefixed("NRII-", URLSAFE, 32),
    "grafana_service_account": grafana_sa, "grafana_cloud_token": grafana_cloud, "dynatrace_token": dynatrace,
    "postman_key": postman, "figma_pat": prefixed("figd_", URLSAFE, 40), "contentful_pat": prefixed("CFPAT-", URLSAFE, 43),
    "hubspot_pat": hubspot, "adafruit_io_key": prefixed("aio_", B62, 28), "typeform_pat": prefixed("tfp_", B62, 59),
    "frameio_token": prefixed("fio-u-", URLSAFE, 64), "sonarqube_token": prefixed("squ_", HEX, 40),
    # CI/CD and secret stores
    "circleci_pat": circleci, "buildkite_token": prefixed("bkua_", HEX, 40), "octopus_deploy_key": prefixed("API-", UPPER_ALNUM, 27),
    "harness_pat": harness, "infracost_key": prefixed("ico-", B62, 32), "terraform_cloud_token": terraform_cloud,
    "vault_service_token": prefixed("hvs.", URLSAFE, 91), "vault_batch_token": prefixed("hvb.", URLSAFE, 138),
    "doppler_personal_token": prefixed("dp.pt.", B62, 43), "doppler_service_token": doppler_service,
    "onepassword_secret_key": one_password_secret, "onepassword_service_token": one_password_service,
    "age_secret_key": age_key,
    # private keys
    "rsa_private_key": pem("RSA PRIVATE KEY"), "pkcs8_private_key": pem("PRIVATE KEY"), "ec_private_key": pem("EC PRIVATE KEY"),
    "openssh_private_key": pem("OPENSSH PRIVATE KEY"), "encrypted_private_key": pem("ENCRYPTED PRIVATE KEY"),
    "pgp_private_key": pem("PGP PRIVATE KEY BLOCK"), "dsa_private_key": pem("DSA PRIVATE KEY"),
    # databases: URLs with passwords
    "postgres_url": db_url("postgresql", 5432), "mysql_url": db_url("mysql", 3306), "mongodb_url": db_url("mongodb+srv", 27017),
    "redis_url": db_url("rediss", 6380), "amqp_url": db_url("amqps", 5671),
}  # fmt: skip

# Prose around a value; "{kw}" sentences name a credential word, the others do not.
SENTENCES_KEYWORD = [
    "export API_KEY={v}", 'client = Client(api_key="{v}")', "token: {v}", "Authorization: Bearer {v}",
    "secret = '{v}'", '{{"password": "{v}", "user": "svc"}}', "--token {v} --region eu-west-1",
    "Der API-Schlüssel lautet {v}", "mot de passe : {v}", "la clave secreta es {v}",
]
SENTENCES_PLAIN = [
    "Use this key for the retry: {v}", "the token {v} expired yesterday", "{v}",
    "I pasted {v} into the config but it still fails.", "deploy log: authenticated with {v} at 10:32",
    "Here it is -> {v} <- keep it safe", "can you check why {v} gets a 401?", "({v})",
    "Please rotate {v}.", "2026-12-03T10:32:01Z INFO connecting with {v}",
    "Nutze {v} für den Retry.", "Voici la valeur {v}, merci.", "usa {v} para el despliegue",
    "history: curl -s https://api.example.com/v1/items -H 'X-Key: {v}'",
]


def _uuid(r: random.Random) -> str:
    return str(uuid.UUID(int=r.getrandbits(128), version=4))


def _b64_image(r: random.Random) -> str:
    return "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n" + r.randbytes(r.choice([60, 200]))).decode()


LOOKALIKES: dict[str, Callable[[random.Random], str]] = {
    "uuid": _uuid,
    "git_sha": lambda r: rnd(r, HEX, 40),
    "short_sha": lambda r: rnd(r, HEX, r.choice([7, 8, 12])),
    "sha256": lambda r: rnd(r, HEX, 64),
    "image_digest": lambda r: "sha256:" + rnd(r, HEX, 64),
    "npm_integrity": lambda r: "sha512-" + base64.b64encode(r.randbytes(64)).decode(),
    "md5": lambda r: rnd(r, HEX, 32),
    "base64_image": _b64_image,
    "order_number": lambda r: r.choice(["ORD-", "INV-", "PO-", "#"]) + f"{r.randint(2019, 2026)}-{r.randint(0, 999999):06d}",
    "trace_id": lambda r: rnd(r, HEX, 32),
    "span_id": lambda r: rnd(r, HEX, 16),
    "w3c_traceparent": lambda r: f"00-{rnd(r, HEX, 32)}-{rnd(r, HEX, 16)}-01",
    "request_id": lambda r: r.choice(["req_", "evt_", "ch_", "cus_", "pi_"]) + mixed(r, B62, 24),
    "k8s_pod": lambda r: f"api-{rnd(r, LOWER_ALNUM, 10)}-{rnd(r, LOWER_ALNUM, 5)}",
    "s3_key": lambda r: f"s3://acme-logs/{r.randint(2020, 2026)}/{r.randint(1, 12):02d}/{_uuid(r)}.json.gz",
    "semver": lambda r: f"v{r.randint(0, 9)}.{r.randint(0, 30)}.{r.randint(0, 99)}",
    "iso_time": lambda r: f"2026-{r.randint(1, 12):02d}-{r.randint(1, 28):02d}T{r.randint(0, 23):02d}:{r.randint(0, 59):02d}:00Z",
    "stripe_customer_id": lambda r: "cus_" + mixed(r, B62, 14),
    "model_name": lambda r: r.choice(["gpt-4o-2024-08-06", "claude-3-5-sonnet-20241022", "gemini-1.5-pro-002", "llama-3.1-70b-instruct"]),
    "file_path": lambda r: f"/home/app/.cache/huggingface/hub/models--{rnd(r, string.ascii_lowercase, 8)}/snapshots/{rnd(r, HEX, 40)}",
}
CLEAN_SENTENCES = [
    "commit {v} fixed the retry loop", "trace {v} took 812 ms", "see {v} for details", "id: {v}",
    "the build for {v} passed", "order {v} shipped on Tuesday", "checksum {v} matches", '{{"id": "{v}", "ok": true}}',
]


# Tokens of no known format: only a credential word nearby tells them (the contextual
# detector), in the languages prompts are written in; look-alikes near the same words.
def unknown_token(r: random.Random) -> tuple[str, int, int]:
    v = mixed(r, r.choice([B62, URLSAFE, B64]), r.choice([20, 32, 40, 64]))
    return v, 0, len(v)


CONTEXT_FORMATS: dict[str, Gen] = {"unknown_token_near_credential_word": unknown_token}
SENTENCES_CONTEXT = [
    "token: {v}", "my password is {v}", "the API key is {v}", "secret={v}", "credentials: {v}",
    "Passwort: {v}", "das Token lautet {v}", "Kennwort={v}", "API-Schlüssel: {v}", "mot de passe : {v}",
    "le jeton est {v}", "clé API : {v}", "la contraseña es {v}", "la clave es {v}", "senha: {v}",
    "la password è {v}", "chiave segreta: {v}", "wachtwoord: {v}", "hasło: {v}", "пароль: {v}", "токен: {v}",
    "パスワード: {v}", "密码：{v}", "비밀번호: {v}",
]
CLEAN_KEYWORD_SENTENCES = [
    "cache key: {v}", "idempotency key {v}", "token usage for trace {v}", "the secret manager path is {v}",
    "primary key {v}", "commit {v} rotated the token", "Schlüssel-ID {v}", "le jeton de la commande {v}",
    "la clave del pedido: {v}", "password reset requested for order {v}",
]
