"""A registry of named classes of one kind, each defined in a module of one package (the pretraining
methods, the checkpoint formats): a new one is a new file there, found without an edit elsewhere."""
from __future__ import annotations

import importlib
import pkgutil
from typing import Dict, Generic, Type, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, package: str):
        self.kind, self.package = kind, package
        self._classes: Dict[str, Type[T]] = {}
        self._discovered = False

    def register(self, cls: Type[T]) -> Type[T]:
        """The class decorator; ``cls.name`` is its key."""
        if getattr(cls, "name", None) in self._classes:
            raise ValueError(f"a {self.kind} named {cls.name!r} is registered twice")
        self._classes[cls.name] = cls
        return cls

    def all(self) -> Dict[str, Type[T]]:
        """Every registered class by name (importing each module of the package once)."""
        if not self._discovered:
            self._discovered = True
            for module in pkgutil.iter_modules(importlib.import_module(self.package).__path__):
                importlib.import_module(f"{self.package}.{module.name}")
        return dict(self._classes)
