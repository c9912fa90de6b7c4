"""ISD-style relational KL distillation (ACTION stages i and ii, methods.md sections 3.2 and 3.3).

The teacher embedding ``v`` and the student embedding ``w`` are each compared with a set of anchor
embeddings ``q_1..q_K`` (a FIFO queue of recent teacher embeddings). Their relational distributions

    p_t(k) = softmax_k( cos(v, q_k) / tau_t ),    p_s(k) = softmax_k( cos(w, q_k) / tau_s )

are matched with KL(p_t || p_s) (teacher as the target, as the official code does; the paper writes
the arguments the other way round), summed over the anchors and averaged over the rows.
"""
import torch
import torch.nn.functional as F

from nnunet_semicl.losses.numerics import at_least_fp32, zero_with_graph


def relational_kl_loss(student: torch.Tensor, teacher: torch.Tensor, anchors: torch.Tensor,
                       tau_student: float = 0.1, tau_teacher: float = 0.01) -> torch.Tensor:
    """KL(p_teacher || p_student) of the relational distributions over the anchors; 0-d fp32 tensor.

    Args:
        student: ``[N, D]`` (or ``[*lead, D]``) student embeddings, with gradient.
        teacher: same shape, teacher embeddings; treated as constants (detached).
        anchors: ``[K, D]`` shared by every row, or ``[N, K, D]`` (generally ``[*lead, K, D]``, leading
            dims broadcast against the student's) with one anchor set per row, e.g. the local
            windows of ACTION's stage ii where every window position has its own queue: student
            ``[B, nW, E]`` with anchors ``[nW, K, E]``. Anchors are treated as constants.
        tau_student / tau_teacher: temperatures (paper, 2D: 0.1 / 0.01; the 3D script: 0.1 / 0.6).

    All similarity maths runs in fp32 (fp64 inputs stay fp64) with autocast disabled. ``K == 0`` (an empty queue) or no row
    returns a zero that keeps the graph.
    """
    if student.shape != teacher.shape:
        raise ValueError(f"student {tuple(student.shape)} and teacher {tuple(teacher.shape)} differ")
    if anchors.dim() < 2 or anchors.shape[-1] != student.shape[-1]:
        raise ValueError(f"anchors must be [K, D] or [*lead, K, D] with D={student.shape[-1]}, got {tuple(anchors.shape)}")
    if anchors.shape[-2] == 0 or student.numel() == 0:
        return zero_with_graph(student)
    with torch.autocast(device_type=student.device.type, enabled=False):
        s = F.normalize(at_least_fp32(student), dim=-1)
        t = F.normalize(at_least_fp32(teacher.detach()).to(s.dtype), dim=-1)
        a = F.normalize(at_least_fp32(anchors.detach()).to(s.dtype), dim=-1)
        if a.dim() == 2:
            sim_s = s @ a.t()                                             # [*lead, K]
            sim_t = t @ a.t()
        else:
            at = a.transpose(-1, -2)                                      # [*lead, D, K]
            sim_s = (s.unsqueeze(-2) @ at).squeeze(-2)                    # [*lead, K]
            sim_t = (t.unsqueeze(-2) @ at).squeeze(-2)
        log_p_s = torch.log_softmax(sim_s / tau_student, dim=-1)
        log_p_t = torch.log_softmax(sim_t / tau_teacher, dim=-1)
        # sum_k p_t (log p_t - log p_s); p_t = 0 entries contribute 0 (kl_div with log_target handles it)
        kl = F.kl_div(log_p_s, log_p_t, reduction="none", log_target=True).sum(-1)
        return kl.mean()
