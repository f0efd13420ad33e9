"""Running the command line out of process: argument lists, a runner that kills the whole
process tree on cancel, and the JSON progress lines the command line prints.

Output arrives on reader threads and is queued; :meth:`SubprocessRunner.poll` hands it to the
callbacks in the caller's thread (the Slicer panel polls from a timer, a blocking caller in a
loop), so callbacks may touch MRML nodes safely.
"""
from __future__ import annotations

import collections
import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

logger = logging.getLogger(__name__)

CLI_MODULE = "KidneyTumorSegLib.cli.main"
WINDOWS_NEW_PROCESS_GROUP = getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0x00000200)
WINDOWS_NO_WINDOW = getattr(subprocess, "CREATE_NO_WINDOW", 0x08000000)
"""Windows process-creation flags (named here too, so other systems can test them)."""
LineCallback = Callable[[str], None]
FinishedCallback = Callable[[int, str], None]
"""``on_finished(exit_code, stderr_tail)``."""


class ProcessRunner(Protocol):
    """Runs one command at a time; callbacks are called from :meth:`poll`, in the caller's thread."""

    def start(self, argv: Sequence[str], on_line: LineCallback, on_finished: FinishedCallback) -> None: ...

    def cancel(self) -> None: ...

    def poll(self) -> bool:
        """Deliver pending output; True while the command runs."""
        ...


@dataclass(frozen=True)
class ProgressEvent:
    """``{"type": "progress"}``: overall ``fraction`` done, while ``model`` runs in ``stage``."""

    fraction: float
    stage: str
    model: str


@dataclass(frozen=True)
class DoneEvent:
    """``{"type": "done"}``: the command finished writing ``output``."""

    output: str


def parse_line(line: str) -> ProgressEvent | DoneEvent | None:
    """The event of one stdout line of ``--progress json``, or None for any other line."""
    try:
        data = json.loads(line)
    except json.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    if data.get("type") == "progress":
        return ProgressEvent(min(max(float(data.get("fraction", 0.0)), 0.0), 1.0), str(data.get("stage", "")), str(data.get("model", "")))
    if data.get("type") == "done":
        return DoneEvent(str(data.get("output", "")))
    return None


@dataclass(frozen=True)
class RunOptions:
    """Model options passed to every command: bundle folder ("" = the shipped demo bundle),
    device, stage-2 members (empty = all), sliding-window overlap, tumor clean-up threshold, and
    whether stage 2's kidney components that stage 1 did not see are kept (support.py), and whether
    a bundle lacking some of the twelve models may run (refused otherwise)."""

    bundle: str = ""
    device: str = "auto"
    members: tuple[str, ...] = ()
    overlap: float = 0.25
    min_tumor_pixels: int = 64
    keep_all_components: bool = False
    allow_partial: bool = False

    def argv(self, labels: bool = True) -> list[str]:
        """The options as command-line arguments; ``labels`` False leaves out those only a command
        that labels voxels takes (``locate`` labels none)."""
        args = ["--device", self.device, "--overlap", repr(float(self.overlap))]
        if labels:
            args += ["--min-tumor-pixels", str(int(self.min_tumor_pixels))]
        if self.keep_all_components:
            args.append("--keep-all-components")
        if self.allow_partial:
            args.append("--allow-partial")
        if self.bundle:
            args += ["--bundle", str(self.bundle)]
        if self.members:
            args += ["--members", ",".join(self.members)]
        return args


@dataclass(frozen=True)
class CliCommand:
    """How to start the command line: the Python to run (``PythonSlicer`` inside Slicer) and the
    folder holding ``KidneyTumorSegLib`` (the working directory, so ``-m`` finds the package)."""

    python: str = sys.executable
    package_parent: Path = Path(__file__).resolve().parent.parent

    def _base(self, command: str) -> list[str]:
        return [self.python, "-m", CLI_MODULE, command]

    def locate(self, image: Path, output: Path, options: RunOptions) -> list[str]:
        """``locate IMAGE -o boxes.json``."""
        return [*self._base("locate"), str(image), "-o", str(output), *options.argv(labels=False), "--progress", "json",
                "--overwrite"]

    def segment(self, image: Path, output: Path, options: RunOptions, box: Path | None = None, report: Path | None = None,
                uncertainty: Path | None = None, review_mask: Path | None = None, box_rule: str = "authority") -> list[str]:
        """``segment IMAGE -o OUT`` (``--box`` a boxes JSON with ``--box-rule box_rule``, or stage 1
        first when None; ``--report``, ``--uncertainty`` and ``--review-mask`` when given)."""
        argv = [*self._base("segment"), str(image), "-o", str(output), *options.argv(), "--progress", "json", "--overwrite"]
        if box is not None:
            argv += ["--box", str(box), "--box-rule", box_rule]
        if report is not None:
            argv += ["--report", str(report)]
        if uncertainty is not None:
            argv += ["--uncertainty", str(uncertainty)]
        if review_mask is not None:
            argv += ["--review-mask", str(review_mask)]
        return argv

    def batch(self, input_dir: Path, output_dir: Path, options: RunOptions, overwrite: bool = False) -> list[str]:
        """``batch INPUT_DIR OUTPUT_DIR``: ``<case>.nii.gz`` and ``<case>.json`` per case."""
        return [*self._base("batch"), str(input_dir), str(output_dir), *options.argv(), "--progress", "json",
                *(["--overwrite"] if overwrite else [])]

    def environment(self) -> dict[str, str]:
        """The environment of the child: ours, unbuffered, the package folder on ``PYTHONPATH``."""
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(self.package_parent), env.get("PYTHONPATH", "")) if p)
        return env


class SubprocessRunner:
    """A :class:`ProcessRunner` over ``subprocess``; the child leads its own process group
    (POSIX session / Windows process group) so :meth:`cancel` ends it and all its children."""

    def __init__(self, cwd: Path | None = None, env: dict[str, str] | None = None, kill_grace_s: float = 2.0,
                 stderr_lines: int = 200):
        self.cwd = cwd
        self.env = env
        self.kill_grace_s = kill_grace_s
        self._stderr_lines = stderr_lines
        self._process: subprocess.Popen | None = None
        self._events: queue.Queue = queue.Queue()
        self._on_line: LineCallback = _ignore
        self._on_finished: FinishedCallback = _ignore

    @property
    def running(self) -> bool:
        return self._process is not None

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def start(self, argv: Sequence[str], on_line: LineCallback, on_finished: FinishedCallback) -> None:
        if self._process is not None:
            raise RuntimeError("a command is already running")
        self._events = queue.Queue()
        self._on_line, self._on_finished = on_line, on_finished
        self._process = subprocess.Popen(
            list(argv), cwd=self.cwd, env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, encoding="utf-8", errors="replace", bufsize=1,
            **process_group_options(),
        )
        logger.info("started %s (pid %d)", " ".join(argv), self._process.pid)
        threading.Thread(target=self._watch, args=(self._process, self._events), daemon=True).start()

    def _watch(self, process: subprocess.Popen, events: queue.Queue) -> None:
        tail: collections.deque[str] = collections.deque(maxlen=self._stderr_lines)

        def read_stderr() -> None:
            for line in process.stderr:
                tail.append(line.rstrip("\n"))
                events.put(("log", line.rstrip("\n")))

        reader = threading.Thread(target=read_stderr, daemon=True)
        reader.start()
        for line in process.stdout:
            events.put(("line", line.rstrip("\n")))
        code = process.wait()
        reader.join()
        events.put(("finished", code, "\n".join(tail)))

    def poll(self) -> bool:
        while True:
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                return self.running
            if event[0] == "line":
                self._on_line(event[1])
            elif event[0] == "log":
                logger.info("%s", event[1])
            else:
                self._process = None
                self._on_finished(event[1], event[2])

    def cancel(self) -> None:
        """End the command and every process it started; its remaining output is dropped."""
        process = self._process
        if process is None:
            return
        self._process = None
        self._on_line, self._on_finished = _ignore, _ignore
        kill_process_tree(process, self.kill_grace_s)


def process_group_options(system: str = os.name) -> dict[str, object]:
    """``Popen`` keywords that make the child lead its own process group: a new session on POSIX;
    on Windows a new process group and no console window (as ``slicer.util.launchConsoleProcess``)."""
    if system == "posix":
        return {"start_new_session": True}
    return {"creationflags": WINDOWS_NEW_PROCESS_GROUP | WINDOWS_NO_WINDOW}


def runner_for(command: CliCommand, kill_grace_s: float = 2.0) -> SubprocessRunner:
    """A runner that starts ``command``'s argument lists in the package folder with its environment."""
    return SubprocessRunner(cwd=command.package_parent, env=command.environment(), kill_grace_s=kill_grace_s)


def kill_process_tree(process: subprocess.Popen, grace_s: float = 2.0) -> None:
    """Terminate ``process``'s group (it must lead one), then kill it if still alive after ``grace_s``
    (in the background: this returns at once)."""
    if process.poll() is not None and os.name != "posix":
        return
    logger.info("cancelling pid %d and its children", process.pid)
    if os.name == "posix":
        _signal_group(process.pid, signal.SIGTERM)

        def finish() -> None:
            try:
                process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                pass
            _signal_group(process.pid, signal.SIGKILL)  # children that ignored SIGTERM, or outlived the leader

        threading.Thread(target=finish, daemon=True).start()
    else:
        kill_windows_tree(process.pid)


def kill_windows_tree(pid: int) -> None:
    """``taskkill`` the process ``pid`` and its children, without opening a console window."""
    subprocess.run(["taskkill", "/F", "/T", "/PID", str(pid)], capture_output=True, check=False, creationflags=WINDOWS_NO_WINDOW)


def _signal_group(pid: int, signum: int) -> None:
    try:
        os.killpg(pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def _ignore(*args: object) -> None:
    pass
