"""Reduce-side join (the repartition join): users.csv (user_id, name) joined with orders.csv (order_id,
user_id, amount), both in the --input. The input's rows are the union of the two tables, told apart by
their columns (a users row has no order_id); the mapper tags each value with its side and keys it by the
join key, so a user and all their orders meet in one reducer call, which pairs them (an inner join: orders
of unknown users and users without orders are dropped). Every row of both sides crosses the shuffle:
|L| + |R| pairs -- with one small side, map_side_join.py moves none.

    cluster submit mapreduce --job examples/reduce_side_join.py --input shop/     # shop/users.csv, shop/orders.csv
"""


def mapper(record):
    if record.get("order_id") is None:          # a users row
        yield record["user_id"], ("user", record["name"])
    else:
        yield record["user_id"], ("order", record["order_id"], record["amount"])


def reducer(user_id, tagged):
    names = [t[1] for t in tagged if t[0] == "user"]
    orders = sorted(t[1:] for t in tagged if t[0] == "order")
    for name in names:
        for order_id, amount in orders:
            yield user_id, {"name": name, "order_id": order_id, "amount": amount}
