"""What the trust tests share: two modules with the same interface but different code,
and a forger who can do everything but use the victim's key."""

from __future__ import annotations

import json
import os
from pathlib import Path

from blake3 import blake3

from wasmsbx.native import artifact as aot

# Both export add(i32, i32) -> i32; the "evil" one returns 77 whatever it is given, so a
# run that prints 77 ran the swapped-in native code.
GOOD_WAT = (
    '(module (func (export "add") (param i32 i32) (result i32) local.get 0 local.get 1 i32.add))'
)
EVIL_WAT = '(module (func (export "add") (param i32 i32) (result i32) i32.const 77))'


def write_modules(folder: Path) -> tuple:
    good, evil = folder / "add.wat", folder / "evil.wat"
    good.write_text(GOOD_WAT)
    evil.write_text(EVIL_WAT)
    return good, evil


def forge(victim: bytes, donor: bytes, key=None, kind=None, signature=None) -> bytes:
    """The victim's header around the donor's native code, with the tag recomputed the
    way a forger can: unkeyed BLAKE3 (``key`` None) or with a key of their own;
    ``signature`` (public key, signature) is copied in as it is."""
    v, d = aot.layout(victim), aot.layout(donor)
    header = json.loads(bytes(victim[aot.START : v.header_end]))
    payload = bytes(donor[d.header_end : d.signed_end])
    header["payload"]["size"] = len(payload)
    if kind:
        header["kind"] = kind
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    size = aot.SIGNATURE_SIZE if signature else 0
    body = aot.MAGIC + aot.PREFIX.pack(len(text), size) + text + payload
    if signature:
        body += signature[0] + signature[1]
    tag = blake3(body).digest() if key is None else blake3(body, key=key).digest()
    return body + tag


def attacker_key() -> bytes:
    return os.urandom(32)
