"""Proration of a monthly amount over part of a month.

The billing engine prorates in SQL (the `tentman_billing.tentman_prorate` function created by migration
0005, so a whole organization is billed in a few set-based statements). `prorate` below is the same rule
in Python: the reference the tests compare the SQL function against.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal, localcontext

from tentman.names import ProrationMethod

CENT = Decimal("0.01")


def prorate(amount: Decimal, days: int, period_days: int, method: ProrationMethod) -> Decimal:
    """Amount due for `days` days of a `period_days`-day month, rounded half-up to the cent.

    A period fully covered bills the whole monthly amount under every method; the 30-day and
    365-day methods never bill more than the monthly amount.
    """
    if days >= period_days or method is ProrationMethod.NO_PRORATION:
        return amount
    with localcontext() as ctx:
        ctx.prec = 40
        if method is ProrationMethod.ACTUAL_DAYS_IN_MONTH:
            raw = amount * days / period_days
        elif method is ProrationMethod.THIRTY_DAY_MONTH:
            raw = min(amount * days / 30, amount)
        elif method is ProrationMethod.ANNUAL_365:
            raw = min(amount * 12 * days / 365, amount)
        else:  # pragma: no cover - enum is closed
            raise ValueError(method)
        return raw.quantize(CENT, rounding=ROUND_HALF_UP)
