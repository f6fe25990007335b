"""The photo formats and sizes we accept, and how close two perceptual hashes are.

Kept apart from `imaging` so that what only needs these (the checks' thresholds, a duplicate test
against stored hashes) doesn't load Pillow and its HEIF plugin: an API process that never decodes
a photo stays without them.
"""

from __future__ import annotations

# Pillow format names we decode. MPO is how Pillow names many camera and phone JPEGs (a JPEG with a
# second, depth or preview picture); everything else (TIFF, BMP, PSD, ...) is refused up front so
# that exotic, less-audited decoders never see user bytes.
SUPPORTED_FORMATS: tuple[str, ...] = ("JPEG", "MPO", "PNG", "WEBP", "HEIF")
DEFAULT_MAX_PIXELS = 50_000_000


def hamming_distance(hash_a: str, hash_b: str) -> int:
    """Differing bits between two perceptual hashes (hex strings)."""
    return (int(hash_a, 16) ^ int(hash_b, 16)).bit_count()
