"""What Discord sends when a user submits a modal: the modal's custom_id and each text input's value, in the
modal's own layout (action rows, or labels wrapping one component each). Discord checks required inputs and
length limits in the client, so a submission that breaks them never arrives; the fake refuses to build one."""

from __future__ import annotations

from typing import Any

from .state import Interaction

MODAL_RESPONSE = 9  # the interaction callback type that shows a modal


def _filled(component: dict[str, Any], values: dict[str, str]) -> dict[str, Any]:
    if component.get("type") != 4:
        raise ValueError(f"the fake fills in text inputs only, not component type {component.get('type')}")
    cid = component["custom_id"]
    if cid not in values and component.get("required", True):
        raise ValueError(f"the required text input {cid!r} was left empty; Discord would not submit")
    value = values.get(cid, "")
    if not component.get("min_length", 0) <= len(value) <= component.get("max_length", 4000):
        raise ValueError(f"{cid!r}: {len(value)} characters is outside the input's length limits")
    out = {"type": 4, "custom_id": cid, "value": value}
    if "id" in component:
        out["id"] = component["id"]
    return out


def modal_submission(shown: Interaction, values: dict[str, str]) -> dict[str, Any]:
    """The `data` of the MODAL_SUBMIT interaction for the modal `shown` was answered with."""
    if shown.response_type != MODAL_RESPONSE or not shown.response_data:
        raise ValueError(f"interaction {shown.id} was not answered with a modal")
    modal = shown.response_data
    rows: list[dict[str, Any]] = []
    for top in modal.get("components", []):
        if top.get("type") == 1:
            rows.append({"type": 1, "components": [_filled(c, values) for c in top.get("components", [])]})
        elif top.get("type") == 18:
            label = {"type": 18, "component": _filled(top["component"], values)}
            if "id" in top:
                label["id"] = top["id"]
            rows.append(label)
        else:
            raise ValueError(f"the fake cannot fill in top-level modal component type {top.get('type')}")
    return {"custom_id": modal["custom_id"], "components": rows}
