"""``wasmsbx run MODULE FUNC --batch INPUT`` and ``wasmsbx run MODULE [FUNC] --stream``.

Parses the batch/stream options, calls the core (wasmsbx.runner.batch / wasmsbx.runner.stream) and
renders: results on stdout, progress (on a terminal) and the summary on stderr.
While a batch or stream runs, fd 1 points at stderr, so a guest that prints to an
inherited stdout cannot corrupt the results; they go to a duplicate of the real stdout.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from ... import errors
from ...errors import ExitCode
from .. import output

ENV_CLUSTER = "WASMSBX_CLUSTER"  # --cluster's default (never a policy key: wasmsbx.cluster)


def execute(args: Any, policy: Any, log: Any = None) -> int:
    """Run a batch or a stream; ``log`` is the --audit-log (start/exit come from run.py)."""
    o = args.options
    func = check_options(args)
    from ...runner import Sandbox

    if not o["stream"] and (o["jobs"] or 1) > 1:  # -j without --cluster (check_options)
        from ...runner.batch import prestart

        # The workers' fork server imports their modules while we compile the module.
        prestart(o["jobs"], _backend_guess(policy))
    box = Sandbox(
        args.positionals[0],
        policy,
        kind="call",
        use_cache=False if o["no_cache"] else None,
        artifact=o["artifact"],
        cache_dir=o["cache_dir"],
    )
    for warning in box.warnings:
        output.warning(warning)
    if log is not None:
        log.sandbox(box)
    if o["explain"]:
        from ..run_view import render_explain

        render_explain(box.explain("call"))
    if o["stream"]:
        return _stream(box, func, o, log)
    return _batch(box, func, o, log)


def _backend_guess(policy: Any) -> str:
    """The backend the workers will most likely use, for what their fork server imports
    (a wrong guess costs time, never correctness: workers import what they need)."""
    spec = policy.values["runtime.backend"]
    return "wasmtime" if spec == "auto" else spec


def check_options(args: Any) -> str:
    """The function to call, after refusing option combinations that make no sense."""
    o = args.options
    mode = "--stream" if o["stream"] else "--batch"
    if o["stream"] and o["batch"] is not None:
        raise errors.UsageError("--batch and --stream cannot be combined", hint=_usage())
    if not o["stream"] and o["batch"] is None:
        used = next(
            d
            for d in ("jobs", "fresh", "cluster", "chunk_size", "checkpoint")
            if o[d] is not None and o[d] is not False  # (-j 0 == False: red team 106)
        )
        applies = {  # (as the checks below say it with a mode: round 155 read both)
            "jobs": "--batch",
            "fresh": "--batch",
            "cluster": "--batch",
            "chunk_size": "--stream or --batch --cluster",
        }.get(used, "--batch or --stream")
        raise errors.UsageError(
            f"--{used.replace('_', '-')} only applies with {applies}", hint=_usage()
        )
    if o["stream"]:
        for dest in ("jobs", "fresh", "cluster"):
            if o[dest] is not None and o[dest] is not False:
                raise errors.UsageError(f"--{dest} only applies with --batch", hint=_usage())
    else:
        _check_cluster_options(o)
    func = (args.positionals[1:2] or [None])[0]
    if func is None and not o["stream"]:
        raise errors.UsageError("--batch needs FUNC, the export to call", hint=_usage())
    if args.positionals[2:] or args.passthrough:
        raise errors.UsageError(
            f"no arguments after FUNC with {mode}: "
            + (
                "each input line holds a call's arguments"
                if mode == "--batch"
                else "stdin is the input"
            ),
            hint=_usage(),
        )
    if o["jobs"] is not None:
        from ...runner.batch import check_jobs

        check_jobs(o["jobs"])
    return func or "process"


def _check_cluster_options(o: dict) -> None:
    """Set ``o["cluster"]`` (from --cluster or $WASMSBX_CLUSTER; never from a policy, see
    wasmsbx.cluster) and refuse what does not combine with it."""
    given = o["cluster"]
    # Not wasmsbx.cluster.ENV_ADDRESS: a batch without a cluster imports nothing of it.
    o["cluster"] = given or os.environ.get(ENV_CLUSTER) or None
    if o["cluster"] is None:
        if o["chunk_size"] is not None:
            raise errors.UsageError(
                "--chunk-size only applies with --stream or --batch --cluster", hint=_usage()
            )
        return
    if o["jobs"] is not None:
        source = "--cluster" if given else f"${ENV_CLUSTER}"
        raise errors.UsageError(
            f"-j/--jobs does not apply with {source}: the cluster's workers make the calls",
            hint=f"unset {ENV_CLUSTER} to run locally" if not given else _usage(),
        )
    if o["chunk_size"] is not None:
        o["chunk_size"] = _chunk_items(o["chunk_size"])


def _chunk_items(text: str) -> int:
    """--chunk-size with a cluster: items per task, a whole number >= 1."""
    items = int(text) if text.isdigit() else 0
    if items < 1:
        raise errors.UsageError(
            "--chunk-size with --cluster is a number of items, at least 1",
            hint="e.g. --chunk-size 500 (default: sized to about 0.25 s of work per task)",
        )
    return items


def _usage() -> str:
    return (
        "usage: wasmsbx run MODULE FUNC --batch INPUT.jsonl [-j N | --cluster ADDRESS] [--fresh]"
        " [--checkpoint FILE]"
        " | wasmsbx run MODULE [FUNC] --stream [--chunk-size SIZE] [--checkpoint FILE]"
    )


# ---------------------------------------------------------------------------- plumbing


def _open_input(name: str) -> Any:
    if name == "-":
        return sys.stdin.buffer
    try:
        return open(name, "rb")  # noqa: SIM115 - closed by the caller
    except FileNotFoundError:
        raise errors.InputError(f"{name}: no such file", hint="check the input path") from None
    except IsADirectoryError:
        raise errors.InputError(f"{name}: is a directory, not an input file") from None
    except OSError as exc:
        raise errors.InputError(f"{name}: cannot read: {exc.strerror}") from None


class _Results:
    """Results go to a duplicate of stdout; fd 1 itself points at stderr meanwhile."""

    def __enter__(self) -> Any:
        sys.stdout.flush()
        self.fd = os.dup(1)
        os.dup2(2, 1)
        self.file = open(self.fd, "wb", closefd=False)  # noqa: SIM115 - closed in __exit__
        from ...backends.deadline import AT_HARD_STOP

        # A hard stop (a call stuck in a host call past its deadline) leaves with
        # os._exit: the results already made must reach stdout first (red team round 25:
        # with -j 1 none was written, though the first item had succeeded).
        AT_HARD_STOP.append(self._flush)
        return self.file

    def _flush(self, error: Any = None) -> None:
        try:
            self.file.flush()
        except (OSError, ValueError):
            pass

    def __exit__(self, *exc: Any) -> None:
        from ...backends.deadline import AT_HARD_STOP

        if self._flush in AT_HARD_STOP:
            AT_HARD_STOP.remove(self._flush)
        from ..output import ended_line, stdout_moving

        ended_line(self.fd)  # (each row ends its line, the last after every guest's output)
        stdout_moving()
        try:
            self.file.close()
        except BrokenPipeError:
            pass
        finally:
            os.dup2(self.fd, 1)
            os.close(self.fd)


def _progress(kind: str, results_file: Any) -> Any:
    """A progress display on stderr, when stderr is a terminal and results are not."""
    if not sys.stderr.isatty() or os.isatty(results_file.fileno()):
        return None
    from ..progress import Progress

    return Progress(kind)


# ---------------------------------------------------------------------------- batch


def _batch(box: Any, func: str, o: dict, log: Any) -> int:
    from ...runner.batch import run_jsonl
    from ...runner.checkpoint import Sink, Source
    from ...runner.services import remote_for

    if log is not None and o["cluster"] is not None:  # where the items and module go
        log.event("cluster", address=o["cluster"])

    stream = _open_input(o["batch"])
    try:
        with _Results() as results:
            progress = _progress("batch", results)
            try:
                summary = run_jsonl(
                    box,
                    func,
                    Source(stream, o["batch"]),
                    Sink(results),
                    fresh=o["fresh"],
                    jobs=o["jobs"] or 1,
                    checkpoint=o["checkpoint"],
                    progress=progress.update if progress else None,
                    warn=output.warning,
                    remote=remote_for(_cluster(o)),
                )
            except BrokenPipeError:
                return 0  # the reader of our output stopped early (| head): not our error
            except KeyboardInterrupt:
                raise _interrupted(o) from None
            finally:
                if progress:
                    progress.stop()
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()
    _batch_summary(summary, o)
    _after(box, o)
    if log is not None:
        log.event("batch", **summary.to_dict())
        if summary.failed:
            log.outcome = "batch_failures"
    return int(ExitCode.BATCH_FAILURES) if summary.failed else 0


def _cluster(o: dict) -> Any:
    """The --cluster target, with Dask's own log lines kept off stderr (its failures
    reach the user as one error line)."""
    if o["cluster"] is None:
        return None
    import logging

    from ...cluster import Cluster

    try:
        import distributed  # noqa: F401 - sets its loggers' levels on import: quiet them after
    except ImportError:
        pass  # wasmsbx.cluster reports it as an error with a hint
    for name in ["distributed", *logging.root.manager.loggerDict]:
        if name.split(".")[0] == "distributed":
            logging.getLogger(name).setLevel(logging.CRITICAL)
    return Cluster(o["cluster"], chunk_items=o["chunk_size"])


def _batch_summary(summary: Any, o: dict) -> None:
    if o["json"]:
        output.emit_json({"summary": summary.to_dict()}, stream=sys.stderr)
        return
    from ...units import format_count, format_duration

    items = "item" if summary.items == 1 else "items"
    text = f"batch: {format_count(summary.items)} {items}, {format_count(summary.ok)} ok"
    text += f", {format_count(summary.failed)} failed"
    if summary.errors:
        kinds = ", ".join(f"{k} {format_count(n)}" for k, n in sorted(summary.errors.items()))
        text += f" ({kinds})"
    text += f" in {format_duration(summary.seconds)}"
    text += f" ({format_count(int(summary.rate))} items/s"
    if summary.resumed_at:
        text += f"; resumed at line {format_count(summary.resumed_at)}"
    output.err(text + ")")


# ---------------------------------------------------------------------------- stream


def _stream(box: Any, func: str, o: dict, log: Any) -> int:
    from ...runner.checkpoint import Sink, Source
    from ...runner.stream import DEFAULT_CHUNK, MAX_CHUNK, run_stream
    from ...units import parse_size

    chunk = DEFAULT_CHUNK
    if o["chunk_size"] is not None:
        try:
            chunk = parse_size(o["chunk_size"], MAX_CHUNK)
        except ValueError as exc:
            raise errors.UsageError(
                f"--chunk-size: {exc}", hint="e.g. --chunk-size 64KiB"
            ) from None
    with _Results() as results:
        progress = _progress("stream", results)
        try:
            stats = run_stream(
                box,
                func,
                Source(sys.stdin.buffer, "-"),
                Sink(results),
                chunk_size=chunk,
                checkpoint=o["checkpoint"],
                progress=progress.update if progress else None,
                warn=output.warning,
            )
        except BrokenPipeError:
            return 0
        except KeyboardInterrupt:
            raise _interrupted(o) from None
        finally:
            if progress:
                progress.stop()
    if o["json"]:
        output.emit_json({"stream": stats.to_dict()}, stream=sys.stderr)
    elif o["stats"]:
        _stream_stats(stats)
    _after(box, o)
    if log is not None:
        log.event("stream", **stats.to_dict())
    return 0


def _stream_stats(stats: Any) -> None:
    from ...units import format_count, format_duration, format_size

    data = stats.to_dict()
    output.err(
        f"stream: {format_size(data['bytes_in'])} in, {format_size(data['bytes_out'])} out, "
        f"{format_count(data['chunks'])} chunk{'' if data['chunks'] == 1 else 's'} of "
        f"{format_size(data['chunk_size'])} in "
        f"{format_duration(data['seconds'])} ({format_size(int(data['bytes_per_second']))}/s); "
        f"peak buffer {format_size(data['peak_buffer'])}"
    )


def _interrupted(o: dict) -> errors.WasmsbxError:
    if not o["checkpoint"]:
        return errors.Interrupted("interrupted")
    if not os.path.lexists(o["checkpoint"]):  # (stopped before its first save: red team 108)
        return errors.Interrupted(
            f"interrupted before any progress was saved in {o['checkpoint']}",
            hint="rerun the same command: it starts from the beginning",
        )
    return errors.Interrupted(
        f"interrupted; progress is saved in {o['checkpoint']}",
        hint="rerun the same command to resume (append to the same output: >>)",
    )


def _after(box: Any, o: dict) -> None:
    if o["stats"]:
        from ...runner.sandbox import RunStats
        from ..run_view import render_stats

        render_stats(RunStats(box.backend_name, box.compiler, dict(box.timings), box.cache_state))
