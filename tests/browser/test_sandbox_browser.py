"""The sandbox in a real browser: `aisha sandbox` as a subprocess, its page driven in Debian's chromium.

A person's whole first session, as they would click through it: /start → top up with Stars (the
small package) → a portrait avatar from 10 photos, whose price the balance doesn't cover: top up
from the review → "Continue" trains it → 2 images → a voice file → its transcript → a second
avatar, again continued after a top-up → the button under *its* "is ready" generates with it, and
2 images cost more than is left: the card offers the top-up → paid → "Continue" generates that
prompt → /balance with one line per operation; then the server is stopped with SIGTERM and started
again on the same data dir, and the page still shows the conversation and the balance.

Playwright drives /usr/bin/chromium (apt package `chromium`); no browser is ever downloaded.
Screenshots of the key steps, each 1280 and 390 px wide (a laptop and a phone), and the server's
log go to `test-output/browser/` at the repository root (git-ignored), so CI can keep them as
artifacts. At every screenshot, no picture on the page may be drawn in other proportions than its
file's, and no reply-keyboard button may be cut; and in Russian, whose menu words are the
longest, every reply-keyboard button is whole at 390 px (a check shown to catch a cut one).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import httpx
import pytest

from tests.conftest import REQUIRE_SERVICES
from tests.e2e.conftest import free_port
from tests.media import DISTINCT, face_photo

pytestmark = [pytest.mark.browser, pytest.mark.timeout(900)]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
ROOT = Path(__file__).resolve().parents[2]
OUTPUT = ROOT / "test-output" / "browser"
OPUS = ["-ac", "1", "-c:a", "libopus", "-b:a", "24k"]  # as Telegram voice messages are
SPEECH = "Hello from the sandbox. This is a voice message for the test."
RECORDED_SPEECH = "The lighthouse keeper climbed the narrow stairs every evening before sunset."
# The sandbox hears speech with the local Whisper when the local-speech extra is installed (make
# test installs it): the transcript holds the words said; otherwise it says it is simulated.
TRANSCRIPT = re.compile(
    r"hello from the sandbox" if importlib.util.find_spec("faster_whisper") else r"simulated transcript",
    re.IGNORECASE,
)
BALANCE = re.compile(r"Balance: (\d+)")  # case matters: not "Your balance: 450" after a top-up
# Under a card ("Price: 10 credits. Your balance: 9.") or a review ("Training costs 300 credits;
# your balance: 210 credits.").
PRICE_LINE = re.compile(r"(?:Price:|Training costs) (\d+) credits?[.;] Your balance: (\d+)", re.IGNORECASE)
PACKAGE = re.compile(r"(\d+) ⭐ → (\d+) credits?")  # a top-up offer: "100 ⭐ → 110 credits"
FIRST_PACKAGE = 110  # credits: with the welcome bonus, less than an avatar costs
FIRST_PROMPT = "me as an astronaut on Mars, golden hour"
SECOND_PROMPT = "me as a lighthouse keeper in a storm, oil painting"
TRANSCRIPTION_PRICE = 1  # a voice of a few seconds: one started minute
HISTORY_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d\s+([+−]?\d+)\s+(.+)$")  # a true minus: −5
WIDE = {"width": 1280, "height": 900}
NARROW = {"width": 390, "height": 844}  # a phone
STEP = 30_000  # ms: one bot answer
LONG = 180_000  # ms: photo checks, training, generation


def _unavailable(reason: str) -> NoReturn:
    """Skip, saying why; under CI (AISHA_REQUIRE_SERVICES=1) a missing tool fails instead."""
    if REQUIRE_SERVICES:
        pytest.fail(f"{reason} (required: AISHA_REQUIRE_SERVICES=1)")
    pytest.skip(reason)


# --- the server ----------------------------------------------------------------------------------


class SandboxProcess:
    """`python -m aisha sandbox` on a free port; its output goes to a log file."""

    def __init__(self, data_dir: Path, log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.data_dir = data_dir
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, *, language: str = "en") -> None:
        command = [
            sys.executable,
            "-m",
            "aisha",
            "sandbox",
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
            "--training-delay",
            "2",
            "--language",
            language,
        ]
        env = {key: value for key, value in os.environ.items() if key != "BOT_TOKEN"}
        with self.log_path.open("ab") as log:
            log.write(f"\n=== {' '.join(command)}\n".encode())
            log.flush()
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        self._wait_until_up()

    def _wait_until_up(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                pytest.fail(f"`aisha sandbox` exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(self.url, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        pytest.fail(f"the sandbox page did not answer at {self.url} within {timeout} s:\n{self.log_tail()}")

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, as a terminal or a process manager stops it; returns the exit code."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            pytest.fail(f"`aisha sandbox` did not stop within {timeout} s of SIGTERM:\n{self.log_tail()}")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


# --- media ---------------------------------------------------------------------------------------


def _photos(folder: Path) -> list[Path]:
    """Ten face photos the avatar checks accept (pairwise distinct, one face, sharp)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for number, variant in enumerate(DISTINCT[:10], start=1):
        path = folder / f"face-{number:02d}.jpg"
        path.write_bytes(face_photo(variant))
        paths.append(path)
    return paths


def _speech(folder: Path) -> Path:
    """A few seconds of synthetic English speech as an Ogg/Opus voice file (espeak-ng + ffmpeg)."""
    from aisha.transcription.audio import find_ffmpeg

    espeak = shutil.which("espeak-ng")
    assert espeak is not None
    wav, voice = folder / "speech.wav", folder / "voice.ogg"
    subprocess.run([espeak, "-v", "en", "-s", "150", "-w", str(wav), SPEECH], check=True)
    subprocess.run(
        [find_ffmpeg(), "-hide_banner", "-loglevel", "error", "-y", "-i", str(wav), *OPUS, str(voice)],
        check=True,
    )
    return voice


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def output() -> Path:
    """Emptied once, so each test's screenshots stay beside the others'."""
    shutil.rmtree(OUTPUT, ignore_errors=True)
    OUTPUT.mkdir(parents=True)
    return OUTPUT


@pytest.fixture
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        _unavailable(f"{CHROMIUM} is not installed (apt-get install -y chromium): no browser to drive")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the `playwright` package is not installed (pip install -e '.[dev]')")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def sandbox(tmp_path: Path, output: Path) -> Iterator[SandboxProcess]:
    server = SandboxProcess(tmp_path / "sandbox-data", output / "server.log")
    try:
        yield server
    finally:
        server.kill()


# --- page helpers --------------------------------------------------------------------------------


# The newest bot message past `since` whose text matches: its id, or false while there is none.
_FIND_BOT_MESSAGE = """({since, pattern, flags}) => {
    const re = new RegExp(pattern, flags);
    const found = [...document.querySelectorAll(".message:not(.outgoing)")].filter(
        (m) => Number(m.dataset.messageId) > since && re.test(m.innerText));
    return found.length ? found[found.length - 1].dataset.messageId : false;
}"""


_NEXT_FRAME = "() => new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(done)))"

# Every loaded picture on screen whose box has other proportions than its file (a pixel or two
# of rounding allowed, either way), as "file: drawn WxH, file WxH".
_SQUASHED_IMAGES = """() => [...document.images]
    .filter((img) => img.complete && img.naturalWidth > 0 && img.getClientRects().length > 0)
    .map((img) => {
        const box = img.getBoundingClientRect();
        const ratio = img.naturalWidth / img.naturalHeight;
        const fits = Math.abs(box.width - box.height * ratio) <= 2 || Math.abs(box.height - box.width / ratio) <= 2;
        return fits ? null : `${img.currentSrc}: drawn ${box.width.toFixed(1)}x${box.height.toFixed(1)}, `
            + `file ${img.naturalWidth}x${img.naturalHeight}`;
    })
    .filter(Boolean)"""

# Reply-keyboard buttons whose label doesn't fit or that stick out of the window.
# A stylesheet that undoes the wrap (each label on one line, as before the fix), to show that the
# check above sees a cut button when there is one.
_NO_WRAP = "#reply-keyboard .reply-button { white-space: nowrap !important; overflow: hidden !important; }"
_CUT_REPLY_BUTTONS = """() => [...document.querySelectorAll("#reply-keyboard .reply-button")]
    .filter((b) => b.getClientRects().length > 0)
    .filter((b) => b.scrollWidth > b.clientWidth + 1 || b.getBoundingClientRect().right > window.innerWidth)
    .map((b) => b.innerText)"""


class Chat:
    """The page as a user sees it: bubbles, buttons, the composer and the operator panel.

    `since` is the newest message id before the user's last action, so waiting for "Balance:"
    after a second /balance finds the new answer, not the first one (edited messages keep their
    id, so an answer edited into place after a button press is found too).
    """

    def __init__(self, page: Any, output: Path) -> None:
        from playwright.sync_api import expect

        expect.set_options(timeout=STEP)
        self.page = page
        self.expect = expect
        self.output = output
        self.shots = 0
        self.since = 0

    def _mark(self) -> None:
        ids = self.page.locator(".message[data-message-id]").evaluate_all(
            "els => els.map(e => Number(e.dataset.messageId))"
        )
        self.since = max(ids, default=0)

    def bot(self, text: str | re.Pattern[str]) -> Any:
        """The newest bot message containing `text` (any time)."""
        return self.page.locator(".message:not(.outgoing)").filter(has_text=text).last

    def wait_bot(self, text: str | re.Pattern[str], timeout: int = STEP) -> Any:
        """The newest bot message after the last action whose text matches; waits for it."""
        if isinstance(text, re.Pattern):
            pattern, flags = text.pattern, "i" if text.flags & re.IGNORECASE else ""
        else:
            pattern, flags = re.escape(text), ""
        found = self.page.wait_for_function(
            _FIND_BOT_MESSAGE, arg={"since": self.since, "pattern": pattern, "flags": flags}, timeout=timeout
        )
        return self.page.locator(f'.message[data-message-id="{found.json_value()}"]')

    def send(self, text: str) -> None:
        self._mark()
        field = self.page.locator("#composer-input")
        field.fill(text)
        field.press("Enter")
        self.expect(self.page.locator(".message.outgoing").filter(has_text=text).last).to_be_visible()

    def tap_reply_button(self, label: str) -> None:
        self._mark()
        self.page.locator("#reply-keyboard .reply-button", has_text=label).click()

    def press(self, message: Any, label: str | re.Pattern[str]) -> None:
        """Press an inline button under `message`."""
        button = message.locator(".inline-button").filter(has_text=label).first
        self.expect(button).to_be_enabled()
        button.click()

    def attach(self, kind: str, files: list[Path]) -> None:
        self._mark()
        self.page.locator("#attach").click()
        with self.page.expect_file_chooser() as chooser:
            self.page.locator(f".attach-option[data-kind={kind}]").click()
        chooser.value.set_files([str(path) for path in files])

    def scroll_to_bottom(self) -> None:
        """Back to the newest message, where the page then stays as new ones arrive."""
        self.page.locator("#messages").evaluate("el => el.scrollTo(0, el.scrollHeight)")

    def panel_balance(self) -> int:
        return int(self.page.locator("#panel-balance").inner_text())

    def wait_panel_balance(self, value: int, timeout: int = STEP) -> None:
        self.expect(self.page.locator("#panel-balance")).to_have_text(str(value), timeout=timeout)

    def wait_images_loaded(self, selector: str) -> None:
        self.page.wait_for_function(
            "(s) => [...document.querySelectorAll(s)].every(img => img.complete && img.naturalWidth > 0)",
            arg=selector,
        )

    def screenshot(self, name: str, *, check: bool = True) -> None:
        """The page 1280 and 390 px wide, checked for squashed pictures and cut buttons at each
        (not when a test has already failed: the picture is for finding out why)."""
        self.shots += 1
        for size in (WIDE, NARROW):
            self.page.set_viewport_size(size)
            self.page.evaluate(_NEXT_FRAME)  # laid out again at the new width
            self.page.screenshot(path=str(self.output / f"{self.shots:02d}-{name}-{size['width']}.png"))
            if not check:
                continue
            at = f"{name}, {size['width']} px wide"
            squashed = self.page.evaluate(_SQUASHED_IMAGES)
            assert not squashed, f"{at}: pictures drawn in other proportions than their files: {squashed}"
            cut = self.page.evaluate(_CUT_REPLY_BUTTONS)
            assert not cut, f"{at}: reply-keyboard buttons cut: {cut}"
        self.page.set_viewport_size(WIDE)


def _history(chat: Chat, screenshot: str) -> tuple[int, list[tuple[int, str]]]:
    """Sends /balance and reads every page of the history: (balance shown, [(amount, what)])."""
    chat.send("/balance")
    message = chat.wait_bot(BALANCE)
    chat.screenshot(screenshot)
    shown = BALANCE.search(message.inner_text())
    assert shown is not None
    balance = int(shown[1])
    entries: list[tuple[int, str]] = []
    seen_titles: set[str] = set()
    while True:
        text = message.locator(".text").inner_text()
        title = re.search(r"History \((\d+)–(\d+) of (\d+)", text)
        assert title is not None, text
        seen_titles.add(title[0])
        for line in text.splitlines():
            match = HISTORY_LINE.match(line.strip())
            if match:
                entries.append((int(match[1].replace("−", "-")), match[2]))
        total = int(title[3])
        if len(entries) >= total:
            return balance, entries
        chat.press(message, "Earlier")
        # The same message is edited to show the next page.
        chat.expect(message.locator(".text")).not_to_contain_text(title[0])


def _price_line(message: Any) -> tuple[int, int]:
    """(price, balance) from a card's or a review's "Price: N credits. Your balance: M." line."""
    found = PRICE_LINE.search(message.inner_text())
    assert found is not None, message.inner_text()
    return int(found[1]), int(found[2])


def _buy(chat: Chat, packages: Any, *, credits: int | None = None, at_least: int = 0) -> tuple[int, int]:
    """In a "Choose a package" message, the package giving `credits`, or else the smallest that
    gives at least `at_least` (as a careful person picks); its invoice paid with Stars. Returns
    (stars, credits) of the package."""
    offers = []
    for label in packages.locator(".inline-button").all_inner_texts():
        found = PACKAGE.search(label)
        if found:
            offers.append((int(found[2]), int(found[1]), label))
    chosen = (
        [o for o in offers if o[0] == credits]
        if credits is not None
        else sorted(o for o in offers if o[0] >= at_least)
    )
    assert chosen, f"no package for {credits or f'at least {at_least}'} credits among {offers}"
    got, stars, label = chosen[0]
    chat._mark()
    chat.press(packages, re.compile(rf"^\s*{re.escape(label)}\s*$"))  # the whole label
    invoice = chat.wait_bot(f"{got} credits for Aisha")
    chat.expect(invoice.locator(".invoice")).to_be_visible()
    invoice.locator(".pay-button").click()
    chat.wait_bot("Thank you!")
    chat.expect(invoice.locator(".pay-button")).to_have_class(re.compile(r"\bpaid\b"))
    return stars, got


def _new_avatar(chat: Chat, name: str, photos: list[Path], *, screenshots: bool = False) -> Any:
    """/avatar → Portrait → its name → the photos as one album → all accepted → "Review and start":
    the review message, with the price against the balance."""
    page = chat.page
    chat.send("/avatar")
    chat.press(chat.wait_bot("New avatar"), "Portrait")
    chat.wait_bot("What shall we call")
    chat.send(name)
    chat.wait_bot("Now send")
    chat.attach("photo", photos)
    album = page.locator(".message.outgoing.album-message").last
    chat.expect(album.locator(".photo")).to_have_count(len(photos))
    if screenshots:
        chat.wait_images_loaded(".message.outgoing.album-message .photo")
        album.scroll_into_view_if_needed()
        chat.screenshot("photos-sent")
        chat.scroll_to_bottom()
    # One status message, edited as the photos are checked, with one button once there are enough.
    ready = chat.wait_bot(f"Accepted: {len(photos)} photos", timeout=LONG)
    chat.expect(page.locator(".message:not(.outgoing)", has_text=f"Photos for {name}")).to_have_count(1)
    chat.expect(page.locator(".inline-button", has_text="Review and start")).to_have_count(1)
    if screenshots:
        chat.screenshot("photos-accepted")
    chat.press(ready, "Review and start")
    review = chat.wait_bot(f"{len(photos)} photos accepted")
    # The review shows the photos: one album of those accepted.
    chat.expect(page.locator(".message:not(.outgoing) .album").last.locator(".photo")).to_have_count(
        len(photos)
    )
    return review


# --- the test ------------------------------------------------------------------------------------


def test_a_first_session_in_the_browser_survives_a_restart(
    browser: Any, sandbox: SandboxProcess, output: Path, tmp_path: Path
) -> None:
    if shutil.which("espeak-ng") is None:
        _unavailable(
            "espeak-ng is not installed (apt-get install -y espeak-ng): no speech for the voice step"
        )
    photos = _photos(tmp_path / "photos")
    voice = _speech(tmp_path)
    started = time.monotonic()
    sandbox.start()

    context = browser.new_context(viewport=WIDE, locale="en-US")
    page = context.new_page()
    page.set_default_timeout(STEP)
    problems: list[str] = []
    page.on("console", lambda m: m.type == "error" and problems.append(f"console: {m.text}"))
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    # Everything the page loads comes from the sandbox itself: no CDN, no font or script elsewhere.
    foreign: list[str] = []

    def note_foreign(request: Any) -> None:
        if not request.url.startswith((sandbox.url, "blob:", "data:")):
            foreign.append(request.url)

    page.on("request", note_foreign)
    chat = Chat(page, output)
    page.goto(sandbox.url)

    # /start: the greeting, the reply keyboard and the welcome bonus in the panel.
    chat.send("/start")
    chat.wait_bot("I'm Aisha")
    chat.expect(page.locator("#reply-keyboard .reply-button").first).to_be_visible()
    chat.expect(page.locator(".ledger-entry")).to_have_count(1)  # the welcome bonus
    bonus = chat.panel_balance()
    assert bonus > 0
    chat.screenshot("start")

    # Top up with Stars: /balance (tapped in the greeting, as in Telegram) → Top up → a package →
    # the invoice → Pay. A small package: with the bonus, less than an avatar costs. Every
    # operation is noted as the statement in /balance should show it, newest last.
    statement: list[tuple[int, str]] = [(bonus, "Welcome bonus")]
    chat._mark()
    chat.bot("I'm Aisha").locator(".command-link", has_text="/balance").click()
    chat.expect(page.locator(".message.outgoing").last).to_have_text(re.compile(r"^/balance"))
    chat.press(chat.wait_bot(BALANCE), "Top up")
    stars, credits = _buy(chat, chat.wait_bot("Choose a package"), credits=FIRST_PACKAGE)
    statement.append((credits, f"Top-up: {stars} ⭐"))
    balance = bonus + credits
    chat.wait_panel_balance(balance)
    chat.screenshot("paid")

    # A portrait avatar from 10 photos, sent as one album. The review shows its price against the
    # balance, which doesn't cover it: its button offers the top-up at once; after the payment,
    # "Continue" trains that avatar.
    review = _new_avatar(chat, "Astro", photos, screenshots=True)
    avatar_price, shown = _price_line(review)
    assert shown == balance < avatar_price, review.inner_text()
    chat.expect(review.locator(".inline-button", has_text="Start training")).to_have_count(0)
    chat.screenshot("avatar-short")
    chat._mark()
    chat.press(review, f"Top up to train ({avatar_price} credits)")
    stars, credits = _buy(chat, chat.wait_bot("Choose a package"), at_least=avatar_price - balance)
    statement.append((credits, f"Top-up: {stars} ⭐"))
    balance += credits
    chat.wait_panel_balance(balance)
    offer = chat.wait_bot("Pick up where you left off")
    chat.screenshot("avatar-continue")
    chat.press(offer, f"Continue: train «Astro» for {avatar_price} credits")
    chat.wait_bot("Training of Astro has started")
    avatar_ready = chat.wait_bot("Your avatar Astro is ready", timeout=LONG)
    statement.append((-avatar_price, "Avatar training"))
    balance -= avatar_price
    chat.wait_panel_balance(balance)
    chat.screenshot("avatar-ready")

    # Two images with the avatar.
    chat.press(avatar_ready, "Create an image")
    chat.wait_bot("Describe the picture")
    chat.send(FIRST_PROMPT)
    options = chat.wait_bot("Avatar: Astro")
    options.get_by_role("button", name="2", exact=True).click()
    chat.expect(options).to_contain_text("images: 2")
    price, _ = _price_line(options)
    chat.press(options, "Generate for")
    chat.wait_bot("Done: 2 images", timeout=LONG)
    # The generated pictures: albums captioned with a prompt (not the reviews' albums of photos).
    images = (
        page.locator(".message:not(.outgoing)")
        .filter(has=page.locator(".album"))
        .filter(has_text=re.compile(f"{re.escape(FIRST_PROMPT)}|{re.escape(SECOND_PROMPT)}"))
        .locator(".album .photo")
    )
    chat.expect(images).to_have_count(2)
    chat.wait_images_loaded(".message:not(.outgoing) .album .photo")
    statement.append((-price, "Image generation, 2 images"))
    balance -= price
    chat.wait_panel_balance(balance)
    chat.screenshot("images")

    # The gallery shows one portrait picture with its caption: drawn whole, not squashed.
    chat.send("/gallery")
    card = chat.wait_bot("1 of 1")
    chat.expect(card.locator(".photo")).to_have_count(1)
    chat.wait_images_loaded(".message:not(.outgoing) .bubble > .photo")
    chat.screenshot("gallery")

    # A voice file → its transcript.
    chat.attach("voice", [voice])
    chat.expect(page.locator(".message.outgoing audio").last).to_be_visible()
    chat.wait_bot("Transcribed", timeout=LONG)
    transcript = chat.wait_bot(TRANSCRIPT, timeout=LONG)
    transcript_text = transcript.locator(".text").inner_text()
    statement.append((-TRANSCRIPTION_PRICE, "Transcription, 1 minute"))
    balance -= TRANSCRIPTION_PRICE
    chat.wait_panel_balance(balance)
    chat.screenshot("transcript")

    # A second avatar, trained the same way: short again, topped up from the review, continued.
    # Astro stays the main avatar, so a card made for the main one would name Astro, not Nova.
    review = _new_avatar(chat, "Nova", photos)
    avatar_price, shown = _price_line(review)
    assert shown == balance < avatar_price, review.inner_text()
    chat._mark()
    chat.press(review, f"Top up to train ({avatar_price} credits)")
    stars, credits = _buy(chat, chat.wait_bot("Choose a package"), at_least=avatar_price - balance)
    statement.append((credits, f"Top-up: {stars} ⭐"))
    balance += credits
    chat.press(
        chat.wait_bot("Pick up where you left off"), f"Continue: train «Nova» for {avatar_price} credits"
    )
    chat.wait_bot("Training of Nova has started")
    second_ready = chat.wait_bot("Your avatar Nova is ready", timeout=LONG)
    statement.append((-avatar_price, "Avatar training"))
    balance -= avatar_price
    chat.wait_panel_balance(balance)
    chat.screenshot("second-avatar-ready")

    # The button under the newly ready avatar makes the card for that avatar. Two images cost more
    # than is left: the card's button offers the top-up instead of refusing after the press.
    named = re.search(r"Your avatar (.+?) is ready", second_ready.inner_text())
    assert named is not None
    avatar = named[1]
    chat.press(second_ready, "Create an image")
    chat.wait_bot(f"Describe the picture you want with the avatar {avatar}")
    chat.send(SECOND_PROMPT)
    card = chat.wait_bot(f"Avatar: {avatar}")
    chat.expect(card).not_to_contain_text("Astro")
    card.get_by_role("button", name="2", exact=True).click()
    chat.expect(card).to_contain_text("images: 2")
    price, shown = _price_line(card)
    assert shown == balance < price, card.inner_text()
    chat.expect(card.locator(".inline-button", has_text="Generate for")).to_have_count(0)
    chat.screenshot("generation-short")

    # Top up from the card → paid → "Continue" generates that card: the same prompt, the same
    # avatar, charged once.
    chat._mark()
    chat.press(card, f"Top up to generate ({price} credits)")
    stars, credits = _buy(chat, chat.wait_bot("Choose a package"), at_least=price - balance)
    statement.append((credits, f"Top-up: {stars} ⭐"))
    balance += credits
    chat.wait_panel_balance(balance)
    offer = chat.wait_bot("Pick up where you left off")
    chat.screenshot("generation-continue")
    chat.press(offer, f"Continue: generate for {price} credits")
    chat.wait_bot("Done: 2 images", timeout=LONG)
    continued = chat.wait_bot(SECOND_PROMPT, timeout=LONG)
    chat.expect(continued.locator(".album .photo")).to_have_count(2)
    chat.expect(continued.locator(".caption")).to_have_text(SECOND_PROMPT)
    chat.expect(images).to_have_count(4)
    chat.wait_images_loaded(".message:not(.outgoing) .album .photo")
    statement.append((-price, "Image generation, 2 images"))
    balance -= price
    chat.wait_panel_balance(balance)
    continued.scroll_into_view_if_needed()
    chat.screenshot("generation-continued")
    chat.scroll_to_bottom()

    # /balance: a statement, newest first, one line per operation with what it finally moved (a
    # job's hold and capture are one line); the sums agree with the operator's panel.
    shown, entries = _history(chat, "balance")
    assert shown == balance
    assert entries == statement[::-1], "\n".join(f"{amount:+} {what}" for amount, what in entries)
    assert sum(amount for amount, _ in entries) == balance
    chat.wait_panel_balance(balance)
    chat.expect(page.locator(".ledger-entry")).to_have_count(len(entries))
    assert not problems, problems
    assert not foreign, foreign

    # The operator's panel: the generation job with its avatar and charge; a FAL call opened
    # shows what the bot sent and what came back.
    generation_jobs = page.locator("#panel-jobs .job[data-kind=generation] .job-facts")
    chat.expect(generation_jobs).to_have_count(2)
    chat.expect(generation_jobs.first).to_contain_text(f"Avatar: {avatar}")  # the newest
    chat.expect(generation_jobs.last).to_contain_text("Avatar: Astro")
    chat.expect(generation_jobs.first).to_contain_text("charged")
    page.locator("#calls-filter button[data-service=fal]").click()
    generate = page.locator(".detail", has_text=re.compile(r"/fal-ai/flux-lora$"))
    submission = page.locator("#panel-calls .call").filter(has=generate).first
    submission.locator(".call-head").click()
    chat.expect(submission.locator(".call-detail")).to_contain_text("Response · HTTP 200")
    chat.expect(submission.locator(".call-body").first).to_contain_text("lighthouse")  # the newest
    submission.scroll_into_view_if_needed()
    page.locator("#panel").screenshot(path=str(output / f"{chat.shots:02d}-panel-call.png"))

    # Stop the server mid-conversation: the page says it is reconnecting.
    messages_before = page.locator(".message[data-message-id]").count()
    assert sandbox.stop() == 0, sandbox.log_tail()
    chat.expect(page.locator("#banner")).to_be_visible(timeout=STEP)
    chat.screenshot("reconnecting")

    # Start it again on the same data dir: the page comes back by itself, and after a reload too.
    sandbox.start()
    chat.expect(page.locator("#banner")).to_be_hidden(timeout=STEP)
    page.reload()
    chat.expect(page.locator(".message[data-message-id]")).to_have_count(messages_before)
    chat.expect(chat.bot(transcript_text)).to_be_visible()
    chat.expect(images).to_have_count(4)
    chat.wait_images_loaded(".message:not(.outgoing) .album .photo")
    chat.expect(page.locator(".message.outgoing.album-message .photo")).to_have_count(2 * len(photos))
    chat.wait_panel_balance(balance)
    chat.expect(page.locator(".ledger-entry")).to_have_count(len(entries))
    balance_after, entries_after = _history(chat, "after-restart")
    assert (balance_after, entries_after) == (balance, entries)

    # Refused connections while the server was down are the browser's own lines; nothing else.
    unexpected = [p for p in problems if "ERR_CONNECTION_REFUSED" not in p and "ERR_EMPTY_RESPONSE" not in p]
    assert not unexpected, unexpected
    context.close()
    print(f"browser session took {time.monotonic() - started:.1f} s; screenshots in {output}")


def test_a_voice_recorded_in_the_browser_comes_back_as_its_words(
    sandbox: SandboxProcess, output: Path, tmp_path: Path
) -> None:
    """The microphone button records what chromium's fake microphone plays (an espeak-ng phrase),
    the page sends it as a voice message, and the local Whisper writes its words back."""
    if shutil.which("espeak-ng") is None:
        _unavailable("espeak-ng is not installed (apt-get install -y espeak-ng): nothing to say")
    if importlib.util.find_spec("faster_whisper") is None:
        pytest.skip("the local-speech extra is not installed: the sandbox's transcripts are simulated")
    if not CHROMIUM.exists():
        _unavailable(f"{CHROMIUM} is not installed (apt-get install -y chromium): no browser to drive")
    from playwright.sync_api import sync_playwright

    from aisha.transcription.audio import find_ffmpeg

    # Chromium's fake microphone plays a 16-bit PCM WAV file, once (%noloop).
    spoken, microphone = tmp_path / "spoken.wav", tmp_path / "microphone.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(spoken), RECORDED_SPEECH], check=True)
    subprocess.run(
        [find_ffmpeg(), "-hide_banner", "-loglevel", "error", "-y", "-i", str(spoken), "-af", "apad=pad_dur=1",
         "-ac", "1", "-ar", "48000", "-c:a", "pcm_s16le", str(microphone)],
        check=True,
    )  # fmt: skip
    sandbox.start()
    fake_microphone = [
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={microphone}%noloop",
    ]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS + fake_microphone
        )
        try:
            context = browser.new_context(viewport={"width": 1360, "height": 900}, locale="en-US")
            context.grant_permissions(["microphone"], origin=sandbox.url.rstrip("/"))
            page = context.new_page()
            page.set_default_timeout(STEP)
            chat = Chat(page, output)
            page.goto(sandbox.url)
            chat.send("/start")
            chat.wait_bot("I'm Aisha")

            # Click to start recording, let the phrase play, click again to send.
            chat._mark()
            page.locator("#record").click()
            chat.expect(page.locator("#recording")).to_be_visible()
            page.wait_for_timeout(5500)
            page.locator("#record").click()
            chat.expect(page.locator(".message.outgoing audio").last).to_be_visible()
            try:
                transcript = chat.wait_bot(re.compile(r"narrow stair", re.IGNORECASE), timeout=LONG)
            except Exception:
                chat.screenshot("recorded-voice-failed", check=False)
                texts = page.locator(".message").all_inner_texts()
                pytest.fail(f"no transcript with the words said; the chat: {texts}")
            chat.screenshot("recorded-voice")
            words = transcript.inner_text().lower()
            # What the browser records differs a little run to run, and tiny.en may hear "lighthouse
            # keeper" as "light housekeeper", "every evening" as "and reading", "stairs" as "stair":
            # these words of the phrase, in order, it reliably gets.
            said = ["climbed", "narrow", "stair", "sunset"]
            assert [words.index(w) for w in said] == sorted(words.index(w) for w in said), words
            context.close()
        finally:
            browser.close()


def test_the_russian_reply_keyboard_wraps_on_a_phone(
    browser: Any, sandbox: SandboxProcess, output: Path
) -> None:
    """Russian has the menu's longest words: at 390 px every reply-keyboard button shows its whole
    label inside the window (it wraps onto a second line instead of being cut)."""
    from aisha.bot.keyboards import MAIN_MENU
    from aisha.i18n import Translator

    sandbox.start(language="ru")
    context = browser.new_context(viewport=NARROW, locale="ru-RU")
    try:
        page = context.new_page()
        page.set_default_timeout(STEP)
        chat = Chat(page, output)
        page.goto(sandbox.url)
        chat.send("/start")
        chat.wait_bot("Я Аиша")
        keyboard = page.locator("#reply-keyboard .reply-button")
        chat.expect(keyboard.first).to_be_visible()
        t = Translator.load("ru").bind("ru")
        assert keyboard.all_inner_texts() == [t(key) for row in MAIN_MENU for key in row]
        page.evaluate(_NEXT_FRAME)
        page.screenshot(path=str(output / "ru-reply-keyboard-390.png"))
        assert page.evaluate(_CUT_REPLY_BUTTONS) == []
        width = page.evaluate("() => window.innerWidth")
        for box in (keyboard.nth(i).bounding_box() for i in range(keyboard.count())):
            assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= width, box

        # The same keyboard without the wrap is caught: the check is not blind.
        page.add_style_tag(content=_NO_WRAP)
        page.evaluate(_NEXT_FRAME)
        assert "🎨 Создать изображение" in page.evaluate(_CUT_REPLY_BUTTONS)
    finally:
        context.close()
