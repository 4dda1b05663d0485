"""Running code in the interpreters: the bootstraps that run inside the guest.

Python: ``python.wasm -c BOOTSTRAP CODE [STATE]``. The bootstrap runs CODE like a notebook
cell (the value of a last bare expression is printed) in a fresh globals dict. With a
session, the globals are kept between calls as a pickle in the session's private scratch
folder (preopened as /scratch): loaded before CODE, saved after it, both inside the guest.

Why pickle inside the guest rather than re-running the session's history: replaying
repeats side effects and output, costs more with every call (and counts against the
session's CPU budget again), and gives a different result for code that reads the clock or
random numbers. Pickled state is read only by the guest itself, so a hostile pickle can do
nothing the code could not do directly; the host never unpickles anything. Functions and
classes defined in a cell are kept too (their code objects are marshalled); values that
cannot be pickled (open files, generators, ...) are listed in the result as not kept.
"""

from __future__ import annotations

import base64
import json
import struct
from typing import Any, Optional

from .. import errors

STATE_DIR = "/scratch/.wasmsbx"
PYTHON_BOOTSTRAP = r"""
import sys as _s
# Only what every call needs is imported here: the interpreter starts in ~30 ms of CPU and
# `ast`, `pickle`, `traceback` and `json` would add ~90 ms. _ast is the C half of ast;
# sys.__excepthook__ prints a traceback without importing traceback.
def _wasmsbx_main():
    import _ast
    code, state_dir = _s.argv[1], (_s.argv[2] if len(_s.argv) > 2 else "")
    g = {"__name__": "__main__", "__builtins__": __builtins__}
    _s.modules["__main__"].__dict__["_wasmsbx_globals"] = g
    lost = _wasmsbx_load(g, state_dir) if state_dir else {}
    status = 0
    try:
        tree = compile(code, "<code>", "exec", _ast.PyCF_ONLY_AST)
        last = tree.body.pop() if tree.body and isinstance(tree.body[-1], _ast.Expr) else None
        exec(compile(tree, "<code>", "exec"), g)
        if last is not None:
            value = eval(compile(_ast.Expression(last.value), "<code>", "eval"), g)
            if value is not None:
                print(repr(value))
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if exc.code is not None and not isinstance(exc.code, int):
            try:  # as CPython does: sys.exit("bye") prints bye on stderr, exit 1
                _s.stdout.flush()
                print(exc.code, file=_s.stderr)
            except BaseException:
                pass
    except BaseException:
        kind, exc, tb = _s.exc_info()
        _s.stdout.flush()
        exc.__traceback__ = tb.tb_next  # without this bootstrap's frame
        _s.__excepthook__(kind, exc, tb.tb_next)
        status = 1
    _s.stdout.flush()
    if state_dir:
        _wasmsbx_save(g, state_dir, lost)
    return status

def _wasmsbx_load(g, state_dir):
    import os, pickle
    lost = {}
    path = os.path.join(state_dir, "globals.pickle")
    if not os.path.exists(path):
        return lost
    try:  # the code may have overwritten the file: a bad one costs the state, not the session
        with open(path, "rb") as fh:
            saved = dict(pickle.load(fh))
    except Exception as exc:
        saved, lost["*"] = {}, "the saved globals could not be read: %s" % exc
    for name, blob in saved.items():
        try:
            g[name] = pickle.loads(blob)
        except Exception as exc:
            lost[name] = "cannot be restored: %s" % exc
    return lost

def _wasmsbx_save(g, state_dir, lost):
    import io, json, marshal, os, pickle, types

    class P(pickle.Pickler):
        def reducer_override(self, obj):
            if isinstance(obj, types.FunctionType) and obj.__globals__ is g:
                if obj.__closure__:
                    raise pickle.PicklingError("a closure")
                return _wasmsbx_fn, (marshal.dumps(obj.__code__), obj.__name__,
                                     obj.__defaults__, obj.__kwdefaults__, obj.__qualname__)
            if isinstance(obj, type) and obj.__module__ == "__main__" and obj is not P:
                ns = {k: v for k, v in obj.__dict__.items()
                      if k not in ("__dict__", "__weakref__")}
                return _wasmsbx_cls, (obj.__name__, obj.__bases__, ns)
            if isinstance(obj, types.ModuleType):
                return __import__, (obj.__name__,)
            return NotImplemented

    out, kept = {}, []
    for name, value in list(g.items()):
        if name.startswith("__"):
            continue
        buf = io.BytesIO()
        try:
            P(buf, protocol=4).dump(value)
            out[name] = buf.getvalue()
            kept.append(name)
        except Exception as exc:
            lost[name] = "%s: %s" % (type(value).__name__, str(exc)[:120] or "not picklable")
    path = os.path.join(state_dir, "globals.pickle")
    try:  # the code may have replaced /scratch/.wasmsbx with something unwritable
        os.makedirs(state_dir, exist_ok=True)
        with open(path + ".tmp", "wb") as fh:
            pickle.dump(out, fh, protocol=4)
        os.replace(path + ".tmp", path)
        with open(os.path.join(state_dir, "report.json"), "w") as fh:
            json.dump({"kept": sorted(kept), "not_kept": lost}, fh)
    except Exception as exc:
        print("wasmsbx: the session's globals were not saved: %s" % exc, file=_s.stderr)

def _wasmsbx_fn(code, name, defaults, kwdefaults, qualname):
    import marshal, types
    fn = types.FunctionType(marshal.loads(code), _wasmsbx_globals, name, defaults)
    fn.__kwdefaults__, fn.__qualname__ = kwdefaults, qualname
    return fn

def _wasmsbx_cls(name, bases, ns):
    return type(name, bases, ns)

_s.exit(_wasmsbx_main())
"""

# Indirect eval runs the code as a global script and yields its completion value, which is
# printed like a REPL would (undefined is not).
JS_WRAPPER = (
    "var __wasmsbx_v = (0, eval)({code});"
    "if (__wasmsbx_v !== undefined) console.log(typeof __wasmsbx_v === 'string' ? "
    "__wasmsbx_v : (JSON.stringify(__wasmsbx_v) ?? String(__wasmsbx_v)));"
)

REPORT_MAX = 256 * 1024  # the session's report file is guest-written: read at most this


def text(data: Optional[bytes]) -> Any:
    """Guest output as text, or as {"base64": ...} when it is not UTF-8."""
    if data is None:
        return ""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(data).decode("ascii")}


def run_python(box: Any, code: str, scratch: Optional[str], stdin: str = "") -> dict:
    """Run ``code`` in CPython-on-WASI; with ``scratch`` (the session's folder), keep globals."""
    argv = ["-c", PYTHON_BOOTSTRAP, code] + ([STATE_DIR] if scratch else [])
    result = box.run_command(argv, stdin=stdin.encode("utf-8", "replace"), capture=True)
    data = {
        "exit_code": result.exit_code,
        "guest_status": result.guest_status,
        "stdout": text(result.stdout),
        "stderr": text(result.stderr),
        "stats": result.stats.to_dict(),
    }
    if scratch:
        data.update(_session_report(scratch))
    return data


def _session_report(scratch: str) -> dict:
    """Which globals the guest kept (it writes the report itself; read it defensively)."""
    import os

    nofollow = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
    try:
        # Component by component without following links: the guest owns this folder and
        # may have made .wasmsbx a symlink out of it.
        top = os.open(scratch, nofollow | os.O_DIRECTORY)
        try:
            sub = os.open(".wasmsbx", nofollow | os.O_DIRECTORY, dir_fd=top)
        finally:
            os.close(top)
        try:
            fd = os.open("report.json", nofollow | os.O_NONBLOCK, dir_fd=sub)
        finally:
            os.close(sub)
        with os.fdopen(fd, "rb") as fh:
            report = json.loads(fh.read(REPORT_MAX))
        kept = [_sent(k) for k in report.get("kept", [])[:1000]]
        lost = dict(report.get("not_kept", {}))
        lost = {_sent(k): _sent(v)[:200] for k, v in list(lost.items())[:1000]}
        return {"kept": kept, "not_kept": lost}
    except (OSError, ValueError, AttributeError, TypeError, RecursionError):  # the guest's file
        return {"kept": [], "not_kept": {}}


def _sent(value: Any) -> str:
    """``value`` as text a reply can carry: JSON's ``\\ud800`` escapes read back as lone
    surrogates, which no UTF-8 reply can hold (a global named so, or an error message
    holding one, made every later result of the session unsendable: red team 105);
    they are written as the escapes they were."""
    return str(value).encode("utf-8", "backslashreplace").decode("utf-8")


def run_javascript(box: Any, code: str) -> dict:
    """Run ``code`` in the QuickJS reactor: ``qjs_init_argv(["qjs", "-e", WRAPPED])``."""
    instance = box.instantiate(box.wasi_setup((), b"", capture=True))
    try:
        wrapped = JS_WRAPPER.format(code=json.dumps(code))
        status = instance.call("qjs_init_argv", _argv(instance, [b"qjs", b"-e", wrapped.encode()]))
        usage = instance.usage()
    except errors.WasmsbxError as exc:
        from ..runner.sandbox import keep_output

        keep_output(exc, instance)  # (what it printed before its timeout, say)
        raise
    finally:
        instance.close()
    return {
        "exit_code": 0 if status and status[0] == 0 else 1,
        "stdout": text(usage.stdout),
        "stderr": text(usage.stderr),
        "stats": {
            "backend": box.backend_name,
            "fuel_used": usage.fuel_used,
            "memory_bytes": usage.memory_bytes,
            "warnings": list(usage.warnings),
        },
    }


def _argv(instance: Any, args: list) -> list:
    """C argv in guest memory (malloc'd by the guest's own allocator)."""
    pointers = []
    for arg in args:
        ptr = _malloc(instance, len(arg) + 1)
        instance.write_memory(ptr, arg + b"\0")
        pointers.append(ptr)
    array = _malloc(instance, 4 * len(pointers))
    instance.write_memory(array, struct.pack(f"<{len(pointers)}I", *pointers))
    return [len(pointers), array]


def _malloc(instance: Any, size: int) -> int:
    from .. import errors

    ptr = instance.call("malloc", [size])[0]
    if not ptr:
        raise errors.MemoryLimitExceeded(
            f"the JavaScript interpreter cannot allocate {size} bytes for the code",
            hint="send less code, or raise limits.memory",
        )
    return ptr
