"""Distillation losses: a student's projected features against a frozen teacher's.

Every function takes student S and teacher T features [B, H, F] (H feature dims, F frames,
already aligned to the same frames) and an optional frame mask [B, F] (1 = a real frame,
0 = padding past the end of a short file), and returns an unweighted scalar.

- `cosine_loss`: 1 - cos(S[b, :, f], T[b, :, f]), averaged over the real frames
  (Mimi's semantic distillation; the loss `cosine_similarity` turns into).
- `d_axis_loss`: SpeechTokenizer's loss as its maintainers corrected it. For each item b
  and feature dimension d, the cosine similarity *over time* between the student's
  trajectory S[b, d, :] and the teacher's T[b, d, :]; the loss is
  -mean over (b, d) of log sigmoid(cos_d). (The paper printed the similarity over the
  feature axis inside the sigmoid: a different, per-frame loss.)
- `mse_loss`: mean squared error against the teacher's features normalised per frame
  (zero mean, unit variance over the H dims, no affine), X-Codec/DualCodec style; the
  normalisation keeps a teacher whose features have a large scale from dominating.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = 1e-8


def _mask(mask: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """[B, F] float mask (all ones when None)."""
    if mask is None:
        return like.new_ones(like.shape[0], like.shape[-1])
    if mask.shape != (like.shape[0], like.shape[-1]):
        raise ValueError(f"mask must be [batch, frames] = {(like.shape[0], like.shape[-1])}, "
                         f"got {tuple(mask.shape)}")
    return mask.to(like.dtype)


def _check(student: torch.Tensor, teacher: torch.Tensor) -> None:
    if student.shape != teacher.shape or student.dim() != 3:
        raise ValueError(f"student and teacher features must both be [batch, dims, frames] "
                         f"of one shape, got {tuple(student.shape)} and {tuple(teacher.shape)}")


def frame_cosine(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of each frame's feature vectors: [B, H, F] x 2 -> [B, F]."""
    _check(student, teacher)
    return F.cosine_similarity(student.float(), teacher.float(), dim=1, eps=EPS)


def masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of values [B, F] over the frames where mask [B, F] is 1."""
    m = _mask(mask, values[:, None])
    return (values * m).sum() / m.sum().clamp_min(1.0)


def cosine_loss(student: torch.Tensor, teacher: torch.Tensor,
                mask: torch.Tensor | None = None) -> torch.Tensor:
    """1 - per-frame cosine similarity, averaged over real frames."""
    return 1.0 - masked_mean(frame_cosine(student, teacher), mask)


def axis_cosine(student: torch.Tensor, teacher: torch.Tensor,
                mask: torch.Tensor | None = None) -> torch.Tensor:
    """Cosine similarity over time of each dimension's trajectory: [B, H, F] x 2 -> [B, H].
    Padding frames are zeroed in both, so they add nothing to either the dot product or
    the norms."""
    _check(student, teacher)
    m = _mask(mask, student)[:, None]
    s, t = student.float() * m, teacher.float() * m
    dot = (s * t).sum(-1)
    return dot / (s.norm(dim=-1) * t.norm(dim=-1)).clamp_min(EPS)


def d_axis_loss(student: torch.Tensor, teacher: torch.Tensor,
                mask: torch.Tensor | None = None) -> torch.Tensor:
    """-mean over (item, dim) of log sigmoid(cosine over time) (SpeechTokenizer, corrected)."""
    return -F.logsigmoid(axis_cosine(student, teacher, mask)).mean()


def mse_loss(student: torch.Tensor, teacher: torch.Tensor,
             mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error against per-frame normalised teacher features."""
    _check(student, teacher)
    t = teacher.float()
    t = (t - t.mean(dim=1, keepdim=True)) / (t.var(dim=1, unbiased=False, keepdim=True)
                                             + 1e-5).sqrt()
    per_frame = (student.float() - t).pow(2).mean(dim=1)  # [B, F]
    return masked_mean(per_frame, mask)


DISTILL_LOSSES = {"cosine": cosine_loss, "d_axis": d_axis_loss, "mse": mse_loss}


def best_constant_cosine(teacher: torch.Tensor, mask: torch.Tensor | None = None
                         ) -> torch.Tensor:
    """The per-frame cosine a constant predictor reaches at best on these teacher frames.

    The vector c maximising sum_f cos(c, t_f) is the mean of the L2-normalised frames, so this
    is the ceiling of every constant prediction (the teacher's mean feature vector
    included): a student must beat it to have learned anything frame-specific.
    """
    t = F.normalize(teacher.float(), dim=1, eps=EPS)  # [B, H, F]
    m = _mask(mask, teacher)[:, None]
    c = (t * m).sum(dim=(0, 2)) / m.sum().clamp_min(1.0)  # [H]
    c = c[None, :, None].expand_as(t)
    return masked_mean(frame_cosine(c, t), mask)
