#!/usr/bin/env python3
"""Issue, list and revoke the gateway's API keys.

  keys.py issue --name NAME [--tier TIER]   print a new key once; only its hash is kept
  keys.py list                              ids, names, tiers, dates; never keys
  keys.py revoke KEY_ID_OR_NAME             takes effect within seconds, no restart
  keys.py sync                              rewrite Envoy's key filter from the store

The store (`$LLM_KEYS_DIR/keys.json`, mode 0600) holds SHA-256 digests and metadata only.
After every change the Envoy key filter is rewritten atomically into the directory Envoy
watches, so new and revoked keys apply without restarting Envoy or dropping requests.
Keys carry 160 random bits, so a plain (unsalted) SHA-256 is enough to make a stolen store
useless, as for GitHub's or Stripe's tokens.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import secrets
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional, Sequence

from gateway.render import GatewaySettings, load_tiers, render_auth_filter, write_atomically

KEY_PREFIX = "llmk_"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MODEL_PATTERN = NAME_PATTERN  # as adapter names are checked (textgen/adapters/peft_format.py)


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class KeyStore:
    """The JSON key store and the Envoy filter derived from it."""

    def __init__(self, keys_dir: Path) -> None:
        self.dir = keys_dir
        self.path = keys_dir / "keys.json"
        self.filter_path = keys_dir / "envoy" / "auth-filter.yaml"

    def load(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return json.loads(self.path.read_text())["keys"]

    def _save(self, keys: list[dict[str, Any]]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomically(self.path, json.dumps({"keys": keys}, indent=1) + "\n")
        self.sync(keys)

    def sync(self, keys: Optional[list[dict[str, Any]]] = None) -> None:
        """Rewrite Envoy's key filter from the store (active keys only)."""
        keys = self.load() if keys is None else keys
        write_atomically(self.filter_path,
                         render_auth_filter(k for k in keys if not k.get("revoked")))

    def issue(self, name: str, tier: str,
              models: Sequence[str] = ()) -> tuple[str, dict[str, Any]]:
        """A new key (returned once; only its digest is kept). `models`: the model ids (the
        base model's served name, adapters' names) it may use; empty: every one."""
        tiers = load_tiers()["tiers"]
        if tier not in tiers:
            raise SystemExit(f"unknown tier {tier!r}; tiers in gateway/tiers.yaml: "
                             f"{', '.join(tiers)}")
        if not NAME_PATTERN.match(name):
            raise SystemExit(f"name {name!r}: use 1-64 letters, digits, '.', '_' or '-'")
        for model in models:
            if not MODEL_PATTERN.match(model):
                raise SystemExit(f"model {model!r}: use the ids GET /v1/models lists (1-64 "
                                 "letters, digits, '.', '_' or '-')")
        key = KEY_PREFIX + secrets.token_hex(20)
        record = {"id": "key_" + secrets.token_hex(6), "name": name, "tier": tier,
                  "sha256": digest(key), "created": _now(), "revoked": None,
                  **({"models": sorted(set(models))} if models else {})}
        keys = self.load()
        keys.append(record)
        self._save(keys)
        return key, record

    def revoke(self, id_or_name: str) -> list[dict[str, Any]]:
        keys = self.load()
        hits = [k for k in keys if id_or_name in (k["id"], k["name"]) and not k["revoked"]]
        if not hits:
            raise SystemExit(f"no active key with id or name {id_or_name!r}; see `list`")
        for key in hits:
            key["revoked"] = _now()
        self._save(keys)
        return hits

    def active_named(self, name: str) -> bool:
        return any(k["name"] == name and not k["revoked"] for k in self.load())


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    issue = commands.add_parser("issue", help="create a key and print it once")
    issue.add_argument("--name", required=True, help="who or what uses the key")
    issue.add_argument("--tier", help="rate-limit tier from gateway/tiers.yaml "
                                      "(default: its default_tier)")
    issue.add_argument("--models", default="",
                       help="comma-separated model ids the key may use: the base model's "
                            "served name and LoRA adapters' names (default: all)")
    commands.add_parser("list", help="show keys (never the keys themselves)")
    revoke = commands.add_parser("revoke", help="revoke by key id or name")
    revoke.add_argument("key", help="key id (key_...) or name")
    commands.add_parser("sync", help="rewrite Envoy's key filter from the store")
    args = parser.parse_args(argv)

    store = KeyStore(GatewaySettings.from_env().keys_dir)
    if args.command == "issue":
        models = [m.strip() for m in args.models.split(",") if m.strip()]
        key, record = store.issue(args.name, args.tier or load_tiers()["default_tier"], models)
        limited = f", models {', '.join(models)}" if models else ""
        print(f"issued {record['id']} (name {record['name']}, tier {record['tier']}{limited}).\n"
              f"The key is shown only now; store it safely:\n\n  {key}\n")
    elif args.command == "list":
        print(f"{'id':<18} {'name':<20} {'tier':<10} {'created':<21} {'revoked':<21} models")
        for k in store.load():
            print(f"{k['id']:<18} {k['name']:<20} {k['tier']:<10} {k['created']:<21} "
                  f"{k['revoked'] or '-':<21} {','.join(k.get('models', [])) or 'all'}")
    elif args.command == "revoke":
        for k in store.revoke(args.key):
            print(f"revoked {k['id']} ({k['name']})")
    else:
        store.sync()
        print(f"wrote {store.filter_path}")
    return 0


if __name__ == "__main__":
    os.umask(0o077)
    sys.exit(main())
