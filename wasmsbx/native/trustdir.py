"""Where the trust folder is, in a leaf that imports nothing of wasmsbx.

Both ``native.trust`` (which keeps the keys there) and ``outfile`` (which must never
write there for anyone else) need the answer; ``trust`` writes its key files through
``outfile``, so the location lives here to keep the import graph free of cycles.
"""

from __future__ import annotations

import os
import sys


def trust_dir_text() -> str:
    """The trust folder as text (Path objects cost the cached load tens of µs). On
    Linux the user config dir is platformdirs' rule ($XDG_CONFIG_HOME if absolute, else
    ~/.config), written out because importing platformdirs costs a run several ms."""
    explicit = os.path.expanduser(os.environ.get("WASMSBX_TRUST_DIR", "").strip())
    if os.path.isabs(explicit):
        return os.path.abspath(explicit)
    # A relative value is ignored, as the XDG rules ignore one in $XDG_CONFIG_HOME: it
    # would name a folder in whatever folder wasmsbx runs in, and a cloned project could
    # bring one holding a secret key it knows (`wasmsbx trust show` reports it).
    if sys.platform.startswith("linux"):
        base = os.environ.get("XDG_CONFIG_HOME", "").strip()
        if not (base and os.path.isabs(base)):
            base = os.path.join(os.path.expanduser("~"), ".config")
        return os.path.join(base, "wasmsbx", "trust")
    import platformdirs  # pragma: no cover - Linux is the supported platform

    return os.path.join(platformdirs.user_config_dir("wasmsbx", appauthor=False), "trust")


def ignored_trust_dir() -> str:
    """$WASMSBX_TRUST_DIR if it is set but ignored (relative), else ""."""
    explicit = os.path.expanduser(os.environ.get("WASMSBX_TRUST_DIR", "").strip())
    return "" if not explicit or os.path.isabs(explicit) else explicit


def in_trust_dir(path: str) -> bool:
    """Whether ``path`` (symlinks followed, a missing tail too) is the trust folder or
    lies inside it."""
    keys = os.path.realpath(trust_dir_text())
    real = os.path.realpath(path)
    return real == keys or real.startswith(keys.rstrip(os.sep) + os.sep)
