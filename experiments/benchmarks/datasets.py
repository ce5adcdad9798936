"""Public retail data sets turned into contract tables for the benchmarks (never used in tests)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def prepare_walmart(source: Path, out: Path) -> Path:
    """Walmart store sales (weekly, store x department) as a contract ``sales`` table.

    ``units`` = Weekly_Sales (dollars; the forecaster treats them as demand), ``x_holiday`` and
    ``x_markdown1..5`` are covariates known in advance; temperature, fuel price, CPI and
    unemployment are not known in advance and are left out.
    """
    raw = pd.read_csv(source)
    sales = pd.DataFrame(
        {
            "date": raw["Date"],
            "store_id": "S" + raw["Store"].astype(str),
            "item_id": "D" + raw["Dept"].astype(str),
            "units": raw["Weekly_Sales"],
            "x_holiday": raw["IsHoliday"],
            **{f"x_markdown{i}": raw[f"MarkDown{i}"] for i in range(1, 6)},
        }
    )
    out.mkdir(parents=True, exist_ok=True)
    sales.to_csv(out / "sales.csv", index=False, na_rep="NA")
    return out


def prepare_completejourney(source: Path, out: Path) -> Path:
    """Complete Journey receipts as a contract ``sales`` table at store x department per day
    (units = quantity); the panel builder aggregates it to weeks."""
    lines = pd.read_csv(
        source / "transactions_sample.csv.gz",
        usecols=["store_id", "product_id", "quantity", "transaction_timestamp"],
        dtype={"store_id": str, "product_id": str},
    )
    products = pd.read_csv(
        source / "products.csv.gz", usecols=["product_id", "department"], dtype=str
    )
    lines = lines.merge(products, on="product_id", how="left")
    lines["department"] = lines["department"].fillna("UNKNOWN")
    lines["date"] = pd.to_datetime(lines["transaction_timestamp"]).dt.strftime("%Y-%m-%d")
    sales = (
        lines.groupby(["date", "store_id", "department"])["quantity"].sum().reset_index()
        .rename(columns={"department": "item_id", "quantity": "units"})
    )  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    sales.to_csv(out / "sales.csv", index=False)
    return out
