"""Texts in Russian and English, from JSON files under `aisha/locales/<locale>/` (one file per
feature, merged), with plural forms chosen by CLDR's rules (Babel).

A text is a string with `{name}` placeholders. A number that a word agrees with is written as an
ICU-style plural block, `{credits, plural, one {# кредит} few {# кредита} many {# кредитов} other {# кредита}}`:
the branch is chosen by that argument's value under the locale's CLDR rule and `#` stands for the
number. A text may hold several such blocks, each chosen by its own argument.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from babel import Locale as BabelLocale
from babel.plural import PluralRule

from aisha.config import Locale

LOCALES_DIR = Path(__file__).parent / "locales"

_PLURAL_START = re.compile(r"\{(\w+), plural,")
_BRANCH_START = re.compile(r"\s*(zero|one|two|few|many|other)\s*\{")


@cache
def _babel(locale: str) -> BabelLocale:
    return BabelLocale.parse(locale)


def plural_categories(locale: str) -> frozenset[str]:
    """The CLDR categories a plural block must cover in this locale ("other" is always one)."""
    return _babel(locale).plural_form.tags | {"other"}


def plural_form(locale: str, count: int) -> str:
    """The CLDR cardinal category of `count` in this locale: one, few, many or other."""
    return str(_plural_rule(locale)(abs(count)))


@cache
def _plural_rule(locale: str) -> PluralRule:
    # Babel looks its locale data up again on every `plural_form` access.
    return _babel(locale).plural_form


@dataclass(frozen=True, slots=True)
class Plural:
    """One `{name, plural, …}` block: the argument it is chosen by and its branches."""

    name: str
    forms: Mapping[str, str]

    def render(self, locale: str, count: int) -> str:
        form = self.forms.get(plural_form(locale, count)) or self.forms["other"]
        return form.replace("#", str(count))


Segment = str | Plural


def _closing_brace(text: str, start: int) -> int:
    """The index of the `}` that closes the `{` just before `start`."""
    depth = 1
    for i in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return i
    raise ValueError(f"unbalanced braces in {text!r}")


@cache
def parse(text: str) -> tuple[Segment, ...]:
    """A text as plain pieces (still with `{name}` placeholders) and plural blocks."""
    segments: list[Segment] = []
    position = 0
    while match := _PLURAL_START.search(text, position):
        segments.append(text[position : match.start()])
        forms: dict[str, str] = {}
        cursor = match.end()
        while branch := _BRANCH_START.match(text, cursor):
            end = _closing_brace(text, branch.end())
            forms[branch.group(1)] = text[branch.end() : end]
            cursor = end + 1
        close = text.index("}", cursor)
        if "other" not in forms or text[cursor:close].strip():
            raise ValueError(f"malformed plural block for {match.group(1)!r} in {text!r}")
        segments.append(Plural(match.group(1), forms))
        position = close + 1
    segments.append(text[position:])
    return tuple(s for s in segments if s)


def plurals(text: str) -> list[Plural]:
    return [s for s in parse(text) if isinstance(s, Plural)]


def placeholders(text: str) -> set[str]:
    """Every argument a text uses, in plain pieces, as a plural's number, or inside its branches."""
    names: set[str] = set()
    for segment in parse(text):
        pieces = [segment] if isinstance(segment, str) else list(segment.forms.values())
        if isinstance(segment, Plural):
            names.add(segment.name)
        for piece in pieces:
            names |= {name for _, name, _, _ in string.Formatter().parse(piece) if name}
    return names


def render(locale: str, text: str, kwargs: Mapping[str, Any]) -> str:
    chosen = "".join(s if isinstance(s, str) else s.render(locale, int(kwargs[s.name])) for s in parse(text))
    return chosen.format(**kwargs) if kwargs else chosen


class Translator:
    def __init__(self, catalogs: Mapping[str, Mapping[str, str]], default_locale: str = Locale.RU) -> None:
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
        if locale not in self._catalogs:
            locale = self.default_locale
        value = self._catalogs[locale].get(key)
        if value is None:
            locale = self.default_locale
            value = self._catalogs[locale].get(key)
        if value is None:
            raise KeyError(f"no text {key!r} in locale {locale!r}")
        return render(locale, value, kwargs)

    def keys(self, locale: str) -> set[str]:
        return set(self._catalogs[locale])

    def raw(self, locale: str, key: str) -> str:
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
def _load_catalogs() -> dict[str, dict[str, str]]:
    catalogs: dict[str, dict[str, str]] = {}
    for directory in sorted(p for p in LOCALES_DIR.iterdir() if p.is_dir()):
        catalog: dict[str, str] = {}
        for path in sorted(directory.glob("*.json")):
            texts = json.loads(path.read_text(encoding="utf-8"))
            clash = catalog.keys() & texts.keys()
            if clash:
                raise ValueError(f"{path}: keys already defined in another file: {sorted(clash)}")
            catalog.update(texts)
        for text in catalog.values():
            parse(text)  # a malformed plural block fails at start, not in front of a user
        catalogs[directory.name] = catalog
    return catalogs
