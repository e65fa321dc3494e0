"""Class-based weighted ensemble (seed section 6, model ensemble), vectorised and streamed from float16 memmaps.

    fastprod ensemble fit   --preds P1 P2 ... --labels VAL [--split val] --out W.npz
                            [--scaling power|softmax] [--holdout 0.3] [--min-count 5] [--no-progress]
    fastprod ensemble apply --weights W.npz|uniform --preds P1 P2 ... --out DIR [--topk 5] [--probs] [--no-progress]

Each P is a `fastprod score --probs` directory (probs.npy float16 [N, C], images.parquet, meta.json)
or a bare .npy. Rows are keyed by image path (images.parquet `path`; image ids repeat across classes
in a folder dataset): all score directories must list the same paths in the same order, and the
same class ids where meta.json records them, or the pair is refused, naming both. A bare .npy has no row keys, so
mixing it with score directories is refused; bare .npy files alone are taken as they are, and that
their rows (and classes) line up is the caller's responsibility. VAL gives the labels, in the row
order of the P's: a prepared manifest's split or a score directory's images.parquet, both matched by
path (a row whose path is not there gets -1; no match at all is an error; their class ids must be the
P's), or a .npy of ints (taken as is).

Outputs never overwrite inputs: an --out that is, contains or lies inside any input (a P, VAL or
W.npz; resolved paths) is refused, naming both. Every output file is written to a temporary name
and renamed into place when complete. A refused or impossible request prints one line,
`fastprod ensemble fit|apply: error: ...`, and exits 2.

Fitting. Rows with a label and finite probabilities in every model are cut, stratified by class,
into a fitting part A and a held-out part B (`holdout`). On A, per model m and class c,
acc[m, c] = accuracy of model m's arg-max on the samples of class c; a class with fewer than
`min_count` samples in A uses model m's global accuracy instead (a handful of samples says little
about a class). The weights are w[m, c] = f(acc[m, c]) / sum_m' f(acc[m', c]) with f a documented
nonlinear scaling:
    power     f = acc ** p            p in POWERS (p = 0 is the plain average; large p -> per-class best model)
    softmax   f = exp(acc / T)        T in TEMPERATURES (large T -> plain average)
Optionally (--shrink K ...) every class's accuracy is shrunk towards the model's global accuracy,
acc = (correct + K * global) / (count + K), which helps when classes have only a few samples. The grid
value (x shrinkage) with the lowest top-1 error on B is chosen; the weights are then recomputed from
all fitting rows (A and B) with that value. W.npz holds weights [M, C] float32, acc, counts,
global_acc, the scaling, its value and the error of every grid value on B.

Applying. prediction[n, c] = sum_m w[m, c] * P_m[n, c] and its top-k, streamed from the
memory-mapped float16 files: on the CPU by one fused numba kernel (fastprod/score/weighted_topk.py:
convert, multiply-add over models and top-k per image row and class block, in cache), on a GPU by
torch over row chunks. Memory stays O(threads x tile x C) whatever M x N x C is (8 x 150k x 50,030
float16 is 120 GB of files, read once).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm import tqdm

from fastprod.data.manifest import Manifest, class_members
from fastprod.files import atomic_write, release_rows, write_json
from fastprod.score.engine import cli_errors

POWERS = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0)
TEMPERATURES = (1.0, 0.3, 0.1, 0.05, 0.03, 0.02, 0.01, 0.005)
CHUNK_BYTES = 256 << 20  # float32 working memory of one chunk of rows in `fit` (~1,300 rows of 4 x 50,030 classes)


def _class_ids(directory: Path) -> list[str] | None:
    """The class ids a score directory's meta.json records (None: not recorded)."""
    meta = directory / "meta.json"
    return json.loads(meta.read_text()).get("class_ids") if meta.is_file() else None


class Preds:
    """One model's probabilities: a read-only float16 memmap [N, C]; for a score directory also its rows'
    image ids, paths (the row keys) and labels (images.parquet) and its class ids (meta.json)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        npy = self.path / "probs.npy" if self.path.is_dir() else self.path
        if not npy.is_file():
            raise FileNotFoundError(f"{self.path}: no probs.npy (score with `fastprod score --probs`)")
        self.probs = np.load(npy, mmap_mode="r")
        if self.probs.ndim != 2:
            raise ValueError(f"{npy}: expected a [N, C] matrix, got shape {self.probs.shape}")
        self.image_ids, self.paths, self.labels = None, None, None
        self.class_ids = _class_ids(self.path) if self.path.is_dir() else None
        if self.path.is_dir() and (self.path / "images.parquet").is_file():
            table = pq.read_table(self.path / "images.parquet")
            if table.num_rows != self.shape[0]:
                raise ValueError(f"{self.path}: images.parquet lists {table.num_rows} images, probs.npy has "
                                 f"{self.shape[0]} rows")
            self.image_ids, self.paths = table["image_id"].to_pylist(), table["path"].to_pylist()
            self.labels = table["label"].to_numpy().astype(np.int64)

    @property
    def shape(self) -> tuple[int, int]:
        return self.probs.shape


def load_preds(paths: list[str | Path]) -> list[Preds]:
    """The P's, refused unless every pair has the same shape, the same class ids where both record them and
    the same row keys (image paths, in order); bare .npy files only together with other bare .npy files."""
    preds = [Preds(p) for p in paths]
    first = preds[0]
    for p in preds[1:]:
        if p.shape != first.shape:
            raise ValueError(f"{p.path} has shape {p.shape}, {first.path} {first.shape}: not the same images/classes")
        if (p.paths is None) != (first.paths is None):
            bare, scored = (p, first) if p.paths is None else (first, p)
            raise ValueError(f"{bare.path} has no images.parquet, so its rows cannot be checked against the images of "
                             f"{scored.path}: give score directories only (or bare .npy files only)")
        if p.paths != first.paths:
            how = "the same images in another order" if sorted(p.paths) == sorted(first.paths) else "different images"
            raise ValueError(f"{p.path} and {first.path} list {how} (rows are matched by image path)")
        if p.class_ids is not None and first.class_ids is not None and p.class_ids != first.class_ids:
            raise ValueError(f"{p.path} and {first.path} score different classes (or in another order): their "
                             f"meta.json class_ids differ")
    return preds


def _labels_by_path(source: Path, paths: list[str], labels: np.ndarray, class_ids: list[str] | None,
                    preds: Preds) -> np.ndarray:
    """`labels` of `paths` in the row order of `preds`, matched by path (-1 where a row's path is not there)."""
    if preds.paths is None:
        raise ValueError(f"--labels {source}: the rows of {preds.path} (a bare .npy) have no image paths to match; "
                         f"give score directories, or a .npy of labels")
    if class_ids is not None and preds.class_ids is not None and class_ids != preds.class_ids:
        raise ValueError(f"--labels {source} labels other classes (or in another order) than {preds.path} scores: "
                         f"their class ids differ")
    absent = -2  # a row whose path is not in `paths`
    by_path = dict(zip(paths, labels.tolist()))
    matched = np.array([by_path.get(p, absent) for p in preds.paths], dtype=np.int64)
    if not (matched != absent).any():
        raise ValueError(f"--labels {source}: none of the {len(matched)} images of {preds.path} is in it")
    return np.where(matched == absent, -1, matched)


def load_labels(source: str | Path, preds: list[Preds], split: str = "val") -> np.ndarray:
    """Labels in the row order of `preds`: a prepared manifest's `split` or a score directory, matched by image
    path (rows not found get -1), or a .npy of labels taken as is."""
    source = Path(source)
    n = preds[0].shape[0]
    if source.suffix == ".npy":
        labels = np.load(source).astype(np.int64)
        if len(labels) != n:
            raise ValueError(f"--labels {source}: {len(labels)} labels for {n} scored images")
        return labels
    if (source / "images.parquet").is_file():
        table = pq.read_table(source / "images.parquet")
        return _labels_by_path(source, table["path"].to_pylist(), table["label"].to_numpy().astype(np.int64),
                               _class_ids(source), preds[0])
    manifest = Manifest.load(source)
    view = manifest.split(split)
    return _labels_by_path(source, view.paths, view.labels, manifest.class_ids, preds[0])


def check_output(out: Path, inputs: list[str | Path]) -> None:
    """Refuse an --out that is, contains or lies inside an input (resolved paths): writing it would replace
    or truncate what is being read."""
    target = Path(out).resolve()
    for source in inputs:
        resolved = Path(source).resolve()
        if target == resolved:
            relation = "is"
        elif resolved in target.parents:
            relation = "lies inside"
        elif target in resolved.parents:
            relation = "contains"
        else:
            continue
        raise ValueError(f"--out {out} {relation} the input {source}: write the output apart from the inputs")


def _tensor(a: np.ndarray) -> torch.Tensor:
    with warnings.catch_warnings():  # a read-only memmap: torch only reads it
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(a)


def _chunks(n: int, chunk: int):
    for lo in range(0, n, chunk):
        yield lo, min(n, lo + chunk)


def rows_per_chunk(bytes_per_row: int, budget: int = CHUNK_BYTES) -> int:
    """Rows of `bytes_per_row` bytes that fit in `budget` bytes (at least one)."""
    return max(1, budget // bytes_per_row)


def argmax_and_finite(preds: list[Preds], budget: int = CHUNK_BYTES, progress: bool = False
                      ) -> tuple[np.ndarray, np.ndarray]:
    """[M, N] arg-max class per model and [N] whether every model's row is finite, one model's chunk of rows
    in float32 at a time (and a copy without NaN where the chunk has a non-finite value). A row is finite when
    its float64 sum is: C float32 values cannot overflow it, and NaN or inf make it NaN or inf (one reduction
    instead of an elementwise mask, which cost more than the rest of the pass)."""
    n, C = preds[0].shape
    chunk = rows_per_chunk(4 * 3 * C, budget)  # the float32 chunk, its NaN-free copy and the sums
    arg = np.empty((len(preds), n), dtype=np.int64)
    finite = np.ones(n, dtype=bool)
    with tqdm(total=n, unit="img", desc="arg-max", disable=not progress, dynamic_ncols=True) as bar:
        for lo, hi in _chunks(n, chunk):
            for m, p in enumerate(preds):
                x = _tensor(p.probs[lo:hi]).float()
                ok = torch.isfinite(x.sum(1, dtype=torch.float64)).numpy()
                finite[lo:hi] &= ok
                arg[m, lo:hi] = (x if ok.all() else x.nan_to_num(-1.0)).argmax(1).numpy()
                release_rows(p.probs, lo, hi)
            bar.update(hi - lo)
    return arg, finite


def per_class_accuracy(pred: np.ndarray, labels: np.ndarray, num_classes: int, min_count: int = 1,
                       shrink: float = 0.0):
    """acc [M, C], counts [C], global accuracy [M]; classes with < min_count samples get the global accuracy.

    shrink K > 0 pulls every class towards the global accuracy as K pseudo-samples would:
    acc = (correct + K * global) / (count + K) (K = 0: the plain per-class accuracy)."""
    pred = np.atleast_2d(pred)
    counts = np.bincount(labels, minlength=num_classes).astype(np.int64)
    correct = np.stack([np.bincount(labels[p == labels], minlength=num_classes) for p in pred]).astype(np.float64)
    global_acc = correct.sum(1) / max(1, len(labels))
    acc = (correct + shrink * global_acc[:, None]) / np.maximum(counts + shrink, 1e-12)
    rare = counts < max(1, min_count)
    acc[:, rare] = global_acc[:, None]
    return acc, counts, global_acc


def class_weights(acc: np.ndarray, scaling: str, value: float) -> np.ndarray:
    """w[m, c] = f(acc[m, c]) normalised over m (see the module docstring); float64 [M, C]."""
    acc = np.asarray(acc, dtype=np.float64)
    if scaling == "power":
        f = np.ones_like(acc) if value == 0 else np.power(acc, value)
    elif scaling == "softmax":
        z = acc / value
        f = np.exp(z - z.max(0, keepdims=True))
    else:
        raise ValueError(f"scaling: {scaling!r} is not power or softmax")
    total = f.sum(0, keepdims=True)
    uniform = np.full_like(f, 1.0 / len(f))
    return np.where(total > 0, f / np.where(total > 0, total, 1.0), uniform)


def stratified_holdout(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of held-out rows: round(fraction * n_c) per class, never a class's only sample."""
    rng = np.random.default_rng(seed)
    held = np.zeros(len(labels), dtype=bool)
    for members in class_members(labels):
        members = rng.permutation(members)
        take = min(int(round(fraction * len(members))), len(members) - 1)
        held[members[:take]] = True
    return held


def ensemble_errors(preds: list[Preds], rows: np.ndarray, labels: np.ndarray, weights: list[np.ndarray],
                    budget: int = CHUNK_BYTES, progress: bool = False) -> np.ndarray:
    """Top-1 error on `rows` of each candidate weight matrix [M, C], over chunks of rows whose M models in
    float32, their weighted products and sum fit in `budget` bytes."""
    W = torch.from_numpy(np.stack(weights)).float()  # [K, M, C]
    M, C = len(preds), preds[0].shape[1]
    chunk = rows_per_chunk(4 * (2 * M + 1) * C, budget)  # float32: the models, their products, the sum
    wrong = np.zeros(len(weights))
    with tqdm(total=len(rows), unit="img", desc="held-out", disable=not progress, dynamic_ncols=True) as bar:
        for lo, hi in _chunks(len(rows), chunk):
            idx = rows[lo:hi]
            X = torch.stack([_tensor(np.ascontiguousarray(p.probs[idx])).float() for p in preds])  # [M, b, C]
            for p in preds:  # `rows` ascend: this chunk's rows lie in [idx[0], idx[-1]]
                release_rows(p.probs, int(idx[0]), int(idx[-1]) + 1)
            y = torch.from_numpy(labels[idx])
            for k in range(len(weights)):
                pred = (X * W[k][:, None, :]).sum(0).argmax(1)
                wrong[k] += (pred != y).sum().item()
            bar.update(hi - lo)
    return wrong / max(1, len(rows))


def fit(preds: list[Preds], labels: np.ndarray, *, scaling: str = "power", grid: tuple | None = None,
        holdout: float = 0.3, min_count: int = 5, seed: int = 0, shrinks: tuple = (0.0,),
        budget: int = CHUNK_BYTES, progress: bool = True) -> dict:
    """Choose the scaling value (and shrinkage, when several `shrinks` are given) on a held-out part, then
    fit the per-class weights on all fitting rows. The float16 memmaps are read in chunks of rows holding at
    most `budget` bytes of float32 (never [N, C] in float32: 30 GB at 150k x 50,030); the result does not
    depend on `budget`. With nothing held out (every class a single image, or `holdout` 0) the held-out
    errors are NaN and the first grid value is taken. `progress`: a bar for each of the two passes over the
    rows (the arg-max of every row, the candidates' errors on the held-out rows)."""
    grid = tuple(grid or (POWERS if scaling == "power" else TEMPERATURES))
    shrinks = tuple(float(k) for k in shrinks)
    num_classes = preds[0].shape[1]
    arg, finite = argmax_and_finite(preds, budget, progress)
    usable = np.flatnonzero(finite & (labels >= 0))
    if len(usable) == 0:
        raise ValueError("ensemble fit: no rows with a label and finite probabilities in every model")
    y = labels[usable]
    held = stratified_holdout(y, holdout, seed)
    pairs = [(k, v) for k in shrinks for v in grid]
    candidates = []
    for k in shrinks:
        acc_a, _, _ = per_class_accuracy(arg[:, usable[~held]], y[~held], num_classes, min_count, k)
        candidates += [class_weights(acc_a, scaling, v) for v in grid]
    if held.any():
        errors = ensemble_errors(preds, usable[held], labels, candidates, budget, progress)
        best = int(np.argmin(errors))  # ties: the first (least shrinkage, smallest power / largest temperature)
    else:  # no class could spare an image (or holdout 0): errors unknown; the first value (power: the plain average)
        errors, best = np.full(len(pairs), np.nan), 0
    shrink, value = pairs[best]
    acc, counts, global_acc = per_class_accuracy(arg[:, usable], y, num_classes, min_count, shrink)
    single = [(arg[m, usable[held]] != y[held]).mean() if held.any() else float("nan") for m in range(len(preds))]
    return {
        "weights": class_weights(acc, scaling, value).astype(np.float32), "acc": acc, "counts": counts,
        "global_acc": global_acc, "scaling": scaling, "value": float(value), "shrink": shrink,
        "grid": list(map(float, grid)), "shrinks": list(shrinks), "holdout_errors": errors.tolist(),
        "single_model_holdout_errors": [float(e) for e in single],
        "fit_rows": int(len(usable)), "holdout_rows": int(held.sum()), "min_count": min_count,
        "preds": [str(p.path) for p in preds],
    }


def save_weights(result: dict, path: str | Path) -> None:
    """W.npz, written atomically to exactly `path`."""
    info = {k: v for k, v in result.items() if k not in ("weights", "acc", "counts", "global_acc")}

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would add .npz to a name
            np.savez(f, weights=result["weights"], acc=result["acc"], counts=result["counts"],
                     global_acc=result["global_acc"], info=np.array(json.dumps(info)))
    atomic_write(path, write)


def load_weights(path: str | Path, num_models: int, num_classes: int) -> np.ndarray:
    if str(path) == "uniform":
        return np.full((num_models, num_classes), 1.0 / num_models, dtype=np.float32)
    with np.load(path) as f:
        w = f["weights"].astype(np.float32)
    if w.shape != (num_models, num_classes):
        raise ValueError(f"--weights {path}: shape {w.shape}, but {num_models} preds of {num_classes} classes were given")
    return w


def weighted_topk_torch(probs: list[np.ndarray], weights: torch.Tensor, lo: int, hi: int, k: int
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The GPU path: (top-k values, top-k indices, the [hi - lo, C] float32 sum) of rows lo:hi on weights' device."""
    total = None
    for m, p in enumerate(probs):
        x = _tensor(np.asarray(p[lo:hi]))
        if weights.device.type != "cpu":
            x = x.pin_memory().to(weights.device, non_blocking=True)
        term = x.float() * weights[m]
        total = term if total is None else total.add_(term)
    v, i = total.topk(k, dim=1)
    return v, i, total


def apply(preds: list[Preds], weights: np.ndarray, out_dir: str | Path, *, topk: int = 5, save_probs: bool = False,
          chunk: int = 0, device: str = "cpu", labels: np.ndarray | None = None, threads: int = 0,
          progress: bool = True, budget: int = CHUNK_BYTES) -> dict:
    """Write the ensemble's top-k (predictions.parquet: image_id, path, label, ok, pred, topk_labels,
    topk_probs), summary.json and optionally its float16 probabilities (probs.npy), each through a
    temporary file renamed into place when complete (summary.json last).

    CPU: the fused numba kernel (`weighted_topk`) over `threads` threads (default: all), in tiles of
    `chunk` rows (default 4); GPU: torch over chunks of 1024 rows. Both stream slabs of rows whose float16
    inputs and output hold at most `budget` bytes, released from resident memory once done. A row with a
    non-finite probability in any model is reported missing (ok false, pred -1).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n, C = preds[0].shape
    w = np.ascontiguousarray(weights, dtype=np.float32)
    if not np.isfinite(w).all():
        raise ValueError("ensemble weights contain NaN or inf")
    options = dict(k=min(topk, C), chunk=chunk, device=torch.device(device), threads=threads, progress=progress,
                   budget=budget)
    if save_probs:
        top = []

        def write(tmp: Path) -> None:
            mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(n, C))
            top.extend(weighted_sum_topk(preds, w, mm, **options))
            mm.flush()
        atomic_write(out_dir / "probs.npy", write)
        top_p, top_i = top
    else:
        top_p, top_i = weighted_sum_topk(preds, w, None, **options)
    ok = np.isfinite(top_p).all(1)
    top_i[~ok], top_p[~ok] = -1, np.nan
    ids = preds[0].image_ids or [str(j) for j in range(n)]
    lab = labels if labels is not None else (preds[0].labels if preds[0].labels is not None else np.full(n, -1))
    table = pa.table({
        "image_id": ids, "path": pa.array(preds[0].paths or [None] * n, pa.string()),
        "label": pa.array(lab, pa.int32()), "ok": ok, "pred": pa.array(top_i[:, 0], pa.int32()),
        "topk_labels": pa.array(list(top_i), pa.list_(pa.int32())),
        "topk_probs": pa.array(list(top_p), pa.list_(pa.float32())),
    })
    atomic_write(out_dir / "predictions.parquet", lambda tmp: pq.write_table(table, tmp))
    known = ok & (lab >= 0)
    summary = {"images": n, "models": len(preds), "missing": int((~ok).sum()),
               "top1_error": float((top_i[known, 0] != lab[known]).mean()) if known.any() else None}
    write_json(out_dir / "summary.json", summary, indent=1)
    return summary


def weighted_sum_topk(preds: list[Preds], w: np.ndarray, mm: np.ndarray | None, *, k: int, chunk: int,
                      device: torch.device, threads: int, progress: bool, budget: int = CHUNK_BYTES
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Top-k values [N, k] float32 and classes [N, k] int32 of sum_m w[m, c] * P_m[n, c]; the float16 sums
    go to `mm` when given."""
    import numba

    from fastprod.score.weighted_topk import storage_view, weighted_topk

    n, C = preds[0].shape
    top_p = np.empty((n, k), dtype=np.float32)
    top_i = np.empty((n, k), dtype=np.int32)
    slab = rows_per_chunk(2 * (len(preds) + 1) * C, budget)  # float16 inputs and output; the progress bar's step
    bar = tqdm(total=n, unit="img", desc="ensemble", disable=not progress, dynamic_ncols=True)

    def release(lo: int, hi: int) -> None:  # resident memory stays one slab of every matrix
        for array in [*(p.probs for p in preds), *([mm] if mm is not None else [])]:
            release_rows(array, lo, hi)  # dirty pages of `mm` stay in the page cache, written back

    if device.type == "cpu":
        probs = tuple(storage_view(p.probs) for p in preds)
        if len({p.dtype for p in probs}) > 1:
            raise ValueError(f"--preds mix float16 and float32 matrices: {[str(p.path) for p in preds]}")
        out = np.asarray(mm).view(np.uint16) if mm is not None else np.empty((0, C), np.uint16)
        saved = numba.get_num_threads()
        numba.set_num_threads(min(threads or numba.config.NUMBA_NUM_THREADS, numba.config.NUMBA_NUM_THREADS))
        try:
            for lo in range(0, n, slab):
                hi = min(n, lo + slab)
                weighted_topk(tuple(p[lo:hi] for p in probs), w, chunk or 4, top_p[lo:hi], top_i[lo:hi],
                              out[lo:hi] if mm is not None else out)
                release(lo, hi)
                bar.update(hi - lo)
        finally:
            numba.set_num_threads(saved)
    else:
        wt = torch.from_numpy(w).to(device)
        step = min(slab, chunk or 1024)
        for lo in range(0, n, step):
            hi = min(n, lo + step)
            v, i, total = weighted_topk_torch([p.probs for p in preds], wt, lo, hi, k)
            top_p[lo:hi], top_i[lo:hi] = v.cpu().numpy(), i.cpu().numpy()
            if mm is not None:
                mm[lo:hi] = total.half().cpu().numpy()
            release(lo, hi)
            bar.update(hi - lo)
    bar.close()
    return top_p, top_i


@cli_errors("ensemble fit")
def _fit_cli(args) -> int:
    check_output(args.out, [*args.preds, args.labels])
    preds = load_preds(args.preds)
    labels = load_labels(args.labels, preds, args.split)
    result = fit(preds, labels, scaling=args.scaling, holdout=args.holdout, min_count=args.min_count, seed=args.seed,
                 shrinks=tuple(args.shrink), progress=not args.no_progress)
    save_weights(result, args.out)
    shown = {k: result[k] for k in ("scaling", "value", "shrink", "grid", "shrinks", "holdout_errors",
                                    "single_model_holdout_errors", "fit_rows", "holdout_rows")}
    for key in ("holdout_errors", "single_model_holdout_errors"):  # NaN (nothing held out): null in JSON
        shown[key] = [None if np.isnan(e) else e for e in shown[key]]
    print(json.dumps(shown))
    return 0


@cli_errors("ensemble apply")
def _apply_cli(args) -> int:
    check_output(args.out, [*args.preds, *([args.labels] if args.labels else []),
                            *([args.weights] if args.weights != "uniform" else [])])
    preds = load_preds(args.preds)
    weights = load_weights(args.weights, len(preds), preds[0].shape[1])
    labels = load_labels(args.labels, preds, args.split) if args.labels else None
    summary = apply(preds, weights, args.out, topk=args.topk, save_probs=args.probs, chunk=args.chunk,
                    device=args.device or ("cuda" if torch.cuda.is_available() else "cpu"), labels=labels,
                    threads=args.threads, progress=not args.no_progress)
    print(json.dumps(summary))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("ensemble", help="class-based weighted ensemble: fit weights, apply them")
    sub = p.add_subparsers(dest="ensemble_command", required=True)
    f = sub.add_parser("fit", help="per-class accuracy weights from a labelled split")
    f.add_argument("--preds", nargs="+", required=True, help="score directories (with probs.npy) or .npy files")
    f.add_argument("--labels", required=True, help="manifest dir, score dir or .npy of labels")
    f.add_argument("--split", default="val", help="with a manifest --labels: the split")
    f.add_argument("--out", required=True, type=Path, help="weights file (.npz), written to exactly this path")
    f.add_argument("--scaling", choices=("power", "softmax"), default="power")
    f.add_argument("--holdout", type=float, default=0.3, help="fraction held out to choose the scaling value")
    f.add_argument("--min-count", type=int, default=5, help="classes with fewer samples use global accuracies")
    f.add_argument("--shrink", type=float, nargs="+", default=[0.0],
                   help="pseudo-samples of global accuracy added per class; several values: chosen on the held-out part")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--no-progress", action="store_true", help="no progress bars (on stderr)")
    f.set_defaults(func=_fit_cli)
    a = sub.add_parser("apply", help="sum_m w[m, c] * P_m[n, c] and top-k")
    a.add_argument("--weights", required=True, help="W.npz from `ensemble fit`, or `uniform` (plain average)")
    a.add_argument("--preds", nargs="+", required=True)
    a.add_argument("--out", required=True, type=Path)
    a.add_argument("--labels", default=None, help="optional: report the top-1 error against these labels")
    a.add_argument("--split", default="val")
    a.add_argument("--topk", type=int, default=5)
    a.add_argument("--probs", action="store_true", help="also write the ensemble's float16 probs.npy")
    a.add_argument("--chunk", type=int, default=0, help="images per tile (default: 4 on CPU, 1024 on GPU)")
    a.add_argument("--threads", type=int, default=0, help="CPU threads (default: all cores)")
    a.add_argument("--device", default=None)
    a.add_argument("--no-progress", action="store_true", help="no progress bar (on stderr)")
    a.set_defaults(func=_apply_cli)
