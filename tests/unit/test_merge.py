"""Merging chunk transcripts: repeated words at hard cuts, subtitles, Telegram-sized messages."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from aisha.transcription.merge import (
    ChunkText,
    Segment,
    build_srt,
    find_overlap,
    format_srt_time,
    join_chunk_texts,
    merge_segments,
    split_message,
    utf16_len,
)
from aisha.transcription.pipeline import prompt_tail


def join(previous: str, following: str) -> str:
    keep, skip = find_overlap(previous, following)
    return f"{previous[:keep].rstrip()} {following[skip:].strip()}".strip()


# -------------------------------------------------------------------------------------- overlap


def test_exact_suffix_prefix_overlap_is_said_once() -> None:
    assert join("we walked over the lazy", "over the lazy dog slept") == "we walked over the lazy dog slept"


def test_overlap_ignores_case_and_punctuation() -> None:
    assert join("He said: Hello, World.", "hello world! And left.") == "He said: Hello, World. And left."


def test_garbled_words_at_the_cut_are_dropped() -> None:
    # The previous chunk heard half of "lazy" as "la"; the next one starts with half of "over".
    assert join("we walked over the lazy la", "ver the lazy dog slept") == "we walked over the lazy dog slept"


def test_words_made_up_at_the_edge_are_dropped() -> None:
    # Real tiny.en output at a hard cut: the previous piece invents three words where it was cut.
    assert (
        join(
            "justice and of consanguinity, we must, therefore, Yes, in the...",
            "We must, therefore, acquiesce",
        )
        == "justice and of consanguinity, we must, therefore, acquiesce"
    )


def test_a_word_heard_in_part_matches_the_whole_word() -> None:
    # The next piece starts in the middle of "organizing", and hears "powers" where the
    # previous one heard "power": the repeated words are still found, and whole words kept.
    assert (
        join(
            "on such principles, and organizing its power in such form.",
            "izing its powers in such form, as to them",
        )
        == "on such principles, and organizing its power in such form. as to them"
    )
    assert (
        join("we walked over the lazy dog and organiz", "organizing the rest")
        == "we walked over the lazy dog and organizing the rest"
    )


def test_one_word_heard_differently_inside_a_long_run_is_allowed() -> None:
    # Real tiny.en output: both pieces heard the overlap, each a little wrong.
    previous = "so only he can call together and just let it body at place in a..."
    following = "And the legislature did body net place in unusual, uncomfortable"
    assert (
        join(previous, following)
        == "so only he can call together and just let it body at place in unusual, uncomfortable"
    )
    # ...but not in a short one.
    assert join("we saw a cat", "saw the cat run") == "we saw a cat saw the cat run"


def test_real_junctions_of_tiny_en_at_hard_cuts() -> None:
    # From bench/transcript_quality.py with 40 s pieces: both pieces garble the overlap.
    assert (
        join(
            "that to secure these rights, government service.",
            "the curvy rights. Government's are instituted among men",
        )
        == "that to secure these rights, Government's are instituted among men"
    )
    assert (
        join(
            "the present Kidding on Great Britain is a history on repeat the victory",
            "and killing a great return in a history of repeated injuries and usurpations",
        )
        == "the present Kidding on Great Britain is a history of repeated injuries and usurpations"
    )


def test_a_common_pair_far_from_the_edges_is_not_an_overlap() -> None:
    # "of the" after dropping three words in all is too weak a proof to delete anything.
    assert (
        join("the rights of the people were", "new of the men")
        == "the rights of the people were new of the men"
    )


def test_texts_without_common_words_are_kept_whole() -> None:
    assert find_overlap("first part", "second part") == (len("first part"), 0)
    assert join("first part", "second part") == "first part second part"


def test_a_single_common_word_away_from_the_edge_is_not_an_overlap() -> None:
    # "the" matches only after dropping words on both sides: too weak to delete anything.
    assert join("I saw the cat", "a the dog") == "I saw the cat a the dog"


def test_the_longest_run_wins() -> None:
    assert join("one two three two three", "two three four") == "one two three two three four"


def test_overlap_search_is_bounded() -> None:
    words = " ".join(f"w{i}" for i in range(100))
    # The whole text repeats, but only a bounded window at the junction is compared.
    keep, skip = find_overlap(words, words, max_words=10)
    assert (keep, skip) == (len(words), 0)


def test_join_chunk_texts_dedupes_only_after_hard_cuts() -> None:
    chunks = [
        ChunkText("Hello there. We walked over the lazy"),
        ChunkText("over the lazy dog.", start=10, overlap=2),
        ChunkText("Dog days are over.", start=20),  # cut at a silence: "dog" is said again for real
        ChunkText("   ", start=30),
    ]
    assert join_chunk_texts(chunks) == "Hello there. We walked over the lazy dog. Dog days are over."


@settings(max_examples=200, deadline=None)
@given(
    # Words of one length: none is the start or end of another, which the merge would rightly
    # take for a word cut in half at the edge ("word1" of "word100").
    words=st.lists(
        st.sampled_from([f"word{i:03d}" for i in range(1000)]), min_size=6, max_size=60, unique=True
    ),
    data=st.data(),
)
def test_an_overlapping_split_is_rejoined_exactly(words: list[str], data: st.DataObject) -> None:
    cut = data.draw(st.integers(3, len(words) - 3))
    overlap = data.draw(st.integers(1, min(cut, len(words) - cut, 8)))
    previous = " ".join(words[:cut])
    following = " ".join(words[cut - overlap :])

    merged = join_chunk_texts([ChunkText(previous), ChunkText(following, overlap=2.0)])

    assert merged.split() == words


def test_after_a_hard_cut_the_overlap_is_taken_from_the_following_chunk() -> None:
    # The previous chunk garbled the end of its audio; the following one started in a gap between
    # words 3 s before that end and heard the same words whole, with what comes after them.
    previous = ChunkText(
        "The right of representation in the legislature, right in nest in a built-in and formidable.",
        start=0.0,
        segments=[
            Segment(0.0, 4.0, "The right of representation in the legislature,"),
            Segment(4.0, 7.0, "right in nest in a built-in and formidable."),
        ],
    )
    following = ChunkText(
        "a right inestimable to them and formidable to tyrants only.",
        start=4.0,
        overlap=3.0,
        segments=[Segment(0.0, 3.5, "a right inestimable to them and formidable to tyrants only.")],
    )

    text = join_chunk_texts([previous, following])
    segments = merge_segments([previous, following])

    expected = (
        "The right of representation in the legislature, a right inestimable to them and formidable"
        " to tyrants only."
    )
    assert text == expected
    assert segments is not None and " ".join(s.text for s in segments) == expected
    assert [(s.start, s.end) for s in segments] == [(0.0, 4.0), (4.0, 7.5)]


def test_after_a_hard_cut_a_run_both_chunks_heard_alike_is_where_they_join() -> None:
    # The following chunk starts 3 s before the cut and misses "them" at its very start; both
    # heard "and the state of" alike, so the previous one's words up to there are kept.
    previous = ChunkText(
        "All political connection between them and the state of Britain.",
        segments=[Segment(0.0, 6.0, "All political connection between them and the state of Britain.")],
    )
    following = ChunkText(
        "and the state of Great Britain is dissolved.",
        start=3.0,
        overlap=3.0,
        segments=[Segment(0.0, 4.0, "and the state of Great Britain is dissolved.")],
    )

    expected = "All political connection between them and the state of Great Britain is dissolved."
    assert join_chunk_texts([previous, following]) == expected


def test_a_word_kept_past_the_following_start_is_said_once() -> None:
    # Word times inside a segment are estimated: "lazy" is taken as said before the following
    # chunk starts, which heard it too, after a word it garbled.
    previous = ChunkText("We walked over the lazy", segments=[Segment(0.0, 10.0, "We walked over the lazy")])
    following = ChunkText(
        "uh lazy dog slept.", start=9.0, overlap=2.0, segments=[Segment(0.0, 3.0, "uh lazy dog slept.")]
    )

    assert join_chunk_texts([previous, following]) == "We walked over the lazy dog slept."


# ------------------------------------------------------------------------------------- segments


def test_segments_are_offset_by_their_chunk_start() -> None:
    chunks = [
        ChunkText("A. B.", start=0.0, segments=[Segment(0.0, 1.0, "A."), Segment(1.5, 2.0, "B.")]),
        ChunkText("C.", start=10.0, segments=[Segment(0.25, 3.0, " C.")]),
    ]

    assert merge_segments(chunks) == [
        Segment(0.0, 1.0, "A."),
        Segment(1.5, 2.0, "B."),
        Segment(10.25, 13.0, "C."),
    ]


def test_segments_inside_a_hard_cut_overlap_are_not_repeated() -> None:
    chunks = [
        ChunkText("x", start=0.0, segments=[Segment(0.0, 9.0, "we walked over the lazy")]),
        ChunkText(
            "x",
            start=8.0,
            overlap=2.0,
            segments=[
                Segment(0.0, 0.8, "over the"),
                Segment(0.5, 4.0, "the lazy dog slept"),
                Segment(4, 6, "Then."),
            ],
        ),
    ]

    merged = merge_segments(chunks)

    assert merged == [
        Segment(0.0, 9.0, "we walked over the lazy"),
        Segment(10.0, 12.0, "dog slept"),
        Segment(12.0, 14.0, "Then."),
    ]


def test_no_segments_when_a_chunk_has_none() -> None:
    assert merge_segments([ChunkText("a", segments=[Segment(0, 1, "a")]), ChunkText("b", start=5)]) is None
    assert merge_segments([ChunkText("a", segments=[Segment(0, 1, "a")]), ChunkText("", start=5)]) == [
        Segment(0, 1, "a")
    ]


def test_segments_never_overlap_or_go_back_in_time() -> None:
    chunks = [
        ChunkText("a", segments=[Segment(0, 10.5, "a")]),
        ChunkText("b", start=10.0, segments=[Segment(0, 2, "b"), Segment(1.0, 1.5, "c")]),
    ]

    merged = merge_segments(chunks)

    assert merged is not None
    for before, after in itertools.pairwise(merged):
        assert before.end <= after.start
        assert before.start <= before.end


# ------------------------------------------------------------------------------------------ srt


def test_srt_time_format() -> None:
    assert format_srt_time(0) == "00:00:00,000"
    assert format_srt_time(1) == "00:00:01,000"
    assert format_srt_time(61.5) == "00:01:01,500"
    assert format_srt_time(3 * 3600 + 7.0004) == "03:00:07,000"
    assert format_srt_time(59.9996) == "00:01:00,000"
    assert format_srt_time(-1) == "00:00:00,000"


def test_build_srt() -> None:
    srt = build_srt([Segment(0, 1.5, " Hello."), Segment(1.5, 3, "   "), Segment(3, 4.25, "Two\n\nlines")])

    assert srt == "1\n00:00:00,000 --> 00:00:01,500\nHello.\n\n2\n00:00:03,000 --> 00:00:04,250\nTwo\nlines\n"


# ------------------------------------------------------------------------------------- telegram


def test_short_text_is_one_message() -> None:
    assert split_message("  Hello.  ") == ["Hello."]
    assert split_message("   ") == []


def test_long_text_is_split_at_sentence_ends() -> None:
    sentences = [f"Sentence number {i} says something moderately long." for i in range(400)]
    text = " ".join(sentences)

    parts = split_message(text)

    assert len(parts) > 1
    assert all(utf16_len(p) <= 4096 for p in parts)
    assert all(p.endswith(".") for p in parts)
    assert " ".join(parts) == text


def test_falls_back_to_words_without_sentence_ends() -> None:
    text = " ".join(["word"] * 3000)

    parts = split_message(text, 100)

    assert all(len(p) <= 100 and not p.startswith(" ") for p in parts)
    assert all(set(p.split()) == {"word"} for p in parts)
    assert " ".join(parts) == text


def test_a_word_longer_than_the_limit_is_cut() -> None:
    assert split_message("x" * 250, 100) == ["x" * 100, "x" * 100, "x" * 50]


def test_paragraphs_come_before_sentences() -> None:
    text = "A" * 60 + ".\n\n" + "B" * 20 + ". " + "C" * 30 + "."

    assert split_message(text, 100) == ["A" * 60 + ".", "B" * 20 + ". " + "C" * 30 + "."]


def test_limit_counts_utf16_units_as_telegram_does() -> None:
    text = "😀" * 3000  # each emoji is two UTF-16 units

    parts = split_message(text)

    assert [utf16_len(p) for p in parts] == [4096, 6000 - 4096]


@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet=st.sampled_from("ab .!?\n😀я"), max_size=600), limit=st.integers(1, 80))
def test_split_keeps_every_visible_character_within_the_limit(text: str, limit: int) -> None:
    parts = split_message(text, limit)

    assert all(0 < utf16_len(p) <= max(limit, 2) for p in parts)
    assert "".join(parts).replace(" ", "").replace("\n", "") == text.replace(" ", "").replace("\n", "")


# --------------------------------------------------------------------------------------- prompt


def test_prompt_tail_starts_at_a_word() -> None:
    assert prompt_tail("short text", 100) == "short text"
    assert prompt_tail("alpha beta gamma delta", 12) == "gamma delta"
