"""Joining chunk transcripts into one text, subtitles, and Telegram-sized messages.

Pure functions on strings and numbers; nothing here does I/O.

After a hard cut (no silence near the boundary) the next chunk starts a couple of seconds before
the cut, so the words spoken in those seconds come back twice. :func:`find_overlap` finds them as
the longest run of words that ends the previous text and starts the next one, compared without
case or punctuation, within a bounded window. Whisper often garbles the word cut in half at the
very edge of a chunk, or makes up a few words there ("Yes, in the..."), so the run may stop up to
``slack`` words before the end of the previous text and start up to ``slack`` words into the next
one; the further from the edges, the longer it must be: two words when up to three words are
dropped in all (for three, not two short ones like "of the"), three up to six, four beyond. A
word heard in part matches the whole word ("izing" and "organizing",
"power" and "powers": one is the start or the end of the other, and at least four letters long),
and a run of four words or more may hold one word the two pieces heard differently.
Measured on ten minutes of real speech cut every minute (``bench/transcript_quality.py``).
Languages written without spaces get no word-level de-duplication.

When the two texts share no such run and the chunks come with timed segments, the previous text
stops where the next chunk starts (each word's time estimated within its segment): the next
chunk starts in a gap between words and hears the overlap with what follows, while a recognizer
hears the end of its audio worst. Only a word or two then repeats at the edges, and one word
within two of them is enough.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "TELEGRAM_TEXT_LIMIT",
    "ChunkText",
    "Segment",
    "build_srt",
    "find_overlap",
    "format_srt_time",
    "join_chunk_texts",
    "merge_segments",
    "split_message",
    "utf16_len",
]

TELEGRAM_TEXT_LIMIT = 4096


@dataclass(frozen=True, slots=True)
class Segment:
    """A piece of transcript with its time span in seconds."""

    start: float
    end: float
    text: str


@dataclass(frozen=True, slots=True)
class ChunkText:
    """One chunk's transcript, placed on the timeline of the whole recording.

    ``overlap`` is how many seconds at the start of the chunk the previous one also covered (after
    a hard cut); ``segments`` are relative to the chunk's own start.
    """

    text: str
    start: float = 0.0
    overlap: float = 0.0
    segments: Sequence[Segment] | None = None


# -------------------------------------------------------------------------------------- overlap

_TOKEN_RE = re.compile(r"\S+")


def _norm(token: str) -> str:
    return "".join(ch for ch in token.casefold() if ch.isalnum())


def _words(text: str) -> list[tuple[str, int, int]]:
    """(normalized word, start, end) for every token that has a letter or digit."""
    words: list[tuple[str, int, int]] = []
    for m in _TOKEN_RE.finditer(text):
        norm = _norm(m.group())
        if norm:
            words.append((norm, m.start(), m.end()))
    return words


def _same(x: str, y: str) -> bool:
    """The same word, or one heard in part: a start or an end of the other of four letters or more."""
    if x == y:
        return True
    short, long = (x, y) if len(x) < len(y) else (y, x)
    return len(short) >= _PART_MIN and (long.startswith(short) or long.endswith(short))


_PART_MIN = 4
_MISHEARD_RUN = 4  # the shortest run that may hold one word the pieces heard differently


def _shortest_run(dropped: int, *, near: bool = False) -> int:
    """The run needed when ``dropped`` edge words are skipped in all: the more, the more proof."""
    if near and dropped <= _NEAR_SLACK:
        return 1
    return 1 if dropped == 0 else 2 if dropped <= 3 else 3 if dropped <= 6 else 4


_NEAR_SLACK = 2


def find_overlap(
    previous: str, following: str, *, max_words: int = 40, slack: int = 6, near: bool = False
) -> tuple[int, int]:
    """Where to join two texts whose edges repeat the same words.

    Returns ``(keep, skip)``: ``previous[:keep] + following[skip:]`` says everything once.
    ``(len(previous), 0)`` when no repeated run is found. ``near``: ``previous`` already ends
    about where ``following`` starts, so what repeats is a word or two at the edges, and one
    word within two of them is proof enough.
    """
    tail = _words(previous)[-(max_words + slack) :]
    head = _words(following)[: max_words + slack]
    best: tuple[int, int, int, int, int] | None = None  # (words matched, -(a + b), a, b, run length)
    for a in range(min(slack, len(tail)) + 1):  # words dropped from the end of previous
        for b in range(min(slack, len(head)) + 1):  # words dropped from the start of following
            longest = min(len(tail) - a, len(head) - b, max_words)
            shortest = _shortest_run(a + b, near=near)  # one common word at an offset proves little
            for k in range(longest, shortest - 1, -1):
                if best is not None and (k, -(a + b)) <= best[:2]:
                    break  # no run of k words here can match more than the best one found
                left = tail[len(tail) - a - k : len(tail) - a]
                right = head[b : b + k]
                if k == 2 and a + b > 2 and max(len(x[0]) for x in left) < _PART_MIN:
                    continue  # "of the" at an offset: two little words prove nothing
                misheard = sum(1 for x, y in zip(left, right, strict=True) if not _same(x[0], y[0]))
                # One word heard differently by the two pieces is allowed in a long run that
                # both ends of agree on ("body at place in" and "body net place in").
                if misheard == 0 or (
                    misheard == 1
                    and k >= _MISHEARD_RUN
                    and _same(left[0][0], right[0][0])
                    and _same(left[-1][0], right[-1][0])
                ):
                    best = (k - misheard, -(a + b), a, b, k)
                    break
    if best is None:
        return len(previous), 0
    _, _, a, b, k = best
    start = len(tail) - a - k
    # Both texts hold the run: the previous one's words are kept, except at its end those that
    # only match in part (a word cut in half at the edge), which the following text has whole.
    m = k
    while m > 0 and tail[start + m - 1][0] != head[b + m - 1][0]:
        m -= 1
    if m == 0:
        return tail[start][1], head[b][1]
    return tail[start + m - 1][2], head[b + m - 1][2]


def _said_before(segments: Sequence[Segment], seconds: float) -> list[Segment]:
    """The words of ``segments`` said before ``seconds``, each word's time estimated by its place
    among the characters of its segment; a segment that runs past ``seconds`` is cut short."""
    kept: list[Segment] = []
    for segment in segments:
        text = segment.text.strip()
        if not text:
            continue
        if segment.start >= seconds:
            break
        span = max(0.0, segment.end - segment.start)
        late = (
            m.start()
            for m in _TOKEN_RE.finditer(text)
            if segment.start + span * m.start() / len(text) >= seconds
        )
        cut = next(late, None)
        if cut is None:
            kept.append(segment)
            continue
        if text[:cut].strip():
            kept.append(Segment(segment.start, seconds, text[:cut].rstrip()))
        break
    return kept


def _heard_best(chunks: Sequence[ChunkText]) -> list[tuple[ChunkText, bool]]:
    """The chunks; each one before a hard cut whose two sides share no run of words ends where the
    following one starts, when it has timed segments. With each chunk, whether the one before it
    was cut so (see ``near``).

    Both hear the overlap. Where they heard a run of it alike, the join is there. Where they
    don't, the following chunk's words are taken: a recognizer hears the end of its audio worst
    (a last sentence it takes as running on past the end comes out garbled, or not at all), while
    the following chunk starts in a gap between words and hears the overlap with what comes after
    it. A word or two kept past the start (word times are estimated) is removed as repeated.
    """
    best = [(chunk, False) for chunk in chunks]
    for i in range(1, len(chunks)):
        previous, following = chunks[i - 1], chunks[i]
        if (
            following.overlap > 0
            and previous.segments is not None
            and following.text.strip()
            and find_overlap(previous.text, following.text) == (len(previous.text), 0)
        ):
            kept = _said_before(previous.segments, following.start - previous.start)
            text = " ".join(segment.text.strip() for segment in kept)
            best[i - 1] = (ChunkText(text, previous.start, previous.overlap, kept), best[i - 1][1])
            best[i] = (following, True)
    return best


def join_chunk_texts(chunks: Sequence[ChunkText]) -> str:
    """The chunks' texts in order, one space apart, with words repeated across hard cuts removed."""
    parts: list[str] = []
    for chunk, near in _heard_best(chunks):
        text = chunk.text.strip()
        if not text:
            continue
        if parts and chunk.overlap > 0:
            keep, skip = find_overlap(parts[-1], text, near=near)
            parts[-1] = parts[-1][:keep].rstrip()
            text = text[skip:].strip()
            if not parts[-1]:
                parts.pop()
        if text:
            parts.append(text)
    return " ".join(parts)


def merge_segments(chunks: Sequence[ChunkText]) -> list[Segment] | None:
    """All chunks' segments on one timeline, or None when some chunk with text came without any."""
    merged: list[Segment] = []
    for chunk, near in _heard_best(chunks):
        if chunk.segments is None:
            if chunk.text.strip():
                return None
            continue
        segments = [
            Segment(max(0.0, chunk.start + s.start), max(0.0, chunk.start + s.end), s.text.strip())
            for s in chunk.segments
            if s.text.strip()
        ]
        if merged and chunk.overlap > 0:
            cut = chunk.start + chunk.overlap
            # What was said wholly inside the overlap before the previous chunk's words end is
            # already there (they end where this chunk starts if they ran on past it).
            heard_until = min(merged[-1].end, cut)
            segments = [s for s in segments if s.end > heard_until]
            if segments:
                keep, skip = find_overlap(merged[-1].text, segments[0].text, near=near)
                last = merged[-1]
                merged[-1] = Segment(last.start, last.end, last.text[:keep].rstrip())
                first = segments[0]
                start = cut if first.start < heard_until else first.start
                segments[0] = Segment(start, first.end, first.text[skip:].strip())
                if not merged[-1].text:
                    merged.pop()
        for segment in segments:
            if not segment.text:
                continue
            if merged:
                last = merged[-1]
                # Keep the timeline ordered, and cues from either side of a cut from overlapping.
                start = max(segment.start, last.start)
                if start < last.end:
                    merged[-1] = Segment(last.start, start, last.text)
                segment = Segment(start, segment.end, segment.text)
            merged.append(Segment(segment.start, max(segment.start, segment.end), segment.text))
    return merged


# ------------------------------------------------------------------------------------------ srt


def format_srt_time(seconds: float) -> str:
    """``HH:MM:SS,mmm`` as SubRip writes it."""
    ms = round(max(0.0, seconds) * 1000)
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d},{ms:03d}"


def build_srt(segments: Sequence[Segment]) -> str:
    """A SubRip file: numbered cues, ``start --> end``, text, a blank line between cues."""
    cues: list[str] = []
    for segment in segments:
        # A blank line inside a cue would end it early in every player.
        text = "\n".join(line.strip() for line in segment.text.splitlines() if line.strip())
        if not text:
            continue
        start, end = segment.start, max(segment.start, segment.end)
        cues.append(f"{len(cues) + 1}\n{format_srt_time(start)} --> {format_srt_time(end)}\n{text}\n")
    return "\n".join(cues)


# ------------------------------------------------------------------------------------ telegram

_PARAGRAPH_RE = re.compile(r"\n\s*\n")
_SENTENCE_RE = re.compile(r"[.!?…]+[\"'»”’)\]]*(?=\s)")
_LINE_RE = re.compile(r"\n")
_SPACE_RE = re.compile(r"\s")
_BREAKS = ((_PARAGRAPH_RE, False), (_SENTENCE_RE, True), (_LINE_RE, False), (_SPACE_RE, False))


def utf16_len(text: str) -> int:
    """Length as Telegram counts it: UTF-16 code units (an emoji outside the BMP counts twice)."""
    return len(text) + sum(1 for ch in text if ord(ch) > 0xFFFF)


def _fit(text: str, limit: int) -> int:
    """The longest prefix of ``text`` (in code points) whose UTF-16 length is within ``limit``."""
    units = 0
    for i, ch in enumerate(text):
        units += 2 if ord(ch) > 0xFFFF else 1
        if units > limit:
            return i
    return len(text)


def _break_at(text: str, end: int) -> int:
    """Where to end a message that may hold ``text[:end]``: after a paragraph, a sentence, a line
    or a word. A break in the first half would leave a stub, so it gives way to the next kind."""
    # One character past the end, so a sentence or word ending right at the limit is seen as such.
    window = text[: end + 1]
    floor = end // 2
    for pattern, after in _BREAKS:
        cuts = [m.end() if after else m.start() for m in pattern.finditer(window)]
        cuts = [c for c in cuts if floor < c <= end]
        if cuts:
            return cuts[-1]
    return end


def split_message(text: str, limit: int = TELEGRAM_TEXT_LIMIT) -> list[str]:
    """Split ``text`` into messages of at most ``limit`` UTF-16 units, at sentence ends if possible.

    Falls back to line and word boundaries, and cuts inside a word only when a single word is
    longer than the limit. Blank text gives no message.
    """
    if limit < 1:
        raise ValueError("limit must be positive")
    parts: list[str] = []
    rest = text.strip()
    while rest:
        if utf16_len(rest) <= limit:
            parts.append(rest)
            break
        end = max(1, _fit(rest, limit))  # at least one character, or a limit of 1 would stall
        cut = _break_at(rest, end)
        part = rest[:cut].rstrip()
        parts.append(part)
        rest = rest[cut:].lstrip()
    return parts
