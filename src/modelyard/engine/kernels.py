"""The engine's CPU kernels: prepacked oneDNN linear layers and the greedy output head.

:class:`OneDnnLinear` runs a Linear on oneDNN with its weight reordered once. :class:`GreedyHead` is the
float32 output head that can also give each row's greedy token while reading half the head's bytes:
it scores every token with a bfloat16 (or float16) copy of the weights, keeps the blocks of tokens
that an error bound cannot rule out, and scores those again in float32. :func:`first_argmax` is ``argmax`` over
the vocabulary, about ten times faster on the CPU.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch
import torch.nn.functional as F

log = logging.getLogger("modelyard.engine")


class OneDnnLinear(torch.nn.Linear):
    """A Linear whose matmul runs on oneDNN with its weight reordered once into the blocked layout the
    kernel reads (``mkldnn._reorder_linear_weight``, as inductor's freezing pass does), called on dense
    inputs (``mkldnn._linear_pointwise``): no per-call reorder or layout conversion.

    At decode batch sizes the default CPU GEMM reads the weights at a fraction of the memory bandwidth:
    on the Gemma-3-270M shape at batch 8 the body's linear layers ran about 2.3x and the 262k-row output
    head about 4x faster this way. Results differ from the default GEMM's only in the order of float
    additions (~1e-6 relative). ``keep_dense`` keeps the dense weight (the output head: tied embeddings
    share it); otherwise a zero-stride stand-in of the same shape and dtype replaces it, so the weights
    are not held twice."""

    def __init__(self, dense: torch.nn.Linear, *, batch_hint: int = 8, keep_dense: bool = False) -> None:
        super().__init__(dense.in_features, dense.out_features, bias=False, device="meta")
        with torch.inference_mode(False), torch.no_grad():
            self.packed = torch.ops.mkldnn._reorder_linear_weight(dense.weight.detach(), batch_hint)
            if keep_dense:
                self.weight = dense.weight
            else:
                stand_in = torch.zeros(1, 1, dtype=dense.weight.dtype).expand(dense.out_features, dense.in_features)
                self.weight = torch.nn.Parameter(stand_in, requires_grad=False)
            self.bias = dense.bias
        self.dense = keep_dense

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != self.weight.dtype or x.numel() == 0:
            weight = self.weight if self.dense else self.packed.to_dense()
            return F.linear(x.to(weight.dtype), weight, self.bias).to(x.dtype)
        return self._matmul(x, self.packed, self.bias)

    def _matmul(self, x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """oneDNN's matmul with a prepacked weight."""
        return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


@contextlib.contextmanager
def intra_op_threads(threads: int) -> Iterator[None]:
    before = torch.get_num_threads()
    if before == threads:
        yield
        return
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)



def prepack_linears(model: torch.nn.Module, *, greedy_head: bool = False) -> int:
    """Every plain Linear of the model (the output head too) on :class:`OneDnnLinear`; the number moved.
    A layer the kernel refuses stays on the default GEMM. With ``greedy_head`` a float32 output head
    without a bias becomes a :class:`GreedyHead`."""
    if not torch.backends.mkldnn.is_available():
        return 0
    head = model.get_output_embeddings()
    moved = 0
    for name, module in list(model.named_modules()):
        if type(module) is not torch.nn.Linear or module.weight.dtype not in (torch.float32, torch.bfloat16):
            continue
        greedy = module is head and greedy_head and module.bias is None and module.weight.dtype == torch.float32
        try:
            packed = _packed(module, greedy=greedy, keep_dense=module is head)
        except Exception as exc:  # noqa: BLE001 - keep the default GEMM
            log.info("%s stays on the default GEMM (%s)", name, exc)
            continue
        if module is head:
            model.set_output_embeddings(packed)
        else:
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child, packed)
        moved += 1
    return moved



def _packed(module: torch.nn.Linear, *, greedy: bool, keep_dense: bool) -> OneDnnLinear:
    """``module`` on oneDNN, checked against the default GEMM on a few inputs (and, as a
    :class:`GreedyHead`, its greedy tokens against float32 logits' argmax; one that fails stays a plain
    :class:`OneDnnLinear`)."""
    probe = torch.linspace(-1, 1, module.in_features, dtype=module.weight.dtype).unsqueeze(0)
    if greedy:
        try:
            head = GreedyHead(module)
            rows = torch.cat([probe, torch.randn(3, module.in_features, generator=torch.Generator().manual_seed(0))])
            with torch.no_grad(), head.picking():
                head(rows)
            want = first_argmax(F.linear(rows, module.weight))
            if head.tokens != want:
                raise RuntimeError(f"greedy tokens {head.tokens}, float32 logits' {want}")
            head.screened = head.fallbacks = 0
            return head
        except Exception as exc:  # noqa: BLE001 - the plain float32 head
            log.info("the output head runs without the greedy screen (%s)", exc)
    packed = OneDnnLinear(module, keep_dense=keep_dense)
    with torch.no_grad():
        expected, got = F.linear(probe, module.weight, module.bias), packed(probe)
    scale = float(expected.abs().max()) or 1.0
    if not torch.allclose(got, expected, atol=1e-2 * scale, rtol=0):
        raise RuntimeError("results differ from the default GEMM")
    return packed


_FLOAT16_SCREEN_ROWS = 16  # rows up to which the float16 screen beats the float32 head (see GreedyHead)


def available_screens() -> list[str]:
    """The greedy head's screens this CPU runs, preferred first: ``bfloat16`` on oneDNN where oneDNN
    packs it (it refuses without AVX-512 or AVX-NE-CONVERT), ``float16`` on FBGEMM (x86 with AVX2)."""
    screens = ["bfloat16"] if torch.ops.mkldnn._is_mkldnn_bf16_supported() else []
    if "fbgemm" in torch.backends.quantized.supported_engines:
        screens.append("float16")
    return screens


def _screen_weights(weight: torch.Tensor, batch_hint: int, screen: str) -> tuple[str, object, torch.Tensor]:
    """The ``screen`` for a float32 weight: its kind, the kernel's packed weights, and the values the
    kernel multiplies by (in float32, for the error bound)."""
    if screen == "bfloat16":
        low = weight.to(torch.bfloat16)
        return screen, torch.ops.mkldnn._reorder_linear_weight(low, batch_hint), low
    if screen != "float16":
        raise RuntimeError("this CPU has neither a bfloat16 matmul (oneDNN) nor a float16 one (FBGEMM)")
    if float(weight.abs().max()) > torch.finfo(torch.float16).max:
        raise RuntimeError("weights beyond float16's range")
    packed = torch.ops.quantized.linear_prepack_fp16(weight, None)
    return screen, packed, torch.ops.quantized.linear_unpack_fp16(packed)[0]


def _block(vocab: int, largest: int = 256) -> int:
    """The largest power of two up to ``largest`` that divides ``vocab``: the vocabulary as equal blocks."""
    block = largest
    while vocab % block:
        block //= 2
    return block


def first_argmax(logits: torch.Tensor) -> list[int]:
    """``logits.argmax(-1).tolist()`` for ``[rows, vocab]``, the same index (the first maximum; the
    first NaN, as argmax), from a per-block max and two small argmaxes: PyTorch's CPU argmax over a
    long row runs ~10x slower than its max, which vectorises."""
    rows, vocab = logits.shape
    block = _block(vocab)
    if block < 16:
        return logits.argmax(-1).tolist()
    blocks = logits.reshape(rows, vocab // block, block)
    best = blocks.amax(-1).argmax(-1)  # the first block holding the row's maximum
    within = blocks[torch.arange(rows), best].argmax(-1)
    return (best * block + within).tolist()


class GreedyHead(OneDnnLinear):
    """A float32 output head (no bias) whose :meth:`picking` mode returns each row's greedy token
    instead of logits, reading a half-width copy of the head's weights: half the bytes of the largest
    read of a decode step (Gemma-3-270M: 671 of 1,070 MB in float32).

    The copy (the *screen*) is bfloat16 on oneDNN where oneDNN packs bfloat16 (AVX-512, AVX-NE-CONVERT),
    else float16 on FBGEMM (AVX2: float16 weights widened to float32 in registers, the row and the sums
    float32); :attr:`screen` says which. The token is float32's, not the screen's. For a
    row ``x`` and token ``j`` of block ``b``, the float32 sum ``t_j`` of the products ``x~ . W~_j``
    (``W~`` the screen's weights; ``x~`` the row rounded to bfloat16 for the bfloat16 screen, ``x`` itself
    for float16) differs from ``s_j = x . W_j`` by at most
    ``e_b = |x - x~| w_b + |x| d_b + H 2^-23 |x~| w_b``, where ``w_b = max |W~_j|`` and
    ``d_b = max |W~_j - W_j|`` over the block (Cauchy-Schwarz for the two roundings, then the float32
    sum over ``H`` inputs in any order, its products' rounding included: a bfloat16 product is exact in
    float32, a float16 one by a float32 row is not); ``E`` is the row's largest ``e_b``. The kernel returns ``t_j`` rounded to
    its output type, off by at most ``u |t_j|`` (bfloat16: ``u = 2^-8``; float32: ``2^-24``). Let ``M``
    be the largest returned score (token ``k``, block ``c``) and ``j*`` the best token (block ``b``).
    Then ``|t_k| <= |M| / (1 - u)`` and ``|t_j*| <= |M| / (1 - u) + 2E``, and ``score(j*) >= s_j* - e_b -
    u |t_j*| >= s_k - e_b - u |t_j*| >= M - e_c - e_b - 2u (|M| / (1 - u) + E)``: ``j*`` lies in a block
    whose returned maximum reaches that. Those blocks (usually one or two) are scored
    again in float32 from the dense weights and the row's token is their argmax. Ties aside, float32
    logits' argmax picks the same token: both are float32 sums of the same products, in another order.
    With more candidate blocks than four a row plus 16 or a quarter of all blocks, whichever is more (rows
    without a clear winner), or a bound that is not finite, the rows' tokens come from the full float32
    head instead; so do those of a call with more rows than the float16 screen pays off for (16).
    """

    def __init__(self, dense: torch.nn.Linear, *, batch_hint: int = 8, screen: str | None = None) -> None:
        super().__init__(dense, batch_hint=batch_hint, keep_dense=True)
        weight = dense.weight.detach()
        self.block = _block(self.out_features)
        with torch.inference_mode(False), torch.no_grad():
            self.screen, self.low, screened = _screen_weights(weight, batch_hint, screen or next(iter(available_screens()), ""))
            norms, errors = [], []
            for start in range(0, weight.shape[0], 16384):  # float64, a slice at a time
                w = weight[start:start + 16384].double()
                w_low = screened[start:start + 16384].double()
                norms.append(w_low.norm(dim=1))
                errors.append((w_low - w).norm(dim=1))
            del screened
            blocks = self.out_features // self.block
            self.low_norm = torch.cat(norms).reshape(blocks, self.block).amax(-1) * (1 + 1e-6)  # w_b
            self.low_error = torch.cat(errors).reshape(blocks, self.block).amax(-1) * (1 + 1e-6)  # d_b
        self.unit = 2.0**-8 if self.screen == "bfloat16" else 2.0**-24  # the kernel's output rounding
        # FBGEMM's float16 matmul is compute-bound above a few rows (45-67 GFLOP/s here; splitting the
        # vocabulary into cache-sized parts did not help): above 16 rows it is no
        # faster than the float32 head (AVX2 Zen 3, the three real head shapes: 1.2-2.3x at 1-16 rows,
        # 0.97-1.14 at 24, 0.76-0.91 at 32)
        self.max_rows = _FLOAT16_SCREEN_ROWS if self.screen == "float16" else None
        self.greedy = False
        self.tokens: list[int] = []
        self.screened = 0  # rows whose token came from the screen
        self.fallbacks = 0  # rows whose token came from the full float32 head (no clear winner; too many rows)

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """The screen's scores ``[rows, vocab]`` for float32 rows ``[rows, hidden]``."""
        if self.screen == "bfloat16":
            return self._matmul(x.to(torch.bfloat16), self.low, None)
        return torch.ops.quantized.linear_dynamic_fp16(x, self.low)

    @contextlib.contextmanager
    def picking(self) -> Iterator[GreedyHead]:
        """Within: a forward pass returns an empty ``[..., 0]`` tensor and leaves the greedy token of
        each position in :attr:`tokens` (positions in order)."""
        self.greedy, self.tokens = True, []
        try:
            yield self
        finally:
            self.greedy = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.greedy or x.dtype != torch.float32:
            return super().forward(x)
        flat = x.reshape(-1, x.shape[-1])
        self.tokens = self.argmax(flat) if flat.shape[0] else []
        return x.new_empty(*x.shape[:-1], 0)

    def bound(self, x: torch.Tensor) -> torch.Tensor:
        """``e_b`` for each row of ``x`` (float32) and block: ``[rows, blocks]`` (see the class)."""
        exact = x.double()
        low = x.to(torch.bfloat16).double() if self.screen == "bfloat16" else exact
        hidden = x.shape[-1]
        rounding = (exact - low).norm(dim=-1, keepdim=True) + hidden * 2.0**-23 * low.norm(dim=-1, keepdim=True)
        bound = rounding * self.low_norm + exact.norm(dim=-1, keepdim=True) * self.low_error
        return bound * (1 + 1e-6) + 1e-30 * hidden  # float64 rounding here; flushed subnormal products

    def argmax(self, x: torch.Tensor) -> list[int]:
        rows, vocab, block = x.shape[0], self.out_features, self.block
        if self.max_rows is not None and rows > self.max_rows:
            self.fallbacks += rows
            return first_argmax(super().forward(x))
        scores = self.scores(x)
        block_max = scores.reshape(rows, vocab // block, block).amax(-1).double()
        top, top_block = block_max.max(-1)
        bound = self.bound(x)
        unit = self.unit
        reach = (top - bound.gather(1, top_block[:, None]).squeeze(1)
                 - 2 * unit * (top.abs() / (1 - unit) + bound.amax(-1)))
        pairs = (block_max + bound >= reach[:, None]).nonzero().tolist()  # (row, block), row-major
        # rescoring reads block * hidden * 4 bytes a pair: up to a quarter of the blocks (half the screen's
        # bytes) still beats the full float32 head by far
        if len(pairs) > max(4 * rows + 16, vocab // block // 4) or len({r for r, _ in pairs}) != rows:
            self.fallbacks += rows
            return first_argmax(super().forward(x))
        best: list[tuple[float, int] | None] = [None] * rows
        for row, b in pairs:  # blocks ascend within a row: ties keep the lower token
            value, at = torch.mv(self.weight[b * block:(b + 1) * block], x[row]).max(0)
            candidate = (float(value), b * block + int(at))
            if best[row] is None or candidate[0] > best[row][0]:
                best[row] = candidate
        self.screened += rows
        return [token for _, token in best]  # type: ignore[misc]
