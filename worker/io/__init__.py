"""Shard readers (text, npy, csv/parquet) and the listing of the files an input names."""
