"""How soon `aisha run` is ready, against a bare aiogram bot started the same way, in the same run.

    .venv/bin/python bench/startup.py [--rounds 3]

Both are started as `python …` child processes against the project's fake Telegram Bot API (the
sandbox's, over real HTTP) and are *ready* when their first getUpdates reaches it: the moment a
user's message would start being answered. `aisha run` also migrates its SQLite database, builds
its services, publishes its commands and serves HTTP before that; the bare bot imports aiogram,
builds one router and polls. Rounds alternate the two, and each keeps its fastest (others share
this machine, and their load comes and goes).

Then `aisha api` (webhook mode, no photo validated) is started the same way, ready at its
setWebhook, and its resident memory read once it has sat idle for a few seconds (the bare bot's
is read the same way, for scale: aiogram alone is most of it). The CPU seconds each child had used
when it became ready are printed too: on a loaded machine their ratio is the steadier figure.

The last line is one JSON object: {"ready_s": …, "baseline_ready_s": …, "ratio": …, "api_idle_rss_mb": …}
(and a few more figures after those).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from aisha.sandbox.telegram import FakeTelegramServer

TOKEN = "123456:BENCH"  # the fake server's token
WEBHOOK_SECRET = "bench-webhook-secret-0123456789"  # sent to the fake only
IDLE_S = 3.0

BARE_BOT = textwrap.dedent(
    """
    import asyncio
    import os

    from aiogram import Bot, Dispatcher, Router
    from aiogram.client.session.aiohttp import AiohttpSession
    from aiogram.client.telegram import TelegramAPIServer
    from aiogram.filters import CommandStart
    from aiogram.types import Message

    router = Router()


    @router.message(CommandStart())
    async def start(message: Message) -> None:
        await message.answer("Hello")


    async def main() -> None:
        session = AiohttpSession(api=TelegramAPIServer.from_base(os.environ["TELEGRAM_API_URL"]))
        bot = Bot(os.environ["BOT_TOKEN"], session=session)
        dispatcher = Dispatcher()
        dispatcher.include_router(router)
        await bot.delete_webhook()
        await dispatcher.start_polling(bot, handle_signals=True)


    asyncio.run(main())
    """
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_s(pid: int) -> float:
    """CPU seconds the process has used (user + system): less swayed than wall time by the load
    others put on a shared machine."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


async def start_and_wait(
    command: list[str], env: dict[str, str], cwd: Path, ready_method: str, *, idle_s: float = 0
) -> tuple[float, float, float]:
    """Seconds from spawning `command` until `ready_method` reaches a fresh fake Telegram, the CPU
    seconds the child had used by then, and its RSS (MB) after `idle_s` more seconds."""
    async with FakeTelegramServer(TOKEN) as telegram:
        full_env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "BOT_TOKEN": TOKEN,
            "TELEGRAM_API_URL": telegram.base_url,
            **env,
        }
        if "PYTHONPATH" in os.environ:  # e.g. another checkout's src, to measure it the same way
            full_env["PYTHONPATH"] = os.environ["PYTHONPATH"]
        started = time.perf_counter()
        child = await asyncio.create_subprocess_exec(
            *command, env=full_env, cwd=cwd, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
        )
        try:
            wait = asyncio.create_task(telegram.wait_for_call(ready_method, timeout=180))
            exited = asyncio.create_task(child.wait())
            await asyncio.wait({wait, exited}, return_when=asyncio.FIRST_COMPLETED)
            if not wait.done():
                wait.cancel()
                assert child.stderr is not None
                error = (await child.stderr.read()).decode(errors="replace")[-2000:]
                raise RuntimeError(f"{' '.join(command)} exited with {child.returncode}:\n{error}")
            wait.result()
            ready = time.perf_counter() - started
            cpu = cpu_s(child.pid)
            await asyncio.sleep(idle_s)
            memory = rss_mb(child.pid)
        finally:
            if child.returncode is None:
                child.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(child.wait(), 30)
                except TimeoutError:
                    child.kill()
                    await child.wait()
    return ready, cpu, memory


async def measure(rounds: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        bare = folder / "bare_bot.py"
        bare.write_text(BARE_BOT)
        database = {"DATABASE_URL": f"sqlite+aiosqlite:///{folder / 'aisha.db'}"}
        run_env = {**database, "HTTP_PORT": str(free_port())}
        aisha, baseline, aisha_cpu, baseline_cpu, run_rss, bare_rss = [], [], [], [], [], []
        for _ in range(rounds):
            seconds, cpu, memory = await start_and_wait(
                [sys.executable, str(bare)], {}, folder, "getUpdates", idle_s=IDLE_S
            )
            baseline.append(seconds)
            baseline_cpu.append(cpu)
            bare_rss.append(memory)
            seconds, cpu, memory = await start_and_wait(
                [sys.executable, "-m", "aisha", "run"], run_env, folder, "getUpdates", idle_s=IDLE_S
            )
            aisha.append(seconds)
            aisha_cpu.append(cpu)
            run_rss.append(memory)
            print(
                f"  bare aiogram {baseline[-1]:6.2f} s ({baseline_cpu[-1]:.2f} s CPU, {bare_rss[-1]:.0f} MB idle)"
                f"   aisha run {aisha[-1]:6.2f} s ({aisha_cpu[-1]:.2f} s CPU, {memory:.0f} MB idle)"
            )
        port = free_port()
        api_env = {
            **database,
            "HTTP_PORT": str(port),
            "PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
            "WEBHOOK_SECRET": WEBHOOK_SECRET,
        }
        api_ready, _cpu, api_rss = await start_and_wait(
            [sys.executable, "-m", "aisha", "api"], api_env, folder, "setWebhook", idle_s=IDLE_S
        )
        print(f"  aisha api ready in {api_ready:.2f} s, {api_rss:.0f} MB after {IDLE_S:.0f} s idle")
    return {
        "ready_s": round(min(aisha), 2),
        "baseline_ready_s": round(min(baseline), 2),
        "ratio": round(min(aisha) / min(baseline), 2),
        "api_idle_rss_mb": round(api_rss, 1),
        "cpu_ratio": round(min(aisha_cpu) / min(baseline_cpu), 2),
        "run_idle_rss_mb": round(min(run_rss), 1),
        "baseline_idle_rss_mb": round(min(bare_rss), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} cores, load average before the run {os.getloadavg()[0]:.2f}")
    figures = asyncio.run(measure(args.rounds))
    print(
        f"ready: aisha run {figures['ready_s']:.2f} s, bare aiogram bot {figures['baseline_ready_s']:.2f} s "
        f"({figures['ratio']:.2f}×, fastest of {args.rounds}; in CPU seconds {figures['cpu_ratio']:.2f}×)"
    )
    print(
        f"idle RSS: aisha run {figures['run_idle_rss_mb']:.0f} MB, aisha api {figures['api_idle_rss_mb']:.0f} MB,"
        f" the bare aiogram bot {figures['baseline_idle_rss_mb']:.0f} MB"
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
