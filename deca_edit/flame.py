"""FLAME head model as DECA uses it: chumpy-free loader, LBS, landmarks, orthographic projection.

Conventions (the exact facts are in ``../shared/reference/parity/flame_deca/README.md`` §1-3):

* Units are metres and radians; axes x = subject's left, y = up, z = forward.
* ``shape`` (B, n_shape) and ``exp`` (B, n_exp) are FLAME coefficients; the directions used are
  ``shapedirs[:, :, :n_shape]`` and ``shapedirs[:, :, 300:300 + n_exp]`` of the model file.
* ``pose`` (B, 6) = [global axis-angle (3), jaw axis-angle (3)]. The full FLAME pose (B, 15) is
  [global, neck = 0, jaw, left eye = 0, right eye = 0]. Rotations are axis-angle only.
* ``landmarks2d`` are **3-D points** (B, 68, 3): 17 yaw-dependent contour points followed by 51
  static points (iBUG-68 order). ``landmarks3d`` (B, 68, 3) use the fixed 68-point embedding.

Geometry lives in pure functions (:func:`batch_rodrigues`, :func:`lbs`,
:func:`vertices_to_landmarks`, :func:`orthographic_projection`, :func:`yaw_from_rotation`,
:func:`contour_lut_rows`); :class:`FLAME` only holds the model data as non-persistent buffers, so
no licensed data ever ends up in a ``state_dict``.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import NamedTuple, Union

import numpy as np
import scipy.sparse
import torch
from torch import nn
from torch.nn import functional as F

from infra.pickle_files import load_flame_model, load_landmark_embedding

__all__ = [
    "FlameOutput",
    "FLAME",
    "load_flame_model",
    "load_landmark_embedding",
    "batch_rodrigues",
    "lbs",
    "vertices_to_landmarks",
    "orthographic_projection",
    "yaw_from_rotation",
    "contour_lut_rows",
]

PathLike = Union[str, os.PathLike]

# ----------------------------------------------------------------------------- constants
#: Number of identity (shape) directions in a FLAME file; expression directions start here.
FLAME_SHAPE_SPACE_DIM = 300
#: Number of expression directions in FLAME 2020.
FLAME_EXPR_SPACE_DIM = 100
#: FLAME joints: 0 root/global, 1 neck, 2 jaw, 3 left eye, 4 right eye.
NUM_JOINTS = 5
NECK_JOINT = 1
#: DECA adds this to every axis-angle component before taking the norm (exact DECA convention).
RODRIGUES_EPS = 1e-8
#: Contour look-up table: rows 0..39 for yaw 0..39 deg, rows 40..78 for yaw -1..-39 deg.
CONTOUR_MAX_YAW_DEG = 39
CONTOUR_LUT_ROWS = 2 * CONTOUR_MAX_YAW_DEG + 1  # 79
NUM_CONTOUR_LANDMARKS = 17
NUM_STATIC_LANDMARKS = 51
NUM_LANDMARKS = NUM_CONTOUR_LANDMARKS + NUM_STATIC_LANDMARKS  # 68
#: Length of the DECA pose vector: global axis-angle (3) + jaw axis-angle (3).
POSE_DIM = 6

_MODEL_KEYS = ("v_template", "f", "shapedirs", "posedirs", "J_regressor", "weights",
               "kintree_table")


# ----------------------------------------------------------------------------- pure geometry
def batch_rodrigues(rvec: torch.Tensor) -> torch.Tensor:
    """Axis-angle vectors to rotation matrices, with DECA's exact angle convention.

    angle = ||r + 1e-8|| (1e-8 added to each component before the norm), axis = r / angle,
    R = I + sin(angle) K + (1 - cos(angle)) K^2 with K the cross-product matrix of the axis.
    A zero vector gives exactly the identity.

    Args:
        rvec: (N, 3) axis-angle vectors, radians.
    Returns:
        (N, 3, 3) rotation matrices, same dtype/device.
    """
    if rvec.ndim != 2 or rvec.shape[1] != 3:
        raise ValueError(f"rvec: expected shape (N, 3), got {tuple(rvec.shape)}")
    angle = torch.linalg.vector_norm(rvec + RODRIGUES_EPS, dim=1, keepdim=True)  # (N,1)
    axis = rvec / angle
    cos = torch.cos(angle).unsqueeze(-1)  # (N,1,1)
    sin = torch.sin(angle).unsqueeze(-1)
    ax, ay, az = axis.unbind(dim=1)
    zero = torch.zeros_like(ax)
    skew = torch.stack([zero, -az, ay, az, zero, -ax, -ay, ax, zero], dim=1).view(-1, 3, 3)
    eye = torch.eye(3, dtype=rvec.dtype, device=rvec.device).unsqueeze(0)
    return eye + sin * skew + (1.0 - cos) * torch.bmm(skew, skew)


def _rigid_transforms(rot_mats: torch.Tensor, joints: torch.Tensor,
                      parents: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward kinematics.

    Args:
        rot_mats: (B, J, 3, 3) local joint rotations.
        joints: (B, J, 3) rest joint positions.
        parents: parent index per joint, ``-1`` for the root; parents precede children.
    Returns:
        posed joints (B, J, 3) and skinning transforms (B, J, 4, 4) that map rest-pose points to
        posed points (the rest joint position is removed).
    """
    batch, n_joints = joints.shape[:2]
    rel = joints.clone()
    parent_idx = torch.tensor(parents[1:], device=joints.device, dtype=torch.long)
    rel[:, 1:] = joints[:, 1:] - joints[:, parent_idx]
    local = torch.zeros(batch, n_joints, 4, 4, dtype=joints.dtype, device=joints.device)
    local[..., :3, :3] = rot_mats
    local[..., :3, 3] = rel
    local[..., 3, 3] = 1.0
    chain = [local[:, 0]]
    for j in range(1, n_joints):
        chain.append(torch.matmul(chain[parents[j]], local[:, j]))
    world = torch.stack(chain, dim=1)  # (B,J,4,4)
    posed_joints = world[..., :3, 3]
    # Skinning transform: world transform with the rest joint position taken out,
    # i.e. T = world @ [I, -j; 0, 1]  ->  translation t - R j.
    offset = torch.matmul(world[..., :3, :3], joints.unsqueeze(-1)).squeeze(-1)
    skin = world.clone()
    skin[..., :3, 3] = world[..., :3, 3] - offset
    return posed_joints, skin


def lbs(betas: torch.Tensor, full_pose: torch.Tensor, v_template: torch.Tensor,
        shapedirs: torch.Tensor, posedirs: torch.Tensor, j_regressor: torch.Tensor,
        parents: list[int], lbs_weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Linear blend skinning with shape/expression blendshapes and pose correctives.

    Args:
        betas: (B, K) shape then expression coefficients.
        full_pose: (B, 3J) axis-angle per joint, radians.
        v_template: (V, 3) template vertices, metres.
        shapedirs: (V, 3, K) blendshape directions.
        posedirs: (P, 3V) pose correctives, P = 9 (J-1); feature = (R_j - I) of joints 1..J-1
            flattened row-major; column = 3 * vertex + xyz.
        j_regressor: (J, V) dense joint regressor.
        parents: parent index per joint (root ``-1``).
        lbs_weights: (V, J) skinning weights.
    Returns:
        vertices (B, V, 3) and posed joints (B, J, 3).
    """
    batch = betas.shape[0]
    n_joints = j_regressor.shape[0]
    n_vertices = v_template.shape[0]
    # (B, K) @ (K, 3V): a plain GEMM on the contiguous (3V, K) view of the directions.
    offsets = F.linear(betas, shapedirs.reshape(3 * n_vertices, -1))
    v_shaped = v_template + offsets.view(batch, n_vertices, 3)
    # (B, 3, V) @ (V, J): folds the batch into one GEMM instead of B broadcast matmuls.
    joints = torch.matmul(v_shaped.transpose(1, 2), j_regressor.T).transpose(1, 2)
    rot_mats = batch_rodrigues(full_pose.reshape(-1, 3)).view(batch, n_joints, 3, 3)
    eye = torch.eye(3, dtype=betas.dtype, device=betas.device)
    pose_feature = (rot_mats[:, 1:] - eye).reshape(batch, -1)
    v_posed = v_shaped + torch.matmul(pose_feature, posedirs).view(batch, -1, 3)
    posed_joints, skin = _rigid_transforms(rot_mats, joints, parents)
    # Blend the top 3x4 block of the joint transforms per vertex with one GEMM, laid out
    # vertex-last, (B, 12, J) @ (J, V) -> (B, 3, 4, V), then apply it to the posed vertices
    # elementwise (far faster on CPU than 5023 tiny batched 3x3 matmuls).
    top = skin[:, :, :3, :].reshape(batch, n_joints, 12).transpose(1, 2)
    col_x, col_y, col_z, translation = (
        torch.matmul(top, lbs_weights.T).view(batch, 3, 4, -1).unbind(dim=2))  # (B, 3, V) each
    x, y, z = (c.unsqueeze(1) for c in v_posed.unbind(dim=2))  # (B, 1, V) each
    moved = torch.addcmul(torch.addcmul(torch.addcmul(translation, col_x, x), col_y, y), col_z, z)
    vertices = moved.transpose(1, 2).contiguous()
    return vertices, posed_joints


def vertices_to_landmarks(vertices: torch.Tensor, faces: torch.Tensor, face_idx: torch.Tensor,
                          bary: torch.Tensor) -> torch.Tensor:
    """Landmarks as barycentric combinations of mesh triangle corners.

    Args:
        vertices: (B, V, 3).
        faces: (F, 3) long vertex indices.
        face_idx: (L,) or (B, L) long triangle index per landmark.
        bary: (L, 3) or (B, L, 3) barycentric weights.
    Returns:
        (B, L, 3) landmark positions (same units as ``vertices``). Linear in ``vertices``.
    """
    batch = vertices.shape[0]
    if face_idx.ndim == 1:
        face_idx = face_idx.unsqueeze(0).expand(batch, -1)
    if bary.ndim == 2:
        bary = bary.unsqueeze(0).expand(batch, -1, -1)
    tri = faces[face_idx]  # (B,L,3)
    rows = torch.arange(batch, device=vertices.device).view(-1, 1, 1)
    corners = vertices[rows, tri]  # (B,L,3 corners,3 xyz)
    return (corners * bary.to(vertices.dtype).unsqueeze(-1)).sum(dim=2)


def orthographic_projection(points: torch.Tensor, cam: torch.Tensor) -> torch.Tensor:
    """DECA's weak-perspective camera: p = s * (x + tx, y + ty, z).

    No axis is flipped here. DECA's decode flips y afterwards for ``landmarks2d`` and flips both
    y and z for ``landmarks3d`` and the transformed vertices; EDTN keeps (x, -y) of
    ``landmarks2d`` projected with cam = [10, 0, 0]. Callers apply such flips explicitly.

    Args:
        points: (B, N, 3).
        cam: (B, 3) = [scale s, tx, ty].
    Returns:
        (B, N, 3) projected points (z scaled by s too).
    """
    if points.ndim != 3 or points.shape[-1] != 3:
        raise ValueError(f"points: expected shape (B, N, 3), got {tuple(points.shape)}")
    if cam.ndim != 2 or cam.shape != (points.shape[0], 3):
        raise ValueError(f"cam: expected shape ({points.shape[0]}, 3), got {tuple(cam.shape)}")
    scale = cam[:, None, 0:1]
    shift = torch.cat([cam[:, 1:], torch.zeros_like(cam[:, :1])], dim=1).unsqueeze(1)
    return scale * (points + shift)


def yaw_from_rotation(rot: torch.Tensor) -> torch.Tensor:
    """Head yaw in degrees as DECA's FLAME.forward computes it (not negated).

    yaw = atan2(-R[2,0], sqrt(R[0,0]^2 + R[1,0]^2)) * 180 / pi.

    Args:
        rot: (B, 3, 3) rotation, normally R_global @ R_neck.
    Returns:
        (B,) yaw in degrees.
    """
    cos_yaw = torch.sqrt(rot[:, 0, 0] ** 2 + rot[:, 1, 0] ** 2)
    return torch.atan2(-rot[:, 2, 0], cos_yaw) * (180.0 / math.pi)


def contour_lut_rows(yaw_deg: torch.Tensor) -> torch.Tensor:
    """Row of the 79-row contour look-up table for a yaw in degrees (DECA's rule).

    y = round_half_to_even(min(yaw, 39)); rows are y for y >= 0, 39 - y for -39 <= y < 0 and
    78 for y < -39.

    Args:
        yaw_deg: (B,) yaw in degrees.
    Returns:
        (B,) long rows in [0, 78].
    """
    y = torch.round(torch.clamp(yaw_deg, max=CONTOUR_MAX_YAW_DEG)).long()
    negative = torch.where(y < -CONTOUR_MAX_YAW_DEG, torch.full_like(y, CONTOUR_LUT_ROWS - 1),
                           CONTOUR_MAX_YAW_DEG - y)
    return torch.where(y < 0, negative, y)


# ----------------------------------------------------------------------------- module
class FlameOutput(NamedTuple):
    """FLAME outputs (metres, FLAME axes, no projection).

    vertices: (B, 5023, 3); landmarks2d: (B, 68, 3) 17 contour + 51 static 3-D points;
    landmarks3d: (B, 68, 3) fixed 68-point embedding.
    """

    vertices: torch.Tensor
    landmarks2d: torch.Tensor
    landmarks3d: torch.Tensor


class FLAME(nn.Module):
    """FLAME layer as DECA uses it: (shape, exp, pose) -> vertices and landmarks.

    No learnable parameters; all model data are buffers with ``persistent=False`` (never in a
    ``state_dict``). ``.to(device)`` / ``.to(torch.float64)`` work as for any module.

    Public buffers: ``v_template`` (V,3), ``shapedirs`` (V,3,n_shape+n_exp), ``posedirs``
    (36,3V), ``j_regressor`` (5,V), ``lbs_weights`` (V,5), ``faces`` (F,3) long, plus the landmark
    embedding (``static_faces_idx``, ``static_bary``, ``dynamic_faces_idx``, ``dynamic_bary``,
    ``full_faces_idx``, ``full_bary``).

    Args:
        model_path: FLAME ``generic_model.pkl`` (explicit path: callers resolve assets, e.g.
            ``infra.assets.resolve_asset("flame_model", cfg_path)``).
        landmark_embedding_path: DECA ``landmark_embedding.npy`` (explicit path).
        n_shape: number of identity coefficients (<= 300).
        n_exp: number of expression coefficients (<= 100).
        dtype: floating dtype of the buffers (float32 like DECA, or float64).
        check_finite: raise ``ValueError`` on NaN/inf inputs (one device sync per call).
        trust_checkpoint: read both files with a full unpickle (only for files you created; by
            default their pickles are read with an allow-list, see :mod:`infra.pickle_files`).
    """

    def __init__(self, model_path: PathLike, landmark_embedding_path: PathLike, n_shape: int = 100,
                 n_exp: int = 50, dtype: torch.dtype = torch.float32,
                 check_finite: bool = True, trust_checkpoint: bool = False) -> None:
        super().__init__()
        if not 0 < n_shape <= FLAME_SHAPE_SPACE_DIM:
            raise ValueError(f"n_shape must be in 1..{FLAME_SHAPE_SPACE_DIM}, got {n_shape}")
        if not 0 < n_exp <= FLAME_EXPR_SPACE_DIM:
            raise ValueError(f"n_exp must be in 1..{FLAME_EXPR_SPACE_DIM}, got {n_exp}")
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating dtype, got {dtype}")
        self.n_shape = n_shape
        self.n_exp = n_exp
        self.check_finite = check_finite

        model_file, embedding_file = Path(model_path), Path(landmark_embedding_path)
        for what, file in (("FLAME model", model_file), ("landmark embedding", embedding_file)):
            if not file.is_file():
                raise FileNotFoundError(f"{what} file not found: {file}")
        model = load_flame_model(model_file, trust_checkpoint=trust_checkpoint)
        missing = [k for k in _MODEL_KEYS if k not in model]
        if missing:
            raise ValueError(f"{model_file}: FLAME model lacks keys {missing}")
        emb = load_landmark_embedding(embedding_file, trust_checkpoint=trust_checkpoint)

        n_dirs = model["shapedirs"].shape[-1]
        if n_dirs < FLAME_SHAPE_SPACE_DIM + n_exp:
            raise ValueError(f"{model_file}: shapedirs has {n_dirs} directions, need at least "
                             f"{FLAME_SHAPE_SPACE_DIM + n_exp} for n_exp={n_exp}")
        exp_dirs = slice(FLAME_SHAPE_SPACE_DIM, FLAME_SHAPE_SPACE_DIM + n_exp)
        shapedirs = np.concatenate(
            [model["shapedirs"][:, :, :n_shape], model["shapedirs"][:, :, exp_dirs]], axis=2)
        posedirs = np.asarray(model["posedirs"])
        posedirs = posedirs.reshape(-1, posedirs.shape[-1]).T  # (36, 3V), column = 3v + xyz
        j_regressor = model["J_regressor"]
        j_regressor = j_regressor.toarray() if scipy.sparse.issparse(j_regressor) else j_regressor
        parents = [int(p) for p in np.asarray(model["kintree_table"])[0]]
        parents[0] = -1  # the file stores uint32-max for the root
        if len(parents) != NUM_JOINTS or any(p >= j for j, p in enumerate(parents)):
            raise ValueError(f"{model_file}: unexpected kinematic tree {parents}")
        self.parents = parents

        def buf(name: str, array: np.ndarray, floating: bool = True) -> None:
            tensor = torch.as_tensor(np.ascontiguousarray(array))
            tensor = tensor.to(dtype) if floating else tensor.long()
            self.register_buffer(name, tensor, persistent=False)

        buf("v_template", model["v_template"])
        buf("shapedirs", shapedirs)
        buf("posedirs", posedirs)
        buf("j_regressor", j_regressor)
        buf("lbs_weights", model["weights"])
        buf("faces", np.asarray(model["f"]).astype(np.int64), floating=False)
        buf("static_faces_idx", emb["static_lmk_faces_idx"], floating=False)
        buf("static_bary", emb["static_lmk_bary_coords"])
        buf("dynamic_faces_idx", emb["dynamic_lmk_faces_idx"], floating=False)
        buf("dynamic_bary", emb["dynamic_lmk_bary_coords"])
        buf("full_faces_idx", emb["full_lmk_faces_idx"], floating=False)
        buf("full_bary", emb["full_lmk_bary_coords"])

    # -- checks --------------------------------------------------------------------------
    def _check(self, name: str, value: torch.Tensor, width: int, batch: int | None) -> None:
        expected = f"(B, {width})" if batch is None else f"({batch}, {width})"
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{name}: expected a torch.Tensor of shape {expected}, "
                             f"got {type(value).__name__}")
        bad_batch = batch is not None and value.shape[0] != batch
        if value.ndim != 2 or value.shape[1] != width or bad_batch:
            raise ValueError(f"{name}: expected shape {expected}, got {tuple(value.shape)}")
        if value.dtype != self.v_template.dtype:
            raise ValueError(f"{name}: dtype {value.dtype} does not match the FLAME buffers "
                             f"({self.v_template.dtype}); cast the input or call flame.to(dtype)")
        if self.check_finite and not bool(torch.isfinite(value).all()):
            raise ValueError(f"{name}: contains NaN or inf")

    # -- landmark maps (linear in the vertices) -------------------------------------------
    def contour_rows(self, pose: torch.Tensor) -> torch.Tensor:
        """Contour LUT row per sample from the head yaw of ``pose`` (B, 6) -> (B,) long.

        Uses R = R_global @ R_neck with the neck pose zero (R_neck is exactly I).
        """
        self._check("pose", pose, POSE_DIM, None)
        return self._contour_rows(pose)

    @staticmethod
    def _contour_rows(pose: torch.Tensor) -> torch.Tensor:
        rot_global = batch_rodrigues(pose[:, :3])
        rot_neck = batch_rodrigues(torch.zeros_like(pose[:, :3]))
        return contour_lut_rows(yaw_from_rotation(torch.bmm(rot_global, rot_neck)))

    def _check_vertices(self, vertices: torch.Tensor) -> None:
        n_vertices = self.v_template.shape[0]
        if vertices.ndim != 3 or vertices.shape[1:] != (n_vertices, 3):
            raise ValueError(f"vertices: expected shape (B, {n_vertices}, 3), "
                             f"got {tuple(vertices.shape)}")

    def landmarks2d_from_vertices(self, vertices: torch.Tensor,
                                  lut_rows: torch.Tensor) -> torch.Tensor:
        """DECA ``landmarks2d`` (B, 68, 3) from vertices (B, V, 3): the 17 contour points of the
        LUT rows ``lut_rows`` (B,) long (see :meth:`contour_rows`), then the 51 static points."""
        self._check_vertices(vertices)
        batch = vertices.shape[0]
        if lut_rows.shape != (batch,) or lut_rows.dtype != torch.long:
            raise ValueError(f"lut_rows: expected a long tensor of shape ({batch},), "
                             f"got {lut_rows.dtype} {tuple(lut_rows.shape)}")
        face_idx = torch.cat([self.dynamic_faces_idx[lut_rows],
                              self.static_faces_idx.unsqueeze(0).expand(batch, -1)], dim=1)
        bary = torch.cat([self.dynamic_bary[lut_rows],
                          self.static_bary.unsqueeze(0).expand(batch, -1, -1)], dim=1)
        return vertices_to_landmarks(vertices, self.faces, face_idx, bary)

    def landmarks3d_from_vertices(self, vertices: torch.Tensor) -> torch.Tensor:
        """DECA ``landmarks3d`` (B, 68, 3) from the fixed embedding, vertices (B, V, 3)."""
        self._check_vertices(vertices)
        return vertices_to_landmarks(vertices, self.faces, self.full_faces_idx, self.full_bary)

    def full_pose(self, pose: torch.Tensor) -> torch.Tensor:
        """(B, 6) [global, jaw] -> (B, 15) [global, neck = 0, jaw, eyes = 0]."""
        zeros = pose.new_zeros(pose.shape[0], 3)
        return torch.cat([pose[:, :3], zeros, pose[:, 3:], zeros, zeros], dim=1)

    def forward(self, shape: torch.Tensor, exp: torch.Tensor, pose: torch.Tensor) -> FlameOutput:
        """Run FLAME.

        Args:
            shape: (B, n_shape) identity coefficients.
            exp: (B, n_exp) expression coefficients.
            pose: (B, 6) [global axis-angle, jaw axis-angle], radians.
        Returns:
            :class:`FlameOutput` (vertices (B,5023,3), landmarks2d (B,68,3), landmarks3d (B,68,3)).
        """
        self._check("shape", shape, self.n_shape, None)
        batch = shape.shape[0]
        self._check("exp", exp, self.n_exp, batch)
        self._check("pose", pose, POSE_DIM, batch)
        betas = torch.cat([shape, exp], dim=1)
        vertices, _ = lbs(betas, self.full_pose(pose), self.v_template, self.shapedirs,
                          self.posedirs, self.j_regressor, self.parents, self.lbs_weights)
        with torch.no_grad():
            rows = self._contour_rows(pose)
        return FlameOutput(vertices, self.landmarks2d_from_vertices(vertices, rows),
                           self.landmarks3d_from_vertices(vertices))

    def extra_repr(self) -> str:
        return (f"n_shape={self.n_shape}, n_exp={self.n_exp}, vertices={self.v_template.shape[0]}, "
                f"dtype={self.v_template.dtype}")
