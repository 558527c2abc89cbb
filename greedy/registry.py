"""The registries: the names a config key may take, filled by the modules that implement them.

This module sits on the ground floor beside `errors.py`: the config schema checks its keys against these registries
without importing a single implementation. Each implementation registers itself with a decorator, as timm's
`@register_model` does, and `import greedy` loads every implementing module (greedy/__init__.py), so that a
registry is complete before any config is validated.

    DATASETS    data sets, config key `dataset`                           greedy/datasets/*.py
    HEADS       auxiliary nets, config keys `aux` and `final_head`        greedy/models/heads.py
    OBJECTIVES  local objectives, config key `objective`                  greedy/objectives/*.py
    PROBES      probe families (evaluate.py --analysis; those with `during`, config key `probes`)
                                                                          greedy/analysis/*.py

Adding one: write the class or function in its module and decorate it with `@HEADS.register("name")` (or the
registry it belongs to); the config accepts the name, `train.py --help` lists it.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, TypeVar

from greedy.errors import UsageError

T = TypeVar("T")


def check_choice(key: str, value: str, choices: Iterable[str]) -> None:
    """Raise UsageError "config key 'KEY': 'VALUE' is not one of A, B, ..." unless `value` is among `choices`: the
    one wording of every refused choice, registered or fixed."""
    choices = tuple(choices)
    if value not in choices:
        raise UsageError(f"config key '{key}': {value!r} is not one of {', '.join(choices)}")


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """"did you mean 'X'? " for the choice nearest to `name`, or "" when none is close."""
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f"did you mean '{close[0]}'? " if close else ""


class Registry(Generic[T]):
    """Names -> entries (classes, functions or records) of one concept, in registration order.

    `key` is the config key whose values are the names; `what` says in words what an entry is (used in errors).
    """

    def __init__(self, key: str, what: str) -> None:
        self.key, self.what = key, what
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """A decorator that registers what it decorates under `name` and returns it unchanged (see `add`)."""
        def decorate(obj: T) -> T:
            return self.add(name, obj)
        return decorate

    def add(self, name: str, entry: T) -> T:
        """Register `entry` under `name` and return it.

        Raises ValueError when `name` is taken (two implementations must not claim one config value).
        """
        if name in self._entries:
            raise ValueError(f"{self.what} '{name}' is registered twice")
        self._entries[name] = entry
        return entry

    def names(self) -> tuple[str, ...]:
        """The registered names, in registration order."""
        return tuple(self._entries)

    def get(self, name: str) -> T:
        """The entry registered as `name`; raises UsageError (`check`'s line) for an unknown one."""
        self.check(name)
        return self._entries[name]

    def check(self, name: str) -> None:
        """Raise UsageError (`check_choice`'s line) unless `name` is registered."""
        check_choice(self.key, name, self.names())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, name: str) -> T:
        return self._entries[name]


DATASETS: Registry[Any] = Registry("dataset", "data set")  # entries: greedy.datasets.source.DataSource
HEADS: Registry[type] = Registry("aux", "auxiliary net")
OBJECTIVES: Registry[type] = Registry("objective", "local objective")  # entries: LocalObjective subclasses
PROBES: Registry[Any] = Registry("probes", "probe family")  # entries: greedy.analysis.context.ProbeFamily
