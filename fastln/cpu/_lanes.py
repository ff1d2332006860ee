r"""float32 row sums in an order written out: explicit SIMD lanes and a fixed tree.

A float32 sum vectorised by LLVM under ``reassoc`` is fast, but its order (how many
accumulators, how the lanes are folded) is LLVM's choice, and that choice depends on the
code around the loop: the same helper inlined into two kernels can round differently.
fastln promises bitwise agreements that rest on that order (the float16 kernels against
the float32 computation, serial against parallel kernels, the torch bridge's compiled glue
against the NumPy API), and a branch added elsewhere in a kernel once broke one of them.
:func:`shifted_sums_f32` emits the vector code itself, so the order is the same in every
kernel that calls it:

* element ``k`` of the block is added to lane ``k % LANES`` of accumulator
  ``(k // LANES) % unroll()``, in increasing ``k``;
* the accumulators are folded pairwise (``(a0 + a1) + (a2 + a3)``, or ``a0 + a1``), then the
  lanes by halving (lane ``l`` with lane ``l + LANES/2``, and so on down to one).

``unroll()`` is 4 where the CPU has AVX-512 (32 vector registers) and 2 elsewhere: with 4,
an AVX2 CPU spilled registers and ran the statistics 1.2x slower than LLVM's own loop
(``NUMBA_CPU_NAME=haswell``, AVX-512 features off, 512-4096 columns).  So the order is one
per machine, as LLVM's was.  Each lane of a block of ``B`` elements adds at most
``ceil(B / (LANES * unroll()))`` terms, and the tree adds ``log2(unroll()) + log2(LANES)``
levels: the depth the error bound in :func:`fastln.cpu.layer_norm.row_moments_f32` counts.
The instructions carry LLVM's ``contract`` flag only (set here, so Numba's fast-math pass
leaves them alone), and the square is ``llvm.fmuladd``: no reassociation can reach them.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

#: float32 elements per vector (one AVX-512 register, two AVX2 ones).
LANES = 16
#: Independent accumulators per sum, enough to hide the adds' latency: on AVX-512 CPUs, and
#: on the others (16 vector registers hold no more beside the loop's temporaries).
UNROLL_AVX512 = 4
UNROLL_OTHER = 2


def unroll(context=None) -> int:
    """Accumulators per sum for the CPU that Numba's target ``context`` compiles for (default:
    its CPU target, as the kernels get it)."""
    if context is None:
        from numba.core.registry import cpu_target

        context = cpu_target.target_context
    features = getattr(context.codegen(), "_tm_features", "")
    return UNROLL_AVX512 if "+avx512f" in features.split(",") else UNROLL_OTHER


def _contiguous_float_vector(a):
    """Whether ``a`` is a 1-D contiguous float32/float64 array: what the intrinsics load
    whole vectors from."""
    return (isinstance(a, types.Array) and a.ndim == 1 and a.dtype in (types.float32, types.float64)
            and a.layout in "CF")


def _vector_pointer(builder, arr, start, vec):
    """``arr``'s elements from index ``start`` seen as ``vec`` vectors (element-aligned)."""
    return builder.bitcast(builder.gep(arr.data, [start]), vec.as_pointer())


def _load_vector(context, builder, arr, start, vec):
    """The ``vec``-wide vector of ``arr``'s elements from index ``start``."""
    return builder.load(_vector_pointer(builder, arr, start, vec), align=context.get_abi_sizeof(vec.element))


def _vector_step(builder, fmuladd, acc_s, acc_q, v, pv):
    """``d = v - p; s += d; q += d*d`` on whole vectors, with explicit flags."""
    d = builder.fsub(v, pv, flags=("contract",))
    builder.store(builder.fadd(builder.load(acc_s), d, flags=("contract",)), acc_s)
    builder.store(builder.call(fmuladd, [d, d, builder.load(acc_q)]), acc_q)


def _fold(builder, vec, width):
    """Lanes of ``vec`` summed by halving: ``[0:w/2] + [w/2:w]`` until one is left."""
    while width > 1:
        half = width // 2
        mask = ir.VectorType(ir.IntType(32), half)
        lo = builder.shuffle_vector(vec, vec, ir.Constant(mask, list(range(half))))
        hi = builder.shuffle_vector(vec, vec, ir.Constant(mask, list(range(half, width))))
        vec = builder.fadd(lo, hi, flags=("contract",))
        width = half
    return builder.extract_element(vec, ir.IntType(32)(0))


@intrinsic
def shifted_sums_f32(typingctx, blk, p):
    """``(sum(d), sum(d*d))`` with ``d = blk - p``, in ``blk``'s dtype, in the order the module
    docstring states.  ``blk``: a 1-D contiguous float32 array; ``p``: a float, taken in
    ``blk``'s dtype.  (float64 blocks compile too, in the same order: kernels are typed for
    every dtype before Numba prunes the float32-only branch that calls this.)"""
    if not (_contiguous_float_vector(blk) and isinstance(p, types.Float)):
        return None
    dtype = blk.dtype
    name = f"v{LANES}{'f32' if dtype == types.float32 else 'f64'}"

    def codegen(context, builder, signature, args):
        arr = context.make_array(signature.args[0])(context, builder, args[0])
        intp = context.get_value_type(types.intp)
        element = context.get_value_type(dtype)
        vec = ir.VectorType(element, LANES)
        p_ = context.cast(builder, args[1], signature.args[1], dtype)
        n = builder.extract_value(arr.shape, 0)
        i32 = ir.IntType(32)
        ivec = ir.VectorType(i32, LANES)

        def splat(value, vtype):
            v = builder.insert_element(ir.Constant(vtype, ir.Undefined), value, i32(0))
            return builder.shuffle_vector(v, v, ir.Constant(ivec, None))

        pv = splat(p_, vec)
        # The form with an alignment argument: LLVM reads (and upgrades) it in every version.
        masked_load = cgutils.get_or_insert_function(builder.module, ir.FunctionType(
            vec, [vec.as_pointer(), i32, ir.VectorType(ir.IntType(1), LANES), vec]),
            f"llvm.masked.load.{name}.p0")
        fmuladd = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vec, [vec] * 3), f"llvm.fmuladd.{name}")
        zero = ir.Constant(vec, [element(0.0)] * LANES)
        n_acc = unroll(context)
        acc_s, acc_q = [], []
        for _ in range(n_acc):
            for accs in (acc_s, acc_q):
                slot = cgutils.alloca_once(builder, vec)
                builder.store(zero, slot)
                accs.append(slot)

        group = LANES * n_acc
        n_groups = builder.sdiv(n, intp(group))
        with cgutils.for_range(builder, n_groups) as loop:
            base = builder.mul(loop.index, intp(group))
            for u in range(n_acc):
                _vector_step(builder, fmuladd, acc_s[u], acc_q[u], _load_vector(context, builder, arr, builder.add(base, intp(u * LANES)), vec), pv)

        # The last, partial group: whole vectors, then one vector of fewer than LANES
        # elements whose missing lanes hold p (d = 0 there, which adds exactly nothing).
        tail = builder.mul(n_groups, intp(group))
        for u in range(n_acc):
            start = builder.add(tail, intp(u * LANES))
            with builder.if_then(builder.icmp_signed("<", start, n)):
                with builder.if_else(builder.icmp_signed("<=", builder.add(start, intp(LANES)), n)) as (whole, partial):
                    with whole:
                        _vector_step(builder, fmuladd, acc_s[u], acc_q[u], _load_vector(context, builder, arr, start, vec), pv)
                    with partial:
                        lanes = builder.trunc(builder.sub(n, start), i32)  # 1 .. LANES - 1
                        mask = builder.icmp_signed("<", ir.Constant(ivec, list(range(LANES))), splat(lanes, ivec))
                        v = builder.call(masked_load, [
                            _vector_pointer(builder, arr, start, vec), i32(context.get_abi_sizeof(element)), mask, pv])
                        _vector_step(builder, fmuladd, acc_s[u], acc_q[u], v, pv)

        def total(accs):
            values = [builder.load(a) for a in accs]
            while len(values) > 1:
                values = [builder.fadd(values[i], values[i + 1], flags=("contract",)) for i in range(0, len(values), 2)]
            return _fold(builder, values[0], LANES)

        return context.make_tuple(builder, signature.return_type, (total(acc_s), total(acc_q)))

    return types.UniTuple(dtype, 2)(blk, p), codegen


@intrinsic
def head_mean_f32(typingctx, blk):
    """The mean of ``blk``'s first :data:`LANES` elements (``blk`` must hold that many),
    summed in float64 by halving and rounded to ``blk``'s dtype: one vector load and a
    four-level tree, where a loop of dependent additions and a division took ~13 ns a row."""
    if not _contiguous_float_vector(blk):
        return None

    def codegen(context, builder, signature, args):
        arr = context.make_array(signature.args[0])(context, builder, args[0])
        element = context.get_value_type(signature.args[0].dtype)
        vec = ir.VectorType(element, LANES)
        v = _load_vector(context, builder, arr, context.get_constant(types.intp, 0), vec)
        f64 = ir.DoubleType()
        if element != f64:
            v = builder.fpext(v, ir.VectorType(f64, LANES))
        mean = builder.fmul(_fold(builder, v, LANES), f64(1.0 / LANES), flags=("contract",))  # exact: a power of 2
        return mean if element == f64 else builder.fptrunc(mean, element)

    return blk.dtype(blk), codegen

