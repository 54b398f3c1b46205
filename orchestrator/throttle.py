"""Throttle (clocks-event) reasons: the agent's names <-> NVML's bit mask, which is how gpu_samples stores them
(an integer is far cheaper to COPY than a text array) and what DCGM_FI_DEV_CLOCK_THROTTLE_REASONS exposes."""

from __future__ import annotations

from services import gpu_physics as gp

# nvml.h's nvmlClocksEventReason* bits.
BITS: dict[str, int] = {gp.IDLE: 0x001, gp.APPLICATIONS_CLOCKS: 0x002, gp.POWER_CAP: 0x004, gp.HW_SLOWDOWN: 0x008,
                        gp.SYNC_BOOST: 0x010, gp.SW_THERMAL: 0x020, gp.HW_THERMAL: 0x040, gp.HW_POWER_BRAKE: 0x080,
                        gp.DISPLAY_CLOCKS: 0x100, gp.BOARD_LIMIT: 0x200, gp.RELIABILITY: 0x400}
# A name neither NVML's nor `unknown_0x<bit>` (what the agent calls bits it does not know) sets this bit, so
# "throttled for some reason" survives even when the reason's name does not.
OTHER = 1 << 30
_NAMES = {bit: name for name, bit in BITS.items()}
_cache: dict[tuple[str, ...], int] = {(): 0}


def _bit(name: str) -> int:
    bit = BITS.get(name)
    if bit is not None:
        return bit
    if name.startswith("unknown_0x"):
        try:
            value = int(name.removeprefix("unknown_"), 16)
            if 0 < value < OTHER:
                return value
        except ValueError:
            pass
    return OTHER


def mask(reasons: list[str]) -> int:
    """The bit mask of a sample's reasons (memoised: a cluster shows a handful of combinations)."""
    key = tuple(reasons)
    value = _cache.get(key)
    if value is None:
        value = 0
        for r in reasons:
            value |= _bit(r)
        if len(_cache) < 4096:
            _cache[key] = value
    return value


def names(value: int | None) -> list[str]:
    """The reasons in a stored mask, as the agent named them."""
    if not value:
        return []
    out = []
    bit = 1
    while bit <= value:
        if value & bit:
            out.append("other" if bit == OTHER else _NAMES.get(bit, f"unknown_{bit:#x}"))
        bit <<= 1
    return out
