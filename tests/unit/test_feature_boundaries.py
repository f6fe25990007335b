"""The admin, users, support and notices features import no framework, client or adapter: not
aiogram, aiohttp (its web server included), httpx, openai, redis or taskiq, and nothing of aisha's providers, jobs, bot,
api or sandbox, not even for type checking."""

from __future__ import annotations

import ast
from pathlib import Path

import aisha

FEATURES = ("admin", "users", "support", "notices")
FORBIDDEN = ("aiogram", "aiohttp", "httpx", "openai", "redis", "taskiq")
FORBIDDEN_AISHA = ("providers", "jobs", "bot", "api", "sandbox")


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _forbidden(name: str) -> bool:
    root, _, rest = name.partition(".")
    return root in FORBIDDEN or (root == "aisha" and rest.split(".")[0] in FORBIDDEN_AISHA)


def test_features_import_no_framework_client_or_adapter() -> None:
    src = Path(aisha.__file__).parent
    found = [
        f"{path.relative_to(src)}: {name}"
        for feature in FEATURES
        for path in sorted((src / feature).rglob("*.py"))
        for name in sorted(_imports(path))
        if _forbidden(name)
    ]
    assert found == []
