"""Evaluation of cross-domain reenactment: the paper's Table 1 (FID, KDR) and loss ablation.

One workflow, one place (thin scripts in ``scripts/`` call it):

* :mod:`.protocol` — the evaluation pairs, fixed once in a CSV: VoxCeleb test videos × AnimeCeleb
  test identities, seeded assignment, frame sampling and count; the data layout readers.
* :mod:`.render` — renders a protocol with one morph mapping (EDTN checkpoint, ``basis_fit`` or
  ``vertex_fit``) on the inference stages of :mod:`reenact.stages`: PNG frames and the 20-dim
  poses per pair; resumable, sharded, atomic.
* :mod:`.anime_landmarks` — the 28-point anime face landmark detector of hysts/anime-face-detector
  (HRNetV2-W18) ported to plain PyTorch on timm's ``hrnet_w18``.
* :mod:`.metrics` — FID (torch-fidelity with our Inception weights asset), KDR (our documented
  definition; the paper's is not published) and the geometry errors of a mapping.
* :mod:`.tables` — Table 1 and the ablation table as Markdown / CSV / JSON and a bar chart.
"""
