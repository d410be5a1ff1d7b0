"""Keep expected library noise off the console, and in the run's log file (``cli.log``).

What a run prints that looks like an error but is expected:

* every DeepSpeed rank's ``Setting accelerator to CPU. If you have GPU ...`` warning (a CPU run);
* Ray's ``Token authentication is enabled for this Ray cluster`` warning at start-up;
* transformers' ``LOAD REPORT`` table when a score model or critic starts from a policy checkpoint
  (``score.weight | MISSING``: the new head; ``lm_head.weight | UNEXPECTED``: the unused LM head).
  A report that names any other key is shown: that one may be a real problem;
* the ranks' per-file bars (``Loading weights``, ``Writing model shards``).

The ranks are Ray actors: Ray forwards their output to the driver, which prints it
(``ray._private.worker.print_worker_logs``). :func:`quiet_console` wraps that function so the lines
above go to the driver's log files instead (Hydra's ``cli.log``, with the rank's actor and pid),
and adds the same filter to the handlers of Ray's own logger. Ray's function is private API: when
it is missing, nothing is filtered and the run prints as before.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable

__all__ = ["WorkerLines", "quiet_console", "to_log_files"]

#: One-line messages that go to the log file only.
NOISE = (
    re.compile(r"Setting accelerator to CPU\. If you have GPU"),
    re.compile(r"Token authentication is enabled for this Ray cluster"),
    re.compile(r"(Loading weights|Writing model shards|Loading checkpoint shards)\b.*\|"),
)
_REPORT_START = re.compile(r"LOAD REPORT")
# The keys a score head started from a causal LM reports, and nothing else: the expected report.
_EXPECTED_ROW = re.compile(r"^\s*(score\.(weight|bias)\s*\|\s*MISSING|lm_head\.weight\s*\|\s*UNEXPECTED)\s*\|")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def to_log_files(message: str, name: str = "saferl.console", level: int = logging.INFO) -> None:
    """Write ``message`` to the root logger's file handlers only (``cli.log``), not the console."""
    record = logging.LogRecord(name, level, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


_TABLE_ROW = re.compile(r"^[\w.\-]+\s*\|\s*[A-Z_ ]*\|?$")


def _is_report_line(line: str) -> bool:
    """A line of transformers' LOAD REPORT after its first: the table (``key | STATUS |`` rows,
    the header and rule), blank lines and the notes."""
    stripped = _ANSI.sub("", line).strip()
    return (stripped == "" or set(stripped) <= {"-", "+", "|"} or _TABLE_ROW.match(stripped) is not None
            or stripped.startswith(("Notes:", "- ", "Key ")))


class WorkerLines:
    """Splits the lines Ray forwards from one worker into those to show and those to log only.

    A LOAD REPORT is held until it ends (a line that is not part of it, or the end of the batch)
    and then logged when every key row is an expected one, else shown whole.
    """

    def __init__(self) -> None:
        self._in_report: dict[object, bool | None] = {}  # pid -> the report's verdict (None: undecided)

    def split(self, pid: object, lines: Iterable[str]) -> tuple[list[str], list[str]]:
        """``(shown, logged)`` for ``lines`` of worker ``pid``, each in order."""
        shown: list[str] = []
        logged: list[str] = []
        report: list[str] = []

        def close_report() -> None:
            rows = [_ANSI.sub("", line) for line in report[1:] if "|" in line and not line.lstrip().startswith("Key")]
            rows = [row for row in rows if not set(row.strip()) <= {"-", "+", "|", " "}]
            expected = all(_EXPECTED_ROW.match(row) for row in rows)
            (logged if expected else shown).extend(report)
            self._in_report[pid] = expected
            report.clear()

        for line in lines:
            if _REPORT_START.search(line):
                if report:
                    close_report()
                report.append(line)
            elif report and _is_report_line(line):
                report.append(line)
            elif pid in self._in_report and _is_report_line(line):  # a report's tail in a later batch
                (logged if self._in_report[pid] else shown).append(line)
            else:
                if report:
                    close_report()
                self._in_report.pop(pid, None)
                (logged if any(p.search(line) for p in NOISE) else shown).append(line)
        if report:
            close_report()
        return shown, logged


class _NoiseToLogFiles(logging.Filter):
    """A console handler's filter: a noise record goes to the log files instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if any(pattern.search(message) for pattern in NOISE):
            to_log_files(message, record.name, record.levelno)
            return False
        return True


_installed = False


def quiet_console() -> None:
    """Route the expected noise of the driver's Ray logger and of every rank to the log files
    (idempotent; the driver only)."""
    global _installed
    if _installed:
        return
    _installed = True
    import ray._private.worker as ray_worker

    for handler in logging.getLogger("ray").handlers:
        handler.addFilter(_NoiseToLogFiles())
    original: Callable | None = getattr(ray_worker, "print_worker_logs", None)
    if original is None:
        return
    lines = WorkerLines()

    def print_worker_logs(data, print_file, ignore_prefix: bool = False):
        pid = data.get("pid")
        if pid in ("autoscaler", "raylet"):
            return original(data, print_file, ignore_prefix)
        shown, logged = lines.split(pid, data.get("lines", []))
        who = f"({data.get('actor_name') or data.get('task_name') or 'worker'} pid={pid})"
        for line in logged:
            to_log_files(f"{who} {_ANSI.sub('', line)}", "ray.workers")
        if shown:
            original({**data, "lines": shown}, print_file, ignore_prefix)

    ray_worker.print_worker_logs = print_worker_logs
