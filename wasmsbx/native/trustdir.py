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
    explicit = os.environ.get("WASMSBX_TRUST_DIR", "").strip()
    if explicit:
        return os.path.abspath(os.path.expanduser(explicit))
    if sys.platform.startswith("linux"):
        base = os.environ.get("XDG_CONFIG_HOME", "").strip()
        if not (base and os.path.isabs(base)):
            base = os.path.join(os.path.expanduser("~"), ".config")
        return os.path.join(base, "wasmsbx", "trust")
    import platformdirs  # pragma: no cover - Linux is the supported platform

    return os.path.join(platformdirs.user_config_dir("wasmsbx", appauthor=False), "trust")


def in_trust_dir(path: str) -> bool:
    """Whether ``path`` (symlinks followed, a missing tail too) is the trust folder or
    lies inside it."""
    keys = os.path.realpath(trust_dir_text())
    real = os.path.realpath(path)
    return real == keys or real.startswith(keys.rstrip(os.sep) + os.sep)
