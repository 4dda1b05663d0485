"""``--stream`` for a component: the streaming ABI in WIT.

A core module streams through ``alloc`` and pointers into its memory (runner.stream);
a component's memory is its own, so the component model's ``list<u8>`` carries the
bytes instead (the canonical ABI copies each chunk in through the guest's
``cabi_realloc`` and the output out):

``FUNC(chunk: list<u8>) -> list<u8>``
    called once per chunk (FUNC defaults to ``process``; any parameter name); every
    chunk is exactly the chunk size except the last, never empty; what it returns is
    written to the output before the next chunk is read.
``finish() -> list<u8>``, optional
    called once at the end of the input; its output is written last.

``string`` is not offered: a chunk boundary may fall inside a UTF-8 sequence, so a
chunk is not always a string. The host holds one chunk and its output at a time, as
for modules; fuel and the timeout apply per call.
"""

from __future__ import annotations

from typing import Any

from .. import errors
from .types import WitType

BYTES = WitType("list", (WitType("u8"),))
ABI_HINT = (
    "a streaming component exports FUNC(chunk: list<u8>) -> list<u8> (FUNC defaults to "
    "process), optionally finish() -> list<u8>; see examples/components/upper.wat"
)


class ComponentStreamSession:
    """One component instance fed chunk by chunk: ``feed(chunk) -> bytes``, ``finish()``
    (what ``runner.stream.run_stream`` drives, as for a module's session)."""

    direct = False  # chunks cross as list<u8> values, never through guest memory in place

    def __init__(self, box: Any, func: str, chunk_size: int) -> None:
        from ..runner.batch import guest_wasi
        from ..runner.stream import check_chunk_size

        check_chunk_size(chunk_size)
        self.chunk_size = chunk_size
        self.export = _streaming(box, box.resolve(func), ((BYTES,), BYTES))
        names = [e.name for e in box.component_exports]
        self.finisher = None
        if "finish" in names:
            self.finisher = _streaming(box, box.resolve("finish"), ((), BYTES))
        self.instance = box.instantiate(guest_wasi(box))

    def feed(self, chunk: Any) -> bytes:
        """Process one chunk (at most chunk_size bytes); the component's output for it."""
        if not chunk:
            return b""
        if len(chunk) > self.chunk_size:
            raise ValueError(f"chunk of {len(chunk)} bytes exceeds chunk size {self.chunk_size}")
        return self.instance.call(self.export, [bytes(chunk)], bounded=False)

    def finish(self) -> bytes:
        if self.finisher is None:
            return b""
        return self.instance.call(self.finisher, [], bounded=False)

    def close(self) -> None:
        self.instance.close()


def _streaming(box: Any, export: Any, wanted: tuple) -> Any:
    """``export`` if its signature is ``wanted`` (params, result); a UsageError if not."""
    params, result = wanted
    if export.sig.param_types != params or export.sig.result != result:
        shape = "func(chunk: list<u8>) -> list<u8>" if params else "func() -> list<u8>"
        raise errors.UsageError(
            f"{box.path.name}: {export.name} has signature {export.sig}; --stream needs {shape}",
            hint=ABI_HINT,
        )
    return export
