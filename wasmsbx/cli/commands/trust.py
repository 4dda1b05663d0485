"""``wasmsbx trust show|keygen|add|list|remove|rotate``: the keys that vouch for native code."""

from __future__ import annotations

from typing import Optional

import typer

from .. import output
from ..boundary import boundary

JSON = typer.Option(False, "--json", help="Print JSON.")


def register(app: typer.Typer) -> None:
    group = typer.Typer(
        help="Manage the keys that let native code run: your secret key, your signing key, "
        "and the public keys whose signed artifacts you trust.",
        no_args_is_help=True,
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    for command in (show, keygen, add, list_, remove, rotate):
        group.command(command.__name__.rstrip("_"))(boundary(command))
    app.add_typer(group, name="trust")


def show(json_output: bool = JSON) -> int:
    """Where the keys live, your public signing key, the keys you trust, any problem."""
    from ...native import trust

    report = trust.status()
    if json_output:
        output.emit_json(report)
        return 0
    from ...errors import inert  # (a folder's name may hold a line break: red team 137)

    output.out(f"trust folder   {inert(str(report['trust_dir']), None)}")
    output.out(f"secret key     {inert(str(report['secret_key']), None)}")
    output.out(f"signing key    {report['signing_key'] or 'none (wasmsbx trust keygen)'}")
    output.out(f"trusted keys   {len(report['trusted'])}")
    for key in report["trusted"]:
        output.out(f"  {key['name']}  {key['key']}")
    for problem in dict.fromkeys(report["problems"]):  # (each once)
        output.warning(problem)
    return 0


def keygen(
    force: bool = typer.Option(False, "--force", help="Replace an existing signing key."),
    json_output: bool = JSON,
) -> int:
    """Create your Ed25519 signing key for `wasmsbx compile --sign`; prints its public key."""
    from ...native import trust

    public = trust.keygen(force=force)
    if json_output:
        output.emit_json({"public_key": public, "id": trust.key_id(trust.decode_public(public))})
        return 0
    output.out(public)
    output.err(
        "give this public key to whoever runs your artifacts; they trust it with "
        f"`wasmsbx trust add {public} --name YOU`"
    )
    return 0


def add(
    key: str = typer.Argument(..., metavar="PUBKEY", help="A public key: ed25519:BASE64."),
    name: Optional[str] = typer.Option(
        None, "--name", "-n", help="A name for it (default: its id)."
    ),
    json_output: bool = JSON,
) -> int:
    """Trust artifacts signed by PUBKEY (only a key you got from its owner)."""
    from ...native import trust

    entry = trust.add_trusted(key, name)
    if json_output:
        output.emit_json(entry.to_dict())
        return 0
    output.out(f"trusted {entry.name}: {entry.key}")
    return 0


def list_(json_output: bool = JSON) -> int:
    """The public keys whose signed artifacts run here."""
    from ...native import trust

    keys = [k.to_dict() for k in trust.trusted_keys()]
    if json_output:
        output.emit_json({"trusted": keys})
        return 0
    if not keys:
        output.out("no trusted keys: only artifacts compiled with your own key run")
    for key in keys:
        output.out(f"{key['name']}  {key['key']}  (id {key['id']})")
    return 0


def remove(
    which: str = typer.Argument(..., metavar="NAME|PUBKEY|ID", help="The key to stop trusting."),
    json_output: bool = JSON,
) -> int:
    """Stop trusting a key: artifacts it signed no longer run."""
    from ...native import trust

    gone = [k.to_dict() for k in trust.remove_trusted(which)]
    if json_output:
        output.emit_json({"removed": gone})
        return 0
    for key in gone:
        output.out(f"no longer trusted: {key['name']} ({key['key']})")
    return 0


def rotate(json_output: bool = JSON) -> int:
    """Make a new secret key: every cache entry is recompiled, and your own unsigned
    artifacts must be compiled again. Use it if the old key may have been read."""
    from ...native import trust

    path = trust.rotate()
    if json_output:
        output.emit_json({"secret_key": str(path)})
        return 0
    output.out(f"new secret key in {path}; cache entries and artifacts made with the old one")
    output.out("will be refused (cache entries are recompiled on their next use)")
    return 0
