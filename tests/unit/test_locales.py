"""Every text exists in Russian and English with the same placeholders; every count a word agrees
with has plural forms, and they come out right for the numbers that trip up hand-written rules."""

from __future__ import annotations

import re

import pytest

from aisha.i18n import Translator, parse, placeholders, plural_categories, plural_form, plurals

translator = Translator.load()
KEYS = sorted(translator.keys("en"))
COUNTS = (0, 1, 2, 5, 11, 21, 101)

# The CLDR category of each count, written out here so the test does not trust the code it checks.
CATEGORY = {
    "ru": {0: "many", 1: "one", 2: "few", 5: "many", 11: "many", 21: "one", 101: "one"},
    "en": {0: "other", 1: "one", 2: "other", 5: "other", 11: "other", 21: "other", 101: "other"},
}
# Counted words in the case a bare number takes ("5 кредитов"), by the category they belong to.
WORDS = {
    "ru": {
        "one": "кредит изображение минута секунда символ генерация запись рассылка мегапиксель возврат",
        "few": "кредита изображения минуты секунды символа генерации записи рассылки мегапикселя возврата",
        "many": "кредитов изображений минут секунд символов генераций записей рассылок мегапикселей возвратов",
    },
    "en": {
        "one": "credit image photo minute second character generation recording broadcast megapixel refund",
        "other": "credits images photos minutes seconds characters generations recordings broadcasts megapixels refunds",
    },
}
FORM_OF = {lang: {w: form for form, words in t.items() for w in words.split()} for lang, t in WORDS.items()}
# Words that read the same in every form ("5 фото", "1 фото"): a count of them is right in any.
INDECLINABLE = {"ru": {"фото"}, "en": set[str]()}
# Russian words that govern another case than a bare number's: "не хватает 1 кредита", "до 1 символа".
GOVERNING = {"хватает", "до", "больше", "по"}
# Messages whose only counted words stand in such a case, or carry no number in their plural block.
NO_BARE_NUMBER: dict[str, set[str]] = {
    "ru": {
        "admin.credits.ask_reason",
        "admin.error.reason_too_long",
        "avatars.ask_name",
        "avatars.ask_new_name",
        "avatars.bad_name",
        "billing.insufficient",
        "generation.no_avatar",
        "sandbox.error_too_many_pixels",
    },
}


def _render(locale: str, key: str, n: int) -> str:
    text = translator.raw(locale, key)
    counts = {p.name for p in plurals(text)}
    return translator.get(
        locale, key, **{name: (n if name in counts else "X") for name in placeholders(text)}
    )


def test_both_locales_exist() -> None:
    assert set(translator.locales) == {"ru", "en"}


def test_no_key_is_missing_in_either_locale() -> None:
    ru, en = translator.keys("ru"), translator.keys("en")
    assert sorted(ru - en) == [], "missing in en"
    assert sorted(en - ru) == [], "missing in ru"


@pytest.mark.parametrize("key", KEYS)
def test_placeholders_match_between_locales(key: str) -> None:
    assert placeholders(translator.raw("ru", key)) == placeholders(translator.raw("en", key))


@pytest.mark.parametrize("key", KEYS)
def test_plural_blocks_have_every_form_the_language_needs(key: str) -> None:
    for locale in ("ru", "en"):
        for block in plurals(translator.raw(locale, key)):
            assert set(block.forms) == plural_categories(locale), f"{locale}:{key}:{block.name}"


@pytest.mark.parametrize("key", KEYS)
def test_no_count_goes_without_plural_forms(key: str) -> None:
    """A `{placeholder}` followed by a counted word outside a plural block would read
    "2 кредитов"; a range ("{min}–{max} photos") agrees with its end and is left alone."""
    for locale in ("ru", "en"):
        stems = "|".join(sorted(FORM_OF[locale]))
        bare = re.compile(rf"(?<!\}}–)\{{(\w+)\}}(?:</b>)?[ \t]+(?:{stems})\b")
        plain = "".join(s for s in parse(translator.raw(locale, key)) if isinstance(s, str))
        assert not bare.search(plain), f"{locale}:{key}: {bare.search(plain)}"


PLURAL_KEYS = [(loc, key) for loc in ("ru", "en") for key in KEYS if plurals(translator.raw(loc, key))]


@pytest.mark.parametrize(("locale", "key"), PLURAL_KEYS)
def test_every_counted_message_renders_the_right_forms(locale: str, key: str) -> None:
    checked = 0
    for n in COUNTS:
        text = _render(locale, key, n)
        assert "#" not in text and "{" not in text, text
        for before, word in re.findall(rf"(\w*)\W*(?:<b>)?\b{n}\b(?:</b>)?\s+(?:more\s+)?(\w+)", text):
            if word in FORM_OF[locale] and before.lower() not in GOVERNING:
                assert FORM_OF[locale][word] == CATEGORY[locale][n], f"{locale}:{key}: {text!r}"
                checked += 1
            elif word in INDECLINABLE[locale]:
                checked += 1
        # Counts of one category read the same, but for the number itself.
        same = [m for m in COUNTS if CATEGORY[locale][m] == CATEGORY[locale][n]]
        assert re.sub(rf"\b{n}\b", "N", text) == re.sub(rf"\b{same[0]}\b", "N", _render(locale, key, same[0]))
    assert checked or key in NO_BARE_NUMBER.get(locale, ()), f"{locale}:{key}: no counted word was checked"


@pytest.mark.parametrize(
    ("locale", "expected"),
    [
        (
            "ru",
            ["0 кредитов", "1 кредит", "2 кредита", "5 кредитов", "11 кредитов", "21 кредит", "101 кредит"],
        ),
        (
            "en",
            ["0 credits", "1 credit", "2 credits", "5 credits", "11 credits", "21 credits", "101 credits"],
        ),
    ],
)
def test_credits_read_right(locale: str, expected: list[str]) -> None:
    got = [translator.get(locale, "billing.invoice_title", credits=n) for n in COUNTS]
    assert got == expected
    assert translator.get(locale, "billing.balance", balance=21) == expected[5].replace(
        "21", "💰 {}: <b>21</b>"
    ).format("Баланс" if locale == "ru" else "Balance")


def test_two_counts_in_one_message_agree_each_on_its_own() -> None:
    assert (
        translator.get("ru", "generation.done", delivered=1, cost=5)
        == "✅ Готово: 1 изображение, списано 5 кредитов."
    )
    assert (
        translator.get("ru", "generation.done", delivered=2, cost=21)
        == "✅ Готово: 2 изображения, списан 21 кредит."
    )
    assert (
        translator.get("en", "generation.done", delivered=1, cost=2) == "✅ Done: 1 image, 2 credits charged."
    )
    assert (
        translator.get("ru", "generation.options.vision_price", price=2)
        == "Описание фото: 2 кредита (включено)."
    )


@pytest.mark.parametrize(("locale", "count"), [(loc, n) for loc in CATEGORY for n in COUNTS])
def test_babel_rule_matches_cldr(locale: str, count: int) -> None:
    assert plural_form(locale, count) == CATEGORY[locale][count]


def test_language_code_resolution() -> None:
    assert translator.resolve_locale("ru") == "ru"
    assert translator.resolve_locale("en-US") == "en"
    assert translator.resolve_locale("uk") == "ru"
    assert translator.resolve_locale("de") == "en"
    assert translator.resolve_locale(None) == "ru"  # the operator's default
