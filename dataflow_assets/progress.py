"""A tiny in-process hook so the CLI can draw progress while `materialize()` runs stages."""

from typing import Any, Callable

LISTENERS: list[Callable[[dict[str, Any]], None]] = []


def notify(**event: Any) -> None:
    for fn in list(LISTENERS):
        fn(event)
