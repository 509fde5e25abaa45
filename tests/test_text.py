"""Core messages carry structure; Discord renders it as escaped Markdown within 2,000 characters, the console as
plain terminal text."""

from __future__ import annotations

from bot.discord.render import MESSAGE_LIMIT, render
from bot.text import BULLET, Kind, mention, parse, plain, user

HOSTILE = "**bold** `code` <@123456789012345678> @everyone _x_"


def test_people_s_words_are_never_markup():
    markup = f"**Your presets** (write `--name`)\n{BULLET}`--calm` {user(HOSTILE)}"
    lines = parse(markup)
    assert lines[0].nodes[0].kind is Kind.STRONG and lines[1].bullet
    assert [n.kind for n in lines[1].nodes] == [Kind.CODE, Kind.PLAIN, Kind.USER]
    assert lines[1].nodes[2].text == HOSTILE


def test_discord_escapes_user_text_and_keeps_the_core_s_structure():
    shown = render(f"🎵 **{user(HOSTILE)}** for {mention('42')}")
    assert shown.startswith("🎵 **\\*\\*bold\\*\\* \\`code\\`")
    assert "<@42>" in shown  # a mention the core asked for (AllowedMentions decides whether it pings)
    assert "<@123456789012345678>" not in shown and "@everyone" not in shown  # a person's text can never mention anyone


def test_the_console_shows_no_markup_characters():
    shown = plain(f"**Your musical fingerprint**\n`1.` **jazz** — {user('lo-fi *beats*')}")
    assert shown == "Your musical fingerprint\n1. jazz — lo-fi *beats*"


def test_discord_fits_long_messages_by_whole_lines():
    markup = "\n".join(f"line {i} " + "x" * 60 for i in range(100))
    shown = render(markup)
    assert len(shown) <= MESSAGE_LIMIT and shown.endswith("more.")
    assert shown.splitlines()[0].startswith("line 0") and all(len(l) > 6 for l in shown.splitlines())


def test_unbalanced_markup_is_shown_as_written():
    assert plain("a ** b") == "a ** b" and plain("one ` tick") == "one ` tick"
