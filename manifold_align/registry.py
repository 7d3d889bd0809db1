"""One registry mechanism for every kind of named part (geometries, temperatures).

A :class:`Registry` maps names to factories (a class or any callable returning the part). Parts register with a
decorator (``@GEOMETRIES.register("oblique")``); parts from other installed packages are found through the
entry-point group the registry names (``[project.entry-points."manifold_align.geometries"]`` in that package's
``pyproject.toml``, the packaging convention pytest plugins use), loaded on the first lookup that needs them.
:meth:`Registry.build` checks keyword options against the factory's signature before calling it, so a
misspelled option fails with the accepted ones listed instead of being ignored.
"""

from __future__ import annotations

import inspect
from importlib import metadata
from typing import Any, Callable, Optional

__all__ = ["Registry"]


class Registry:
    """Named factories of one kind of part.

    Parameters
    ----------
    kind : str
        What the parts are, in words (``"geometry"``): used in error messages.
    entry_point_group : str, optional
        The entry-point group searched for parts of other packages; None searches none.
    """

    def __init__(self, kind: str, entry_point_group: Optional[str] = None) -> None:
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._factories: dict[str, Callable[..., Any]] = {}
        self._installed: Optional[dict[str, metadata.EntryPoint]] = None

    # ---- registration -----------------------------------------------------------------------------
    def register(self, name: str, *, overwrite: bool = False) -> Callable[[Callable], Callable]:
        """Decorator registering a factory under ``name``; the factory gets a ``name`` attribute if it is a class.

        Parameters
        ----------
        name : str
            Registry key, non-empty.
        overwrite : bool, keyword-only
            Replace an existing entry; without it a taken name raises ``ValueError``.
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"`name` of a {self.kind} must be a non-empty string, got {name!r}")

        def decorator(factory: Callable) -> Callable:
            if not callable(factory):
                raise ValueError(f"a {self.kind} factory must be a class or a callable, got {type(factory).__name__}")
            if name in self._factories and not overwrite and self._factories[name] is not factory:
                raise ValueError(f"{self.kind} {name!r} is already registered; pass overwrite=True to replace it "
                                 f"(registered: {', '.join(self.names())})")
            if inspect.isclass(factory):
                factory.name = name
            self._factories[name] = factory
            return factory

        return decorator

    # ---- lookup -----------------------------------------------------------------------------------
    def _entry_points(self) -> dict[str, metadata.EntryPoint]:
        if self.entry_point_group is None:
            return {}
        if self._installed is None:
            self._installed = {ep.name: ep for ep in metadata.entry_points(group=self.entry_point_group)}
        return self._installed

    def names(self) -> list[str]:
        """The registered names and those installed packages declare, sorted."""
        return sorted(set(self._factories) | set(self._entry_points()))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self.names()

    def factory(self, name: str) -> Callable[..., Any]:
        """The factory registered as ``name``, loading an installed package's entry point on first use.

        Raises
        ------
        ValueError
            Unknown name; the message lists the built-in and the installed names.
        """
        if isinstance(name, str) and name not in self._factories and name in self._entry_points():
            loaded = self._entry_points()[name].load()
            # an entry point names the factory (``pkg.module:MyGeometry``) or a module that registers it on import
            if name not in self._factories and callable(loaded) and not inspect.ismodule(loaded):
                self.register(name)(loaded)
        if not isinstance(name, str) or name not in self._factories:
            installed = sorted(set(self._entry_points()) - set(self._factories))
            listed = ", ".join(sorted(self._factories))
            if installed:
                listed += f"; installed by other packages: {', '.join(installed)}"
            raise ValueError(f"unknown {self.kind} {name!r}; registered: {listed}")
        return self._factories[name]

    def accepted_options(self, name: str) -> Optional[list[str]]:
        """Keyword options the factory of ``name`` takes; None when it takes any (``**kwargs``) or cannot tell."""
        factory = self.factory(name)
        try:
            params = inspect.signature(factory).parameters
        except (TypeError, ValueError):
            return None
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            return None
        return [n for n, p in params.items()
                if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)]

    def check_options(self, name: str, options: dict[str, Any], *, reserved: tuple[str, ...] = ()) -> None:
        """Raise ``ValueError`` for options the factory of ``name`` does not take, listing those it does.

        ``reserved`` are arguments the caller passes itself (a geometry's ``n_tokens``): not options.
        """
        accepted = self.accepted_options(name)
        if accepted is None:
            return
        accepted = [a for a in accepted if a not in reserved]
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            raise ValueError(f"{self.kind} {name!r} takes no option(s) {unknown}; accepted: "
                             f"{', '.join(accepted) or 'none'}")

    def build(self, name: str, *args: Any, reserved: tuple[str, ...] = (), **options: Any) -> Any:
        """``factory(*args, **options)`` for the factory of ``name``, options checked first."""
        user_options = {k: v for k, v in options.items() if k not in reserved}
        self.check_options(name, user_options, reserved=reserved)
        return self.factory(name)(*args, **options)
