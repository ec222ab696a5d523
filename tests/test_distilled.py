"""The distilled method (FastGDA) and its teacher-ranking store: end to end on the tiny model, the store's keys and
per-query resume, the student file, and the official rank-file loader on tiny fakes (read without unpickling)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

import genattr
from genattr.harness.api import AttributionContext, Query
from genattr.harness.cache import Cache
from genattr.harness.errors import UserError

warnings.filterwarnings("ignore", message=".*batching rule.*")

POOL = 30
#: A cheap unlearning teacher for tests (the tiny preset's 640 gradient draws per query would dominate the file).
CHEAP = {"steps": 2, "batch": 8, "accumulation": 1, "fisher_samples": 16, "timesteps": 2, "alpha": 1e-2}
OPTS = dict(encoders="pixels:8", teacher_options=CHEAP, teacher_queries=8, epochs=100)


@pytest.fixture(scope="module")
def tiny(session_cache):
    from genattr.datasets.digits import Digits
    from genattr.harness.models import load_or_train
    from genattr.plugins.models.recipes import recipe

    torch.set_num_threads(1)
    r = recipe("digits", "tiny")
    ds = Digits(**r["dataset"])
    model = load_or_train(session_cache, ds, r["model"], r["train"], seed=0)
    return model, ds.subset(ds.ids[:POOL])


@pytest.fixture(scope="module")
def trained(tiny, session_cache):
    model, pool = tiny
    ctx = AttributionContext(model=model, train_set=pool, cache=session_cache, scale="tiny")
    m = genattr.get_method("distilled", **OPTS)
    m.prepare(ctx)
    return m, ctx


def _map(scores, ranks, k):
    from genattr.plugins.metrics.agreement import TeacherMAP

    return float(np.mean([TeacherMAP(k)(scores[j], ranks.top(j)) for j in range(len(ranks))]))


# -- the method end to end -------------------------------------------------------------------------------------------
def test_distilled_learns_its_teachers_rankings(trained):
    m, ctx = trained
    queries, ranks = m.teacher(ctx)
    assert len(queries) == 8 and ranks.indices.shape == (8, POOL) and ranks.n == POOL
    assert m.config["teacher_model"] == "context" and m.config["teacher_config"]["alpha"] == CHEAP["alpha"]
    assert m.stats["teacher_queries_computed"] in (0, 8) and m.stats["training_pairs"] > 0
    s = m.attribute(ctx, queries)
    assert s.shape == (8, POOL) and np.isfinite(s).all()
    rnd = genattr.score(genattr.get_method("random"), ctx, queries)
    k = 5
    got, chance = _map(s, ranks, k), _map(rnd, ranks, k)
    assert got > chance + 0.15, (got, chance)
    # scores are −(a·cos + b): the query's own embedding against the memory-mapped index
    emb = m.index(ctx)
    assert isinstance(emb, np.memmap) and emb.shape == (POOL, m.config["out_dim"])
    np.testing.assert_allclose(np.linalg.norm(np.asarray(emb), axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(m.attribute(ctx, queries[:2], candidates=[3, 0, 29]), s[:2, [3, 0, 29]], atol=1e-6)


def _own_ranks(m, ctx, idx):
    """The rank (1 = first) of each training item ``idx`` when its own image and caption are the query."""
    pool = ctx.train_set
    qs = [Query(id=f"dup{i}", image=pool.item(i).image, prompt=pool.item(i).captions[0]) for i in idx]
    s = m.attribute(ctx, qs)
    return [int((row > row[i]).sum()) + 1 for row, i in zip(s, idx)]


def test_an_item_used_as_its_own_query_ranks_first(trained, session_cache):
    """The duplicate property (influential = close): by default (a = −softplus(s)) every item used as its own query
    ranks first of the pool — within the top 1 %; FastGDA's free scale started at +1 never crosses zero, so the same
    teacher's student ranks each such item last."""
    m, ctx = trained
    assert m.config["scale_sign"] == "negative" and m.config["towers"] == "shared"
    idx = list(range(0, POOL, 3))
    ranks = _own_ranks(m, ctx, idx)
    assert max(ranks) <= max(1, int(0.01 * POOL)), ranks
    student = m.student(ctx)[0]
    assert float(student.scale) < 0
    free = genattr.get_method("distilled", **OPTS, scale_sign="free")
    free.prepare(ctx)
    assert free.stats["teacher_queries_computed"] == 0  # the same teacher rankings
    assert float(free.student(ctx)[0].scale) > 0
    assert min(_own_ranks(free, ctx, idx)) == POOL


def test_distilled_is_cached_and_deterministic(trained, tiny, session_cache):
    m, ctx = trained
    queries, _ = m.teacher(ctx)
    again = genattr.get_method("distilled", **OPTS)
    again.prepare(ctx)  # teacher, student and index all from the cache
    assert again.stats["teacher_queries_computed"] == 0
    np.testing.assert_array_equal(again.attribute(ctx, queries), m.attribute(ctx, queries))
    # training itself is deterministic: the same seed trains the same student
    _, ranks = m.teacher(ctx)
    tf, qf = m.train_features(ctx), m.query_features(ctx, queries)
    a, _ = m.train_student(qf, tf, ranks, seed=0)
    b, _ = m.train_student(qf, tf, ranks, seed=0)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


def test_out_of_list_draws_skip_the_blocked_items():
    from genattr.plugins.methods.distilled import DistilledMethod

    rng = np.random.default_rng(3)
    n = 40
    blocked = [np.sort(rng.choice(n, size=s, replace=False)) for s in (0, 5, 17, 39)]
    rows, u = [], []
    for q, b in enumerate(blocked):
        for j in range(n - len(b)):
            rows.append(q)
            u.append(j)
    got = DistilledMethod.free_items(blocked, n, rows, u)
    want = [np.setdiff1d(np.arange(n), blocked[q])[j] for q, j in zip(rows, u)]
    assert got.tolist() == [int(w) for w in want]


def test_a_base_teachers_student_trains_on_the_base_items_only(trained):
    """Under teacher_model="base" with ctx.extra["base_items"] = B (the Customized Model benchmark), items from B on
    (exemplars the base model never saw) are in no ranked list and never drawn as an out-of-list negative; the
    student is cached under its own key; without the restriction every item takes part."""
    m, ctx = trained
    queries, ranks = m.teacher(ctx)
    tf, qf = m.train_features(ctx), m.query_features(ctx, queries)
    b = POOL - 7
    lists, blocked, cutoff = m.training_lists(qf, tf, ranks, b)
    assert cutoff == m._cutoff(b) and all(len(x) > 0 for x in lists)
    for lst, blk in zip(lists, blocked):
        assert lst.max() < b and set(range(b, POOL)) <= set(blk.tolist())
        free = np.setdiff1d(np.arange(POOL), blk)
        assert free.size == 0 or free.max() < b
    full, _, _ = m.training_lists(qf, tf, ranks)
    assert max(int(x.max()) for x in full) >= b  # the unrestricted lists do reach the later items
    base = genattr.get_method("distilled", **{**OPTS, "teacher_model": "base"})
    base.resolve_config("tiny")
    plain = AttributionContext(model=None, train_set=ctx.train_set, cache=ctx.cache, scale="tiny",
                               extra={"base_model": ctx.model})
    marked = AttributionContext(model=None, train_set=ctx.train_set, cache=ctx.cache, scale="tiny",
                                extra={"base_model": ctx.model, "base_items": b})
    assert base.student_items(plain) is None and base.student_items(marked) == b
    assert m.student_items(marked) is None  # a context teacher trains on every item
    assert base._train_key(marked, "t") != base._train_key(plain, "t")
    _, report = m.train_student(qf, tf, ranks, seed=0, n_items=b)
    assert report["items"] == b and report["pairs"] == sum(len(x) for x in lists)


def test_a_base_teacher_and_its_student_depend_on_the_base_items_alone(tiny, session_cache):
    """Under teacher_model="base" the teacher ranks the base items only, its training queries come from their
    captions, and teacher and student are keyed on them: two pools with the same base items and other exemplars
    (the test and the training concepts of the Customized Model benchmark) share one teacher and one student."""
    from genattr.datasets.digits import Digits
    from genattr.plugins.models.recipes import recipe

    model, pool = tiny
    b = POOL - 7
    others = Digits(**recipe("digits", "tiny")["dataset"])
    base_part = pool.subset(pool.ids[:b])
    pools = [pool, base_part.concat(others.subset(others.ids[POOL:POOL + 9]))]
    assert pools[0].fingerprint != pools[1].fingerprint
    ctxs = [AttributionContext(model=None, train_set=p, cache=session_cache, scale="tiny",
                               extra={"base_model": model, "base_items": b}) for p in pools]
    runs = []
    for ctx in ctxs:
        m = genattr.get_method("distilled", **{**OPTS, "teacher_model": "base"})
        m.prepare(ctx)
        runs.append(m)
    first, second = runs
    assert first.teacher_set(ctxs[0]).fingerprint == second.teacher_set(ctxs[1]).fingerprint == \
        base_part.fingerprint
    queries, ranks = first.teacher(ctxs[0])
    assert ranks.n == b and ranks.indices.max() < b
    assert {q.meta["source_index"] for q in queries} <= set(range(b))
    assert second.stats["teacher_queries_computed"] == 0  # the second pool reuses the first's teacher
    assert first.student(ctxs[0])[2] == second.student(ctxs[1])[2]  # and its student
    s0, s1 = first.attribute(ctxs[0], queries[:2]), second.attribute(ctxs[1], queries[:2])
    assert s0.shape == (2, POOL) and s1.shape == (2, b + 9)
    np.testing.assert_allclose(s0[:, :b], s1[:, :b], atol=1e-6)  # the base items score alike in both pools


def test_scale_sign_and_scale_init_set_the_students_geometry(tmp_path):
    """scale_sign (default "negative": a = −softplus(s), from −1) and scale_init (absent unless given) start a where
    they say; the architecture, the student file and the cache key carry them; a free student keeps its scale under
    the name "scale" in the file; zero, a non-number or a positive start under "negative" is a one-line error."""
    from genattr.plugins.methods.distilled import build_student, load_student, save_student

    plain = genattr.get_method("distilled", **OPTS)
    assert "scale_init" not in plain.config and plain._arch()["scale_sign"] == "negative"
    assert float(build_student(12, plain._arch()).scale) == pytest.approx(-1.0)
    free = genattr.get_method("distilled", **OPTS, scale_sign="free")
    assert float(build_student(12, free._arch()).scale) == 1.0
    neg = genattr.get_method("distilled", **OPTS, scale_init=-2)
    assert neg.config["scale_init"] == -2.0 and neg._arch()["scale_init"] == -2.0
    student = build_student(12, neg._arch())
    assert float(student.scale) == pytest.approx(-2.0)
    save_student(student, tmp_path / "s.safetensors", {"arch": neg._arch(), "in_dim": "12"})
    back, md = load_student(tmp_path / "s.safetensors")
    assert float(back.scale) == pytest.approx(-2.0) and json.loads(md["arch"])["scale_init"] == -2.0
    f_student = build_student(12, free._arch())
    save_student(f_student, tmp_path / "f.safetensors", {"arch": free._arch(), "in_dim": "12"})
    from safetensors.torch import load_file

    assert "scale" in load_file(str(tmp_path / "f.safetensors"))
    assert float(load_student(tmp_path / "f.safetensors")[0].scale) == 1.0
    for bad in (0, "x", True):
        with pytest.raises(UserError, match="scale_init"):
            genattr.get_method("distilled", **OPTS, scale_init=bad)
    with pytest.raises(UserError, match="scale_init must be negative"):
        genattr.get_method("distilled", **OPTS, scale_init=1)
    with pytest.raises(UserError, match="scale_sign must be one of"):
        genattr.get_method("distilled", **OPTS, scale_sign="positive")


def test_student_file_is_safetensors_with_its_teachers_fingerprint(trained, tmp_path):
    from genattr.plugins.methods.distilled import load_student

    m, ctx = trained
    path = tmp_path / "student.safetensors"
    m.save(ctx, path)
    raw = path.read_bytes()
    header = int.from_bytes(raw[:8], "little")
    assert raw[8:9] == b"{" and json.loads(raw[8:8 + header])["__metadata__"]["format"] == "genattr-distilled"
    _, md = load_student(path)
    _, ranks = m.teacher(ctx)
    assert md["teacher"] == ranks.fingerprint and json.loads(md["encoders"]) == ["pixels:8"]
    loaded = genattr.get_method("distilled", encoders="pixels:8", weights=str(path))
    assert loaded.needs_model is False
    free = AttributionContext(model=None, train_set=ctx.train_set, cache=ctx.cache, scale="tiny")
    q = m.teacher(ctx)[0][:3]
    np.testing.assert_allclose(loaded.attribute(free, q), m.attribute(ctx, q), rtol=1e-6)
    with pytest.raises(UserError, match="input features"):
        genattr.get_method("distilled", encoders=["pixels:8", "pixels:4"], weights=str(path)).prepare(free)


def test_distilled_trains_from_an_official_rank_file(tiny, tmp_path):
    """teacher_file + teacher_queries_dir: no teacher is computed and no model is needed."""
    from PIL import Image

    _, pool = tiny
    qdir = tmp_path / "query_train"
    qdir.mkdir()
    rng = np.random.default_rng(0)
    picks = [1, 5, 9, 12]
    for j, i in enumerate(picks):  # the queries are (noisy) training images; the teacher ranks the image first
        img = ((pool.item(i).image.expand(3, -1, -1).permute(1, 2, 0).numpy() + 1) * 127.5).clip(0, 255)
        Image.fromarray(img.astype(np.uint8)).save(qdir / f"{j}.png")
    (qdir / "prompts.json").write_text(json.dumps([pool.captions(i)[0] for i in picks]))
    rank = np.stack([np.r_[i, rng.permutation([x for x in range(POOL) if x != i])] for i in picks])
    np.savez(tmp_path / "influence_train.npz", rank=rank, scores=-np.arange(POOL, dtype=float)[None].repeat(4, 0))
    m = genattr.get_method("distilled", encoders="pixels:8", teacher_file=str(tmp_path / "influence_train.npz"),
                           teacher_queries_dir=str(qdir), epochs=40, cutoff=10)
    assert m.needs_model is False and m.config["teacher_config"] is None
    ctx = AttributionContext(model=None, train_set=pool, cache=Cache(tmp_path / "c"), scale="tiny")
    qs, ranks = m.teacher(ctx)
    assert [q.id for q in qs] == ["q0", "q1", "q2", "q3"] and qs[2].prompt == pool.captions(9)[0]
    assert ranks.top(0, 1).tolist() == [1] and len(ranks.fingerprint) == 64
    s = m.attribute(ctx, qs)
    assert s.shape == (4, POOL) and np.isfinite(s).all()
    with pytest.raises(UserError, match="teacher_queries_dir"):
        genattr.get_method("distilled", teacher_file=str(tmp_path / "influence_train.npz")).teacher(ctx)


# -- the teacher-ranking store ---------------------------------------------------------------------------------------
class _Model:
    def __init__(self, fp="m0"):
        self.fingerprint = fp


class CountingTeacher:
    """Seeded scores per query id (+ offset); records every call; fails on demand (an interrupted computation)."""

    name = "counting-teacher"
    version = "1"
    needs_model = True
    calls: list = []
    fail_after: int | None = None

    def __init__(self, offset: float = 0.0):
        self.config = {"offset": float(offset)}

    def prepare(self, ctx):
        pass

    def attribute(self, ctx, queries, candidates=None):
        from genattr.harness.seeding import numpy_rng

        if CountingTeacher.fail_after is not None and len(CountingTeacher.calls) >= CountingTeacher.fail_after:
            raise KeyboardInterrupt
        CountingTeacher.calls.append([q.id for q in queries])
        return np.stack([numpy_rng(7, q.id).random(len(ctx.train_set)) + self.config["offset"] for q in queries])


class _Plugin:
    @genattr.hookimpl
    def register_methods(self, register):
        register("counting-teacher", CountingTeacher, version="1")


@pytest.fixture
def counting():
    genattr.register_plugin(_Plugin(), "counting-teacher-plugin")
    CountingTeacher.calls, CountingTeacher.fail_after = [], None
    try:
        yield CountingTeacher
    finally:
        genattr.unregister_plugin("counting-teacher-plugin")


def _data(n=12):
    return genattr.InMemoryDataset("toy", "1", [f"i{j}" for j in range(n)], torch.zeros(n, 1, 4, 4),
                                   [(f"c{j}",) for j in range(n)])


def _queries(n=5):
    return [Query(f"q{j}", torch.full((1, 4, 4), float(j)), f"p{j}") for j in range(n)]


def test_teacher_store_keeps_top_k_resumes_per_query_and_keys_on_everything(counting, tmp_path):
    from genattr.harness.seeding import numpy_rng
    from genattr.harness.teacher import NAMESPACE, TeacherStore

    cache, data, qs, recipe = Cache(tmp_path), _data(), _queries(), {"kind": "test", "count": 5}
    store = TeacherStore(cache, _Model(), data, "counting-teacher", keep=4, batch=2)
    r = store.rankings(qs, recipe)
    assert r.indices.shape == (5, 4) and counting.calls == [["q0", "q1"], ["q2", "q3"], ["q4"]]
    full = numpy_rng(7, "q3").random(12)
    assert r.indices[3].tolist() == np.argsort(-full)[:4].tolist()
    np.testing.assert_allclose(r.scores[3], np.sort(full)[::-1][:4])
    # a second store with the same key computes nothing; a lost entry is recomputed alone
    counting.calls.clear()
    again = TeacherStore(cache, _Model(), data, "counting-teacher", keep=4, batch=2)
    np.testing.assert_array_equal(again.rankings(qs, recipe).indices, r.indices)
    assert counting.calls == [] and again.stats["queries_loaded"] == 5
    cache.remove(NAMESPACE, again._query_key(again.key(recipe), qs[2]))
    again.rankings(qs, recipe)
    assert counting.calls == [["q2"]]
    # an interrupted computation keeps the queries it finished
    counting.calls.clear()
    counting.fail_after = 1
    other = TeacherStore(cache, _Model(), data, "counting-teacher", keep=4, batch=2)
    with pytest.raises(KeyboardInterrupt):
        other.rankings(qs, {"kind": "test", "count": 6})
    assert other.done(qs, {"kind": "test", "count": 6}) == [True, True, False, False, False]
    counting.fail_after = None
    other.rankings(qs, {"kind": "test", "count": 6})
    assert counting.calls[1:] == [["q2", "q3"], ["q4"]]
    # the key: model, dataset, teacher configuration, recipe, keep and seed all enter it
    k0 = store.key(recipe)
    variants = [TeacherStore(cache, _Model("m1"), data, "counting-teacher", keep=4),
                TeacherStore(cache, _Model(), _data(11), "counting-teacher", keep=4),
                TeacherStore(cache, _Model(), data, "counting-teacher", {"offset": 1.0}, keep=4),
                TeacherStore(cache, _Model(), data, "counting-teacher", keep=5),
                TeacherStore(cache, _Model(), data, "counting-teacher", keep=4, seed=1)]
    keys = {v.key(recipe) for v in variants} | {store.key({"kind": "test", "count": 6})}
    assert k0 not in keys and len(keys) == 6
    assert TeacherStore(cache, _Model(), data, "counting-teacher", keep=4, batch=3).key(recipe) == k0


def test_training_queries_come_from_training_captions_with_fresh_seeds(tiny, session_cache):
    from genattr.harness.teacher import training_queries

    model, pool = tiny
    qs, recipe = training_queries(model, pool, 3, seed=0, steps=4, cache=session_cache)
    again, same = training_queries(model, pool, 5, seed=0, steps=4, cache=session_cache)
    assert recipe == same == {"kind": "training-captions", "seed": 0, "steps": 4, "guidance": None}
    assert len({q.meta["source_index"] for q in again}) == 5
    for q, b in zip(qs, again):  # a larger count keeps the smaller count's queries
        assert (q.id, q.prompt, q.meta) == (b.id, b.prompt, b.meta)
        assert q.prompt in pool.captions(q.meta["source_index"]) and torch.equal(q.image, b.image)
        assert q.image.shape == pool.item(0).image.shape


# -- the official rank files -----------------------------------------------------------------------------------------
def _release_like(n=20, q=3, L=6):
    rng = np.random.default_rng(1)
    subset = np.stack([rng.choice(n, L, replace=False) for _ in range(q)])
    infl_subset = rng.normal(size=(q, L)).astype(np.float32)
    order = np.argsort(-infl_subset, axis=1)
    train = {"random": {"influence_subset": infl_subset, "rank_influence_subset": order,
                        "rank": np.take_along_axis(subset, order, axis=1)}}
    infl = rng.normal(size=(q, n))
    test = {"random": {"influence": infl, "rank": np.argsort(-infl, axis=1)}}
    return train, test


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_official_rank_files_are_read_without_unpickling(protocol, tmp_path):
    import pickle  # only to write the fakes

    from genattr.harness.teacher import load_rank_file, rankings_from_file

    train, test = _release_like()
    (tmp_path / "influence_train.pkl").write_bytes(pickle.dumps(train, protocol=protocol))
    (tmp_path / "influence_test.pkl").write_bytes(pickle.dumps(test, protocol=protocol))
    got = load_rank_file(tmp_path / "influence_train.pkl")
    np.testing.assert_array_equal(got["rank"], train["random"]["rank"])
    np.testing.assert_allclose(got["scores"], np.sort(train["random"]["influence_subset"], axis=1)[:, ::-1])
    assert (np.diff(got["scores"], axis=1) <= 0).all()
    t = rankings_from_file(tmp_path / "influence_test.pkl", n=20, keep=5)
    assert t.indices.shape == (3, 5) and t.query_ids == ["q0", "q1", "q2"]
    np.testing.assert_array_equal(t.indices, test["random"]["rank"][:, :5])
    np.testing.assert_allclose(t.scores, np.sort(test["random"]["influence"], axis=1)[:, ::-1][:, :5])
    with pytest.raises(UserError, match="outside"):
        rankings_from_file(tmp_path / "influence_test.pkl", n=10)
    np.savez(tmp_path / "t.npz", **test["random"])
    np.testing.assert_array_equal(rankings_from_file(tmp_path / "t.npz", n=20).indices, test["random"]["rank"])


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("touch EVIL_RAN",))


def test_a_pickle_with_other_globals_is_refused_and_never_runs(tmp_path, monkeypatch):
    import pickle  # only to write the fake

    from genattr.harness.teacher import load_rank_file

    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.pkl").write_bytes(pickle.dumps({"random": {"rank": _Evil()}}))
    with pytest.raises(UserError, match="refusing global"):
        load_rank_file(tmp_path / "bad.pkl")
    assert not (tmp_path / "EVIL_RAN").exists()
    (tmp_path / "junk.pkl").write_bytes(b"not a pickle")
    with pytest.raises(UserError):
        load_rank_file(tmp_path / "junk.pkl")
    with pytest.raises(UserError, match="does not exist"):
        load_rank_file(tmp_path / "missing.pkl")
