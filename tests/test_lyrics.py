"""Lyrics (generation/lyrics.py) and replace replies (generation/replace_reply.py): cleaning and limits, sections as
time ranges of the song, the reply grammar and its refusals. Pure Python: no model here."""

from __future__ import annotations

import pytest

from generation.lyrics import (
    MAX_LINE_CHARS, MAX_LYRICS_CHARS, MAX_LYRICS_LINES, LyricsError, clean_lyrics, describe_sections,
    estimate_duration, format_time, parse_sections, replace_section_lines, song_sections,
)
from generation.replace_reply import ReplyError, check_range, parse_replace_reply, parse_time

SONG = """[Intro]

[Verse 1]
Walking down the empty street tonight
Neon signs are flickering their light
[Chorus]
Oh we sing, oh we sing
Through the night until the morning
[Verse 2]
Every window holds a story told
Every corner, every heart of gold
[Chorus]
Oh we sing, oh we sing
Through the night until the morning
[Bridge]
Hold on, hold on
[Chorus]
Oh we sing
[Outro]
"""
LENGTH = 150.0


@pytest.fixture()
def sections():
    return song_sections(SONG, LENGTH)


def by_label(sections, label):
    return next(s for s in sections if s.label == label)


# --- cleaning and limits -------------------------------------------------------------------------------------------


def test_cleaning_strips_control_characters_and_normalises_tags():
    raw = "\ufeff[VERSE 1]\r\nhello\x00 there\x1b[0m\t friend\u200b\r\n\n\n\n[Pre Chorus]\nla la  la\n[chorus]\n\n"
    assert clean_lyrics(raw) == "[verse 1]\nhello there[0m friend\n\n[pre-chorus]\nla la la\n[chorus]"
    assert clean_lyrics(None) == "" and clean_lyrics("  \n\n ") == ""


@pytest.mark.parametrize("text, message", [
    ("a" * (MAX_LYRICS_CHARS + 1), f"limit is {MAX_LYRICS_CHARS}"),
    ("\n".join(["la"] * (MAX_LYRICS_LINES + 1)), f"limit is {MAX_LYRICS_LINES}"),
    ("ok\n" + "b" * (MAX_LINE_CHARS + 1), f"Line 2 of the lyrics is {MAX_LINE_CHARS + 1} characters"),
])
def test_limits_are_refused_with_the_limit_named(text, message):
    with pytest.raises(LyricsError, match=message):
        clean_lyrics(text)


def test_sections_are_parsed_in_order_with_occurrences():
    texts = parse_sections(SONG)
    assert [(s.kind, s.number) for s in texts] == [
        ("intro", 1), ("verse", 1), ("chorus", 1), ("verse", 2), ("chorus", 2), ("bridge", 1), ("chorus", 3),
        ("outro", 1)]
    assert texts[2].lines == ("Oh we sing, oh we sing", "Through the night until the morning")
    untagged = parse_sections("just a line\nanother one\n[chorus]\nla")
    assert [(s.kind, s.lines) for s in untagged] == [("verse", ("just a line", "another one")), ("chorus", ("la",))]
    assert [s.kind for s in parse_sections("[Guitar Solo]\n[Pre-Chorus]\nx\n[hook]\ny")] == ["solo", "pre-chorus",
                                                                                          "hook"]


# --- durations and sections as time ranges -------------------------------------------------------------------------


def test_duration_estimate_follows_the_words_and_the_tempo():
    short = estimate_duration("[verse]\nhello world")
    long = estimate_duration(SONG)
    assert 10.0 <= short < long <= 600.0
    assert estimate_duration(SONG, bpm=70) > long > estimate_duration(SONG, bpm=160)
    assert estimate_duration("") == 30.0 and estimate_duration("[intro]\n[outro]") == 30.0  # instrumentals
    assert estimate_duration("\n".join(["[verse]"] + ["la la la la la la la la"] * 150)) <= 600.0


def test_sections_tile_the_track(sections):
    assert [s.label for s in sections] == ["Intro", "Verse 1", "Chorus 1", "Verse 2", "Chorus 2", "Bridge",
                                           "Chorus 3", "Outro"]
    assert sections[0].start_s == 0.0 and sections[-1].end_s == LENGTH
    for before, after in zip(sections, sections[1:]):
        assert before.end_s == after.start_s and before.duration_s > 0
    verse1, verse2 = by_label(sections, "Verse 1"), by_label(sections, "Verse 2")
    assert verse1.duration_s == pytest.approx(verse2.duration_s, rel=0.2)  # like lines, like lengths
    assert by_label(sections, "Bridge").duration_s < by_label(sections, "Chorus 1").duration_s


def test_sections_scale_with_the_track_and_a_lead_in_precedes_the_first_verse():
    words = "[verse]\nhello world\n[chorus]\nsing it"
    sections = song_sections(words, 60.0)
    assert [s.label for s in sections] == ["Verse", "Chorus"]
    assert sections[0].start_s > 0 and sections[-1].end_s == 60.0  # the singing starts after a lead-in
    doubled = song_sections(words, 120.0)
    assert doubled[1].start_s == pytest.approx(2 * sections[1].start_s, abs=0.01)
    assert song_sections("", 60.0) == [] and song_sections(words, 0) == []


def test_times_format_as_minutes_and_seconds(sections):
    assert (format_time(0), format_time(40), format_time(65), format_time(62.5)) == ("0:00", "0:40", "1:05", "1:02.5")
    assert describe_sections(sections).startswith("Intro 0:00-")
    assert (parse_time("0:40"), parse_time("1:02.5"), parse_time("40"), parse_time("40s")) == (40, 62.5, 40, 40)


# --- replies -------------------------------------------------------------------------------------------------------


def test_replace_a_range_with_a_prompt(sections):
    r = parse_replace_reply("replace 0:40-0:55 with a guitar solo", LENGTH, sections)
    assert (r.start_s, r.end_s, r.section, r.prompt, r.style, r.lyrics) == (40.0, 55.0, None, "a guitar solo", None,
                                                                           None)
    for text in ("Replace 40-55 with a guitar solo.", "replace from 0:40 to 0:55 with a guitar solo",
                 "regenerate 40s–55s with a guitar solo"):
        assert parse_replace_reply(text, LENGTH, sections) == r


def test_redo_a_named_section_uses_that_songs_own_times(sections):
    bridge = by_label(sections, "Bridge")
    r = parse_replace_reply("redo the bridge", LENGTH, sections)
    assert (r.start_s, r.end_s, r.section, r.prompt, r.style, r.lyrics) == (bridge.start_s, bridge.end_s, "Bridge",
                                                                           None, None, None)
    other_song = song_sections("[verse]\nla la la la\n[bridge]\nhold on\n[chorus]\nsing", 60.0)
    elsewhere = parse_replace_reply("redo the bridge", 60.0, other_song)
    assert (elsewhere.start_s, elsewhere.end_s) == (other_song[1].start_s, other_song[1].end_s) != (r.start_s, r.end_s)


def test_change_the_second_chorus_to_new_lines(sections):
    chorus2 = by_label(sections, "Chorus 2")
    r = parse_replace_reply("change the second chorus to: brand new words\nand another line", LENGTH, sections)
    assert (r.start_s, r.end_s, r.section) == (chorus2.start_s, chorus2.end_s, "Chorus 2")
    assert r.lyrics == "brand new words\nand another line" and r.prompt is None and r.style is None
    for text in ("change chorus 2 to: brand new words\nand another line",
                 "Change the 2nd chorus to:\nbrand new words\nand another line"):
        assert parse_replace_reply(text, LENGTH, sections).section == "Chorus 2"
    new = replace_section_lines(SONG, chorus2, r.lyrics)
    assert [s.lines for s in parse_sections(new)][4] == ("brand new words", "and another line")
    assert [s.lines for s in parse_sections(new)][2] == parse_sections(SONG)[2].lines  # the first chorus is kept


def test_make_the_intro_calmer_is_a_style_change(sections):
    intro = by_label(sections, "Intro")
    r = parse_replace_reply("make the intro calmer", LENGTH, sections)
    assert (r.start_s, r.end_s, r.section, r.style, r.prompt) == (intro.start_s, intro.end_s, "Intro", "calmer", None)
    last = parse_replace_reply("redo the last chorus with more drums", LENGTH, sections)
    assert last.section == "Chorus 3" and last.prompt == "more drums"


@pytest.mark.parametrize("text, message", [
    ("", "Say which part"),
    ("hello there", "couldn't tell which part"),
    ("redo the chorus", "has 3 choruses; say which one"),
    ("redo the solo", "has no solo"),
    ("redo the fifth verse", "has no fifth verse"),
    ("replace 0:55-0:40 with drums", "empty range"),
    ("replace 2:40-2:55", "only 2:30 long"),
    ("replace 2:00-3:10", "runs past its end"),
    ("replace 0:40-0:40.5", "too short"),
    ("replace 0:00-2:30", "whole track"),
])
def test_refusals_name_the_length_or_list_the_sections(sections, text, message):
    with pytest.raises(ReplyError, match=message) as caught:
        parse_replace_reply(text, LENGTH, sections)
    assert "2:30" in str(caught.value)
    if "section" in message or "chorus" in text or "solo" in text or "verse" in text or not text:
        assert "Chorus 2 " in str(caught.value) and "Bridge " in str(caught.value)


def test_an_instrumental_takes_times_only():
    r = parse_replace_reply("replace 0:10-0:20 with strings", 30.0, [])
    assert (r.start_s, r.end_s, r.prompt) == (10.0, 20.0, "strings")
    with pytest.raises(ReplyError, match="no bridge. This track is 0:30 long. Reply like"):
        parse_replace_reply("redo the bridge", 30.0, [])


def test_a_range_just_past_the_end_is_the_end():
    assert check_range(20.0, 30.3, 30.0) == (20.0, 30.0)
