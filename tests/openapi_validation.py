"""Validate request bodies sent to the fake Discord against Discord's published OpenAPI spec.

Why: the fake answers whatever the bot sends, so without this a malformed payload (a wrong field type, a label
that is too long, a missing required key) would pass every test and only fail against the real Discord. Every
request body the bot sends through the fake is checked against the ``requestBody`` schema of the matching
path + method in ``<repo>/../shared/discord-api-spec/openapi.json`` (OpenAPI 3.1, JSON Schema Draft 2020-12).

What is validated: JSON bodies, and the ``payload_json`` part of ``multipart/form-data`` uploads (checked against
the operation's ``application/json`` schema: the multipart schema only adds the binary ``files[n]`` parts).
Query strings and headers are not validated.

Allow-list: mismatches that discord.py itself causes, so the bot cannot avoid them, are accepted generically
rather than ignored one by one. See ``ALLOWED_MISMATCHES``.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional
from urllib.parse import quote

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

log = logging.getLogger(__name__)

#: ``<repo>/../shared/discord-api-spec/openapi.json``; this file lives in ``<repo>/tests/``.
SPEC_PATH: Path = Path(__file__).resolve().parents[2] / "shared" / "discord-api-spec" / "openapi.json"

_SPEC_URI = "urn:discord-openapi"

#: Documented, deliberate deviations from a strict reading of the spec, handled generically (by widening the
#: schema), never by skipping a route or a field by name. The first is caused by discord.py, not by the bot.
ALLOWED_MISMATCHES: tuple[tuple[str, str], ...] = (
    (
        "snowflake-as-integer",
        "The spec types every snowflake (SnowflakeType) as a decimal string, but discord.py sends some as JSON "
        "integers: the attachment ``id`` placeholders in message/webhook/callback payloads (``File.to_dict`` "
        "uses the upload index, e.g. ``{'id': 0}``), ``message_reference`` ids (``MessageReference.to_dict``), "
        "user/role ids in ``allowed_mentions``, ``recipient_id`` when opening a DM. Discord accepts both. The "
        "validator widens SnowflakeType to also accept an integer in [0, 2**64).",
    ),
    (
        "formats-not-asserted",
        "Not a discord.py mismatch but a limit of the check: ``format`` keywords are annotations in Draft "
        "2020-12, and the spec's formats (int32, int64, snowflake, nonce, uri, date-time) are not asserted, so "
        "e.g. the int32 range of a field is not checked. Types, enums, consts, lengths, numeric bounds, array "
        "sizes and required keys are asserted.",
    ),
)


#: Escape hatch for a future discord.py quirk that cannot be handled generically: (method, spec route,
#: JSON-path regex, reason). Keep it empty unless discord.py itself sends the offending field.
IGNORED_VIOLATIONS: tuple[tuple[str, str, str, str], ...] = ()


@dataclass(frozen=True)
class Violation:
    """One way a request body did not match the spec: where (route and JSON path) and what was wrong."""

    method: str
    path: str
    route: Optional[str]
    json_path: str
    message: str
    schema_path: str = ""

    def __str__(self) -> str:
        route = self.route or "<not in the OpenAPI spec>"
        # interaction/webhook tokens are ~150 characters: shorten them in the report
        path = "/".join(seg if len(seg) <= 40 else seg[:12] + "..." for seg in self.path.split("/"))
        return f"{self.method} {route} ({path}): at {self.json_path}: {self.message}"

    def ignored(self) -> bool:
        return any(self.method == method and self.route == route and re.fullmatch(pattern, self.json_path)
                   for method, route, pattern, _ in IGNORED_VIOLATIONS)


def _json_path(parts: Iterable[Any]) -> str:
    out = "$"
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def _widen_snowflakes(spec: dict[str, Any]) -> dict[str, Any]:
    """Return a copy of the spec whose snowflake schemas also accept integers (see ALLOWED_MISMATCHES)."""
    spec = copy.deepcopy(spec)

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            node = {key: walk(value) for key, value in node.items()}
            if node.get("format") == "snowflake":
                return {"anyOf": [node, {"type": "integer", "minimum": 0, "maximum": 2**64 - 1}]}
            return node
        if isinstance(node, list):
            return [walk(item) for item in node]
        return node

    return walk(spec)


class SpecValidator:
    """Matches a request to an OpenAPI operation and validates its body; compiled validators are cached."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self._spec = _widen_snowflakes(spec)
        resource = Resource.from_contents(self._spec, default_specification=DRAFT202012)
        self._registry: Registry = Registry().with_resource(_SPEC_URI, resource)
        self._routes: list[tuple[re.Pattern[str], str, int]] = []
        for template in self._spec.get("paths", {}):
            pattern = "^" + re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template)) + "$"
            literal_segments = sum(1 for seg in template.split("/") if seg and not seg.startswith("{"))
            self._routes.append((re.compile(pattern), template, literal_segments))
        # Most literal segments first, so /messages/@original wins over /messages/{message_id}.
        self._routes.sort(key=lambda item: -item[2])
        self._validators: dict[tuple[str, str, str], Optional[Draft202012Validator]] = {}

    @classmethod
    def from_file(cls, path: Path = SPEC_PATH) -> "SpecValidator":
        with open(path, encoding="utf-8") as fp:
            return cls(json.load(fp))

    def match(self, path: str) -> Optional[str]:
        """The spec's path template for a concrete API path (without the ``/api/v10`` prefix), or None."""
        for pattern, template, _ in self._routes:
            if pattern.match(path):
                return template
        return None

    def _operation(self, template: str, method: str) -> Optional[dict[str, Any]]:
        return self._spec["paths"].get(template, {}).get(method.lower())

    def _validator(self, template: str, method: str, media_type: str) -> Optional[Draft202012Validator]:
        key = (template, method.lower(), media_type)
        if key not in self._validators:
            op = self._operation(template, method) or {}
            content = (op.get("requestBody") or {}).get("content") or {}
            if media_type not in content:
                self._validators[key] = None
            else:
                pointer = "/".join(
                    ["", "paths", template.replace("~", "~0").replace("/", "~1"), method.lower(),
                     "requestBody", "content", media_type.replace("~", "~0").replace("/", "~1"), "schema"]
                )
                schema = {"$ref": f"{_SPEC_URI}#{quote(pointer, safe='/~@')}"}
                self._validators[key] = Draft202012Validator(schema, registry=self._registry)
        return self._validators[key]

    def validate(self, method: str, path: str, body: Any, *, has_body: bool = True) -> list[Violation]:
        """Validate one request body; ``body`` is the parsed JSON (or the parsed ``payload_json`` part)."""
        method = method.upper()
        template = self.match(path)
        if template is None or self._operation(template, method) is None:
            return [Violation(method, path, template, "$", "route/method is not in Discord's OpenAPI spec")]
        op = self._operation(template, method) or {}
        request_body = op.get("requestBody")
        if not has_body:
            if request_body and request_body.get("required"):
                return [Violation(method, path, template, "$", "request body is required but none was sent")]
            return []
        if request_body is None:
            if body in (None, {}, b"", ""):
                return []
            return [Violation(method, path, template, "$", "this operation takes no request body")]
        validator = self._validator(template, method, "application/json")
        if validator is None:
            return []
        found = [
            Violation(method, path, template, json_path, message, schema_path)
            for json_path, message, schema_path in _explain_all(validator.iter_errors(body))
        ]
        return [v for v in found if not v.ignored()]


def _explain_all(errors: Iterable[ValidationError]) -> Iterator[tuple[str, str, str]]:
    seen: set[tuple[str, str]] = set()
    for error in errors:
        for json_path, message, schema_path in _explain(error):
            if (json_path, message) not in seen:
                seen.add((json_path, message))
                yield json_path, message, schema_path


def _is_discriminator_miss(errors: list[ValidationError], base_depth: int) -> bool:
    """True when a union branch failed only because it is for another shape (instance type or ``type`` tag)."""
    for error in errors:
        rel = list(error.absolute_path)[base_depth:]
        if not rel and error.validator == "type":
            return True
        if rel == ["type"] and error.validator in ("enum", "const"):
            return True
    return False


def _explain(error: ValidationError) -> list[tuple[str, str, str]]:
    """Turn one jsonschema error into readable (json_path, message, schema_path) triples.

    For anyOf/oneOf unions (Discord's spec uses them for callbacks, webhook bodies, components and nullable
    fields) report the errors of the branch the instance was meant for, chosen by its JSON type and its
    ``type`` discriminator, instead of jsonschema's generic "is not valid under any of the given schemas".
    """
    schema_path = "/".join(str(p) for p in error.absolute_schema_path)
    if error.validator in ("anyOf", "oneOf") and error.context:
        base_depth = len(error.absolute_path)
        branches: dict[Any, list[ValidationError]] = {}
        for sub in error.context:
            branches.setdefault(sub.relative_schema_path[0], []).append(sub)
        candidates = [errs for errs in branches.values() if not _is_discriminator_miss(errs, base_depth)]
        consts = [errs[0].validator_value for errs in branches.values()
                  if len(errs) == 1 and errs[0].validator == "const"]
        if len(consts) == len(branches):  # an enum written as oneOf of consts (e.g. ButtonStyleTypes)
            return [(_json_path(error.absolute_path), f"{error.instance!r} is not one of {consts}", schema_path)]
        if len(candidates) == 1:
            out: list[tuple[str, str, str]] = []
            for sub in candidates[0]:
                out.extend(_explain(sub))
            return out
        if not candidates:
            tag = error.instance.get("type") if isinstance(error.instance, dict) else None
            what = f"type={tag!r}" if tag is not None else f"a {type(error.instance).__name__}"
            return [(_json_path(error.absolute_path), f"{what} matches none of the allowed shapes", schema_path)]
        best = min(candidates, key=len)
        out = []
        for sub in best:
            out.extend(_explain(sub))
        return out
    return [(_json_path(error.absolute_path), error.message, schema_path)]


@functools.lru_cache(maxsize=None)
def load_validator(path: Optional[str] = None) -> SpecValidator:
    """Load and cache the validator (the spec is ~1.2 MB; building it once per test session is enough)."""
    spec_path = Path(path) if path else SPEC_PATH
    log.debug("loading Discord OpenAPI spec from %s", spec_path)
    return SpecValidator.from_file(spec_path)


def format_violations(violations: Iterable[Violation]) -> str:
    """A readable multi-line report for a failing test."""
    lines = [f"  - {v}" for v in violations]
    return "Request bodies that do not match Discord's OpenAPI spec:\n" + "\n".join(lines)
