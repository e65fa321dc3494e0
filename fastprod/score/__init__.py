"""Scoring (seed section 5, multi-scale TTA and scoring; section 6, the class-based ensemble): export
trained weights as an engine, score images with test-time augmentation, ensemble the scores.

The modules depend on each other in one direction only (tests/score/test_backends.py checks it), lowest first:
    tta, items, graph        views of an image; the images to score; the scoring graph (ScoringModule)
    backends/                one module per export backend, registered by name in backends/__init__.py
    calibration              int8 calibration views (tta, items)
    engine                   `fastprod export` and Engine (backends, graph, tta; calibration)
    score                    `fastprod score` (engine, items, tta)
    weighted_topk, ensemble  `fastprod ensemble` (ensemble takes engine's `cli_errors`)
"""
