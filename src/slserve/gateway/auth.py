"""Who is calling: the API key from `Authorization: Bearer` or `x-api-key`, checked against the key store, and
what that key may open. Nothing past this point runs for a caller without a valid key."""

from __future__ import annotations

import dataclasses
import datetime as dt
import time

from slserve.accounts.keys import KeyRecord, KeyStore, split_token
from slserve.errors import Forbidden, Unauthorized
from slserve.router.table import Route

HOW = "send it as `Authorization: Bearer <key>` or `x-api-key: <key>`"


def _when(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def presented_key(headers: dict[str, str]) -> str | None:
    auth = headers.get("authorization")
    if auth:
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized(f"the Authorization header must be `Bearer <key>`; {HOW}")
        return token.strip()
    return headers.get("x-api-key", "").strip() or None  # trimmed as a Bearer token is


class Authenticator:
    """Keys are cached in memory and the cache is dropped whenever the store changes (a revocation made by
    `slserve keys revoke` in another process applies to the very next request). A token that verified once is
    remembered until then too, so a key's keyed hash is computed once, not per request; only valid tokens are
    remembered, so made-up ones cannot grow the cache."""

    def __init__(self, store: KeyStore) -> None:
        self.store = store
        self._version = b""
        self._cache: dict[str, KeyRecord] = {}
        self._verified: dict[str, KeyRecord] = {}

    def authenticate(self, headers: dict[str, str]) -> KeyRecord:
        token = presented_key(headers)
        if token is None:
            raise Unauthorized(f"this endpoint needs an API key; {HOW} (make one with `slserve keys create`)")
        self._drop_if_changed()
        now = time.time()
        key = self._verified.get(token)
        if key is None or (key.previous_valid_until is not None and now >= key.previous_valid_until):
            key = self._verify(token, now)  # and again once a rotation's grace may have ended
        if key.revoked_at is not None:
            raise Unauthorized(f"API key {key.key_id} was revoked at {_when(key.revoked_at)}; ask for a new key")
        if key.expires_at is not None and now >= key.expires_at:
            raise Unauthorized(f"API key {key.key_id} expired at {_when(key.expires_at)}; ask for a new key")
        return key

    def _verify(self, token: str, now: float) -> KeyRecord:
        parts = split_token(token)
        key = self._lookup(parts[0]) if parts else None
        if key is None or not key.matches(self.store.hash(token), now):
            raise Unauthorized(f"the API key is not valid; check it was copied whole, and {HOW}")
        self._verified[token] = key
        return key

    def _drop_if_changed(self) -> None:
        version = self.store.version()
        if version != self._version:
            self._cache.clear()
            self._verified.clear()
            self._version = version

    def _lookup(self, key_id: str) -> KeyRecord | None:
        key = self._cache.get(key_id)
        if key is None:
            key = self.store.get(key_id)
            if key is not None:
                self._cache[key_id] = key
        return key


def tier_for(key: KeyRecord, asked: str | None) -> str | None:
    """The tier a request asked for, else its key's default (None: the model's own default)."""
    return asked or key.default_tier


def check_model(key: KeyRecord, model: str) -> None:
    if key.models is not None and model not in key.models:
        raise Forbidden(f"API key {key.key_id} does not open model {model!r}; it opens {sorted(key.models)}")


def scoped(key: KeyRecord, route: Route) -> Route:
    """The route as this key may take it: its model and tier must be open to the key, and fallbacks stay
    inside the key's tiers."""
    check_model(key, route.model)
    if key.tiers is None:
        return route
    if route.tier not in key.tiers:
        raise Forbidden(
            f"API key {key.key_id} does not open tier {route.tier!r}; it opens {sorted(key.tiers)} "
            "(choose one with the x-slserve-tier header)"
        )
    candidates = [c for c in route.candidates if c[0] in key.tiers]
    if not candidates:
        raise Forbidden(f"{route.model} version {route.version} has no function in the tiers key {key.key_id} opens")
    return dataclasses.replace(route, candidates=candidates)


def require_admin(key: KeyRecord, what: str) -> None:
    if not key.admin:
        raise Forbidden(f"{what} needs an admin key (`slserve keys create --admin`); key {key.key_id} is not one")
