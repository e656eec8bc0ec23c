"""Linear-probe fit time: the lpclip C search + final fit on one thread (now) vs on every intra-op thread (before),
next to the same fits with scikit-learn and the feature extraction, in one process; checks the weights match.

    PYTHONPATH=src python benchmarks/linear_probe_speed.py --dataset real/textiles --backbone effnet-minilm \\
        --shots 4 --out bench_lp.json

Writes JSON: seconds of feature extraction (first run: extraction; later runs read the feature cache, so
``--no-cache`` extracts into a temporary folder), of ``fit_features`` now and before, of sklearn's
``LogisticRegression(C, max_iter=1000)`` on the same Cs, whether the weights are bit-identical, machine load.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", default="tiny/shapes")
    ap.add_argument("--root", default="")
    ap.add_argument("--backbone", default="tiny-clip")
    ap.add_argument("--shots", type=int, default=16)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--no-cache", action="store_true", help="extract features into a temporary cache")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    import vlprompt as vp
    from vlprompt.engine.features import FeatureCache
    from vlprompt.methods import linear_probe as lp

    bb = vp.load_backbone(args.backbone)
    task = vp.load_dataset(args.dataset, args.root, shots=args.shots, seed=args.seed)
    tmp = tempfile.mkdtemp() if args.no_cache else None
    cache = FeatureCache(bb, "bf16", torch.device("cpu"), tmp)  # as a CPU run (precision auto)
    t0 = time.perf_counter()
    train = (cache.get(task.train, "test"), torch.tensor([s.label for s in task.train]))
    val = (cache.get(task.val, "test"), torch.tensor([s.label for s in task.val])) if task.val else None
    feature_s = time.perf_counter() - t0

    def run(single: bool) -> tuple[float, torch.Tensor, torch.Tensor, list[float]]:
        cs: list[float] = []
        inner = lp._fit_logistic_regression
        fit = lp.fit_logistic_regression

        def record(x, y, n_cls, c, max_iter=1000):  # noqa: ANN001, ANN202
            cs.append(c)
            return fit(x, y, n_cls, c, max_iter) if single else inner(x, y, n_cls, c, max_iter)

        lp.fit_logistic_regression = record
        one = lp.one_thread
        if not single:  # before: no thread switch anywhere
            lp.one_thread = lambda x, n_cls: _null()
        try:
            model = vp.build_method("linear-probe", bb, task.classnames)
            t = time.perf_counter()
            model.fit_features(train, val)
            sec = time.perf_counter() - t
        finally:
            lp.fit_logistic_regression, lp.one_thread = fit, one
        return sec, model.weight.detach().clone(), model.bias.detach().clone(), cs

    load_before = os.getloadavg()
    before_s, w0, b0, cs0 = run(single=False)
    now_s, w1, b1, cs1 = run(single=True)
    from sklearn.linear_model import LogisticRegression

    x, y = train[0].double().numpy(), train[1].numpy()
    t = time.perf_counter()
    for c in cs1:
        LogisticRegression(C=c, max_iter=1000).fit(x, y)
    sklearn_s = time.perf_counter() - t
    out = {
        "dataset": args.dataset, "backbone": args.backbone, "shots": args.shots, "n_train": len(task.train),
        "n_val": len(task.val), "dim": int(train[0].shape[1]), "classes": len(task.classnames),
        "threads": torch.get_num_threads(), "fits": len(cs1), "feature_seconds": round(feature_s, 3),
        "fit_seconds_before": round(before_s, 3), "fit_seconds_now": round(now_s, 3),
        "sklearn_seconds_same_fits": round(sklearn_s, 3),
        "now_over_sklearn_plus_features": round(now_s / (sklearn_s + feature_s), 3),
        "before_over_sklearn_plus_features": round(before_s / (sklearn_s + feature_s), 3),
        "weights_identical": bool(torch.equal(w0, w1) and torch.equal(b0, b1) and cs0 == cs1),
        "loadavg_start": load_before, "loadavg_end": os.getloadavg(),
    }
    print(json.dumps(out, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


if __name__ == "__main__":
    main()
