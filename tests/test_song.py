"""Songs with structure on the tiny MusicGen: parsing, exact lengths, a chorus that returns, chapters, the runner."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from mutagen.id3 import ID3
from mutagen.mp3 import MP3
from PIL import Image

from generation.spec import JobSpec
from generation.backend import GenerationCancelled
from generation.jobs import Job, JobKind
from generation.postprocess import Provenance, add_chapters, read_provenance, render_track
from generation.runner import JobRunner
from generation.song import (
    CROSSFADE_S,
    Section,
    SongError,
    compose_song,
    parse_sections,
    section_labels,
    section_prompt,
    sections_to_spec,
)
from storage.files import FileStore

SR = 32000
TINY_MELODY = str(Path(__file__).resolve().parent / "fixtures" / "tiny-musicgen-melody")
FORM = "intro 2, chorus 3, verse 2, chorus 3, outro 2"
STITCH = 1280  # the backend crossfades the last 40 ms of what it continues



# --- parsing -------------------------------------------------------------------------------------------------------


def test_parse_accepts_the_forgiving_forms():
    assert parse_sections("intro 8, verse 16, chorus 16, verse 16, chorus 16, outro 8") == [
        Section("intro", 8), Section("verse", 16), Section("chorus", 16), Section("verse", 16),
        Section("chorus", 16), Section("outro", 8),
    ]
    text = "Intro 8s\nverse: 16 sec; Chorus 2 - 16 seconds\npre chorus (8 s), Bridge=0:12\ninterlude 4.5"
    assert parse_sections(text) == [
        Section("intro", 8), Section("verse", 16), Section("chorus", 16), Section("pre-chorus", 8),
        Section("bridge", 12), Section("interlude", 4.5),
    ]
    assert parse_sections("intro 8 verse 16 drop 10") == [
        Section("intro", 8), Section("verse", 16), Section("drop", 10),
    ]


@pytest.mark.parametrize("text, message", [
    ("", "sections with their seconds"),
    ("intro 0, verse 8", "intro is 0 s long; each section needs 2 to 60 seconds"),
    ("verse 90", "verse is 90 s long"),
    ("chorus 60, " * 5 + "outro 30", "add up to 330 s (5:30); a song can be at most 5 minutes"),
    ("verse 4, " * 17, "at most 16"),
    ("intro, verse 8", "“intro” has no length"),
    ("8, verse 8", "needs a section name"),
    ("$%& 8", "don't understand the section"),
    ("please make it really nice and long 20", "don't understand the section"),
])
def test_parse_refuses_with_a_message(text, message):
    with pytest.raises(SongError, match=re.escape(message)):
        parse_sections(text)


def test_section_wording_and_labels():
    assert section_prompt("lofi piano", Section("intro", 8)) == "lofi piano, sparse intro, building up"
    assert section_prompt("lofi piano.", Section("chorus", 8)) == "lofi piano, full energetic chorus, the hook"
    assert "fading out" in section_prompt("x", Section("outro", 8))
    assert section_prompt("x", Section("interlude", 8)) == "x, interlude section"
    assert section_labels(parse_sections(FORM)) == ["Intro", "Chorus 1", "Verse", "Chorus 2", "Outro"]


# --- composing -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def song_and_steps(tiny_backend):
    steps = []
    song = compose_song(tiny_backend, "jazz piano", parse_sections(FORM), seed=3, progress=steps.append)
    return song, steps


def seconds(a: float, b: float) -> slice:
    return slice(round(a * SR), round(b * SR))


def test_song_is_exact_and_its_chorus_returns(song_and_steps):
    song, steps = song_and_steps
    assert song.audio.sample_rate == SR and song.audio.samples.shape == (1, 12 * SR)
    assert song.sections == [(0.0, "Intro"), (2.0, "Chorus 1"), (5.0, "Verse"), (7.0, "Chorus 2"), (10.0, "Outro")]
    assert [s.source for s in song.spans] == ["generated", "generated", "generated", "reused", "generated"]
    x = song.audio.samples[0]
    first, second = x[seconds(2, 5)], x[seconds(7, 10)]
    fade = round(CROSSFADE_S * SR)
    # Apart from its crossfaded start and the outro's stitch at its end, the second chorus IS the first.
    assert np.array_equal(first[fade:-STITCH], second[fade:-STITCH])
    assert np.corrcoef(first, second)[0, 1] > 0.99
    assert 0 < np.abs(first[:fade] - second[:fade]).max()
    # The verse is new material.
    verse = x[seconds(5, 7)]
    assert np.abs(verse).max() > 1e-3
    assert abs(np.corrcoef(verse, first[: verse.shape[0]])[0, 1]) < 0.9
    # One step counter over the whole song.
    assert len({p.total for p in steps}) == 1 and steps[-1].step == steps[-1].total
    assert all(a.step <= b.step for a, b in zip(steps, steps[1:]))


def test_song_renders_with_chapters_and_a_labelled_waveform(song_and_steps, tmp_path):
    song, _ = song_and_steps
    provenance = Provenance(track_id="song1", prompt="jazz piano", seed=3, model_id="tiny", model_license="MIT",
                            params={"kind": "song"})
    rendered = render_track(song.audio, provenance, tmp_path, "song1", sections=song.sections)
    tags = ID3(rendered.mp3)
    chapters = sorted(tags.getall("CHAP"), key=lambda c: c.start_time)
    assert [(c.start_time, c.end_time, str(c.sub_frames["TIT2"])) for c in chapters] == [
        (0, 2000, "Intro"), (2000, 5000, "Chorus 1"), (5000, 7000, "Verse"), (7000, 10000, "Chorus 2"),
        (10000, 12000, "Outro"),
    ]
    (toc,) = tags.getall("CTOC")
    assert toc.child_element_ids == [c.element_id for c in chapters]
    assert read_provenance(rendered.mp3)["track_id"] == "song1"  # the other tags survive
    assert abs(MP3(rendered.mp3).info.length - 12.0) < 0.1  # mutagen counts the encoder's delay frames too
    with Image.open(rendered.png) as image:
        assert image.size == (1200, 300)
    # Labelled marks make the picture differ from the same audio without sections.
    plain = render_track(song.audio, provenance, tmp_path / "plain", "song1")
    assert rendered.png.read_bytes() != plain.png.read_bytes()
    assert not ID3(plain.mp3).getall("CHAP")


def test_add_chapters_replaces_old_ones(tmp_path, song_and_steps):
    song, _ = song_and_steps
    provenance = Provenance(track_id="t", prompt="p", seed=1, model_id="m", model_license="l", params={})
    mp3 = render_track(song.audio, provenance, tmp_path, "t", sections=song.sections).mp3
    add_chapters(mp3, [(0.0, "A"), (6.0, "B")], 12.0)
    assert sorted(str(c.sub_frames["TIT2"]) for c in ID3(mp3).getall("CHAP")) == ["A", "B"]
    with pytest.raises(ValueError):
        add_chapters(mp3, [(13.0, "late")], 12.0)


def test_melody_model_makes_the_repeat_new_audio(tiny_backend, models):
    melody_model = models.get(TINY_MELODY)
    steps = []
    song = compose_song(tiny_backend, "jazz", [Section("chorus", 2), Section("outro", 2), Section("chorus", 2)],
                        seed=5, melody_backend=melody_model, progress=steps.append)
    x = song.audio.samples[0]
    assert x.shape == (6 * SR,) and [s.source for s in song.spans] == ["generated", "generated", "melody"]
    # Generated to follow the first chorus, not copied from it.
    assert np.abs(x[seconds(4.2, 5.9)]).max() > 1e-3
    assert np.abs(x[seconds(0.2, 1.9)] - x[seconds(4.2, 5.9)]).max() > 1e-3
    assert len({p.total for p in steps}) == 1 and steps[-1].step == steps[-1].total


def test_song_can_be_cancelled(tiny_backend):
    with pytest.raises(GenerationCancelled):
        compose_song(tiny_backend, "jazz", parse_sections("intro 2, outro 2"), seed=1, should_stop=lambda: True)


# --- through the runner --------------------------------------------------------------------------------------------


def test_song_job_through_the_runner(tiny_backend, tiny_model_path, tmp_path):
    media = FileStore(tmp_path / "data")
    runner = JobRunner(lambda model_id: tiny_backend, media)
    sections = parse_sections("chorus 2, verse 2, hook 2")
    job = Job(user_id="u1", prompt="synth pop", duration_s=6.0, model=tiny_model_path, kind=JobKind.SONG, seed=11,
              spec=JobSpec(sections=sections_to_spec(sections)))
    steps = []
    audios = runner.generate([job], progress=steps.append)
    assert list(audios) == [job.id] and len(audios[job.id]) == 1
    assert audios[job.id][0].samples.shape == (1, 6 * SR)
    assert steps[-1].step == steps[-1].total
    (track,) = runner.render(job, audios[job.id])
    assert track.params["kind"] == "song"
    assert track.params["sections"] == [
        {"name": "chorus", "label": "Chorus 1", "start_s": 0.0, "end_s": 2.0},
        {"name": "verse", "label": "Verse", "start_s": 2.0, "end_s": 4.0},
        {"name": "chorus", "label": "Chorus 2", "start_s": 4.0, "end_s": 6.0},
    ]
    mp3 = media.absolute(track.mp3)
    assert json.loads(read_provenance(mp3)["params"])["sections"] == track.params["sections"]
    assert [c.start_time for c in sorted(ID3(mp3).getall("CHAP"), key=lambda c: c.start_time)] == [0, 2000, 4000]
    assert media.absolute(track.png).is_file() and media.absolute(track.flac).is_file()


def test_song_job_with_bad_sections_fails_politely(tiny_backend, tiny_model_path, tmp_path):
    runner = JobRunner(lambda model_id: tiny_backend, FileStore(tmp_path / "data"))
    job = Job(user_id="u1", prompt="x", duration_s=1.0, model=tiny_model_path, kind=JobKind.SONG,
              spec=JobSpec(sections=(("verse", 0.5),)))
    with pytest.raises(SongError, match="2 to 60 seconds"):
        runner.generate([job])
