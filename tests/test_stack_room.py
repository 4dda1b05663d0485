"""A guest recursing without end on a thread whose stack is smaller than limits.stack
killed the whole process with SIGSEGV (exit 139) instead of StackExhausted (red team
round 78): wasmtime keeps the guest within limits.stack below where the call entered,
and never checks that the thread has that much. Each case runs in a child process, so
a crash fails the test instead of ending the test run."""

from __future__ import annotations

import resource
import subprocess
import sys
import textwrap

import pytest

from .conftest import run_cli

RECURSE = (
    '(module (func $r (export "rec") (param i32) (result i32) (local i64 i64 i64 i64)'
    " local.get 0 i32.const 1 i32.add call $r))"
)


def _child(body: str, stack_size: int) -> subprocess.CompletedProcess:
    script = textwrap.dedent(
        f"""
        import threading, wasmsbx, wasmsbx.policy
        from wasmsbx import errors
        RECURSE = {RECURSE.encode()!r}
        def outcome(fn):
            try:
                return repr(fn())
            except errors.WasmsbxError as exc:
                return f"{{type(exc).__name__}} {{exc.exit_code}}: {{exc}}"
        def main():
        """
    )
    script += textwrap.indent(textwrap.dedent(body), "    ")
    script += textwrap.dedent(
        f"""
        threading.stack_size({stack_size})
        out = []
        thread = threading.Thread(target=lambda: out.append(main()))
        thread.start(); thread.join()
        print(out[0])
        """
    )
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )


def test_a_thread_too_small_for_the_guests_stack_is_refused_not_crashed():
    done = _child('return outcome(lambda: wasmsbx.Sandbox(RECURSE).call("rec", 0))', 512 << 10)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert done.stdout.startswith("ResourceExhausted 118: this thread's stack (512 KiB, "), done
    assert "limits.stack" in done.stdout


def test_the_hot_path_checks_a_new_threads_stack_too():
    """A sandbox called twice on a thread with room (its second call makes the cached
    caller, the hot path), then called on a thread without."""
    body = """
        box = wasmsbx.Sandbox(RECURSE)
        results = []
        def on_big():
            for _ in range(3):
                results.append(outcome(lambda: box.call("rec", 0)))
        threading.stack_size(4 << 20)
        big = threading.Thread(target=on_big)
        big.start(); big.join()
        threading.stack_size(512 << 10)
        return [r.split(":")[0] for r in results] + [outcome(lambda: box.call("rec", 0))]
    """
    done = _child(body, 512 << 10)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert done.stdout.startswith("['StackExhausted 113', 'StackExhausted 113', "), done
    assert "ResourceExhausted 118: this thread's stack (512 KiB, " in done.stdout, done


@pytest.mark.parametrize("stack", ["512KiB", "2MiB"])
def test_a_thread_with_room_for_the_guests_stack_gets_stack_exhausted(stack):
    policy = f'wasmsbx.policy.from_dict({{"limits": {{"stack": "{stack}"}}}})'
    body = f'return outcome(lambda: wasmsbx.Sandbox(RECURSE, {policy}).call("rec", 0))'
    room = {"512KiB": 1 << 20, "2MiB": 4 << 20}[stack]
    done = _child(body, room)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert done.stdout.startswith("StackExhausted 113"), done


def test_guests_nested_through_host_functions_each_count_their_stack():
    """A host function that calls another sandbox: wasmtime gives the new store a
    window of its own below the first guest's, so each guest on the thread may take its
    whole limits.stack. Four guests, each recursing deep before calling the next, on a
    2 MiB thread: the fourth is refused (the third's host function raises, a trap)."""
    body = """
        DEEP = b'''(module (import "env" "next" (func $next (result i32)))
          (func $d (export "go") (param i32) (result i32) (local i64 i64 i64 i64)
            (if (result i32) (i32.eqz (local.get 0)) (then (call $next))
              (else (i32.add (call $d (i32.sub (local.get 0) (i32.const 1))) (i32.const 0))))))'''
        boxes = []
        def next_one(level):
            def call():
                if level + 1 < 6:
                    return boxes[level + 1].call("go", 15000)
                return wasmsbx.Sandbox(RECURSE).call("rec", 0)
            return wasmsbx.func(call, params=[], results=["i32"])
        for level in range(6):
            boxes.append(wasmsbx.Sandbox(DEEP, imports={"env": {"next": next_one(level)}}))
        try:
            boxes[0].call("go", 15000)
        except errors.TrapError as exc:
            cause = exc.__cause__
            while cause is not None and not isinstance(cause, errors.ResourceExhausted):
                cause = cause.__cause__
            return f"trap: {cause}"
        return "returned"
    """
    done = _child(body, 2 << 20)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert done.stdout.startswith("trap: this thread's stack (2 MiB, "), done
    assert "on top of" in done.stdout


def test_a_caller_deep_in_its_own_stack_leaves_the_guest_what_is_left():
    """A 768 KiB thread holds the default 512 KiB plus 128 KiB for the host; a caller
    400 C-levels deep (sum(map(...)) recursing) had used more than that reserve, and the
    guest ran off the thread (red team round 80). The room is measured from the stack
    pointer."""
    body = """
        import sys
        sys.setrecursionlimit(10_000)
        box = wasmsbx.Sandbox(RECURSE)
        results = []
        def deep(n):  # (each level through C: map calls it, so C stack per level)
            if n == 0:
                results.append(outcome(lambda: box.call("rec", 0)))
                return 0
            return sum(map(deep, [n - 1]))
        deep(400)
        return results[0]
    """
    done = _child(body, 768 << 10)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert done.stdout.startswith(("ResourceExhausted 118", "StackExhausted 113")), done


def test_a_call_deep_in_the_stack_after_a_shallow_one_is_measured_again():
    """A 16 MiB thread called once from a shallow point, then from 400 KiB above the
    end of its stack (a deep recursion of the host's, through C): the room the first
    call found was remembered, and the second guest ran off the stack (red team round
    81). The stack pointer is read at every entry."""
    body = """
        import functools, sys
        from wasmsbx.backends import stackroom
        box = wasmsbx.Sandbox(RECURSE)
        first = outcome(lambda: box.call("rec", 0))
        low = stackroom._where()[0]
        sys.setrecursionlimit(10 ** 6)
        @functools.lru_cache(maxsize=None)  # (each level through C)
        def walk(n):
            if stackroom._sp() - low < 400 << 10:
                return outcome(lambda: box.call("rec", 0))
            return walk(n + 1)
        return [first.split(":")[0], walk(0).split(":")[0]]
    """
    done = _child(body, 16 << 20)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert done.stdout.strip() == "['StackExhausted 113', 'ResourceExhausted 118']", done


def test_a_thread_that_forked_is_measured_by_its_own_stack():
    """After os.fork() from a thread, that thread is the child's main_thread(), and its
    fixed 512 KiB stack was taken for the process's growing one (checked against the
    8 MiB RLIMIT_STACK): the child died of SIGSEGV (red team round 80)."""
    body = """
        import os
        pid = os.fork()
        if pid == 0:
            result = outcome(lambda: wasmsbx.Sandbox(RECURSE).call("rec", 0))
            os.write(1, (result + "\\n").encode())
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        return f"child status {status}"
    """
    done = _child(body, 512 << 10)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    lines = done.stdout.splitlines()
    assert lines[0].startswith("ResourceExhausted 118: this thread's stack (512 KiB, "), done
    assert lines[-1] == "child status 0", done


def _stack_limit(soft: int, hard: int):
    def limit():
        resource.setrlimit(resource.RLIMIT_STACK, (soft, hard))

    return limit


def _run_under(tmp_path, soft: int, hard: int):
    guest = tmp_path / "rec.wat"
    guest.write_text(RECURSE)
    return subprocess.run(
        [sys.executable, "-m", "wasmsbx", "run", str(guest), "rec", "0"],
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=_stack_limit(soft, hard),
    )


def test_the_command_line_raises_a_low_soft_stack_limit(tmp_path):
    """`ulimit -S -s 512`: the main thread's stack grows up to the soft limit, which is
    raised (the hard one allows it): the guest gets StackExhausted."""
    _, hard = resource.getrlimit(resource.RLIMIT_STACK)
    if hard != resource.RLIM_INFINITY and hard < 2 << 20:
        pytest.skip("the hard stack limit here is too low to raise the soft one")
    done = _run_under(tmp_path, 512 << 10, hard)
    assert done.returncode == 113, done.stderr[-2000:]
    assert done.stderr.startswith("error: wasm stack exhausted in rec")


def test_the_command_line_under_a_hard_stack_limit_too_low_says_so(tmp_path):
    done = _run_under(tmp_path, 512 << 10, 512 << 10)
    assert done.returncode == 118, done.stderr[-2000:]
    lines = done.stderr.splitlines()
    assert lines[0].startswith("error: this thread's stack (512 KiB, ")
    assert "of it free here) cannot hold the guest's (512 KiB, limits.stack)" in lines[0]
    assert lines[1].startswith("hint: give the calling thread a larger stack (ulimit -s")
    assert len(lines) == 2, done.stderr


def test_a_component_on_a_thread_too_small_is_refused_not_crashed(tmp_path):
    from .component_guests import wat_component

    types = wat_component("types.wat", tmp_path)  # (its `deep` calls itself without end)
    body = f"return outcome(lambda: wasmsbx.Sandbox({str(types)!r}).call('deep'))"
    done = _child(body, 512 << 10)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert done.stdout.startswith("ResourceExhausted 118: this thread's stack (512 KiB, "), done
    done = _child(body, 1 << 20)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert done.stdout.startswith("StackExhausted 113"), done


def test_the_cli_checks_what_run_cli_runs(tmp_path):
    """(The same guest on a thread with room: the command line's exit code.)"""
    guest = tmp_path / "rec.wat"
    guest.write_text(RECURSE)
    assert run_cli("run", guest, "rec", "0").code == 113


def test_threads_calling_at_once_each_measure_their_own_stack():
    """Red team round 83: the stack pointer was read into one buffer the whole process
    shared, and ctypes let another thread's read land in it between this thread's read
    and its use. A guest recursing on a 256 KiB thread, while three 8 MiB threads made
    calls of their own, ran (and crashed the process) where it must be refused, and 8
    MiB threads were refused as "0 B free". Each small thread must be refused every
    time, and no big thread ever."""
    body = """
        SPIN = (b'(module (func (export "spin") (param i32) (result i32) (local i32)'
                b' (loop $l (local.set 1 (i32.add (local.get 1) (i32.const 1)))'
                b' (br_if $l (i32.ne (local.get 1) (local.get 0)))) (local.get 1)))')
        counts = {"ran": 0, "refused": 0, "other": 0, "noise refused": 0}
        stop = []
        def noise():
            box = wasmsbx.Sandbox(SPIN)
            while not stop:
                try:
                    box.call("spin", 10)
                except errors.ResourceExhausted:
                    counts["noise refused"] += 1
        def small():
            box = wasmsbx.Sandbox(RECURSE)
            for _ in range(300):
                try:
                    box.call("rec", 0)
                    counts["ran"] += 1
                except errors.ResourceExhausted:
                    counts["refused"] += 1
                except errors.WasmsbxError:
                    counts["other"] += 1
        threading.stack_size(8 << 20)
        noisy = [threading.Thread(target=noise) for _ in range(3)]
        for t in noisy:
            t.start()
        threading.stack_size(256 << 10)
        for _ in range(20):
            t = threading.Thread(target=small)
            t.start(); t.join()
        stop.append(True)
        for t in noisy:
            t.join()
        return counts
    """
    done = _child(body, 8 << 20)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    counts = eval(done.stdout.strip().splitlines()[-1])  # (a dict's repr, ours)
    assert counts["refused"] == 6000 and counts["ran"] == counts["other"] == 0, counts
    assert counts["noise refused"] == 0, counts


def test_a_stack_its_creator_supplied_is_measured_by_its_own_bounds():
    """Red team round 84: a thread made from C on a stack its creator supplied
    (pthread_attr_setstack on malloc'd memory) has no guard page, and memory allocated
    after it merged into the same mapping, which was taken for the stack: 320 KiB was
    measured as megabytes, the guest ran and the process died (SIGSEGV)."""
    script = textwrap.dedent(
        f"""
        import ctypes, wasmsbx
        from wasmsbx import errors
        libc = ctypes.CDLL(None)
        box = wasmsbx.Sandbox({RECURSE.encode()!r})
        out = []
        def body(arg):
            try:
                out.append(repr(box.call("rec", 0)))
            except errors.WasmsbxError as exc:
                out.append(f"{{type(exc).__name__}} {{exc.exit_code}}")
            return None
        callback = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p)(body)
        attr = ctypes.create_string_buffer(128)
        libc.pthread_attr_init(attr)
        pool = ctypes.create_string_buffer(320 << 10)
        extra = [ctypes.create_string_buffer(1 << 20) for _ in range(8)]
        base = ctypes.cast(pool, ctypes.c_void_p)
        libc.pthread_attr_setstack(attr, base, ctypes.c_size_t(320 << 10))
        tid = ctypes.c_ulong()
        assert libc.pthread_create(ctypes.byref(tid), attr, callback, None) == 0
        libc.pthread_join(tid, None)
        print(out[0])
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert done.stdout.strip() == "ResourceExhausted 118", done


def test_a_thread_switched_to_another_stack_is_measured_again():
    """Red team round 85: a thread measured on its own stack, then switched by its host
    to a 256 KiB coroutine stack higher in memory (ucontext, as C coroutine libraries
    do), was judged by its first stack's bottom: a guest recursing there crashed the
    process (SIGSEGV). The stack pointer outside the stack measured means measure
    again."""
    script = textwrap.dedent(
        f"""
        import ctypes, threading, wasmsbx
        from wasmsbx import errors
        box = wasmsbx.Sandbox({RECURSE.encode()!r})
        libc = ctypes.CDLL(None)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                              ctypes.c_int, ctypes.c_long]
        size = 256 << 10
        region = libc.mmap(None, size + 4096, 3, 0x22, -1, 0)  # (above the thread's stack)
        libc.mprotect(ctypes.c_void_p(region), 4096, 0)  # its guard page
        main_uc = ctypes.create_string_buffer(4096)
        co_uc = ctypes.create_string_buffer(4096)
        out = []
        def body():
            try:
                out.append(repr(box.call("rec", 0)))
            except errors.WasmsbxError as exc:
                out.append(f"{{type(exc).__name__}} {{exc.exit_code}}")
        callback = ctypes.CFUNCTYPE(None)(body)
        def thread():
            try:
                box.call("rec", 0)
            except errors.StackExhausted:
                pass  # (measured on the thread's own 8 MiB stack: room enough)
            libc.getcontext(co_uc)  # uc_link, then uc_stack's ss_sp, ss_flags, ss_size
            ctypes.c_void_p.from_buffer(co_uc, 8).value = ctypes.addressof(main_uc)
            ctypes.c_void_p.from_buffer(co_uc, 16).value = region + 4096
            ctypes.c_int.from_buffer(co_uc, 24).value = 0
            ctypes.c_size_t.from_buffer(co_uc, 32).value = size
            libc.makecontext(co_uc, callback, 0)
            libc.swapcontext(main_uc, co_uc)
        threading.stack_size(8 << 20)
        t = threading.Thread(target=thread)
        t.start(); t.join()
        print(out[0])
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert done.stdout.strip() == "ResourceExhausted 118", done


_COROUTINE = """
import ctypes, threading, wasmsbx
from wasmsbx import errors
from wasmsbx.backends import stackroom
box = wasmsbx.Sandbox({recurse!r})
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                      ctypes.c_int, ctypes.c_long]
size = 2 << 20  # (room enough for the guest's 512 KiB, where the stack can be measured)
if {kind!r} == "malloc":
    stack = libc.malloc(size)  # (in the heap, or a mapping shared with what comes next)
    victim = bytearray(4 << 20)
else:  # a mapping of its own, a guard page below it, as coroutine libraries make them
    region = libc.mmap(None, size + 4096, 3, 0x22, -1, 0)
    libc.mprotect(ctypes.c_void_p(region), 4096, 0)
    stack = region + 4096
main_uc = ctypes.create_string_buffer(4096)
co_uc = ctypes.create_string_buffer(4096)
out, reads = [], []
mapped = stackroom._mapped
stackroom._mapped = lambda sp: reads.append(sp) or mapped(sp)
def body():
    for _ in range({calls}):
        try:
            out.append(repr(box.call("rec", 0)))
        except errors.WasmsbxError as exc:
            out.append(f"{{type(exc).__name__}} {{exc.exit_code}}")
        libc.swapcontext(co_uc, main_uc)  # (back to the thread's own stack, and again)
callback = ctypes.CFUNCTYPE(None)(body)
def thread():
    libc.getcontext(co_uc)
    ctypes.c_void_p.from_buffer(co_uc, 8).value = ctypes.addressof(main_uc)
    ctypes.c_void_p.from_buffer(co_uc, 16).value = stack
    ctypes.c_int.from_buffer(co_uc, 24).value = 0
    ctypes.c_size_t.from_buffer(co_uc, 32).value = size
    libc.makecontext(co_uc, callback, 0)
    for _ in range({calls}):
        try:
            box.call("rec", 0)
        except errors.StackExhausted:
            pass
        libc.swapcontext(main_uc, co_uc)
threading.stack_size(8 << 20)
t = threading.Thread(target=thread)
t.start(); t.join()
print(sorted(set(out)), len(reads))
"""


@pytest.mark.parametrize("kind", ["malloc", "guarded"])
def test_a_stack_a_host_switched_the_thread_to_is_refused(kind):
    """Red team round 86: a coroutine stack in malloc'd memory (the heap, or a mapping it
    shares) was measured as its whole mapping: a guest recursing there overwrote the
    host's memory (a crash at exit, or data silently changed). A stack that is not the
    thread's own has no bounds to know (a mapping of its own with a guard page below
    cannot be told from a merged one whose neighbour below is a wasm memory's
    reservation), so it is refused (118), 2 MiB or not; and a thread switching between
    its stack and a coroutine's reads the maps once per stack, not at every call
    (round 86: 60 us a call)."""
    script = _COROUTINE.format(recurse=RECURSE.encode(), kind=kind, calls=50)
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    outcomes, reads = done.stdout.strip().rsplit(" ", 1)
    assert outcomes == "['ResourceExhausted 118']", done
    assert int(reads) <= 2, done  # (the thread's stack, the coroutine's: once each)


PING = (
    b'(module (import "env" "h" (func $h (param i32) (result i32)))'
    b' (func (export "f") (param i32) (result i32)'
    b" (call $h (i32.add (local.get 0) (i32.const 1)))))"
)


def _ends_in_an_error_not_a_crash(script: str) -> None:
    """``script``, run in a child process, printed the class of the error its call ended
    in (a stack or nesting limit), then "host alive": it did not die of SIGSEGV."""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    lines = done.stdout.split()
    assert lines[-2:] == ["host", "alive"], done.stdout
    assert lines[0] in ("TrapError", "StackExhausted", "ResourceExhausted"), done.stdout


@pytest.mark.parametrize("where", ["thread", "small-thread", "main"])
def test_a_guest_and_its_host_calling_each_other_end_in_an_error_not_a_crash(backend, where):
    # (red team 152: on wasmer, each level of nesting is Python frames and pickling on
    # the host's thread; a 512 KiB thread, or the main thread under a raised recursion
    # limit, died of SIGSEGV)
    script = textwrap.dedent(
        f"""
        import sys, threading, wasmsbx
        from wasmsbx import errors
        from wasmsbx.policy import from_dict
        box = None
        def h(n: wasmsbx.i32) -> wasmsbx.i32:
            return box.call("f", n)
        def main():
            global box
            limits = {{"timeout": 120}}
            policy = from_dict({{"runtime": {{"backend": {backend!r}}}, "limits": limits}})
            box = wasmsbx.Sandbox({PING!r}, policy, imports={{"env": {{"h": h}}}})
            try:
                box.call("f", 0)
                print("returned")
            except errors.WasmsbxError as exc:
                print(type(exc).__name__, exc.exit_code, repr(str(exc)[:300]))
        if {where!r} != "main":  # (the worker forked on it: red team 153 saw its own
            # check come back as a raw RuntimeError on 256 KiB)
            threading.stack_size((512 if {where!r} == "thread" else 256) << 10)
            thread = threading.Thread(target=main); thread.start(); thread.join()
        else:
            sys.setrecursionlimit(15000)
            main()
        print("host alive")
        """
    )
    _ends_in_an_error_not_a_crash(script)


def test_a_chain_of_sandboxes_calling_the_next_ends_in_an_error_not_a_crash(backend):
    # (red team 153: on wasmer only a call back into the same sandbox looked for room; a
    # host function calling the next of 30 sandboxes, each in turn, crashed the host
    # with SIGSEGV on a 128 KiB thread)
    script = textwrap.dedent(
        f"""
        import threading, wasmsbx
        from wasmsbx import errors
        from wasmsbx.policy import from_dict
        policy = from_dict({{"runtime": {{"backend": {backend!r}}}, "limits": {{"timeout": 120}}}})
        boxes, warm = [], [True]
        def make(i):
            def h(n: wasmsbx.i32) -> wasmsbx.i32:
                return 0 if warm[0] else boxes[(i + 1) % len(boxes)].call("f", n)
            return h
        for i in range(30):
            boxes.append(wasmsbx.Sandbox({PING!r}, policy, imports={{"env": {{"h": make(i)}}}}))
        for box in boxes:
            box.call("f", 0)  # (each worker made on this thread)
        warm[0] = False
        def main():
            try:
                boxes[0].call("f", 0)
                print("returned")
            except errors.WasmsbxError as exc:
                print(type(exc).__name__, exc.exit_code)
        threading.stack_size(128 << 10)
        thread = threading.Thread(target=main); thread.start(); thread.join()
        print("host alive")
        """
    )
    _ends_in_an_error_not_a_crash(script)
