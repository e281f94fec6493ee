"""Bits of the per-pixel mask that travels with a calibrated frame (uint8)."""

BAD = 1  # bad pixel from the masters (hot, dead, very low flat)
SATURATED = 2  # at or above the camera's saturation level in the raw frame
NONFINITE = 4  # NaN or inf after calibration
REPAIRED = 8  # sharp outlier (cosmic ray, hot pixel no dark removed) replaced

DESCRIPTION = {
    BAD: "bad pixel (hot in dark current, dead or low in flat)",
    SATURATED: "saturated in the raw frame",
    NONFINITE: "non-finite after calibration",
    REPAIRED: "sharp outlier replaced by its neighbours' median",
}
