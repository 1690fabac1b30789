"""PaperSGD's update in one pass over flat buffers: one Triton kernel per parameter group.

:class:`alexnet.optim.PaperSGD` makes four passes over every weight (``v *= m``, ``v -= wd lr w``,
``v -= lr g``, ``w += v``), eleven reads and writes of a float32 per parameter. Here every group's
weights and velocities live in one flat float32 buffer each (the parameters and the
``state[p]["velocity"]`` tensors become views into them, with their own shapes and strides), and
one kernel reads w, g, v and writes w and v, the same operations in the same order:

    v <- m v ;  v <- v + (-wd lr) w ;  v <- v + (-lr) g ;  w <- w + v

Optionally the kernel also writes a bfloat16 copy of the new weights (:meth:`FusedPaperSGD.bf16_weights`)
and folds a non-finite check of the gradients into a device-side flag (:attr:`FusedPaperSGD.nonfinite`,
an int32 that stays 1 once any gradient held a NaN or inf, until :meth:`FusedPaperSGD.reset_nonfinite`):
no value is read back to the host.

Gradients are copied into a flat gradient buffer first unless they already live there: with
``flat_grads=True``, :meth:`zero_grad` zeroes that buffer in one pass and keeps every ``p.grad`` a view
of it, and the backward pass accumulates into it directly. A group where some parameter has no
gradient is stepped exactly as PaperSGD does (those parameters are left alone).

The optimizer's state dict is PaperSGD's (``velocity`` per parameter), so checkpoints move freely
between the two.
"""

from __future__ import annotations

from typing import Iterable

import torch

from alexnet.optim import PaperSGD

try:
    import triton
    import triton.language as tl
except ImportError:
    triton = None

BLOCK = 2048


def available() -> bool:
    return triton is not None


if triton is not None:
    from alexnet.speed.fused_blocks import round_to_bf16

    @triton.jit
    def _paper_sgd(
        w_ptr, g_ptr, v_ptr, w16_ptr, flag_ptr, numel, momentum, decay_step, lr_step,
        WRITE_BF16: tl.constexpr, CHECK: tl.constexpr, BLOCK: tl.constexpr,
    ):
        at = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        inside = at < numel
        w = tl.load(w_ptr + at, mask=inside, other=0.0)
        g = tl.load(g_ptr + at, mask=inside, other=0.0)
        v = tl.load(v_ptr + at, mask=inside, other=0.0)
        v = v * momentum
        v = v + decay_step * w  # decay_step = -wd lr and lr_step = -lr, each rounded once, as PaperSGD's alphas
        v = v + lr_step * g
        w = w + v
        tl.store(v_ptr + at, v, mask=inside)
        tl.store(w_ptr + at, w, mask=inside)
        if WRITE_BF16:
            tl.store(w16_ptr + at, round_to_bf16(w).to(tl.bfloat16), mask=inside)
        if CHECK:
            bad = tl.max(tl.where(inside & ((g != g) | (tl.abs(g) == float("inf"))), 1, 0), axis=0)
            if bad > 0:
                tl.atomic_max(flag_ptr, 1)


def fused_update_(w: torch.Tensor, g: torch.Tensor, v: torch.Tensor, lr: float, momentum: float, weight_decay: float,
                  w16: torch.Tensor | None = None, flag: torch.Tensor | None = None) -> None:
    """The paper's update on flat contiguous float32 tensors, in place (and ``w16``, ``flag`` if given)."""
    numel = w.numel()
    if not numel:
        return
    grid = (triton.cdiv(numel, BLOCK),)
    _paper_sgd[grid](
        w, g, v, w if w16 is None else w16, v if flag is None else flag, numel,
        float(momentum), -float(weight_decay) * float(lr), -float(lr),
        WRITE_BF16=w16 is not None, CHECK=flag is not None, BLOCK=BLOCK,
    )


def _is_dense(t: torch.Tensor) -> bool:
    """Whether ``t``'s elements fill its memory exactly once, in some order of its dimensions."""
    expected = 1
    for stride, size in sorted((st, sz) for sz, st in zip(t.shape, t.stride()) if sz != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def _dense_view(flat: torch.Tensor, offset: int, like: torch.Tensor) -> torch.Tensor:
    """A view of flat[offset : offset + like.numel()] with ``like``'s shape and strides (dense, any order)."""
    return flat.as_strided(like.shape, like.stride(), flat.storage_offset() + offset)


class _Flat:
    """One group's flat buffers and the views handed out of them."""

    def __init__(self, params: list[torch.Tensor], velocities: list[torch.Tensor | None], bf16: bool) -> None:
        for p in params:
            if p.dtype != torch.float32 or not _is_dense(p):
                raise ValueError("FusedPaperSGD needs dense float32 parameters")
        numel = sum(p.numel() for p in params)
        device = params[0].device
        self.w = torch.empty(numel, dtype=torch.float32, device=device)
        self.v = torch.zeros(numel, dtype=torch.float32, device=device)
        self.g = torch.zeros(numel, dtype=torch.float32, device=device)
        self.w16 = torch.empty(numel, dtype=torch.bfloat16, device=device) if bf16 else None
        self.params = params
        self.w_views, self.v_views, self.g_views, self.w16_views = [], [], [], []
        offset = 0
        with torch.no_grad():
            for p, v in zip(params, velocities):
                wv = _dense_view(self.w, offset, p)
                wv.copy_(p)
                vv = _dense_view(self.v, offset, p)
                if v is not None:
                    vv.copy_(v)
                self.w_views.append(wv)
                self.v_views.append(vv)
                self.g_views.append(_dense_view(self.g, offset, p))
                if bf16:
                    self.w16_views.append(_dense_view(self.w16, offset, p))
                offset += p.numel()
            for p, wv in zip(params, self.w_views):
                p.data = wv
            if bf16:
                self.w16.copy_(self.w)
        # the float32 weights' versions the bf16 copy was cast at: torch's in-place writes (a restore,
        # the reference update) move them on; the update kernel, which writes both, does not
        self.w16_of_version = self.w_version()

    def w_version(self) -> tuple[int, ...]:
        """The version counters of the float32 weights: of the buffer, and of each parameter (setting
        ``p.data`` gave each its own counter)."""
        return (self.w._version, *(p._version for p in self.params))

    def still_holds(self, params: list[torch.Tensor]) -> bool:
        """Whether ``params`` are still the views of this buffer (not replaced, moved or re-assigned)."""
        return len(params) == len(self.params) and all(
            p is q and p.data_ptr() == wv.data_ptr() and p.stride() == wv.stride()
            for p, q, wv in zip(params, self.params, self.w_views)
        )


class FusedPaperSGD(PaperSGD):
    """:class:`alexnet.optim.PaperSGD` with the update in one Triton kernel per group over flat buffers.

    Same constructor arguments, parameter groups, schedules and state dict as PaperSGD, plus:

    Args:
        bf16_copy: also keep a bfloat16 copy of the weights, written by the same kernel
            (:meth:`bf16_weights`).
        check_finite: fold a check of the gradients into :attr:`nonfinite` (a device-side int32 flag).
        flat_grads: keep every ``p.grad`` a view of the group's flat gradient buffer; ``zero_grad``
            then zeroes it in place whatever ``set_to_none`` says.

    On devices without Triton (and without ``TRITON_INTERPRET=1``) it steps as PaperSGD does.
    """

    def __init__(self, params: Iterable, lr: float = 0.01, momentum: float = 0.9, weight_decay: float = 5e-4, *,
                 bf16_copy: bool = False, check_finite: bool = False, flat_grads: bool = False) -> None:
        super().__init__(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
        self.bf16_copy, self.check_finite, self.flat_grads = bf16_copy, check_finite, flat_grads
        self._flat: dict[int, _Flat] = {}
        self.nonfinite: torch.Tensor | None = None
        self._checked_every_gradient = False  # of the last step (see checked_nonfinite)

    def _usable(self, device: torch.device) -> bool:
        import os

        return triton is not None and (device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1")

    def _flat_of(self, index: int, params: list[torch.Tensor]) -> _Flat:
        flat = self._flat.get(index)
        if flat is None or not flat.still_holds(params):
            velocities = [self.state[p].get("velocity") for p in params]
            flat = self._flat[index] = _Flat(params, velocities, self.bf16_copy)
            for p, vv in zip(params, flat.v_views):
                self.state[p]["velocity"] = vv
        for p, vv in zip(params, flat.v_views):  # velocities set from outside (a resume) go into the buffer
            v = self.state[p].get("velocity")
            if v is not vv:
                with torch.no_grad():
                    vv.zero_() if v is None else vv.copy_(v)
                self.state[p]["velocity"] = vv
        return flat

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        checked_all = self.check_finite
        for index, group in enumerate(self.param_groups):
            params = group["params"]
            if not params or group.get("frozen", False):  # a frozen group is not updated at all, as in PaperSGD
                checked_all &= all(p.grad is None for p in params)  # its gradients went unchecked
                continue
            if any(p.grad is None for p in params) or not self._usable(params[0].device) \
                    or any(p.grad.is_sparse for p in params):
                self._step_group_reference(group)
                checked_all = False
                continue
            flat = self._flat_of(index, params)
            grads = [p.grad for p in params]
            if not all(g.data_ptr() == gv.data_ptr() and g.stride() == gv.stride() for g, gv in zip(grads, flat.g_views)):
                torch._foreach_copy_(flat.g_views, grads)
                if self.flat_grads:
                    for p, gv in zip(params, flat.g_views):
                        p.grad = gv
            if self.check_finite and (self.nonfinite is None or self.nonfinite.device != flat.w.device):
                self.nonfinite = torch.zeros(1, dtype=torch.int32, device=flat.w.device)
            fused_update_(flat.w, flat.g, flat.v, group["lr"] * group.get("lr_scale", 1.0), group["momentum"],
                          group["weight_decay"], flat.w16, self.nonfinite if self.check_finite else None)
        self._checked_every_gradient = checked_all and self.nonfinite is not None
        return loss

    def checked_nonfinite(self) -> torch.Tensor | None:
        """:attr:`nonfinite` when the last step checked every gradient the model holds (no group
        fell back to the reference update, no frozen group had gradients), else None: then the
        caller checks the gradients itself."""
        return self.nonfinite if self._checked_every_gradient else None

    def _step_group_reference(self, group: dict) -> None:
        """PaperSGD's own arithmetic for one group (parameters without gradients are skipped)."""
        saved = self.param_groups
        self.param_groups = [group]
        try:
            PaperSGD.step(self)
        finally:
            self.param_groups = saved

    def zero_grad(self, set_to_none: bool = True) -> None:
        if not self.flat_grads or not self._flat:
            return super().zero_grad(set_to_none=set_to_none)
        for index, group in enumerate(self.param_groups):
            flat = self._flat.get(index)
            if flat is None or not flat.still_holds(group["params"]):
                for p in group["params"]:
                    p.grad = None
                continue
            flat.g.zero_()
            for p, gv in zip(group["params"], flat.g_views):
                p.grad = gv

    def reset_nonfinite(self) -> None:
        if self.nonfinite is not None:
            self.nonfinite.zero_()

    def bf16_weights(self) -> list[torch.Tensor]:
        """The bfloat16 copies of every group's weights after the last step (empty before the first)."""
        if not self.bf16_copy:
            raise ValueError("construct FusedPaperSGD with bf16_copy=True to keep bfloat16 weights")
        return [t for index in sorted(self._flat) for t in self._flat[index].w16_views]

    def bf16_weights_now(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(parameter, its bfloat16 copy) for every parameter of a group the update has flattened,
        each copy current: a group whose float32 weights something else wrote since is cast again
        first. Empty before the first step."""
        if not self.bf16_copy:
            raise ValueError("construct FusedPaperSGD with bf16_copy=True to keep bfloat16 weights")
        pairs = []
        for index, flat in self._flat.items():
            if index >= len(self.param_groups) or not flat.still_holds(self.param_groups[index]["params"]):
                continue
            if flat.w_version() != flat.w16_of_version:
                with torch.no_grad():
                    flat.w16.copy_(flat.w)
                flat.w16_of_version = flat.w_version()
            pairs.extend(zip(flat.params, flat.w16_views))
        return pairs

    def state_dict(self):
        state = super().state_dict()
        # standalone velocities (views would drag the whole flat buffer into every saved tensor)
        state["state"] = {k: {n: (t.clone() if torch.is_tensor(t) else t) for n, t in s.items()}
                          for k, s in state["state"].items()}
        return state

    def load_state_dict(self, state_dict) -> None:
        super().load_state_dict(state_dict)
        for index, flat in list(self._flat.items()):  # copy the loaded velocities into the flat buffers
            with torch.no_grad():
                for p, vv in zip(flat.params, flat.v_views):
                    v = self.state[p].get("velocity")
                    if v is None:
                        vv.zero_()
                    elif v.data_ptr() != vv.data_ptr():
                        vv.copy_(v)
                    self.state[p]["velocity"] = vv
