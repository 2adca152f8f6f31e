"""Which hospital services exist in this installation: a service runs in the stack once its
package provides `medledger.<name>.main.build`."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ServiceCatalog:
    available: tuple[str, ...]
    missing: dict[str, str] = field(default_factory=dict)  # service -> why it cannot run


def discover_services(names: Sequence[str]) -> ServiceCatalog:
    available: list[str] = []
    missing: dict[str, str] = {}
    for name in names:
        module_name = f"medledger.{name}.main"
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name is not None and module_name.startswith(error.name):
                missing[name] = f"{module_name} does not exist yet"
            else:
                missing[name] = f"{module_name} cannot be imported: {error}"
            continue
        except Exception as error:
            # Half-built code of a service must not stop the rest of the stack.
            missing[name] = f"{module_name} cannot be imported: {type(error).__name__}: {error}"
            continue
        if callable(getattr(module, "build", None)):
            available.append(name)
        else:
            missing[name] = f"{module_name} has no build(settings) yet"
    return ServiceCatalog(tuple(available), missing)
