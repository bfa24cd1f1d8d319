"""Map-side join (the broadcast join) with a side input: the small users table is shipped whole to every
mapper (--side users=users.csv makes it ``sides["users"]``, a list of row dicts), and each order is joined
where it is read. No reducer: the mappers' pairs are the job's output, and nothing crosses the shuffle
(shuffled_pairs is 0) -- against reduce_side_join.py's |L| + |R|. Orders of unknown users are dropped.

    cluster submit mapreduce --job examples/map_side_join.py --input orders/ --side users=users.csv
"""
_users = None


def mapper(record):
    global _users
    if _users is None:                          # index the side table once per worker
        _users = {u["user_id"]: u["name"] for u in sides["users"]}  # noqa: F821 - set by the engine
    name = _users.get(record["user_id"])
    if name is not None:
        yield record["order_id"], {"user_id": record["user_id"], "name": name, "amount": record["amount"]}
