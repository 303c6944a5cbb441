"""Numbers in log lines, formatted one way by every stage."""

from __future__ import annotations

import math
import numbers
from typing import Any


def fmt_metric(value: Any) -> str:
    """Floats to 4 decimals; a missing metric (None, or NaN from an undefined AUC) as "n/a" so a
    log line never shows "nan" for "not computable"; anything else (counts, names) as str."""
    is_real = isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral)
    if value is None or (is_real and math.isnan(value)):
        return "n/a"
    return f"{value:.4f}" if is_real else str(value)
