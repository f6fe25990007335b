"""Prices in credits, provider cost estimates, and the Telegram Stars packages.

Defaults live here; the operator overrides them from a JSON or TOML file (setting `prices_file`)
and/or environment variables, later sources winning: defaults < file < environment.

File layout (TOML shown, JSON has the same keys)::

    [prices]            # credits
    image = 7
    [costs]             # provider cost estimates, integer micro-USD
    image = 40000
    [[packages]]        # replaces the whole default list
    id = "s"
    stars = 50
    credits = 50

Environment: `PRICE_<NAME>=<credits>` (e.g. `PRICE_IMAGE=7`) and
`PROVIDER_COST_<NAME>=<micro-USD>` (e.g. `PROVIDER_COST_IMAGE=40000`).
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

# Prices and costs are named alike; each name is one billable operation.
PRICE_NAMES = (
    "avatar_portrait",
    "avatar_style",
    "image",
    "image_no_avatar",
    "transcription_minute",
    "photo_to_prompt",
)
PRICE_ENV_PREFIX = "PRICE_"
COST_ENV_PREFIX = "PROVIDER_COST_"
SECONDS_PER_MINUTE = 60

PositiveCredits = Annotated[int, Field(strict=True, gt=0)]
MicroUSD = Annotated[int, Field(strict=True, ge=0)]


class ProviderCosts(BaseModel):
    """What one unit costs us at the provider, in integer micro-USD (1 USD = 1_000_000).

    Estimates from the providers' public price lists (late 2025); the operator corrects them.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    # fal-ai/flux-lora-portrait-trainer, default steps: about $2.00 per training.
    avatar_portrait: MicroUSD = 2_000_000
    # fal-ai/flux-lora-fast-training, 1000 steps: about $2.00 per training.
    avatar_style: MicroUSD = 2_000_000
    # fal-ai/flux-lora: $0.035 per megapixel, one ~1 MP image.
    image: MicroUSD = 35_000
    # fal-ai/flux/dev: $0.025 per megapixel, one ~1 MP image.
    image_no_avatar: MicroUSD = 25_000
    # OpenAI whisper-1: $0.006 per minute.
    transcription_minute: MicroUSD = 6_000
    # GPT-4o vision: ~1k input tokens ($2.50/M) + ~250 output tokens ($10/M).
    photo_to_prompt: MicroUSD = 5_000


class StarPackage(BaseModel):
    """A top-up offer: pay `stars` Telegram Stars, get `credits`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Short: it travels in the invoice payload (at most 128 bytes).
    id: Annotated[str, Field(pattern=r"^[a-z0-9_-]{1,16}$")]
    stars: PositiveCredits
    credits: PositiveCredits


DEFAULT_PACKAGES: tuple[StarPackage, ...] = (
    StarPackage(id="s", stars=50, credits=50),
    StarPackage(id="m", stars=100, credits=110),
    StarPackage(id="l", stars=250, credits=300),
    StarPackage(id="xl", stars=500, credits=650),
)


class PriceList(BaseModel):
    """Prices in integer credits; `costs` are what the provider charges us for the same units."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # A training costs about $2.00 at FAL; 300 credits is about $3.00 at the most generous package.
    avatar_portrait: PositiveCredits = 300
    avatar_style: PositiveCredits = 300
    image: PositiveCredits = 5  # per image, with the user's avatar
    image_no_avatar: PositiveCredits = 3  # per image, without an avatar
    transcription_minute: PositiveCredits = 1  # per started minute
    photo_to_prompt: PositiveCredits = 2
    costs: ProviderCosts = ProviderCosts()
    packages: tuple[StarPackage, ...] = DEFAULT_PACKAGES

    @field_validator("packages")
    @classmethod
    def _packages_valid(cls, packages: tuple[StarPackage, ...]) -> tuple[StarPackage, ...]:
        if not packages:
            raise ValueError("at least one Stars package is needed")
        ids = [p.id for p in packages]
        if len(set(ids)) != len(ids):
            raise ValueError(f"package ids must be unique, got {ids}")
        return packages

    # --- helpers -------------------------------------------------------------------------------

    def image_price(self, count: int, with_avatar: bool) -> int:
        return _check_count(count) * (self.image if with_avatar else self.image_no_avatar)

    def image_cost_micro_usd(self, count: int, with_avatar: bool) -> int:
        unit = self.costs.image if with_avatar else self.costs.image_no_avatar
        return _check_count(count) * unit

    def transcription_price(self, duration_seconds: float) -> int:
        """Credits for a recording: per STARTED minute, at least one minute."""
        return billable_minutes(duration_seconds) * self.transcription_minute

    def transcription_cost_micro_usd(self, duration_seconds: float) -> int:
        return billable_minutes(duration_seconds) * self.costs.transcription_minute

    def package(self, package_id: str) -> StarPackage | None:
        return next((p for p in self.packages if p.id == package_id), None)

    @classmethod
    def load(cls, path: Path | None = None, *, environ: Mapping[str, str]) -> PriceList:
        return load_prices(path, environ=environ)


def billable_minutes(duration_seconds: float) -> int:
    """Started minutes, at least one; 60.0 s is one minute, 60.001 s two."""
    if not math.isfinite(duration_seconds) or duration_seconds <= 0:
        raise ValueError(f"duration must be a positive number of seconds, got {duration_seconds!r}")
    # Whole milliseconds first, so float noise (60.0000000001) doesn't bill an extra minute.
    milliseconds = round(duration_seconds * 1000)
    return max(1, math.ceil(milliseconds / (SECONDS_PER_MINUTE * 1000)))


def _check_count(count: int) -> int:
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"image count must be a positive integer, got {count!r}")
    return count


# --- loading -----------------------------------------------------------------------------------

_INTEGER = re.compile(r"^[+-]?\d+$")


def load_prices(path: Path | None = None, *, environ: Mapping[str, str]) -> PriceList:
    """Defaults, then the file (if any), then the `PRICE_*` / `PROVIDER_COST_*` variables of
    `environ` (the caller's environment: the process's in `container.py`, a test's own).

    Every bad value is refused with a ValueError naming where it came from.
    """
    data = _read_file(path) if path is not None else {}
    source = str(path) if path is not None else "prices"

    prices: dict[str, Any] = dict(data.get("prices", {}))
    costs: dict[str, Any] = dict(data.get("costs", {}))
    for name, value in prices.items():
        _require_int(f"prices.{name} in {source}", value, minimum=1)
    for name, value in costs.items():
        _require_int(f"costs.{name} in {source}", value, minimum=0)

    for variable, raw in environ.items():
        for prefix, target, minimum in ((PRICE_ENV_PREFIX, prices, 1), (COST_ENV_PREFIX, costs, 0)):
            if not variable.startswith(prefix):
                continue
            name = variable.removeprefix(prefix).lower()
            if name not in PRICE_NAMES:
                known = ", ".join(prefix + n.upper() for n in PRICE_NAMES)
                raise ValueError(f"{variable} is not a known price; known: {known}")
            target[name] = _parse_env_int(variable, raw, minimum=minimum)

    values: dict[str, Any] = dict(prices)
    if costs:
        values["costs"] = costs
    if "packages" in data:
        values["packages"] = data["packages"]
    try:
        return PriceList.model_validate(values)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ValueError(f"{source}: {where}: {first['msg']}") from None


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"prices file {path} can't be read: {exc.strerror}") from None
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            data: Any = tomllib.loads(text)
        elif suffix == ".json":
            data = json.loads(text)
        else:
            raise ValueError(f"prices file {path} must end in .toml or .json")
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"prices file {path} is not valid {suffix[1:].upper()}: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"prices file {path} must hold a table/object at the top level")
    unknown = set(data) - {"prices", "costs", "packages"}
    if unknown:
        raise ValueError(
            f"prices file {path}: unknown sections {sorted(unknown)}; use prices, costs, packages"
        )
    for section in ("prices", "costs"):
        if section in data and not isinstance(data[section], dict):
            raise ValueError(f"prices file {path}: [{section}] must be a table of name = integer")
        for name in data.get(section, {}):
            if name not in PRICE_NAMES:
                raise ValueError(f"prices file {path}: {section}.{name} is not a known price name")
    return data


def _require_int(where: str, value: object, *, minimum: int) -> None:
    # bool is an int in Python, and 7.0 is not a whole number of credits: refuse both.
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        kind = "a positive integer" if minimum >= 1 else "a non-negative integer"
        raise ValueError(f"{where} must be {kind}, got {value!r}")


def _parse_env_int(variable: str, raw: str, *, minimum: int) -> int:
    kind = "a positive integer" if minimum >= 1 else "a non-negative integer"
    text = raw.strip()
    if not _INTEGER.match(text):
        raise ValueError(f"{variable} must be {kind}, got {raw!r}")
    value = int(text)
    if value < minimum:
        raise ValueError(f"{variable} must be {kind}, got {raw!r}")
    return value
