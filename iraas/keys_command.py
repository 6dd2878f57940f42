"""`iraas keys create | list | revoke | new`: run where the deployment's store is reachable (the
embedded data dir, or the AWS bucket with the operator's credentials)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import secrets
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from .access.keys import PREFIX, SCOPES, KeyRing
from .config import KEYS

if TYPE_CHECKING:
    from .config import Settings


SettingsFrom = Callable[[argparse.Namespace, str], "Settings"]


def add_parser(
    sub: argparse._SubParsersAction,  # type: ignore[type-arg]
    add_settings: Callable[[argparse.ArgumentParser, str], None],
    settings_from: SettingsFrom,
) -> None:
    p = sub.add_parser(
        "keys",
        help="API keys: create (printed once), list, revoke",
        description="API keys for the service (docs/security.md). Keys are stored as hashes in the "
        "deployment's store; every web process sees a change within about a second.",
    )
    verbs = p.add_subparsers(dest="verb", required=True)
    create = verbs.add_parser("create", help="create a key; its last line of output is the key alone")
    create.add_argument("key_name", metavar="NAME", help="who or what the key is for (letters, digits, _.-)")
    create.add_argument("--scope", choices=SCOPES, default="recognize", help="recognize (default) or admin")
    create.add_argument("--requests-per-s", type=float, help="this key's request rate (default: the setting)")
    create.add_argument("--images-per-s", type=float, help="this key's image rate (default: the setting)")
    create.add_argument("--images-per-day", type=int, help="this key's daily images (default: the setting)")
    create.add_argument(
        "--token-env",
        metavar="VAR",
        help="store the key in this environment variable (made by `iraas keys new`, kept in a Kubernetes "
        "Secret) instead of a new one; nothing changes if it is stored already, so it may run at every start",
    )
    new = verbs.add_parser("new", help="print a new key without storing it (for a Secret; see create --token-env)")
    new.set_defaults(func=lambda _: print(PREFIX + secrets.token_urlsafe(32)) or 0)
    listing = verbs.add_parser("list", help="every key: name, scope, created, revoked")
    listing.add_argument("--json", action="store_true", help="one JSON object per key")
    revoke = verbs.add_parser("revoke", help="revoke a key: refused everywhere within about a second")
    revoke.add_argument("key_name", metavar="NAME")
    for v in (create, listing, revoke):
        add_settings(v, KEYS)
        v.set_defaults(func=main, settings_from=settings_from)


def main(args: argparse.Namespace) -> int:
    from .parts import blobs, located

    ring = KeyRing(blobs(located(args.settings_from(args, KEYS))))
    if args.verb == "create" and args.token_env:
        token = os.environ.get(args.token_env, "").strip()
        if not token:
            raise ValueError(f"--token-env {args.token_env}: that variable is empty or not set")
        created = ring.ensure(args.key_name, args.scope, token)
        print(f"{args.scope} key {args.key_name!r} {'stored' if created else 'was stored already'}", file=sys.stderr)
    elif args.verb == "create":
        limits = {k: getattr(args, k) for k in ("requests_per_s", "images_per_s", "images_per_day")}
        token = ring.create(args.key_name, args.scope, **limits)
        print(f"created {args.scope} key {args.key_name!r}; it is shown this once, store it now:", file=sys.stderr)
        print(token)
    elif args.verb == "list":
        for key in sorted(ring.all(), key=lambda k: k.created_at):
            if args.json:
                print(json.dumps(dataclasses.asdict(key)))
            else:
                state = f"revoked {_when(key.revoked_at)}" if key.revoked_at else "active"
                print(f"{key.name:24} {key.scope:10} created {_when(key.created_at)}  {state}")
    else:
        key = ring.revoke(args.key_name)
        print(f"revoked {key.name!r} ({key.scope}) at {_when(key.revoked_at)}")
    return 0


def _when(at: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at or 0))
