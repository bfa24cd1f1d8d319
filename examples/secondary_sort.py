"""Secondary sort: each user's events in timestamp order. The engine sorts the keys, not the values; a job
that wants each reducer call's values in an order declares sort_values(value), and the values arrive sorted
by it. Rows have ``user``, ``ts`` and ``event`` (an id) columns. The sort key is (ts, event), so events with
the same timestamp come in event-id order -- stated, rather than whatever order the shuffle delivered them.

    cluster submit mapreduce --job examples/secondary_sort.py --input events/
"""


def mapper(record):
    yield record["user"], (record["ts"], record["event"])


def sort_values(value):
    return value                                # (ts, event): by time, ties by event id


def reducer(user, events):
    yield user, [[ts, event] for ts, event in events]
