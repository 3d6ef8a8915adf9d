"""Output layouts for ``infer.py``: the anime frame alone, or a grid with the driving frame, the
anime frame, an optional bar chart of the 17 predicted morphs and an optional shaded DECA mesh.

The mesh is drawn by pytorch3d when it is installed (imported lazily) and otherwise by the small
numpy z-buffer rasteriser below (orthographic, Lambert shading with interpolated vertex normals),
which takes a few tens of milliseconds for FLAME's 9,976 faces at 256².

All images here are RGB uint8 ``(H, W, 3)``.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

__all__ = [
    "LAYOUTS",
    "resize_panel",
    "chart_area",
    "morph_bar_chart",
    "label_panel",
    "project_orthographic",
    "rasterize_mesh",
    "render_mesh",
    "compose_grid",
]

LAYOUTS = ("single", "grid")
PANEL_BACKGROUND = 255
CHART_BACKGROUND = (250, 250, 250)
# bar colours by morph group (AnimeCeleb order: 6 eye, 6 eyebrow, 5 mouth)
GROUP_COLOURS = ((66, 133, 244), (52, 168, 83), (234, 67, 53))
GROUP_SIZES = (6, 6, 5)
CHART_MARGIN = 0.04          # fraction of the panel kept free around the chart
GHOST_LIGHTEN = 0.65         # raw-morph ghost bars: group colour blended this far towards white
MESH_COLOUR = np.array([0.78, 0.80, 0.85])
MESH_AMBIENT = 0.25
LIGHT_DIRECTION = np.array([0.0, 0.0, 1.0])  # towards the viewer (camera looks along -z)
BUCKET_SIZES = (2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


def resize_panel(image: np.ndarray, size: int) -> np.ndarray:
    """Letterbox an RGB uint8 image into a ``size``×``size`` white panel (aspect kept)."""
    import cv2

    h, w = image.shape[:2]
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    if (nh, nw) != (h, w):
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        image = cv2.resize(image, (nw, nh), interpolation=interp)
    panel = np.full((size, size, 3), PANEL_BACKGROUND, np.uint8)
    top, left = (size - nh) // 2, (size - nw) // 2
    panel[top:top + nh, left:left + nw] = image
    return panel


def chart_area(size: int) -> tuple[int, int, int, int]:
    """Plot area ``(left, right, top, bottom)`` in pixels of a :func:`morph_bar_chart` panel: the
    title / legend strip is above ``top``, the 0–1 axis labels left of ``left``, the morph indices
    below ``bottom``."""
    margin = int(round(size * CHART_MARGIN))
    text_h = max(8, size // 16)
    return margin + text_h, size - margin, margin + 2 * text_h, size - margin - text_h


def _lighten(colour: Sequence[int], amount: float = GHOST_LIGHTEN) -> tuple[int, int, int]:
    return tuple(int(round(c + (255 - c) * amount)) for c in colour)


def morph_bar_chart(morphs: Sequence[float], size: int = 256,
                    raw: Optional[Sequence[float]] = None) -> np.ndarray:
    """Bar chart of the 17 morphs (values in [0,1]) as an RGB uint8 ``size``×``size`` panel.

    Args:
        morphs: (17,) the morphs that drive the generator (after relative mode, gain, smoothing);
            solid bars coloured by group (eye / eyebrow / mouth).
        size: panel side in pixels.
        raw: optional (17,) mapping output before post-processing, drawn as a light "ghost" bar
            behind each solid bar (a legend says which is which).
    The panel has a title, a 0–1 axis with ticks at 0, 0.5 and 1, and the morph indices.
    """
    import cv2

    values = np.clip(np.asarray(morphs, dtype=np.float64).reshape(-1), 0.0, 1.0)
    ghost = None if raw is None else np.clip(np.asarray(raw, dtype=np.float64).reshape(-1), 0.0, 1.0)
    if ghost is not None and ghost.shape != values.shape:
        raise ValueError(f"raw morphs have shape {ghost.shape}, expected {values.shape}")
    panel = np.empty((size, size, 3), np.uint8)
    panel[:] = CHART_BACKGROUND
    left, right, top, bottom = chart_area(size)
    slot = (right - left) / len(values)
    colours = [c for c, n in zip(GROUP_COLOURS, GROUP_SIZES) for _ in range(n)]
    colours += [GROUP_COLOURS[-1]] * (len(values) - len(colours))
    font = cv2.FONT_HERSHEY_SIMPLEX
    font_scale = size / 900.0
    readable = font_scale > 0.12
    ink = (60, 60, 60)
    for tick in (0.0, 0.5, 1.0):  # y axis: light grid lines and labels
        y = int(round(bottom - tick * (bottom - top)))
        cv2.line(panel, (left, y), (right, y), (215, 215, 215), 1)
        if readable:
            cv2.putText(panel, f"{tick:g}", (2, y + 3), font, font_scale, ink, 1, cv2.LINE_AA)
    cv2.line(panel, (left, bottom), (right, bottom), (0, 0, 0), 1)
    for i, v in enumerate(values):
        x0 = int(round(left + i * slot + 0.15 * slot))
        x1 = max(x0 + 1, int(round(left + (i + 1) * slot - 0.15 * slot)))
        if ghost is not None:
            yg = int(round(bottom - ghost[i] * (bottom - top)))
            if yg < bottom:
                panel[yg:bottom, x0:x1] = _lighten(colours[i])
        y0 = int(round(bottom - v * (bottom - top)))
        if y0 < bottom:
            inset = max(1, (x1 - x0) // 5) if ghost is not None else 0  # ghost stays visible
            panel[y0:bottom, x0 + inset:max(x0 + inset + 1, x1 - inset)] = colours[i]
        if readable:
            cv2.putText(panel, f"{i}", (x0, bottom + (size - bottom) // 2 + 2), font, font_scale,
                        ink, 1, cv2.LINE_AA)
    if readable:
        text_h = max(8, size // 16)
        cv2.putText(panel, "morphs", (left, top - text_h - 2), font, 1.2 * font_scale, (0, 0, 0), 1,
                    cv2.LINE_AA)
        legend_x = left + int(0.45 * (right - left))
        cv2.rectangle(panel, (legend_x, top - text_h - 9), (legend_x + 7, top - text_h - 2),
                      GROUP_COLOURS[0], -1)
        cv2.putText(panel, "drives", (legend_x + 10, top - text_h - 2), font, font_scale, ink, 1,
                    cv2.LINE_AA)
        if ghost is not None:
            cv2.rectangle(panel, (legend_x, top - 9), (legend_x + 7, top - 2),
                          _lighten(GROUP_COLOURS[0]), -1)
            cv2.putText(panel, "raw", (legend_x + 10, top - 2), font, font_scale, ink, 1, cv2.LINE_AA)
    return panel


def label_panel(panel: np.ndarray, text: str) -> np.ndarray:
    """Copy of an RGB uint8 panel with ``text`` in a white box in its top-left corner."""
    import cv2

    out = panel.copy()
    size = out.shape[0]
    scale = size / 700.0
    if scale <= 0.12:
        return out
    (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    cv2.rectangle(out, (0, 0), (w + 6, h + base + 6), (255, 255, 255), -1)
    cv2.putText(out, text, (3, h + 3), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return out


def project_orthographic(vertices: np.ndarray, cam: Sequence[float], size: int) -> np.ndarray:
    """DECA camera (s, tx, ty) → pixel coordinates (V,3): x, y in pixels, z = depth (larger = nearer).

    ``p = s·(x + tx, y + ty)``; y is flipped (image rows grow downwards) and [-1,1] maps onto the
    ``size``-pixel panel, as DECA's crop space maps onto its 224² crop.
    """
    v = np.asarray(vertices, dtype=np.float64)
    s, tx, ty = (float(c) for c in np.asarray(cam).reshape(-1)[:3])
    x = s * (v[:, 0] + tx)
    y = -s * (v[:, 1] + ty)
    half = size / 2.0
    return np.stack([(x + 1) * half - 0.5, (y + 1) * half - 0.5, s * v[:, 2]], -1)


def _vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    tri = vertices[faces]
    face_n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    normals = np.zeros_like(vertices)
    for k in range(3):
        np.add.at(normals, faces[:, k], face_n)
    norm = np.linalg.norm(normals, axis=1, keepdims=True)
    return normals / np.maximum(norm, 1e-12)


def rasterize_mesh(screen: np.ndarray, faces: np.ndarray, size: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Z-buffer rasterisation of triangles given in pixel coordinates.

    Args:
        screen: (V,3) x, y pixel coordinates (pixel centres at integers) and depth (larger = nearer).
        faces: (F,3) vertex indices.
        size: output is ``size``×``size``.
    Returns:
        face_index (size,size) int64 (-1 = background), barycentrics (size,size,3) float64 and
        depth (size,size) float64 (-inf = background).
    """
    faces = np.asarray(faces, dtype=np.int64)
    tri = screen[faces]                                       # (F,3,3)
    lo = np.floor(tri[:, :, :2].min(1)).astype(np.int64)      # (F,2) x, y
    hi = np.ceil(tri[:, :, :2].max(1)).astype(np.int64)
    lo = np.clip(lo, 0, size - 1)
    hi = np.clip(hi, 0, size - 1)
    extent = np.maximum(hi - lo + 1, 0).max(1)
    visible = (hi >= lo).all(1) & (tri[:, :, 0].max(1) >= 0) & (tri[:, :, 1].max(1) >= 0) \
        & (tri[:, :, 0].min(1) <= size - 1) & (tri[:, :, 1].min(1) <= size - 1)
    pix_all, face_all, depth_all, bary_all = [], [], [], []
    previous = 0
    for bucket in BUCKET_SIZES + (size,):
        sel = np.nonzero(visible & (extent > previous) & (extent <= bucket))[0]
        previous = bucket
        if len(sel) == 0:
            continue
        off = np.arange(bucket)
        px = lo[sel, 0, None, None] + off[None, None, :]      # (n,1,k)
        py = lo[sel, 1, None, None] + off[None, :, None]      # (n,k,1)
        px, py = np.broadcast_arrays(px, py)
        t = tri[sel]
        x0, y0 = t[:, 0, 0, None, None], t[:, 0, 1, None, None]
        x1, y1 = t[:, 1, 0, None, None], t[:, 1, 1, None, None]
        x2, y2 = t[:, 2, 0, None, None], t[:, 2, 1, None, None]
        area = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)
        ok_area = np.abs(area) > 1e-12
        area = np.where(ok_area, area, 1.0)
        w0 = ((x1 - px) * (y2 - py) - (x2 - px) * (y1 - py)) / area
        w1 = ((x2 - px) * (y0 - py) - (x0 - px) * (y2 - py)) / area
        w2 = 1.0 - w0 - w1
        inside = (w0 >= 0) & (w1 >= 0) & (w2 >= 0) & ok_area \
            & (px <= hi[sel, 0, None, None]) & (py <= hi[sel, 1, None, None])
        fi, yi, xi = np.nonzero(inside)
        if len(fi) == 0:
            continue
        bw = np.stack([w0[fi, yi, xi], w1[fi, yi, xi], w2[fi, yi, xi]], -1)
        z = (bw * t[fi, :, 2]).sum(-1)
        pix_all.append(py[fi, yi, xi] * size + px[fi, yi, xi])
        face_all.append(sel[fi])
        depth_all.append(z)
        bary_all.append(bw)
    face_index = np.full(size * size, -1, np.int64)
    depth = np.full(size * size, -np.inf)
    bary = np.zeros((size * size, 3))
    if pix_all:
        pix = np.concatenate(pix_all)
        fidx = np.concatenate(face_all)
        z = np.concatenate(depth_all)
        bw = np.concatenate(bary_all)
        order = np.lexsort((-z, pix))                         # by pixel, nearest first
        first = order[np.r_[True, pix[order][1:] != pix[order][:-1]]]
        face_index[pix[first]] = fidx[first]
        depth[pix[first]] = z[first]
        bary[pix[first]] = bw[first]
    return face_index.reshape(size, size), bary.reshape(size, size, 3), depth.reshape(size, size)


def _shade_numpy(vertices: np.ndarray, faces: np.ndarray, screen: np.ndarray, size: int) -> np.ndarray:
    face_index, bary, _ = rasterize_mesh(screen, faces, size)
    # normals in screen orientation (y down flips handedness; z towards the viewer)
    normals = _vertex_normals(vertices, faces)
    image = np.full((size, size, 3), float(PANEL_BACKGROUND))
    hit = face_index >= 0
    if hit.any():
        fv = faces[face_index[hit]]                           # (P,3)
        n = (bary[hit][:, :, None] * normals[fv]).sum(1)
        n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
        lambert = np.abs(n @ LIGHT_DIRECTION)                 # two-sided lighting
        shade = MESH_AMBIENT + (1 - MESH_AMBIENT) * lambert
        image[hit] = 255.0 * shade[:, None] * MESH_COLOUR[None]
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _shade_pytorch3d(vertices: np.ndarray, faces: np.ndarray, screen: np.ndarray, size: int
                     ) -> np.ndarray:  # pragma: no cover - pytorch3d is optional and not in CI
    import torch
    from pytorch3d.renderer import MeshRasterizer, RasterizationSettings
    from pytorch3d.renderer.cameras import FoVOrthographicCameras
    from pytorch3d.structures import Meshes

    # pytorch3d NDC: +x left, +y up; our screen: +x right, +y down, depth larger = nearer.
    ndc = np.stack([-(screen[:, 0] + 0.5) / size * 2 + 1, -(screen[:, 1] + 0.5) / size * 2 + 1,
                    -screen[:, 2] + screen[:, 2].max() + 1.0], -1)
    verts = torch.tensor(ndc, dtype=torch.float32)[None]
    mesh = Meshes(verts=verts, faces=torch.as_tensor(faces, dtype=torch.int64)[None])
    cams = FoVOrthographicCameras(R=torch.eye(3)[None], T=torch.zeros(1, 3))
    raster = MeshRasterizer(cameras=cams, raster_settings=RasterizationSettings(image_size=size))
    frags = raster(mesh)
    pix_to_face = frags.pix_to_face[0, :, :, 0].numpy()
    bary = frags.bary_coords[0, :, :, 0].numpy().astype(np.float64)
    normals = _vertex_normals(vertices, faces)
    image = np.full((size, size, 3), float(PANEL_BACKGROUND))
    hit = pix_to_face >= 0
    if hit.any():
        n = (bary[hit][:, :, None] * normals[faces[pix_to_face[hit]]]).sum(1)
        n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
        shade = MESH_AMBIENT + (1 - MESH_AMBIENT) * np.abs(n @ LIGHT_DIRECTION)
        image[hit] = 255.0 * shade[:, None] * MESH_COLOUR[None]
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def render_mesh(vertices: np.ndarray, faces: np.ndarray, cam: Sequence[float], size: int = 256,
                backend: str = "auto") -> np.ndarray:
    """Shaded orthographic rendering of a mesh (e.g. the DECA/FLAME reconstruction).

    Args:
        vertices: (V,3) model-space vertices (FLAME metres). faces: (F,3) indices.
        cam: DECA orthographic camera (s, tx, ty).
        size: output size in pixels. backend: ``auto`` (pytorch3d if importable, else numpy),
            ``numpy`` or ``pytorch3d``.
    Returns:
        RGB uint8 (size,size,3), grey Lambert-shaded surface on white.
    """
    vertices = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    if vertices.ndim != 2 or vertices.shape[1] != 3 or faces.ndim != 2 or faces.shape[1] != 3:
        raise ValueError(f"render_mesh: vertices (V,3) and faces (F,3) expected, got "
                         f"{vertices.shape} and {faces.shape}")
    screen = project_orthographic(vertices, cam, size)
    if backend == "auto":
        import importlib.util

        backend = "pytorch3d" if importlib.util.find_spec("pytorch3d") is not None else "numpy"
    if backend == "pytorch3d":
        return _shade_pytorch3d(vertices, faces, screen, size)
    if backend != "numpy":
        raise ValueError(f"render backend must be auto, numpy or pytorch3d, got {backend!r}")
    return _shade_numpy(vertices, faces, screen, size)


def compose_grid(driving: np.ndarray, anime: np.ndarray, morphs: Optional[Sequence[float]] = None,
                 mesh: Optional[np.ndarray] = None, raw_morphs: Optional[Sequence[float]] = None,
                 titles: bool = False) -> np.ndarray:
    """One grid frame: driving | [mesh] | anime | [morph chart], all panels at the anime size.

    Args:
        driving: RGB uint8 driving frame (any size; letterboxed into a square panel).
        anime: RGB uint8 (S,S,3) generator output; sets the panel size S.
        morphs: optional 17 morphs in [0,1] that drove the generator → bar chart panel.
        mesh: optional RGB uint8 rendering of the DECA reconstruction.
        raw_morphs: optional 17 mapping outputs before post-processing (ghost bars).
        titles: write "driving", "DECA mesh", "anime" into the panels' corners.
    Returns:
        RGB uint8 (S, n·S, 3) with n = 2, 3 or 4 panels.
    """
    size = anime.shape[0]
    if anime.shape[:2] != (size, size):
        raise ValueError(f"anime frame must be square, got {anime.shape[:2]}")
    named = [("driving", resize_panel(driving, size))]
    if mesh is not None:
        named.append(("DECA mesh", resize_panel(mesh, size)))
    named.append(("anime", anime))
    panels = [label_panel(p, t) if titles else p for t, p in named]
    if morphs is not None:
        panels.append(morph_bar_chart(morphs, size, raw=raw_morphs))
    return np.concatenate(panels, axis=1)
