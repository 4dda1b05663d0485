"""A guest's linear memory seen from Python: ``box.memory()`` and ``Caller.memory()``.

In the core because both the runner and the backends (for a host function's caller) hand
these out; the backend supplies the ``access`` object that does the reads and writes.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Union

from . import errors


class Memory:
    """A guest memory. Every access is range-checked: IndexError, never a crash.

    ``read(offset, length) -> bytes``, ``write(offset, data)``, ``size`` (bytes),
    ``pages``, ``grow(pages) -> old pages`` (within the policy's memory limit), and
    ``with mem.view() as buf:`` a memoryview of the whole memory, valid inside the block
    (a grow may move the memory, so the view is released when the block ends).

    It is the memory of one instance: once that instance is closed or replaced (the
    Sandbox closed, a ``fresh`` call, its Group closed) or, from a ``Caller``, once the
    host call is over, every use is a UsageError. Before, such a Memory went on reading
    and writing the old instance, and a Sandbox's next call ran on a new one: a read
    gave data the guest no longer had (red team round 44)."""

    PAGE = 65536

    def __init__(
        self,
        access: Any,
        name: str = "memory",
        alive: Optional[Callable[[], bool]] = None,
        gone: tuple = (),
    ) -> None:
        self._access = access
        self.name = name
        self._alive = alive  # whether its instance (or call) is still current
        self._gone = gone  # (message, hint) of the UsageError once it is not

    def _check(self) -> Any:
        if self._alive is not None and not self._alive():
            raise self._gone_error()
        return self._access

    def _gone_error(self) -> errors.UsageError:
        message, hint = self._gone or (
            f"memory {self.name!r} belongs to an instance that is gone",
            "take the memory again",
        )
        return errors.UsageError(message, hint=hint)

    def _use(self, how: Callable, *args: Any) -> Any:
        """``how(access, *args)``; a use that its call's end overtook (another thread
        checked, then the host call returned before the runtime was reached: wasmtime-py's
        "caller is no longer valid", red team round 78) is the UsageError of a memory
        kept past its call, as a use after it is."""
        access = self._check()
        try:
            return how(access, *args)
        except ValueError:
            if self._alive is not None and not self._alive():
                raise self._gone_error() from None
            raise

    @property
    def size(self) -> int:
        return int(self._use(_size))

    @property
    def pages(self) -> int:
        return self.size // self.PAGE

    def __len__(self) -> int:
        return self.size

    def read(self, offset: int, length: int) -> bytes:
        _check_int(offset, length)
        return bytes(self._use(_read, offset, length))

    def write(self, offset: int, data: Union[bytes, bytearray, memoryview]) -> None:
        _check_int(offset)
        self._use(_write, offset, data)

    def read_cstring(self, offset: int, limit: int = 1 << 20) -> bytes:
        """Bytes from ``offset`` up to (not including) the first NUL, at most ``limit``."""
        end = min(self.size, offset + limit)
        data = self.read(offset, max(0, end - offset))
        return data.split(b"\0", 1)[0]

    def grow(self, pages: int) -> int:
        _check_int(pages)
        if pages > GROW_MAX:  # (a u64 underneath: 2**64 + 3 grew by 3 pages)
            from .values import shown

            raise errors.MemoryLimitExceeded(
                f"memory {self.name!r} cannot grow by {shown(pages, str)} pages: more "
                "than any memory holds",
                hint="the policy's limits.memory or the memory's maximum",
            )
        access = self._check()
        try:
            return int(access.grow(pages))
        except IndexError:
            raise
        except Exception as exc:
            if self._alive is not None and not self._alive():  # (see _use)
                raise self._gone_error() from None
            raise errors.MemoryLimitExceeded(
                f"memory {self.name!r} cannot grow by {pages} pages: {str(exc).splitlines()[0]}",
                hint="the policy's limits.memory or the memory's maximum",
            ) from None

    def view(self) -> _View:
        self._check()
        return _View(self._use)


def _size(access: Any) -> int:
    return access.size()


def _read(access: Any, offset: int, length: int) -> Any:
    return access.read(offset, length)


def _write(access: Any, offset: int, data: Any) -> None:
    access.write(offset, data)


def _view(access: Any) -> memoryview:
    return access.view()


class _View:
    def __init__(self, use: Callable) -> None:
        self._use = use
        self._view: Optional[memoryview] = None

    def __enter__(self) -> memoryview:
        self._view = self._use(_view)
        return self._view

    def __exit__(self, *exc: Any) -> None:
        if self._view is not None:
            self._view.release()
            self._view = None


GROW_MAX = 2**48  # pages: memory64's whole address space; more is never possible


def _check_int(*numbers: Any) -> None:
    for n in numbers:
        if isinstance(n, bool) or not isinstance(n, int):
            raise TypeError(f"expected an int, got {type(n).__name__}")
        if n < 0:
            raise IndexError(f"negative offset or length: {n}")
