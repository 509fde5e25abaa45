"""How many slots the decoder admits into after the accelerator ran out of memory in the middle of a step.

Pure bookkeeping (no torch), so the policy can be read and tested on its own: after a shed, admission stops at
the slots still in use (the ceiling); the ceiling is lifted once the decoder empties, or after `LIFT_AFTER_STEPS`
steps without running out again (memory that a passing spike took comes back, and one spike must not cap the
decoder for as long as jobs keep arriving).
"""

from __future__ import annotations

LIFT_AFTER_STEPS = 250  # about 5 s of audio


class SlotCeiling:
    def __init__(self, lift_after_steps: int = LIFT_AFTER_STEPS) -> None:
        self.lift_after_steps = lift_after_steps
        self.value: int | None = None  # while set, admission keeps the slots in use at or below it
        self.sheds = 0  # jobs sent back to the queue because memory ran out mid-step
        self._since = 0  # the decoder's step count at the last shed

    def allows(self, in_use: int, rows: int) -> bool:
        return self.value is None or in_use + rows <= self.value

    def shed(self, in_use_after: int, step: int) -> None:
        """A job gave its slots back; `in_use_after`: the slots the others still hold (what did fit)."""
        self.value = in_use_after
        self.sheds += 1
        self._since = step

    def stepped(self, step: int, live: int) -> None:
        """After each step that ran: lift the ceiling when the decoder is empty or has run long enough."""
        if self.value is not None and (live == 0 or step - self._since >= self.lift_after_steps):
            self.value = None
