"""Filters: the grammar and its bounds, the payload index, filtered search on every route
(against a brute-force filtered search), and filters under adds, deletes, replay, compaction."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import TypeAdapter, ValidationError
from support import matryoshka_vectors

from index import planner
from index.filter import MAX_DEPTH, MAX_IN_VALUES, MAX_LEAVES, BoundedFilter
from index.payload import PayloadIndex
from index.plan import SearchKnobs, SearchPlan
from index.store import IndexStore, write_generation
from index.vectors import VectorOptions

FP = "f" * 16
CREATE = {"checkpoint": "test.pt", "nesting_list": [8, 16, 32]}
parse = TypeAdapter(BoundedFilter).validate_python
COLOURS = ["red", "green", "blue", "black", "white"]


def catalogue(n: int, start: int = 0) -> list[dict]:
    """Items with a label (shop category), a colour, a price and sometimes a tag list."""
    out = []
    for r in range(start, start + n):
        meta = {"colour": COLOURS[r % 5], "price": (r * 7) % 100, "sale": r % 3 == 0}
        if r % 11 == 0:
            meta["tags"] = ["x"]  # arrays are not indexed
        out.append({"id": f"r{r}", "label": f"cat{r % 50}", "metadata": meta})
    return out


def admits(item: dict, node) -> bool:
    """The filter's meaning, written independently of the payload index."""
    from index.filter import And, Condition, Not, Or

    if isinstance(node, And):
        return all(admits(item, c) for c in node.and_)
    if isinstance(node, Or):
        return any(admits(item, c) for c in node.or_)
    if isinstance(node, Not):
        return not admits(item, node.not_)
    assert isinstance(node, Condition)
    value = item["label"] if node.key == "label" else (item["metadata"] or {}).get(node.key)
    if value is None or isinstance(value, list | dict):
        return False

    def same(a, b):  # strings equal strings; numbers numbers (1 == 1.0); bools bools
        kinds = [
            str if isinstance(v, str) else bool if isinstance(v, bool) else float for v in (a, b)
        ]
        return kinds[0] == kinds[1] and a == b

    if node.eq is not None:
        return same(value, node.eq)
    if node.in_ is not None:
        return any(same(value, v) for v in node.in_)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    r = node.range
    return (
        (r.gt is None or value > r.gt)
        and (r.gte is None or value >= r.gte)
        and (r.lt is None or value < r.lt)
        and (r.lte is None or value <= r.lte)
    )


def brute_force(x, items, live, q, k, dim, node):
    """Exact filtered top-k ids at `dim` by numpy over the admitted live items."""
    rows = [r for r in live if admits(items[r], node)]
    if not rows:
        return [[] for _ in q]
    b = x[rows, :dim] / np.linalg.norm(x[rows, :dim], axis=1, keepdims=True)
    qq = q[:, :dim] / np.linalg.norm(q[:, :dim], axis=1, keepdims=True)
    s = qq @ b.T
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return [[items[rows[j]]["id"] for j in o] for o in order]


def store_with(path, n, ann=None, min_rows=0, flat_cache=256 << 20):
    x = matryoshka_vectors(n, 32, seed=3)
    info = {**CREATE, "fingerprint": FP, "store_dtype": "float32"}
    if ann is not None:
        info["ann"] = {"factory": ann[0], "dim": ann[1], "train_size": n}
    write_generation(path, 0, 32, n, [x], catalogue(n), info)
    options = VectorOptions(ann_min_rows=min_rows, flat_cache_bytes=flat_cache)
    return IndexStore.open(path, FP, 32, writable=True, options=options), x


def ids(store, hits):
    return [[store.item(r)["id"] for r in row if r >= 0] for row in hits.rows]


# the grammar ------------------------------------------------------------------------------


def test_grammar_parses_the_documented_example():
    f = parse(
        {
            "and": [
                {"field": "label", "eq": "shoe"},
                {"field": "metadata.price", "range": {"lt": 50}},
                {"not": {"field": "metadata.brand", "in": ["acme", "bolt"]}},
            ]
        }
    )
    assert [c.key for c in f.and_[:2]] == ["label", "price"]
    assert parse('{"field": "label", "eq": 0}').eq == 0  # a JSON string (a form field)


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        ({"field": "id", "eq": 1}, "should match pattern"),
        ({"field": "label"}, "exactly one of eq, in, range"),
        ({"field": "label", "eq": 1, "in": [2]}, "exactly one of eq, in, range (got eq, in)"),
        ({"field": "label", "range": {}}, "at least one of gt, gte, lt, lte"),
        ({"field": "label", "range": {"gt": 1, "gte": 2}}, "gt or gte"),
        ({"field": "label", "range": {"lt": "5"}}, "range.lt"),
        ({"field": "label", "eq": [1]}, "condition.eq"),
        ({"field": "label", "eq": {"a": 1}}, "condition.eq"),
        ({"field": "label", "in": []}, "at least 1 item"),
        ({"field": "label", "in": list(range(MAX_IN_VALUES + 1))}, f"at most {MAX_IN_VALUES}"),
        ({"field": "label", "eq": 1, "extra": 2}, "Extra inputs"),
        ({"and": []}, "at least 1 item"),
        ({"xor": []}, "a filter node is"),
        ({"and": [], "or": []}, "a filter node is"),
        ([1], "a filter node is"),
        ("{not json", "not valid JSON"),
    ],
)
def test_grammar_refusals_say_what_is_allowed(bad, says):
    with pytest.raises(ValidationError) as e:
        parse(bad)
    assert says in str(e.value)


def test_bounds_refuse_deep_wide_and_large_trees_before_parsing():
    node = {"field": "label", "eq": 1}
    for _ in range(MAX_DEPTH - 1):
        node = {"not": node}
    parse(node)  # exactly at the bound
    with pytest.raises(ValidationError, match=f"deeper than {MAX_DEPTH}"):
        parse({"not": node})
    deep = {"field": "label", "eq": 1}
    for _ in range(100_000):  # far past Python's recursion limit: refused by the walk
        deep = {"not": deep}
    with pytest.raises(ValidationError, match="deeper than"):
        parse(deep)
    many = {"or": [{"and": [{"field": "label", "eq": i}] * 8} for i in range(9)]}
    with pytest.raises(ValidationError, match=f"more than {MAX_LEAVES} conditions"):
        parse(many)
    with pytest.raises(ValidationError, match="more than 32 filters"):
        parse({"or": [{"field": "label", "eq": i} for i in range(33)]})


# the payload index --------------------------------------------------------------------------


def test_payload_index_matches_the_filter_meaning():
    items = catalogue(600)
    items[5] = None  # a deleted row, indexed as empty
    items[7]["metadata"]["price"] = 1.5
    items[8]["label"] = 1
    items[9]["label"] = True
    payload = PayloadIndex(items)
    filters = [
        {"field": "label", "eq": "cat3"},
        {"field": "label", "eq": 1},
        {"field": "label", "eq": 1.0},
        {"field": "label", "eq": True},
        {"field": "metadata.colour", "in": ["red", "blue", "nope"]},
        {"field": "metadata.price", "range": {"gte": 10, "lt": 20}},
        {"field": "metadata.price", "range": {"gt": 1, "lte": 1.5}},
        {"field": "metadata.sale", "eq": True},
        {"field": "metadata.sale", "eq": 1},
        {"field": "metadata.tags", "eq": "x"},
        {"field": "metadata.colour", "range": {"lt": 5}},
        {"field": "metadata.missing", "eq": "a"},
        {"not": {"field": "metadata.missing", "eq": "a"}},
        {
            "and": [
                {"field": "metadata.colour", "eq": "red"},
                {"or": [{"field": "metadata.sale", "eq": True}, {"field": "label", "eq": "cat1"}]},
                {"not": {"field": "metadata.price", "range": {"gt": 50}}},
            ]
        },
    ]
    for raw in filters:
        node = parse(raw)
        expected = [it is not None and admits(it, node) for it in items]
        if "not" in raw:  # a deleted row "matches" not-of-nothing; the store masks it out
            expected[5] = True
        np.testing.assert_array_equal(payload.mask(node), expected, err_msg=str(raw))
    assert payload.mask(parse({"field": "label", "eq": 1})).sum() == 1  # not the True label


# filtered search on every route --------------------------------------------------------------

BROAD = {"field": "metadata.colour", "in": ["red", "green", "blue"]}  # 60%
MIDDLE = {
    "and": [{"field": "metadata.colour", "eq": "red"}, {"field": "metadata.sale", "eq": True}]
}
NARROW = {
    "and": [{"field": "label", "eq": "cat7"}, {"field": "metadata.price", "range": {"lt": 60}}]
}


@pytest.mark.parametrize("raw", [BROAD, MIDDLE, NARROW])
@pytest.mark.parametrize(
    ("ann", "plan_args", "scan_rows", "route"),
    [
        (None, (10, 32), 0, "exact"),  # flat cache with an IDSelector
        (None, (10, 16, 32, 100), 0, "exact_shortlist"),
        (("IVF16,Flat", 16), (10, 16, 32, 200), 0, "ann"),
        (("HNSW16", 16), (10, 16, 32, 200), 0, "ann"),
        (("Flat", 16), (10, 16, 32, 200), 0, "ann"),
        (("IVF16,Flat", 16), (10, 16, 32, 200), 10**9, "matching_rows"),
    ],
)
def test_filtered_search_equals_brute_force(
    tmp_path, monkeypatch, raw, ann, plan_args, scan_rows, route
):
    monkeypatch.setattr(planner, "EXACT_SCAN_ROWS", scan_rows)
    monkeypatch.setattr(planner, "SCAN_COST_RATIO", 10**9)
    monkeypatch.setattr(planner, "HNSW_MIN_SHARE", 0)
    n = 2000
    store, x = store_with(tmp_path / "i", n, ann)
    for r in range(0, n, 13):
        store.delete(f"r{r}")
    q = matryoshka_vectors(20, 32, seed=11)
    node = parse(raw)
    knobs = SearchKnobs(nprobe=16, ef_search=400)
    forced = True if route == "ann" else None  # the planner would scan rows this few
    hits = store.search(q, SearchPlan(*plan_args, knobs=knobs, filter=node, use_ann=forced))
    live = sorted(store.row_of.values())
    truth = brute_force(
        x, store.items, live, q, 10, plan_args[-1] if len(plan_args) == 2 else 32, node
    )
    if len(plan_args) == 4 and route != "matching_rows":  # a funnel: compare with the funnel
        truth_sl = brute_force(x, store.items, live, q, plan_args[3], 16, node)
        found = ids(store, hits)
        for f, t in zip(found, truth_sl, strict=True):
            assert set(f) <= set(t)  # every hit came from the exact filtered shortlist
    assert hits.route.kind == route
    assert hits.route.matched == sum(admits(store.items[r], node) for r in live)
    found = ids(store, hits)
    for row in found:
        assert all(admits(store.item(store.row_of[i]), node) for i in row)
    recall = np.mean(
        [len(set(f) & set(t)) / max(len(t), 1) for f, t in zip(found, truth, strict=True)]
    )
    assert recall >= (0.97 if route == "ann" else 0.995), recall


def test_scan_beyond_the_flat_cache_filters_exactly(tmp_path, monkeypatch):
    monkeypatch.setattr(planner, "EXACT_SCAN_ROWS", 0)
    store, x = store_with(tmp_path / "i", 1000, flat_cache=0)
    q = matryoshka_vectors(5, 32, seed=2)
    node = parse(BROAD)
    hits = store.search(q, SearchPlan(10, 16, filter=node))
    assert hits.route.kind == "exact" and not store.vectors._flat
    assert ids(store, hits) == brute_force(x, store.items, range(1000), q, 10, 16, node)


def test_a_filter_admitting_fewer_than_k_returns_just_those(tmp_path):
    store, _ = store_with(tmp_path / "i", 500)
    q = matryoshka_vectors(3, 32, seed=4)
    one = parse({"field": "label", "eq": "cat7"})  # 10 rows
    hits = store.search(q, SearchPlan(25, 32, filter=one))
    assert hits.rows.shape == (3, 25) and hits.route.kind == "matching_rows"
    assert all(len(row) == 10 for row in ids(store, hits))
    nothing = store.search(
        q, SearchPlan(5, 16, 32, 50, filter=parse({"field": "label", "eq": "no"}))
    )
    assert (nothing.rows == -1).all() and nothing.route.matched == 0


# the planner's switch --------------------------------------------------------------------------


def test_planner_switch_for_ivf(tmp_path, monkeypatch):
    store, _ = store_with(tmp_path / "i", 3000, ("IVF16,Flat", 16))
    ivf, one = store.ann, SearchKnobs(nprobe=1)
    assert planner.plan_filtered(planner.EXACT_SCAN_ROWS, 100, ivf, one).scan
    monkeypatch.setattr(planner, "EXACT_SCAN_ROWS", 0)
    monkeypatch.setattr(planner, "SCAN_COST_RATIO", 10)
    # 2000 admitted of 3000 in 16 lists: 4 lists meet 4 x 100 of them; 750 codes probed
    # cost 75 rows, so the probe (100 + 75 rows' worth) beats scanning 2000 rows
    assert planner.plan_filtered(2000, 100, ivf, one) == planner.FilteredPlan(
        False, SearchKnobs(nprobe=4)
    )
    assert planner.plan_filtered(2000, 100, ivf, SearchKnobs(nprobe=9)).knobs.nprobe == 9
    # 4 x 400 of 1500 admitted rows would need 18 of the 16 lists: all 16, meeting every one
    assert planner.plan_filtered(1500, 400, ivf, one).knobs.nprobe == 16
    # 500 matches: probing all 3000 codes (300 rows' worth) + reranking 200 costs more
    assert planner.plan_filtered(500, 200, ivf, SearchKnobs(nprobe=16)).scan
    assert not planner.plan_filtered(501, 100, ivf, SearchKnobs(nprobe=16)).scan
    assert not planner.plan_filtered(5, 100, None, one).scan  # the exact shortlist filters


def test_planner_switch_for_hnsw(tmp_path, monkeypatch):
    monkeypatch.setattr(planner, "EXACT_SCAN_ROWS", 0)
    hnsw, _ = store_with(tmp_path / "h", 3000, ("HNSW16", 16))
    ef = SearchKnobs(ef_search=16)
    assert planner.plan_filtered(100, 10, hnsw.ann, ef).scan  # 3.3% of the rows: under 5%
    wide = planner.plan_filtered(1000, 100, hnsw.ann, ef)  # a third: ef 3 x the shortlist
    assert wide == planner.FilteredPlan(False, SearchKnobs(ef_search=300))


def test_selective_filters_scan_and_broad_ones_use_the_ann(tmp_path, monkeypatch):
    monkeypatch.setattr(planner, "EXACT_SCAN_ROWS", 500)
    store, _ = store_with(tmp_path / "i", 3000, ("IVF16,Flat", 16))
    q = matryoshka_vectors(4, 32, seed=8)
    plan = SearchPlan(10, 16, 32, 50, knobs=SearchKnobs(nprobe=8))
    broad = store.search(q, SearchPlan(**{**plan.__dict__, "filter": parse(BROAD)}))
    narrow = store.search(q, SearchPlan(**{**plan.__dict__, "filter": parse(MIDDLE)}))
    assert (broad.route.kind, broad.route.matched) == ("ann", 1800)
    assert (narrow.route.kind, narrow.route.matched) == ("matching_rows", 200)
    forced = store.search(
        q, SearchPlan(**{**plan.__dict__, "filter": parse(MIDDLE), "use_ann": True})
    )
    assert forced.route.kind == "ann"


# filters under edits ---------------------------------------------------------------------------


@pytest.mark.parametrize("ann", [None, ("IVF16,Flat", 16), ("HNSW16", 16)])
def test_filters_follow_adds_deletes_replay_and_compaction(tmp_path, monkeypatch, ann):
    monkeypatch.setattr(planner, "EXACT_SCAN_ROWS", 0)
    monkeypatch.setattr(planner, "SCAN_COST_RATIO", 10**9)
    monkeypatch.setattr(planner, "HNSW_MIN_SHARE", 0)
    store, _ = store_with(tmp_path / "i", 1500, ann)
    extra = matryoshka_vectors(100, 32, seed=21)
    added = catalogue(100, start=1500)
    for it in added:
        it["metadata"]["colour"] = "violet"
    store.add(added, extra)
    violet = parse({"field": "metadata.colour", "eq": "violet"})
    q = extra[:5] + 0.01
    plan = SearchPlan(5, 16, 32, 100, knobs=SearchKnobs(nprobe=16, ef_search=200), filter=violet)
    first = store.search(q, plan)
    assert first.route.matched == 100
    assert [row[0] for row in ids(store, first)] == [f"r{1500 + i}" for i in range(5)]
    store.delete("r1500")
    store.delete("r1501")
    after = store.search(q, plan)
    assert after.route.matched == 98
    expected = ids(store, after)  # row ids change with compaction; item ids do not
    assert not {"r1500", "r1501"} & {i for row in expected for i in row}
    options = VectorOptions(ann_min_rows=0)
    replayed = IndexStore.open(tmp_path / "i", FP, 32, writable=False, options=options)
    assert ids(replayed, replayed.search(q, plan)) == expected
    replayed.close()
    store.compact()
    compacted = store.search(q, plan)
    assert compacted.route.matched == 98
    assert ids(store, compacted) == expected
    reopened = IndexStore.open(tmp_path / "i", FP, 32, writable=False, options=options)
    assert ids(reopened, reopened.search(q, plan)) == expected


def test_a_filter_that_follows_the_vectors_loses_no_recall(tmp_path, monkeypatch):
    """Items of label b sit in one cluster, the queries in the other: the lists an IVF probes
    near a query hold no b rows, so the filtered ANN comes back empty; the search must still
    answer with the nearest b items (an exact shortlist over the admitted rows)."""
    monkeypatch.setattr(planner, "EXACT_SCAN_ROWS", 0)  # keep the planner on the ANN
    rng = np.random.default_rng(0)
    centres = 4 * rng.standard_normal((2, 32)).astype(np.float32)
    noise = rng.standard_normal((2000, 32)).astype(np.float32)
    noise[:, 16:] *= 0.05  # the shortlist dim (16) ranks nearly as the full dim does
    x = np.repeat(centres, 1000, axis=0) + noise
    items = [{"id": f"r{r}", "label": "ab"[r // 1000], "metadata": None} for r in range(2000)]
    info = {**CREATE, "fingerprint": FP, "store_dtype": "float32"}
    info["ann"] = {"factory": "IVF16,Flat", "dim": 16, "train_size": 2000}
    write_generation(tmp_path / "i", 0, 32, 2000, [x], items, info)
    options = VectorOptions(ann_min_rows=0)
    store = IndexStore.open(tmp_path / "i", FP, 32, writable=False, options=options)
    q = centres[:1] + rng.standard_normal((5, 32)).astype(np.float32)
    node = parse({"field": "label", "eq": "b"})
    _, cand = store.vectors.ann.search(q, 50, SearchKnobs(nprobe=1), store.payload.mask(node))
    assert (cand >= 0).sum() < 5 * 10  # the failure this guards against: probed lists hold no b
    hits = store.search(q, SearchPlan(10, 16, 32, 50, knobs=SearchKnobs(nprobe=1), filter=node))
    want = brute_force(x, items, range(2000), q, 10, 32, node)
    got = ids(store, hits)
    recall = np.mean([len(set(g) & set(w)) / 10 for g, w in zip(got, want, strict=True)])
    assert all(len(g) == 10 for g in got) and recall >= 0.9
