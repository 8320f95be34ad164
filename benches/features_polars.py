"""dagrun's `features` stage (src/markets/features.rs) in Polars, for benches/features_vs_polars.sh.

usage: features_polars.py TICKS.arrow OUT.arrow [global|over]

  global  rolling windows over the whole table (sorted by market, then ts), with each row's
          tick number inside its market masking the rows whose window reaches back into the
          previous market
  over    the same windows computed market by market with .over("market_id")

Prints the seconds spent on read + compute + write as the last line of stdout.
"""

import os
import sys
import time

import polars as pl
import pyarrow as pa
import pyarrow.ipc as ipc

W = 20  # window of vol_20, zscore_20 and volume_imbalance; also the lag of ret_20
DAY_MS = 86_400_000
FEATURES = ["ret_1", "ret_5", "ret_20", "vol_20", "zscore_20", "volume_imbalance", "spread_bps", "time_of_day"]

price, volume, bid, ask, ts = (pl.col(c) for c in ["price", "volume", "bid", "ask", "ts"])


def log_return(k):
    # ln(p[t]/p[t-k]) as features.rs writes it rather than ln p[t] - ln p[t-k]: one log more
    # per row, but the same rounding, so even tiny returns agree bit for bit.
    return (price / price.shift(k)).log()


def window_terms():
    """The raw rolling terms, each over the 20 rows ending at this one."""
    return {
        "_vol": log_return(1).rolling_std(W),
        "_mean": price.rolling_mean(W),
        "_sd": price.rolling_std(W),
        "_total": volume.rolling_sum(W),
        # Tick-rule signed volume. At t >= 20 a window never holds the market's first tick
        # (where features.rs sets it to 0), so that tick needs no special case.
        "_signed": (price.diff().sign() * volume).rolling_sum(W),
    }


def global_windows(df):
    row = pl.int_range(pl.len(), dtype=pl.Int64)
    first = (pl.col("market_id") != pl.col("market_id").shift(1)).fill_null(True)
    # Tick number inside its market: this row minus the row where the market began.
    tick = row - pl.when(first).then(row).forward_fill()
    # Returns whose lag crosses into the previous market are null; ret_20 being null then
    # marks the rows whose 20-tick windows are not yet inside the market (see finish).
    return (
        df.lazy()
        .with_columns(_tick=tick)
        .with_columns(
            **{f"ret_{k}": pl.when(pl.col("_tick") >= k).then(log_return(k)) for k in (1, 5, W)},
            **window_terms(),
        )
    )


def over_market(df):
    # Per market, shift() and rolling_*() are null until the lag or window fits inside it.
    terms = {f"ret_{k}": log_return(k) for k in (1, 5, W)} | window_terms()
    return df.lazy().with_columns(**{name: e.over("market_id") for name, e in terms.items()})


def finish(lf):
    # features.rs fills the windows from t = 20, where ret_20 starts; rolling_mean/std of
    # price alone would already give a value at t = 19.
    full = pl.col("ret_20").is_not_null()
    sd, total = pl.col("_sd"), pl.col("_total")
    mid = (bid + ask) / 2
    return lf.select(
        "market_id",
        "ts",
        "ret_1",
        "ret_5",
        "ret_20",
        vol_20=pl.when(full).then(pl.col("_vol")),
        zscore_20=pl.when(full).then(pl.when(sd > 0).then((price - pl.col("_mean")) / sd).otherwise(0.0)),
        volume_imbalance=pl.when(full).then(pl.when(total > 0).then(pl.col("_signed") / total).otherwise(0.0)),
        spread_bps=pl.when(mid > 0).then((ask - bid) / mid * 1e4),
        # Integer % in Polars takes the divisor's sign: rem_euclid for DAY_MS > 0.
        time_of_day=(ts % DAY_MS).cast(pl.Float64) / DAY_MS,
    ).with_columns(pl.col(FEATURES).fill_null(float("nan")))  # dagrun writes NaN, not null


def main():
    src, dst = sys.argv[1], sys.argv[2]
    method = sys.argv[3] if len(sys.argv) > 3 else "global"
    formulation = {"global": global_windows, "over": over_market}[method]
    # Each on the engine that ran it fastest here (10M rows, 2 cores): the streaming
    # engine for global windows, the in-memory one for .over.
    engine = {"global": "streaming", "over": "in-memory"}[method]
    start = time.perf_counter()
    # pyarrow maps the file and Polars adopts its buffers; pl.read_ipc copies every column
    # and took 0.4 s instead of 0.1 s.
    df = pl.from_arrow(ipc.open_file(pa.memory_map(src)).read_all())
    out = finish(formulation(df)).collect(engine=engine)
    with open(dst, "wb") as f:
        # Plain strings rather than string views, as dagrun writes them. Polars writes its
        # chunks as they are; converting to one pyarrow table first copied them all.
        out.write_ipc(f, compat_level=pl.CompatLevel.oldest())
        # dagrun fsyncs its outputs before renaming them into place, so both timings include
        # getting the bytes to disk.
        f.flush()
        os.fsync(f.fileno())
    print(f"{time.perf_counter() - start:.3f}")


if __name__ == "__main__":
    main()
