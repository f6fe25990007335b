"""Running ffmpeg: an async subprocess with a timeout, stderr read line by line as it comes (only
a short tail kept), killed if the caller is cancelled; and the input options that let it open one
local recording and nothing else."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import re
import shutil
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from aisha.transcription.audio.types import ALLOWED_DEMUXERS, FFmpegError, FFmpegTimeout

_STDERR_TAIL_LINES = 40
_READ_SIZE = 64 * 1024

_TIME_RE = re.compile(r"^out_time_us=(\d+)")


@functools.cache
def _default_ffmpeg() -> str:
    # Debian's ffmpeg when installed (system codecs, security updates), else the static binary
    # from the imageio-ffmpeg wheel, so a bare `pip install` always has one.
    found = shutil.which("ffmpeg")
    if found:
        return found
    try:
        import imageio_ffmpeg  # type: ignore[import-untyped]

        exe: str = imageio_ffmpeg.get_ffmpeg_exe()
    except Exception as exc:  # the wheel raises RuntimeError when it has no binary for this platform
        raise FFmpegError("no ffmpeg: install Debian's ffmpeg or the imageio-ffmpeg wheel") from exc
    return exe


def find_ffmpeg(explicit: str | None = None) -> str:
    """The ffmpeg binary to run: ``explicit`` if given, else ffmpeg on PATH, else imageio-ffmpeg's."""
    return explicit or _default_ffmpeg()


@dataclass(frozen=True, slots=True)
class FFmpegResult:
    returncode: int
    stderr_tail: str


LineHandler = Callable[[str], None]


async def _pump(stream: asyncio.StreamReader, on_line: LineHandler) -> None:
    # Read in blocks and split on both \n and \r (ffmpeg's stats use \r): readline() would fail on
    # a line longer than the reader's limit, and nothing here may grow with the input.
    pending = b""
    while True:
        block = await stream.read(_READ_SIZE)
        if not block:
            break
        pending += block
        *lines, pending = re.split(rb"[\r\n]", pending)
        if len(pending) > _READ_SIZE:  # a runaway line: keep its start only
            pending = pending[:_READ_SIZE]
        for raw in lines:
            if raw:
                on_line(raw.decode("utf-8", "replace"))
    if pending:
        on_line(pending.decode("utf-8", "replace"))


async def run_ffmpeg(
    args: Sequence[str],
    *,
    timeout: float,  # noqa: ASYNC109 - the timeout is part of the subprocess contract
    ffmpeg: str | None = None,
    on_stderr: LineHandler | None = None,
    on_stdout: LineHandler | None = None,
) -> FFmpegResult:
    """Run ffmpeg with ``args``, never blocking the loop; kill it on timeout or cancellation.

    Returns the exit code and the last lines of stderr; a non-zero exit is not raised here, since
    for a probe it is the normal outcome. Raises :class:`FFmpegTimeout` after ``timeout`` seconds.
    """
    exe = find_ffmpeg(ffmpeg)
    tail: deque[str] = deque(maxlen=_STDERR_TAIL_LINES)

    def stderr_line(line: str) -> None:
        tail.append(line)
        if on_stderr is not None:
            on_stderr(line)

    try:
        proc = await asyncio.create_subprocess_exec(
            exe,
            "-hide_banner",
            "-nostdin",
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE if on_stdout else asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as exc:
        raise FFmpegError(f"cannot start {exe}: {exc}") from exc
    try:
        async with asyncio.timeout(timeout):
            assert proc.stderr is not None
            pumps = [_pump(proc.stderr, stderr_line)]
            if on_stdout is not None:
                assert proc.stdout is not None
                pumps.append(_pump(proc.stdout, on_stdout))
            await asyncio.gather(*pumps)
            returncode = await proc.wait()
    except TimeoutError:
        raise FFmpegTimeout(f"ffmpeg ran longer than {timeout:.0f} s", stderr_tail="\n".join(tail)) from None
    finally:
        if proc.returncode is None:
            # Cancelled or timed out: the child must not outlive the request that started it.
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    return FFmpegResult(returncode, "\n".join(tail))


def _input(path: str | os.PathLike[str], *, audio_only: bool = False) -> list[str]:
    """Options that let ffmpeg open this one local file as a recording, and nothing else.

    ``audio_only``: the demuxer drops every other stream at once (a video is never decoded, and
    an MP4's video samples are not even read).
    """
    return [
        *(["-vn", "-sn", "-dn"] if audio_only else []),
        "-protocol_whitelist",
        "file",
        "-format_whitelist",
        ",".join(ALLOWED_DEMUXERS),
        "-i",
        f"file:{os.fspath(path)}",
    ]


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1].strip() if lines else "no details"
