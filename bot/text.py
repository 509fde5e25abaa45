"""Messages with structure, not a transport's markup: the core says *what*, each transport says *how*.

The core writes a small, trusted markup: `**strong**`, `` `code` ``, lines starting with "• " as list items, and two
kinds of spans made only through functions here: `user(text)` for anything a person typed (a prompt, a preset, a
tag), which a transport must show literally (Discord escapes its markdown and mentions), and `mention(user_id)`,
which only a transport can turn into a ping. `parse` turns the markup into nodes that renderers walk.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Callable

_USER_OPEN, _USER_CLOSE = "\ue000", "\ue001"
_MENTION_OPEN, _MENTION_CLOSE = "\ue002", "\ue003"
_SENTINELS = str.maketrans("", "", _USER_OPEN + _USER_CLOSE + _MENTION_OPEN + _MENTION_CLOSE)
BULLET = "• "


def user(text: object) -> str:
    """Text a person wrote, to be shown as is: never read as markup, never a ping."""
    return _USER_OPEN + str(text).translate(_SENTINELS) + _USER_CLOSE


def mention(user_id: str) -> str:
    """A mention of a user by id; transports decide whether and how it pings."""
    return _MENTION_OPEN + "".join(ch for ch in str(user_id) if ch.isdigit() or ch.isalnum()) + _MENTION_CLOSE


class Kind(str, Enum):
    PLAIN = "plain"  # the core's own words
    USER = "user"  # a person's words
    STRONG = "strong"
    CODE = "code"
    MENTION = "mention"


@dataclass(frozen=True)
class Node:
    kind: Kind
    text: str = ""
    children: tuple["Node", ...] = ()


@dataclass(frozen=True)
class Line:
    nodes: tuple[Node, ...]
    bullet: bool = False


def _inline(source: str) -> list[Node]:
    """One line of markup into nodes; `**` and backticks outside user spans are structure."""
    nodes: list[Node] = []
    stack: list[list[Node]] = [nodes]
    buffer: list[str] = []
    i = 0

    def flush() -> None:
        if buffer:
            stack[-1].append(Node(Kind.PLAIN, "".join(buffer)))
            buffer.clear()

    while i < len(source):
        ch = source[i]
        if ch == _USER_OPEN:
            end = source.find(_USER_CLOSE, i + 1)
            end = len(source) if end < 0 else end
            flush()
            stack[-1].append(Node(Kind.USER, source[i + 1:end]))
            i = end + 1
        elif ch == _MENTION_OPEN:
            end = source.find(_MENTION_CLOSE, i + 1)
            end = len(source) if end < 0 else end
            flush()
            stack[-1].append(Node(Kind.MENTION, source[i + 1:end]))
            i = end + 1
        elif source.startswith("**", i):
            flush()
            if len(stack) > 1:
                inner = stack.pop()
                stack[-1].append(Node(Kind.STRONG, children=tuple(inner)))
            else:
                stack.append([])
            i += 2
        elif ch == "`":
            end = source.find("`", i + 1)
            if end < 0:
                buffer.append(ch)
                i += 1
                continue
            flush()
            code = source[i + 1:end]
            stack[-1].append(Node(Kind.CODE, code.translate(_SENTINELS)))
            i = end + 1
        else:
            buffer.append(ch)
            i += 1
    flush()
    while len(stack) > 1:  # an unclosed ** is shown as it was written
        inner = stack.pop()
        stack[-1].append(Node(Kind.PLAIN, "**"))
        stack[-1].extend(inner)
    return nodes


def parse(markup: str) -> list[Line]:
    lines = []
    for raw in (markup or "").split("\n"):
        bullet = raw.startswith(BULLET)
        lines.append(Line(tuple(_inline(raw[len(BULLET):] if bullet else raw)), bullet))
    return lines


Renderer = Callable[[Node], str]


def render(markup: str, node_text: Renderer, bullet: str = BULLET) -> str:
    """Markup rendered line by line with a transport's rule for each node."""
    return "\n".join((bullet if line.bullet else "") + "".join(node_text(n) for n in line.nodes)
                     for line in parse(markup))


def plain_node(node: Node) -> str:
    """Terminal text: no markup characters at all."""
    if node.kind is Kind.STRONG:
        return "".join(plain_node(c) for c in node.children)
    if node.kind is Kind.MENTION:
        return "@you" if node.text == "console" else f"@{node.text}"
    return node.text


def plain(markup: str) -> str:
    return render(markup, plain_node)
