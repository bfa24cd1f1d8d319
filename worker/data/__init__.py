"""The one data model of the keyed engine: a rank's records are Arrow tables, from the reader to the wire to the writer.

``schema`` (column types as text, unified across files and workers), ``hashing``
(a stable partitioner for any key), ``codec`` (tables as Arrow IPC inside the shuffle's
pieces), ``readers`` (csv/tsv/parquet/jsonl and text documents into tables).
Only ``schema`` is free of pyarrow: the coordinator uses it to agree the workers' schemas.
"""
