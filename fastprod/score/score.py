"""Batch scoring with TTA (seed section 5, multi-scale TTA and scoring): decode, build views, run an
engine, average over views, write top-k.

    fastprod score --engine ENGINE_DIR (--manifest M [--split val] [--shared-classes] | --images DIR_OR_FILE ...)
                   --out PRED [--topk 5] [--probs] [--csv] [--batch 256] [--chunk 2048] [--workers 2]

PRED (a directory):
    images.parquet        image_id, path (absolute: the row's key), label in the engine's label space
                          (-1 if unknown): the row order of everything below
    parts/part-NNNNN.parquet  per chunk of images: image_id, label, ok, error, pred, class_id,
                          topk_labels, topk_probs (written atomically, one per finished chunk)
    probs.npy             with --probs: float16 [N, C] probabilities (np.lib.format.open_memmap);
                          rows of images that failed to decode are NaN
    progress.json         {"chunks_done": k, "complete": bool}, replaced atomically after each chunk
    predictions.parquet   (and .csv with --csv) all parts concatenated, once every chunk is done
    meta.json             engine, views, class ids, counts; a re-run with the same inputs resumes after
                          the last finished chunk, a re-run with different inputs is refused

An image that cannot be decoded does not stop the run: its row has ok = false, the reason in
`error`, label -1 predictions and NaN probabilities (scored as missing), and it is listed at the end.

Labels are only compared with the outputs of an engine trained on the same classes: a --manifest
whose class ids differ from the engine's (other classes, or the same in another order) is refused.
With --shared-classes the images labelled with a class the engine lacks are left out (their number
is printed) and the others' labels are mapped to the engine's label indices. --images and unlabelled
splits have no labels and need no check. A refused or impossible request prints one line,
`fastprod score: error: ...`, and exits 2.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm import tqdm

from fastprod.data.images import ImageError, load_rgb
from fastprod.files import atomic_write, release_rows, write_json
from fastprod.score.engine import Engine, cli_errors
from fastprod.score.items import Items, items_from_paths
from fastprod.score.tta import Views, average_views, blank_views, make_views


def items_for_engine(engine: Engine, directory: str | Path, split: str, shared_classes: bool = False
                     ) -> tuple[Items, int]:
    """The split's images with labels in the engine's label space, and how many were left out.

    A manifest whose class ids differ from the engine's is refused (its labels would name other classes
    than the engine's outputs) unless `shared_classes`: then images labelled with a class the engine
    lacks are left out and the others' labels are mapped to the engine's indices (unlabelled images stay).
    A split without labels needs no check."""
    from fastprod.data.manifest import Manifest

    manifest = Manifest.load(directory)
    items = Items.of_split(manifest.split(split))
    if manifest.class_ids == engine.class_ids or not (items.labels >= 0).any():
        return items, 0
    index = {c: i for i, c in enumerate(engine.class_ids)}
    if not shared_classes:
        common = len(index.keys() & set(manifest.class_ids))
        raise ValueError(f"engine {engine.dir} was trained on {engine.num_classes} classes and manifest {directory} "
                         f"has {manifest.num_classes} ({common} in common, matched by class id): its labels do not "
                         f"index the engine's outputs. --shared-classes scores only the images of the engine's classes")
    left_out = -2  # the label of an image of a class the engine lacks
    mapped = np.array([index.get(manifest.class_ids[y], left_out) if y >= 0 else -1 for y in items.labels])
    keep = np.flatnonzero(mapped != left_out)
    if len(keep) == 0:
        raise ValueError(f"--shared-classes: no {split} image of manifest {directory} is of a class of engine "
                         f"{engine.dir}")
    kept = Items([items.image_ids[j] for j in keep], [items.paths[j] for j in keep], mapped[keep])
    return kept, len(items) - len(kept)


class _ViewDataset(torch.utils.data.Dataset):
    def __init__(self, paths: list[str], indices: np.ndarray, views: Views) -> None:
        self.paths, self.indices, self.views = paths, indices, views

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        index = int(self.indices[i])
        try:
            return index, make_views(load_rgb(self.paths[index]), self.views), ""
        except ImageError as err:
            return index, blank_views(self.views), str(err) or "decode error"


def _collate(batch):
    index, views, errors = zip(*batch)
    return torch.tensor(index), torch.stack(views), list(errors)


def _fingerprint(items: Items, engine: Engine, topk: int, probs: bool, chunk: int) -> str:
    h = hashlib.sha256()
    for part in (items.image_ids, items.paths, items.labels.tolist(), engine.meta["views"],
                 engine.meta["checkpoints"], engine.class_ids, [topk, probs, chunk]):
        h.update(json.dumps(part).encode())
    return h.hexdigest()


def _part_table(ids, labels, ok, errors, top_p, top_i, class_ids) -> pa.Table:
    top1 = top_i[:, 0]
    return pa.table({
        "image_id": pa.array(ids, pa.string()), "label": pa.array(labels, pa.int32()),
        "ok": pa.array(ok), "error": pa.array(errors, pa.string()),
        "pred": pa.array(top1, pa.int32()),
        "class_id": pa.array([class_ids[c] if c >= 0 else None for c in top1], pa.string()),
        "topk_labels": pa.array(list(top_i), pa.list_(pa.int32())),
        "topk_probs": pa.array(list(top_p), pa.list_(pa.float32())),
    })


def topk_rows(probs: torch.Tensor, ok: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k probabilities and labels per row; rows not ok get label -1 and NaN."""
    p, i = probs.float().topk(min(k, probs.shape[1]), dim=1)
    p, i = p.numpy().astype(np.float32), i.numpy().astype(np.int32)
    p[~ok], i[~ok] = np.nan, -1
    return p, i


def score(engine: Engine, items: Items, out: str | Path, *, topk: int = 5, save_probs: bool = False,
          csv: bool = False, batch: int = 256, chunk: int = 2048, workers: int = 2, progress: bool = True,
          stop_after_chunks: int | None = None) -> dict:
    """Score `items` into `out`, resuming a previous run with the same inputs. Returns the summary."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "parts").mkdir(exist_ok=True)
    n, num_views, C = len(items), len(engine.views), engine.num_classes
    fingerprint = _fingerprint(items, engine, topk, save_probs, chunk)
    meta_path, progress_path = out / "meta.json", out / "progress.json"
    done = 0
    if meta_path.is_file():
        previous = json.loads(meta_path.read_text())
        if previous.get("fingerprint") != fingerprint:
            raise FileExistsError(f"{out} holds the scores of other inputs (images, engine, topk, --probs or --chunk "
                                  f"differ); remove it or choose another --out")
        if progress_path.is_file():
            done = int(json.loads(progress_path.read_text())["chunks_done"])
    else:
        pq.write_table(pa.table({"image_id": items.image_ids, "path": items.paths,
                                 "label": pa.array(items.labels, pa.int32())}), out / "images.parquet")
        write_json(meta_path, {
            "fingerprint": fingerprint, "engine": str(engine.dir.resolve()), "backend": engine.backend,
            "precision": engine.precision, "checkpoints": engine.meta["checkpoints"], "views": engine.meta["views"],
            "num_views": num_views, "images": n, "num_classes": C, "class_ids": engine.class_ids, "topk": topk,
            "probs": save_probs, "chunk": chunk}, indent=1)
        write_json(progress_path, {"chunks_done": 0, "complete": False}, indent=1)
    chunks = (n + chunk - 1) // chunk
    probs_mm = None
    if save_probs:
        path = out / "probs.npy"
        probs_mm = (np.load(path, mmap_mode="r+") if path.is_file()
                    else np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(n, C)))
    start = done * chunk
    images_per_batch = max(1, batch // num_views)
    loader = torch.utils.data.DataLoader(
        _ViewDataset(items.paths, np.arange(start, n), engine.views), batch_size=images_per_batch,
        num_workers=workers, collate_fn=_collate, persistent_workers=False)
    bar = tqdm(total=n, initial=start, unit="img", desc="score", disable=not progress, dynamic_ncols=True)
    buf_p, buf_i, buf_err, buf_start = [], [], [], start  # results of rows buf_start.. not yet in a part
    next_chunk = done
    for index, views, errors in loader:
        probs = average_views(engine(views.flatten(0, 1)), num_views)
        ok = np.array([not e for e in errors])
        p, i = topk_rows(probs, ok, topk)
        if probs_mm is not None:
            rows = probs.numpy().astype(np.float16)
            rows[~ok] = np.nan
            probs_mm[int(index[0]):int(index[-1]) + 1] = rows
            release_rows(probs_mm, int(index[0]), int(index[-1]) + 1)  # resident: one batch, not [N, C]
        buf_p.append(p), buf_i.append(i), buf_err.extend(errors)
        bar.update(len(index))
        filled = int(index[-1]) + 1
        while next_chunk < chunks and filled >= min(n, (next_chunk + 1) * chunk):
            hi = min(n, (next_chunk + 1) * chunk)
            P, I, end = np.concatenate(buf_p), np.concatenate(buf_i), hi - buf_start
            ok_part = np.array([not e for e in buf_err[:end]])
            table = _part_table(items.image_ids[buf_start:hi], items.labels[buf_start:hi], ok_part, buf_err[:end],
                                P[:end], I[:end], engine.class_ids)
            if probs_mm is not None:
                probs_mm.flush()  # the probabilities reach the file before the chunk counts as done
            atomic_write(out / "parts" / f"part-{next_chunk:05d}.parquet", lambda tmp: pq.write_table(table, tmp))
            next_chunk += 1
            write_json(progress_path, {"chunks_done": next_chunk, "complete": False}, indent=1)
            buf_p, buf_i, buf_err, buf_start = [P[end:]], [I[end:]], buf_err[end:], hi
            if stop_after_chunks is not None and next_chunk - done >= stop_after_chunks:
                bar.close()
                return {"stopped_after_chunk": next_chunk}
    bar.close()
    del probs_mm
    table = pa.concat_tables([pq.read_table(out / "parts" / f"part-{c:05d}.parquet") for c in range(chunks)])
    pq.write_table(table, out / "predictions.parquet")
    if csv:
        import pyarrow.csv as pacsv

        flat = table.set_column(table.schema.get_field_index("topk_labels"), "topk_labels",
                                pa.array([" ".join(map(str, r)) for r in table["topk_labels"].to_pylist()]))
        flat = flat.set_column(flat.schema.get_field_index("topk_probs"), "topk_probs",
                               pa.array([" ".join(f"{x:.6g}" for x in r) for r in flat["topk_probs"].to_pylist()]))
        pacsv.write_csv(flat, out / "predictions.csv")
    ok = np.asarray(table["ok"].to_numpy(zero_copy_only=False))
    labels, pred = items.labels, table["pred"].to_numpy()
    known = ok & (labels >= 0)
    summary = {"images": n, "failed": int((~ok).sum()), "views": num_views, "chunks": chunks,
               "top1_error": float((pred[known] != labels[known]).mean()) if known.any() else None,
               "labelled": int(known.sum())}
    write_json(progress_path, {"chunks_done": chunks, "complete": True}, indent=1)
    write_json(out / "summary.json", summary, indent=1)
    failed = [(items.paths[j], table["error"][j].as_py()) for j in np.flatnonzero(~ok)]
    for path, reason in failed[:20]:
        print(f"score: could not decode {path}: {reason} (scored as missing)")
    return summary


@cli_errors("score")
def run(args) -> int:
    if bool(args.manifest) == bool(args.images):
        raise ValueError("give exactly one of --manifest or --images")
    if args.shared_classes and not args.manifest:
        raise ValueError("--shared-classes is for --manifest (--images has no labels)")
    engine = Engine(args.engine, args.device)
    if engine.device.type == "cpu" and args.threads:
        torch.set_num_threads(args.threads)
    if args.manifest:
        items, left_out = items_for_engine(engine, args.manifest, args.split, args.shared_classes)
        if left_out:
            print(f"score: --shared-classes: {left_out} of {len(items) + left_out} {args.split} images left out "
                  f"(labelled with classes engine {args.engine} was not trained on)")
    else:
        items = items_from_paths(args.images)
    summary = score(engine, items, args.out, topk=args.topk, save_probs=args.probs, csv=args.csv, batch=args.batch,
                    chunk=args.chunk, workers=args.workers, progress=not args.no_progress)
    print(json.dumps(summary))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("score", help="score images with a TTA engine: top-k and probabilities")
    p.add_argument("--engine", required=True, type=Path, help="ENGINE_DIR written by `fastprod export`")
    p.add_argument("--manifest", type=Path, help="a prepared dataset (fastprod prepare --out)")
    p.add_argument("--split", default="val", help="with --manifest: which split to score")
    p.add_argument("--shared-classes", action="store_true",
                   help="with --manifest of other classes than the engine's: score only the images of the engine's "
                        "classes (labels mapped by class id)")
    p.add_argument("--images", nargs="+", help="image files or directories (searched recursively)")
    p.add_argument("--out", required=True, type=Path, help="output directory PRED (resumed if it exists)")
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--probs", action="store_true", help="also write the float16 [N, C] probability matrix probs.npy")
    p.add_argument("--csv", action="store_true", help="also write predictions.csv")
    p.add_argument("--batch", type=int, default=256, help="views per engine call (images x views)")
    p.add_argument("--chunk", type=int, default=2048, help="images per resumable chunk")
    p.add_argument("--workers", type=int, default=2, help="decoding processes")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for the engine (0: torch's default)")
    p.add_argument("--device", default=None)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)
