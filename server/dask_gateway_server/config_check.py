"""Find config settings no part of this gateway reads, so the admin hears about them.

traitlets already warns about unknown settings of the objects it configures at start. It says
nothing about sections of classes that are not instantiated then: classes of other
deployments (``c.KubeClusterConfig.image`` in a file written for the public dask-gateway),
inactive authenticators, or ``ClusterConfig`` (built per cluster, later). Those are checked
here.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from traitlets.config import Config, Configurable, LoggingConfigurable


def unrecognized_settings(
    config: Config, known: Iterable[type], configured: Iterable[object]
) -> list[str]:
    """Warnings, one per setting of ``config`` that no known class reads.

    ``known``: the classes this gateway may use (their bases count too). ``configured``: the
    objects already built from ``config``; traitlets warned about their sections itself.
    """
    by_name: dict[str, type[Configurable]] = {}
    for known_cls in known:
        for base in known_cls.mro():
            if isinstance(base, type) and issubclass(base, Configurable):
                by_name.setdefault(base.__name__, base)
    checked_by_traitlets = {
        base.__name__
        for obj in configured
        if isinstance(obj, LoggingConfigurable)
        for base in type(obj).mro()
    }
    messages: list[str] = []
    for section, values in config.items():
        if not isinstance(values, Config) or not section[:1].isupper():
            continue
        cls = by_name.get(section)
        if cls is None:
            messages.extend(
                f"Config option `{section}.{key}` is not supported: this gateway has no "
                f"{section}; ignoring it"
                for key in values
            )
            continue
        if section in checked_by_traitlets:
            continue
        traits = cls.class_trait_names(config=True)
        for key in values:
            if key in traits or key[:1].isupper():
                continue
            close = difflib.get_close_matches(key, traits, n=1)
            hint = f" (did you mean `{close[0]}`?)" if close else ""
            messages.append(
                f"Config option `{section}.{key}` is not supported: {section} has no such "
                f"setting{hint}; ignoring it"
            )
    return messages
