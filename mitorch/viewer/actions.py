"""Cancel, requeue and set priority: the functions `micontrol cancel|requeue|set-priority` run
(mitorch.service.manage), whose one line per training becomes the answer shown on the page."""
from __future__ import annotations

from collections.abc import Sequence

from mitorch.errors import MiTorchError
from mitorch.store import JobStore

ACTIONS = ("cancel", "requeue", "set-priority")


class ActionError(MiTorchError):
    """An action asked for wrongly (unknown action, no ids, a bad priority)."""


def parse_priority(text: str) -> int:
    """A priority as micontrol set-priority takes it.

    Raises:
        ActionError: not a whole number that fits in 64 bits.
    """
    from mitorch.store.base import parse_priority

    try:
        return parse_priority(str(text))
    except ValueError as e:
        raise ActionError(str(e)) from None


def run(store: JobStore, action: str, training_ids: Sequence[str], priority: int | None = None) -> list[str]:
    """Runs one action on the trainings.

    Returns:
        micontrol's lines (`cancelled ID`, `requeued ID`, `unchanged ID (...)`, `priority ID N`),
        and one naming the ids the store does not have.

    Raises:
        ActionError: an unknown action, no ids, or set-priority without a priority.
    """
    from mitorch.service import manage
    from mitorch.store import StoreError

    ids = [i for i in dict.fromkeys(str(i).strip() for i in training_ids) if i]
    if action not in ACTIONS:
        raise ActionError(f"unknown action {action[:40]!r}; actions are {', '.join(ACTIONS)}")
    if not ids:
        raise ActionError("choose one or more trainings")
    if action == "set-priority" and priority is None:
        raise ActionError("set-priority needs a priority (a whole number; lower runs first)")
    lines: list[str] = []
    try:
        if action == "cancel":
            manage.cancel(store, ids, lines.append)
        elif action == "requeue":
            manage.requeue(store, ids, lines.append)
        else:
            for training_id in ids:
                try:
                    manage.set_priority(store, training_id, priority, lines.append)
                except StoreError as e:
                    lines.append(str(e))
    except StoreError as e:  # the ids the store does not have, after the others were done
        lines.append(str(e))
    return lines
