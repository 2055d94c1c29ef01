"""A progress bar for long loops when a person watches (a terminal); silence in logs and CI."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from bcc_lightning.utils.config import parse_auto_bool
from bcc_lightning.utils.errors import UserError

T = TypeVar("T")


def wants_progress(setting: Any) -> bool:
    """A task's `progress=auto|true|false`: auto shows a bar only when stderr is a terminal (a person watches)."""
    try:
        choice = parse_auto_bool(setting)
    except ValueError:
        raise UserError(f"progress={setting!r} is not a choice: use progress=auto (a bar when run in a terminal), "
                        "progress=true or progress=false.") from None
    return sys.stderr.isatty() if choice is None else choice


def progress_bar(iterable: Iterable[T], total: int, description: str, enabled: bool) -> Iterator[T]:
    if not enabled:
        yield from iterable
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn(description), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, transient=True) as progress:
        task = progress.add_task(description, total=total)
        for item in iterable:
            yield item
            progress.advance(task)
