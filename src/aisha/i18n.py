"""Texts in Russian and English, from JSON files under `aisha/locales/<locale>/` (one file per
feature, merged), with plural forms.

A text is a string with `{name}` placeholders, or a plural table
`{"one": ..., "few": ..., "many": ..., "other": ...}` chosen by the `count` argument.
"""

from __future__ import annotations

import json
import string
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

from aisha.config import Locale

LOCALES_DIR = Path(__file__).parent / "locales"
PLURAL_FORMS = ("zero", "one", "few", "many", "other")


def plural_form(locale: str, count: int) -> str:
    """CLDR cardinal rules for integers, for the two languages we speak."""
    n = abs(count)
    if locale == Locale.RU:
        if n % 10 == 1 and n % 100 != 11:
            return "one"
        if 2 <= n % 10 <= 4 and not 12 <= n % 100 <= 14:
            return "few"
        return "many"
    return "one" if n == 1 else "other"


def placeholders(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


class Translator:
    def __init__(self, catalogs: Mapping[str, Mapping[str, Any]], default_locale: str = Locale.RU) -> None:
        self._catalogs = catalogs
        self.default_locale = default_locale

    @classmethod
    def load(cls, default_locale: str = Locale.RU) -> Translator:
        return cls(_load_catalogs(), default_locale)

    @property
    def locales(self) -> tuple[str, ...]:
        return tuple(self._catalogs)

    def resolve_locale(self, language_code: str | None) -> str:
        """Telegram's language_code ("ru", "en-US", "uk") to one of our locales."""
        base = (language_code or "").split("-")[0].lower()
        if base in self._catalogs:
            return base
        # Russian speakers of neighbouring languages read Russian more often than English.
        if base in ("uk", "be", "kk", "ky", "uz", "tg", "hy", "az", "ka") and Locale.RU in self._catalogs:
            return Locale.RU.value
        return Locale.EN.value if language_code else self.default_locale

    def get(self, locale: str, key: str, /, **kwargs: Any) -> str:
        catalog = self._catalogs.get(locale) or self._catalogs[self.default_locale]
        value = catalog.get(key)
        if value is None:
            value = self._catalogs[self.default_locale].get(key)
        if value is None:
            raise KeyError(f"no text {key!r} in locale {locale!r}")
        if isinstance(value, dict):
            count = int(kwargs.get("count", 0))
            value = value.get(plural_form(locale, count)) or value["other" if "other" in value else "many"]
        return str(value).format(**kwargs) if kwargs else str(value)

    def keys(self, locale: str) -> set[str]:
        return set(self._catalogs[locale])

    def raw(self, locale: str, key: str) -> Any:
        return self._catalogs[locale][key]

    def bind(self, locale: str) -> Texts:
        return Texts(self, locale)


class Texts:
    """The translator bound to one user's locale; handlers receive this as `t`."""

    def __init__(self, translator: Translator, locale: str) -> None:
        self.translator = translator
        self.locale = locale

    def __call__(self, key: str, /, **kwargs: Any) -> str:
        return self.translator.get(self.locale, key, **kwargs)


@cache
def _load_catalogs() -> dict[str, dict[str, Any]]:
    catalogs: dict[str, dict[str, Any]] = {}
    for directory in sorted(p for p in LOCALES_DIR.iterdir() if p.is_dir()):
        catalog: dict[str, Any] = {}
        for path in sorted(directory.glob("*.json")):
            texts = json.loads(path.read_text(encoding="utf-8"))
            clash = catalog.keys() & texts.keys()
            if clash:
                raise ValueError(f"{path}: keys already defined in another file: {sorted(clash)}")
            catalog.update(texts)
        catalogs[directory.name] = catalog
    return catalogs
