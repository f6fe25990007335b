"""Prices: defaults, operator overrides from a file and the environment, refused values."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aisha.billing.prices import DEFAULT_PACKAGES, PriceList, StarPackage, load_prices


def test_defaults() -> None:
    prices = load_prices(environ={})
    assert prices == PriceList()
    assert (prices.avatar_portrait, prices.avatar_style) == (300, 300)
    assert (prices.image, prices.image_no_avatar) == (5, 3)
    assert (prices.transcription_minute, prices.photo_to_prompt) == (1, 2)
    assert prices.costs.avatar_portrait == 2_000_000  # $2.00 in micro-USD
    assert [(p.stars, p.credits) for p in prices.packages] == [(50, 50), (100, 110), (250, 300), (500, 650)]
    # Every price earns more than it costs even at the most generous package (500★ → 650
    # credits, 1★ ≈ $0.013 to the operator: 1 credit ≈ 10_000 micro-USD).
    credit_micro_usd = 500 * 13_000 // 650
    for name in (
        "avatar_portrait",
        "avatar_style",
        "image",
        "image_no_avatar",
        "transcription_minute",
        "photo_to_prompt",
    ):
        assert getattr(prices, name) * credit_micro_usd > getattr(prices.costs, name), name


@pytest.mark.parametrize(
    ("seconds", "minutes"),
    [
        (0.4, 1),
        (1, 1),
        (59.9, 1),
        (60, 1),
        (60.0000001, 1),
        (60.5, 2),
        (61, 2),
        (120, 2),
        (121, 3),
        (3600, 60),
    ],
)
def test_transcription_is_billed_per_started_minute(seconds: float, minutes: int) -> None:
    prices = PriceList(transcription_minute=3)
    assert prices.transcription_price(seconds) == 3 * minutes
    assert prices.transcription_cost_micro_usd(seconds) == prices.costs.transcription_minute * minutes


@pytest.mark.parametrize("seconds", [0, -1, float("nan"), float("inf")])
def test_transcription_of_nothing_is_refused(seconds: float) -> None:
    with pytest.raises(ValueError, match="duration"):
        PriceList().transcription_price(seconds)


def test_image_price() -> None:
    prices = PriceList()
    assert prices.image_price(4, with_avatar=True) == 20
    assert prices.image_price(2, False) == 6
    assert prices.image_cost_micro_usd(2, with_avatar=True) == 70_000
    with pytest.raises(ValueError, match="image count"):
        prices.image_price(0, with_avatar=True)


def test_overrides_from_toml_file(tmp_path: Path) -> None:
    path = tmp_path / "prices.toml"
    path.write_text(
        """
[prices]
image = 7
avatar_portrait = 200

[costs]
image = 40000

[[packages]]
id = "small"
stars = 10
credits = 12

[[packages]]
id = "big"
stars = 1000
credits = 1500
""",
        encoding="utf-8",
    )
    prices = load_prices(path, environ={})
    assert prices.image == 7
    assert prices.avatar_portrait == 200
    assert prices.avatar_style == 300  # untouched default
    assert prices.costs.image == 40_000
    assert prices.costs.image_no_avatar == 25_000
    assert prices.packages == (
        StarPackage(id="small", stars=10, credits=12),
        StarPackage(id="big", stars=1000, credits=1500),
    )
    assert prices.package("big") == StarPackage(id="big", stars=1000, credits=1500)
    assert prices.package("s") is None


def test_overrides_from_json_file_and_env_wins(tmp_path: Path) -> None:
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"prices": {"image": 7, "photo_to_prompt": 4}}), encoding="utf-8")
    prices = PriceList.load(path, environ={"PRICE_IMAGE": "9", "PROVIDER_COST_PHOTO_TO_PROMPT": "0"})
    assert prices.image == 9  # the environment beats the file
    assert prices.photo_to_prompt == 4
    assert prices.costs.photo_to_prompt == 0
    assert prices.packages == DEFAULT_PACKAGES


def test_env_override_alone() -> None:
    prices = load_prices(environ={"PRICE_IMAGE": " 7 ", "PRICE_TRANSCRIPTION_MINUTE": "2", "HOME": "/root"})
    assert prices.image == 7
    assert prices.transcription_price(61) == 4


@pytest.mark.parametrize("raw", ["0", "-3", "7.5", "seven", "", "1e3"])
def test_bad_env_values_are_refused_naming_the_variable(raw: str) -> None:
    with pytest.raises(ValueError, match=r"PRICE_IMAGE must be a positive integer"):
        load_prices(environ={"PRICE_IMAGE": raw})


def test_unknown_price_variable_is_refused() -> None:
    with pytest.raises(ValueError, match="PRICE_IMAGES is not a known price"):
        load_prices(environ={"PRICE_IMAGES": "5"})


def test_negative_cost_is_refused() -> None:
    with pytest.raises(ValueError, match="PROVIDER_COST_IMAGE must be a non-negative integer"):
        load_prices(environ={"PROVIDER_COST_IMAGE": "-1"})


@pytest.mark.parametrize("value", ["0", "-1", "2.5", "true", '"5"'])
def test_bad_file_values_are_refused_naming_the_price(tmp_path: Path, value: str) -> None:
    path = tmp_path / "prices.toml"
    path.write_text(f"[prices]\nimage = {value}\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"prices\.image in .*prices\.toml must be a positive integer"):
        load_prices(path, environ={})


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[prices]\nimagez = 5\n", r"prices\.imagez is not a known price name"),
        ("[extras]\nx = 1\n", "unknown sections"),
        ('[[packages]]\nid = "a"\nstars = 0\ncredits = 5\n', r"packages\.0\.stars"),
        ('[[packages]]\nid = "A B"\nstars = 5\ncredits = 5\n', r"packages\.0\.id"),
        (
            '[[packages]]\nid = "a"\nstars = 5\ncredits = 5\n[[packages]]\nid = "a"\nstars = 6\ncredits = 6\n',
            "unique",
        ),
        ("packages = []\n", "at least one"),
        ("[prices\n", "not valid TOML"),
    ],
)
def test_bad_files_are_refused(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "prices.toml"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        load_prices(path, environ={})


def test_missing_file_and_wrong_suffix(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="can't be read"):
        load_prices(tmp_path / "nope.toml", environ={})
    path = tmp_path / "prices.yaml"
    path.write_text("image: 5\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"\.toml or \.json"):
        load_prices(path, environ={})


def test_price_list_is_immutable() -> None:
    prices = PriceList()
    with pytest.raises(ValueError):
        prices.image = 1  # type: ignore[misc]
