"""Every text exists in Russian and English with the same placeholders; plurals are right."""

from __future__ import annotations

import pytest

from aisha.i18n import PLURAL_FORMS, Translator, placeholders, plural_form

translator = Translator.load()


def _texts(value: object) -> list[str]:
    return list(value.values()) if isinstance(value, dict) else [str(value)]


def test_both_locales_exist() -> None:
    assert set(translator.locales) == {"ru", "en"}


def test_no_key_is_missing_in_either_locale() -> None:
    ru, en = translator.keys("ru"), translator.keys("en")
    assert sorted(ru - en) == [], "missing in en"
    assert sorted(en - ru) == [], "missing in ru"


@pytest.mark.parametrize("key", sorted(translator.keys("en")))
def test_placeholders_match_between_locales(key: str) -> None:
    ru = set().union(*(placeholders(t) for t in _texts(translator.raw("ru", key))))
    en = set().union(*(placeholders(t) for t in _texts(translator.raw("en", key))))
    assert ru == en


@pytest.mark.parametrize("key", sorted(translator.keys("en")))
def test_plural_tables_have_the_forms_each_language_needs(key: str) -> None:
    for locale, needed in (("ru", {"one", "few", "many"}), ("en", {"one", "other"})):
        value = translator.raw(locale, key)
        if isinstance(value, dict):
            assert set(value) <= set(PLURAL_FORMS)
            assert needed <= set(value), f"{locale}:{key}"


@pytest.mark.parametrize(
    ("count", "form"),
    [(1, "one"), (2, "few"), (5, "many"), (11, "many"), (21, "one"), (22, "few"), (112, "many")],
)
def test_russian_plural_rule(count: int, form: str) -> None:
    assert plural_form("ru", count) == form


def test_english_plural_rule() -> None:
    assert [plural_form("en", n) for n in (0, 1, 2, 21)] == ["other", "one", "other", "other"]


def test_language_code_resolution() -> None:
    assert translator.resolve_locale("ru") == "ru"
    assert translator.resolve_locale("en-US") == "en"
    assert translator.resolve_locale("uk") == "ru"
    assert translator.resolve_locale("de") == "en"
    assert translator.resolve_locale(None) == "ru"  # the operator's default
