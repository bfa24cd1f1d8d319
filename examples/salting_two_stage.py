"""Salting a hot key by hand, in two stages. When one key holds most of the rows (a "hot" page), its one
reducer does most of the work. Stage 1 spreads every key over SALTS sub-keys (page, salt), salts dealt
round-robin, so a hot page's rows go to up to SALTS reducers, each of which yields a partial count under the
plain page; stage 2 reads stage 1's output (rows with key and value columns) and adds the partials up.
Rows have a ``page`` column; the job counts rows per page.

    cluster submit mapreduce --job examples/salting_two_stage.py --input views/ --out stage1/
    cluster submit mapreduce --job examples/salting_two_stage.py --input stage1/

This is for jobs without a combiner (here deliberately none: think of a reducer that must see the rows
themselves). When a job declares a combiner, the engine salts a hot key by itself (--salt auto): spread
over the reducers, merged by the combiner, then reduced -- one submit, no second stage.
"""
import itertools

SALTS = 8
_deal = itertools.count()


def mapper(record):
    if "page" in record:                        # stage 1: the raw rows
        yield (record["page"], next(_deal) % SALTS), 1
    else:                                       # stage 2: stage 1's (page, partial count) rows
        yield record["key"], record["value"]


def reducer(key, counts):
    page = key[0] if isinstance(key, tuple) else key        # stage 1's keys are (page, salt)
    yield page, sum(counts)
