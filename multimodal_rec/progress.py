"""Progress reporting without a UI dependency: library code calls ``progress(total=, desc=, unit=)``.

The CLI passes a tqdm-backed factory (bars with rate and ETA); library callers get silence by default.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol


class Bar(Protocol):
    def update(self, n: int = 1) -> Any: ...
    def set_postfix(self, values: dict[str, Any]) -> Any: ...
    def close(self) -> Any: ...


ProgressFn = Callable[..., Bar]


class NullBar:
    """A bar that shows nothing."""

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, values: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


def no_progress(total: int | None = None, desc: str = "", unit: str = "it") -> Bar:
    return NullBar()


def tqdm_progress(quiet: bool = False) -> ProgressFn:
    """A factory of tqdm bars on stderr (items/s and ETA); ``quiet`` disables them."""

    def make(total: int | None = None, desc: str = "", unit: str = "it") -> Bar:
        import sys

        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit=unit, disable=quiet, dynamic_ncols=True, file=sys.stderr)

    return make
