"""Non-temporal ("streaming") stores for outputs too big for the last-level cache.

A normal store first reads the destination's cache line from memory (a *read for
ownership*), so writing an output that will not stay in cache moves its bytes over the
memory bus twice.  A forward that reads ``x`` and writes ``y`` therefore moves three
arrays' worth of bytes, not two; the pre-norm block (reads ``x`` and ``residual``, writes
``residual_out`` and ``y``) moves six, not four.  Non-temporal stores (``vmovntps``) write
whole lines without reading them: measured here, a parallel copy of 128 MiB of float32
ran 1.39x faster with them (5.37 ms against 7.47 ms, 2 threads).  When the output does fit
in cache they are slower (the next reader has to fetch it from memory): 16 MiB copied in
600 us against 468 us.  So the kernels stream only when a call's outputs exceed
:data:`fastln._config.STREAM_BYTES` (the last-level cache; see :func:`streaming`).  Measured
with outputs written into reused buffers (forward LayerNorm, float32, 2 threads, same
process, interleaved): 1.06-1.23x faster at 64-128 MiB of output; the fused residual add at
4096x1024 (two outputs of 16 MiB, 32 MiB in all) was 0.92x, which is why the threshold
counts outputs only and is strict.  Into freshly allocated outputs the page faults dominate
and streaming changes little either way.

Numba has no vector types and LLVM's loop vectoriser drops the ``!nontemporal`` hint when
it cannot prove 64-byte alignment, so :func:`stream_store` emits its own loop: scalar
stores up to the first 64-byte boundary of the destination, then whole 64-byte vectors
stored non-temporally, then a scalar tail.  Kernels compute a row into a small buffer in
L1 cache and stream it out.  Non-temporal stores are weakly ordered: :func:`store_fence`
(``sfence``) must run before the thread's work is handed back.
"""

from __future__ import annotations

import platform

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from fastln._config import STREAM_BYTES
from fastln.cpu import _jit

#: Bytes in one non-temporal vector store (a cache line; an AVX-512 register).
LINE = 64
#: Widest row that is streamed: its buffer must stay in the L2 cache, or computing into it
#: and streaming it out would add the traffic the streaming saves.
ROW_BUFFER_BYTES = 256 << 10


@intrinsic
def stream_store(typingctx, dst, src):
    """``dst[:] = src`` for two 1-D C-contiguous arrays of one dtype and length, with
    non-temporal stores for every whole 64-byte line of ``dst``."""
    if not (
        isinstance(dst, types.Array) and isinstance(src, types.Array)
        and dst.ndim == 1 and src.ndim == 1 and dst.dtype == src.dtype
        and dst.layout == "C" and src.layout == "C"
    ):
        return None

    def codegen(context, builder, signature, args):
        d = context.make_array(signature.args[0])(context, builder, args[0])
        s = context.make_array(signature.args[1])(context, builder, args[1])
        intp = context.get_value_type(types.intp)
        element = context.get_data_type(signature.args[0].dtype)
        size = context.get_abi_sizeof(element)
        lanes = LINE // size
        vector = ir.VectorType(element, lanes)
        n = builder.extract_value(d.shape, 0)

        def copy_scalars(start, stop):
            with cgutils.for_range_slice(builder, start, stop, intp(1)) as (i, _):
                builder.store(builder.load(builder.gep(s.data, [i])), builder.gep(d.data, [i]))

        # elements before dst's first 64-byte boundary (dst is element-aligned)
        misalign = builder.and_(builder.ptrtoint(d.data, intp), intp(LINE - 1))
        head = builder.udiv(builder.and_(builder.sub(intp(LINE), misalign), intp(LINE - 1)), intp(size))
        head = builder.select(builder.icmp_signed("<", n, head), n, head)
        copy_scalars(intp(0), head)
        n_vectors = builder.sdiv(builder.sub(n, head), intp(lanes))
        nontemporal = builder.module.add_metadata([ir.IntType(32)(1)])
        with cgutils.for_range(builder, n_vectors) as loop:
            i = builder.add(head, builder.mul(loop.index, intp(lanes)))
            value = builder.load(builder.bitcast(builder.gep(s.data, [i]), vector.as_pointer()), align=size)
            store = builder.store(value, builder.bitcast(builder.gep(d.data, [i]), vector.as_pointer()), align=LINE)
            store.set_metadata("nontemporal", nontemporal)
        copy_scalars(builder.add(head, builder.mul(n_vectors, intp(lanes))), n)
        return context.get_dummy_value()

    return types.none(dst, src), codegen


@intrinsic
def store_fence(typingctx):
    """``sfence``: the thread's non-temporal stores are visible before anything after it."""

    def codegen(context, builder, signature, args):
        if platform.machine().lower() in ("x86_64", "amd64", "i386", "i686"):
            fence = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.VoidType(), []), "llvm.x86.sse.sfence")
            builder.call(fence, [])
        else:  # a full fence orders every store on other targets
            builder.fence("seq_cst")
        return context.get_dummy_value()

    return types.none(), codegen


@_jit.inline
def streaming(output_bytes, row_bytes):
    """Whether a call writing ``output_bytes`` should stream them: only when they cannot
    stay in the last-level cache anyway, and only for rows whose buffer (computed, then
    streamed out) stays within :data:`ROW_BUFFER_BYTES`."""
    return output_bytes > STREAM_BYTES and row_bytes <= ROW_BUFFER_BYTES
