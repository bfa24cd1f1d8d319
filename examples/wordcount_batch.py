"""Word count in the batch form: whole Arrow tables in, whole tables out, vectorised (Polars inside the job),
no Python call per record. ``map_batch`` gets a table of text lines ({doc, line, text}) and returns (key,
value) columns; ``combine_batch`` and ``reduce_batch`` sum the counts of a table's keys.

    cluster submit mapreduce --job examples/wordcount_batch.py --input docs/
"""
import polars as pl


def map_batch(table):
    words = (pl.from_arrow(table.select(["text"])).lazy()
             .select(pl.col("text").str.to_lowercase().str.extract_all(r"[\p{L}\p{N}_]+").alias("key"))
             .explode("key").drop_nulls()
             .with_columns(pl.lit(1, pl.Int64).alias("value")).collect())
    return words.to_arrow()


def combine_batch(table):
    return pl.from_arrow(table).group_by("key").agg(pl.col("value").sum()).to_arrow()


reduce_batch = combine_batch
