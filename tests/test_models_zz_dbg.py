import sys; sys.path.insert(0, "/work/main/tests")
from test_models_cache import *
def test_dbg(tmp_path):
    cache = Cache(tmp_path)
    ds = make_dataset()
    m1 = model_cache.load_or_train(cache, ds, TINY_ARCH, TRAIN, seed=0)
    m3 = TinyT2I.for_dataset(ds, **TINY_ARCH); m3.train(ds, {**TRAIN, "seed": 0})
    m5 = TinyT2I.for_dataset(ds, **TINY_ARCH); m5.train(ds, {**TRAIN, "seed": 0})
    print("\nm1 m3 m5", m1.fingerprint[:8], m3.fingerprint[:8], m5.fingerprint[:8])
