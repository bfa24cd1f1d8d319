"""Sum by key: the total of a numeric column per value of a key column (here sales rows with ``store`` and
``amount`` columns, from .csv, .parquet or .jsonl files). A sum is associative and commutative, so the
reducer doubles as the combiner: each mapper sends one partial sum per store it saw.

    cluster submit mapreduce --job examples/sum_by_key.py --input sales/
"""


def mapper(record):
    if record.get("amount") is not None:
        yield record["store"], record["amount"]


def combiner(store, amounts):
    yield store, sum(amounts)


reducer = combiner
