"""The `redaction:` section of the config file, and the policy it gives each scope.

Kept apart from `redaction.py` because it needs pydantic, which the worker has and the
app-side SDK does not. Example:

    redaction:
      hash_key: "..."            # or LLMPULSE_REDACTION__HASH_KEY; needed by `hash`
      defaults: {secrets: mask, pii: mask}
      overrides:
        - tenant: acme
          pii: hash
        - tenant: acme
          workflow: support-bot
          classes: {ip_address: allow, email: drop_content}

A scope takes the defaults, then the overrides that match it from least to most
specific (tenant only or workflow only, then both); among equals the later one wins.
"""

from __future__ import annotations

from typing import Optional, Sequence

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, SecretStr, field_validator, model_validator

from llmpulse.processors.redaction import CLASS_KIND, Action, Policy, Redactor
from llmpulse.schemas.contract import Event

ANY = "*"
_STRICTNESS: tuple[Action, ...] = ("allow", "hash", "mask", "drop_content")
_STRICTEST = ("\x00strictest", "")  # cache key no scope can have


def _known_classes(classes: dict[str, Action]) -> dict[str, Action]:
    unknown = sorted(set(classes) - set(CLASS_KIND))
    if unknown:
        raise ValueError(f"unknown redaction classes {unknown}; known: {sorted(CLASS_KIND)}")
    return classes


class PolicyDefaults(BaseModel):
    model_config = ConfigDict(extra="forbid")

    secrets: Action = "mask"
    pii: Action = "mask"
    classes: dict[str, Action] = Field(default_factory=dict)

    _check_classes = field_validator("classes")(_known_classes)


class ScopeOverride(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tenant: str = ANY
    workflow: str = ANY
    secrets: Optional[Action] = None
    pii: Optional[Action] = None
    classes: dict[str, Action] = Field(default_factory=dict)

    _check_classes = field_validator("classes")(_known_classes)

    def matches(self, tenant: str, workflow: str) -> bool:
        return self.tenant in (ANY, tenant) and self.workflow in (ANY, workflow)

    @property
    def specificity(self) -> int:
        return (self.tenant != ANY) + (self.workflow != ANY)


class RedactionSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    hash_key: SecretStr = SecretStr("")
    defaults: PolicyDefaults = Field(default_factory=PolicyDefaults)
    overrides: list[ScopeOverride] = Field(default_factory=list)
    # Tenants ("*": every one) whose events marked as redacted by the SDK or the gateway
    # (header `llmpulse-redacted`, equal to this worker's marker for the event's scope) are not
    # redacted again. The marker proves nothing: whoever can write to the events topic can set
    # it, so list only tenants whose every producer runs the SDK or the gateway. Default: none.
    trust_upstream: list[str] = Field(default_factory=list)

    _cache: dict[tuple[str, str], Redactor] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _hash_needs_key(self) -> "RedactionSettings":
        actions = [self.defaults.secrets, self.defaults.pii, *self.defaults.classes.values()]
        for o in self.overrides:
            actions += [o.secrets, o.pii, *o.classes.values()]
        if "hash" in actions and not self.hash_key.get_secret_value():
            raise ValueError("redaction.hash_key is required when a policy uses `hash`")
        return self

    def policy_for(self, tenant: str, workflow: str) -> Policy:
        if not self.enabled:
            return Policy(secrets="allow", pii="allow")
        secrets, pii = self.defaults.secrets, self.defaults.pii
        classes = dict(self.defaults.classes)
        matching = [o for o in self.overrides if o.matches(tenant, workflow)]
        for o in sorted(matching, key=lambda o: o.specificity):  # stable: later wins among equals
            secrets = o.secrets or secrets
            pii = o.pii or pii
            classes.update(o.classes)
        return Policy(secrets=secrets, pii=pii, classes=classes)

    def redactor_for(self, tenant: str, workflow: str) -> Redactor:
        """Compiled once per scope; the worker calls this per event."""
        # The cache dict read straight from pydantic's private storage: `self._cache` goes
        # through BaseModel.__getattr__, several times this whole lookup on the hot path.
        cache = self.__pydantic_private__["_cache"]
        r = cache.get((tenant, workflow))
        if r is None:
            r = Redactor(self.policy_for(tenant, workflow), self.hash_key.get_secret_value(), tenant)
            cache[(tenant, workflow)] = r
        return r

    def trusts(self, tenant: str, workflow: str, marker: Optional[bytes]) -> bool:
        """The event was redacted upstream by this worker's rules under this scope's policy,
        and the tenant is trusted to say so (`trust_upstream`)."""
        if marker is None or not self.enabled:
            return False
        trusted = self.trust_upstream
        if not trusted or (tenant not in trusted and ANY not in trusted):
            return False
        return marker == self.redactor_for(tenant, workflow).marker

    def strictest_policy(self) -> Policy:
        """Per class, the strictest action any scope may take (allow < hash < mask < drop_content).

        For bytes whose scope cannot be known (dead letters, validator reasons, undecodable
        `publish_raw` input): whatever tenant sent them, nothing its policy keeps out is kept.
        """
        if not self.enabled:
            return Policy(secrets="allow", pii="allow")
        sources = [self.defaults, *self.overrides]
        classes: dict[str, Action] = {}
        for cls, kind in CLASS_KIND.items():
            acts = [src.classes.get(cls) or (src.secrets if kind == "secret" else src.pii) for src in sources]
            classes[cls] = max((a for a in acts if a), key=_STRICTNESS.index)
        return Policy(classes=classes)

    def preclear(self, events: Sequence[Event]) -> list[bool]:
        """Per event: nothing to redact under any scope's policy (the strictest one's rules,
        in one scan for the whole batch: see `Redactor.preclear`)."""
        return self.strictest_redactor().preclear(events)

    def strictest_redactor(self) -> Redactor:
        r = self._cache.get(_STRICTEST)
        if r is None:
            r = self._cache[_STRICTEST] = Redactor(self.strictest_policy(), self.hash_key.get_secret_value(), "")
        return r
