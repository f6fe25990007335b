"""The lowest versions pyproject.toml allows, and a check that the package imports on them.

    python .ci/floors.py constraints          # print `name==floor` for every `>=` bound
    python .ci/floors.py import-all           # import every module of the installed `aisha`,
                                              # render the help of every CLI command, and build
                                              # every aiogram model as a first use does

`check-floors` (beside this file) installs the first into a fresh venv and runs the second, so a
floor that no longer provides what the code imports fails CI instead of a user's install.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
import sys
import tomllib
import traceback
from pathlib import Path
from typing import Any

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
# name[extras] >=floor, ...: the name and the `>=` bound, whatever else the specifier says.
_REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*(.*)$")
_FLOOR = re.compile(r">=\s*([0-9][^,;\s]*)")
# Modules that do something when imported rather than define something.
_SKIP = {"aisha.__main__"}


def constraints(dependencies: list[str]) -> list[str]:
    lines = []
    for requirement in dependencies:
        match = _REQUIREMENT.match(requirement)
        if match is None:
            raise SystemExit(f"floors: can't read the requirement {requirement!r} in pyproject.toml")
        name, specifier = match.groups()
        floor = _FLOOR.search(specifier.split(";", 1)[0])
        if floor is None:
            raise SystemExit(f"floors: {name} has no >= lower bound in pyproject.toml; give it one")
        lines.append(f"{name}=={floor.group(1)}")
    return lines


def import_all() -> int:
    import aisha

    failed = 0
    names = [m.name for m in pkgutil.walk_packages(aisha.__path__, "aisha.") if m.name not in _SKIP]
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as error:  # every failure is reported, not just the first
            failed += 1
            last = traceback.extract_tb(error.__traceback__)[-1]
            reason = " ".join(str(error).split())
            print(
                f"FLOOR IMPORT FAILED: {name}: {type(error).__name__}: {reason} ({last.filename}:{last.lineno})"
            )
    print(f"floors: imported {len(names) - failed} of {len(names)} aisha modules from {aisha.__path__[0]}")
    failed += check_cli()
    failed += check_aiogram_models()
    return 1 if failed else 0


def check_aiogram_models() -> int:
    """Build every aiogram type and method as a first use does (aisha.aiogram_models defers them):
    each must resolve its names on these versions of aiogram and pydantic."""
    import aiogram.methods
    import aiogram.types
    from pydantic import BaseModel

    failed = 0
    models = [
        model
        for module in (aiogram.types, aiogram.methods)
        for name in module.__all__
        if isinstance(model := getattr(module, name), type) and issubclass(model, BaseModel)
    ]
    for model in models:
        try:
            model.__pydantic_validator__.validate_python  # noqa: B018 - the first use builds it
        except Exception as error:
            failed += 1
            print(f"FLOOR AIOGRAM MODEL FAILED: {model.__name__}: {type(error).__name__}: {error}"[:300])
    print(f"floors: built {len(models) - failed} of {len(models)} aiogram models on first use")
    return failed


def check_cli() -> int:
    """Render the help of every command: typer reads their annotations, and click formats them,
    only then."""
    from typer.main import get_command
    from typer.testing import CliRunner

    from aisha.cli import app

    def paths(command: Any, path: list[str]) -> list[list[str]]:
        found = [path]
        for name, sub in getattr(command, "commands", {}).items():  # a group's (click's or typer's own)
            found += paths(sub, [*path, name])
        return found

    failed = 0
    try:
        every = paths(get_command(app), [])
    except Exception as error:
        every, failed = [], 1
        print(
            f"FLOOR CLI FAILED: building the aisha CLI: {type(error).__name__}: {' '.join(str(error).split())}"
        )
    runner = CliRunner()
    for path in every:
        result = runner.invoke(app, [*path, "--help"])
        if result.exit_code != 0:
            failed += 1
            reason = " ".join(str(result.exception).split()) if result.exception else result.output[-200:]
            print(
                f"FLOOR CLI FAILED: aisha {' '.join([*path, '--help'])}: {type(result.exception).__name__}: {reason}"
            )
    print(f"floors: rendered the help of {len(every) - failed} of {len(every)} aisha commands")
    return failed


def main() -> int:
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    if command == "constraints":
        project = tomllib.loads(PYPROJECT.read_text())["project"]
        print("\n".join(constraints(project["dependencies"])))
        return 0
    if command == "import-all":
        return import_all()
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
