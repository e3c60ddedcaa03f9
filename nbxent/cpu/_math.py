"""Vectorisable float math shared by the CPU kernels.

Numba (>= 0.62) has no SVML, so `math.exp` in a loop stays a scalar libm call; `max()` and
`np.fmax` compile to selects without fast-math flags, which LLVM will not vectorise as a
reduction. This module supplies loop-friendly replacements:

- `exp32`, `log32`: float32 exp/log as range reduction + polynomial (exp: a fitted
  degree 6; log: Cephes), the power of two built from integer bits; about 1 ulp, IEEE
  edge cases exact (see each docstring).
- `exp64`, `log64`: the same for float64 (Taylor exp, fdlibm's log polynomial).
- `fmax`: compare+select with fast-math flags (vectorises as a max reduction).
- `h2f`, `f2h`: float16 <-> float32 through uint16 bit patterns (Numba has no float16).
- dtype-generic helpers over a kernel's buffer dtype (float16 buffers are uint16 views):
  `load`/`store` convert between storage and the *compute dtype* (float32 for float16 and
  float32, float64 for float64), `cexp`/`clog` pick the compute dtype's exp/log
  (`cexp_term`, `cexp_nonpos`: cheaper exps for x - max(row)), `cval` casts a constant
  to it. Kernels written with these compile once per buffer dtype.
- `at`/`put`: `a[i]` and `a[i] = v` without Numba's negative-index wraparound, which made
  LLVM vectorise loops with gathers; `load`/`store` are built on them.
- `compute_or`: a view, or a scratch where the view's dtype is float16 (compile time).
- `stack_scratch`: a small scratch array on the stack (partial sums that stay in registers).
- `wide_vectors`, `compile_interleaving`: LLVM vectoriser settings for one function (a
  512-bit width) or one dispatcher's compiles (interleaved loads of more than 8 members).
- `crow`/`srow`: borrowed 1-D views of a flat buffer (a row of the logits) that carry no
  reference count, so building one per row in a parallel loop costs no atomic operations.

The polynomial functions are compiled without 'reassoc' (`STRICT`): reassociation would let
LLVM fold the two-constant Cody-Waite range reduction into one constant and lose accuracy.
"""

from __future__ import annotations

import numpy as np
from llvmlite import binding as llvm
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.compiler_lock import global_compiler_lock
from numba.core.sigutils import normalize_signature
from numba.extending import intrinsic, overload
from numba.np.arrayobj import make_array, populate_array

from nbxent._config import FASTMATH, hjit

STRICT = frozenset(FASTMATH - {"reassoc"})
_FLAGS = tuple(sorted(FASTMATH))


def _sjit(**options):
    return hjit(fastmath=set(STRICT), **options)


def host_has(feature: str) -> bool:
    """Whether LLVM reports the CPU feature (e.g. "f16c", "avx512f") on this host, which
    Numba compiles for unless NUMBA_CPU_NAME says otherwise; False where it cannot tell."""
    try:
        from llvmlite import binding as llvm

        return f"+{feature}" in llvm.get_host_cpu_features().flatten().split(",")
    except Exception:  # no feature query on this platform
        return False


def host_cpu() -> str:
    """LLVM's name for this host's CPU (e.g. "znver4"), "" where it cannot tell."""
    try:
        from llvmlite import binding as llvm

        return llvm.get_host_cpu_name()
    except Exception:  # no CPU query on this platform
        return ""


# ----------------------------------------------------------------------------- intrinsics


@intrinsic
def fmax(typingctx, a, b):
    """max(a, b) for floats of one type; when one is NaN the result is either operand.

    Emitted as fcmp+select carrying the fast-math flags so that LLVM vectorises it as a max
    reduction (Numba's own max() does not). Kernels detect NaN elsewhere (exp(NaN) is NaN).
    """
    if not (isinstance(a, types.Float) and a == b):
        return None

    def codegen(context, builder, sig, args):
        x, y = args
        flags = _FLAGS + ("nnan",)
        gt = builder.fcmp_unordered(">", x, y, flags=flags)
        return builder.select(gt, x, y, flags=flags)

    return a(a, b), codegen


# LLVM's tuning for Intel's AVX-512 cores (Skylake-X to Granite Rapids) has it vectorise
# 256 bits wide unless a function asks for more; AMD's Zen 4 and Zen 5 get 512 bits anyway.
_PREFER_512 = '"prefer-vector-width"="512"'
_HAS_AVX512 = host_has("avx512f")


@intrinsic
def wide_vectors(typingctx):
    """Has LLVM vectorise the function that calls it 512 bits wide on a CPU with AVX-512
    (a no-op elsewhere): the function as Numba compiles it, i.e. a helper's own body
    (with what Numba inlined into it), or a parallel loop's body when called inside a
    `prange`. Loops vectorised so keep their width where LLVM inlines the function.

    For the kernels that vectorise across rows (two, few and small class counts) and the
    divergences' row sums: on an Intel Xeon with AVX-512 they ran 1.1-2.5x as fast so
    (docs/benchmarks.md), while the cross-entropy row kernels' gradients ran slower and
    are left to LLVM's choice. The width changes no result where it is used: a vector lane
    does one row's or one element's arithmetic, and sums across lanes have an order fixed
    by the source (compiled without 'reassoc') or are integer counts."""
    def codegen(context, builder, sig, args):
        if _HAS_AVX512:
            # llvmlite knows no string attributes: add it to the set past its check
            set.add(builder.function.attributes, _PREFER_512)
        return context.get_dummy_value()

    return types.void(), codegen


_INTERLEAVE_OPTION = "-max-interleave-group-factor"
_INTERLEAVE_DEFAULT = 8   # LLVM's own default for it


def compile_interleaving(dispatcher, factor, when):
    """Have `dispatcher` compile each signature for which when(argument types) holds with
    LLVM's loop vectoriser allowed interleaved loads of up to `factor` members (LLVM's
    default is 8: a loop reading C > 8 consecutive values per iteration gathers them
    instead). The option is global to LLVM, so it is set under Numba's compiler lock for
    that compile only and then set back to LLVM's default; other code compiles as before.
    A kernel loaded from the on-disk cache keeps the code so compiled."""
    compile_default = dispatcher.compile

    def compile(sig):
        if not when(normalize_signature(sig)[0]):
            return compile_default(sig)
        with global_compiler_lock:
            llvm.set_option("nbxent", f"{_INTERLEAVE_OPTION}={factor}")
            try:
                return compile_default(sig)
            finally:
                llvm.set_option("nbxent", f"{_INTERLEAVE_OPTION}={_INTERLEAVE_DEFAULT}")

    dispatcher.compile = compile
    return dispatcher


@intrinsic
def _float_bits(typingctx, x):
    """The bits of a float32 (float64) as an int32 (int64)."""
    ret = {types.float32: types.int32, types.float64: types.int64}.get(x)
    if ret is None:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.IntType(ret.bitwidth))

    return ret(x), codegen


@intrinsic
def _bits_f32(typingctx, i):
    """The float32 whose bits are the low 32 bits of integer i."""
    if not isinstance(i, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        v = args[0]
        if sig.args[0].bitwidth > 32:
            v = builder.trunc(v, ir.IntType(32))
        elif sig.args[0].bitwidth < 32:
            v = builder.zext(v, ir.IntType(32))
        return builder.bitcast(v, ir.FloatType())

    return types.float32(i), codegen


def _borrowed_view(context, builder, bufty, retty, buf, start, n, step):
    src = make_array(bufty)(context, builder, buf)
    dst = make_array(retty)(context, builder)
    itemsize = context.get_constant(types.intp, context.get_abi_sizeof(
        context.get_data_type(bufty.dtype)))
    data = builder.gep(src.data, [start])
    populate_array(dst, data=data, shape=[n], strides=[builder.mul(itemsize, step)],
                   itemsize=itemsize, meminfo=None)
    return dst._getvalue()


@intrinsic
def crow(typingctx, buf, start, n):
    """buf[start:start+n] as a C-contiguous 1-D view without a reference count.

    The view borrows `buf`'s memory: valid while `buf` is alive. No bounds check."""
    if not (isinstance(buf, types.Array) and buf.ndim == 1):
        return None
    retty = types.Array(buf.dtype, 1, "C")

    def codegen(context, builder, sig, args):
        b, s, k = args
        s = context.cast(builder, s, sig.args[1], types.intp)
        k = context.cast(builder, k, sig.args[2], types.intp)
        return _borrowed_view(context, builder, sig.args[0], retty, b, s, k,
                              context.get_constant(types.intp, 1))

    return retty(buf, start, n), codegen


@intrinsic
def srow(typingctx, buf, start, n, step):
    """buf[start : start + n*step : step] (step in elements, any sign) as a borrowed 1-D view."""
    if not (isinstance(buf, types.Array) and buf.ndim == 1):
        return None
    retty = types.Array(buf.dtype, 1, "A")

    def codegen(context, builder, sig, args):
        b, s, k, st = (context.cast(builder, v, t, types.intp) if i else v
                       for i, (v, t) in enumerate(zip(args, sig.args)))
        return _borrowed_view(context, builder, sig.args[0], retty, b, s, k, st)

    return retty(buf, start, n, step), codegen


# ----------------------------------------------------------------------------- float32 exp/log

_EXP_LO = np.float32(-103.97208)   # below: exp underflows to 0 (half of the least subnormal)
_EXP_HI = np.float32(88.72283)     # above: exp overflows to inf
_LOG2E = np.float32(1.44269504088896341)
_LN2_HI = np.float32(0.693359375)
_LN2_LO = np.float32(-2.12194440e-4)
_F0 = np.float32(0.0)
_F1 = np.float32(1.0)
_FINF = np.float32(np.inf)
_FNAN = np.float32(np.nan)


# x / ln 2 + _MAGIC32 is rounded to an integer plus 1.5 * 2**23, whose low mantissa bits
# are n + 127 (|n| < 2**22): n, and the bits of 2**n (<< 23), without a round and a convert
# (llvm.rint and a float->int conversion before: the exp sum about 4% faster).
_MAGIC32 = np.float32(12582912.0 + 127.0)
_MAGIC32_BITS = 0x4B400000 + 127   # the bits of _MAGIC32, n = bits(t) - _MAGIC32_BITS


@_sjit()
def _exp_reduced(x):
    """(y, t) with exp(x) = y * 2**n, y in [0.7, 1.42], t = x / ln 2 + _MAGIC32 rounded
    (n = bits(t) - _MAGIC32_BITS; the bits of 2**n are bits(t) << 23 for n in [-126,
    127]), for finite |x| < 2**21 (garbage otherwise). Cody-Waite reduction by ln 2 to
    |r| <= ln(2)/2; exp(r) by a degree-6 polynomial in Horner form (1 + r + r**2 q(r), q
    of degree 4 fitted to the relative error, 3.3e-9 in exact arithmetic): 0.90 ulp at
    most over [-87, 88.7] in float32, and 2 operations fewer than Cephes' degree-7 form
    (1.01 ulp), which made the exp sum 15% faster."""
    t = x * _LOG2E + _MAGIC32
    n = t - _MAGIC32
    r = x - n * _LN2_HI
    r = r - n * _LN2_LO
    p = np.float32(1.3790812809e-03)
    p = p * r + np.float32(8.3690350875e-03)
    p = p * r + np.float32(4.1668832302e-02)
    p = p * r + np.float32(1.6666518152e-01)
    p = p * r + np.float32(4.9999991059e-01)
    p = p * r + _F1
    return p * r + _F1, t


@_sjit()
def exp_core(x):
    """exp(x) for x in [_EXP_LO, _EXP_HI] (outside, and for NaN, garbage from the rounding
    of _exp_reduced, for the callers to select away); 2**n as two normal powers
    of two (n in [-150, 128]: subnormal results come out approximately right)."""
    y, t = _exp_reduced(x)
    ni = _float_bits(t) - np.int32(_MAGIC32_BITS)
    n1 = ni >> np.int32(1)
    n2 = ni - n1
    y = y * _bits_f32((n1 + np.int32(127)) << np.int32(23))
    return y * _bits_f32((n2 + np.int32(127)) << np.int32(23))


_SUM_LO = np.float32(-87.0)   # the least x whose 2**n (n = -126) is a normal float32


@_sjit()
def exp_term32(d):
    """exp(d) as a term of a sum that has a term of at least 1 (d = x - max(row)).

    For d <= 0 (and +-0) about 1 ulp; d < -87 gives exp(-87) ~ 1.6e-38 in place of the
    smaller (or zero) true value, which the sum cannot see; NaN gives NaN. d > 0, +inf
    included, is outside its domain (garbage). One scaling step and one select: about 1.5x
    the throughput of exp32, whose edge-case selects are most of its cost."""
    d = _SUM_LO if d < _SUM_LO else d   # false for NaN: NaN stays NaN
    y, t = _exp_reduced(d)
    return y * _bits_f32(_float_bits(t) << np.int32(23))


@_sjit()
def exp32(x):
    """exp of a float32, vectorisable; about 1 ulp.

    Exactly 0 for x < -103.97 (including -inf), +inf for x > 88.72283 (including +inf),
    NaN for NaN; subnormal results in between are approximate (two-step scaling).
    """
    y = exp_core(x)
    y = _F0 if x < _EXP_LO else y
    y = _FINF if x > _EXP_HI else y
    return x if x != x else y


_NONPOS_FLOOR = np.float32(-104.0)   # exp_core gives 0 here and on [-104, _EXP_LO)


@_sjit()
def exp_nonpos32(d):
    """exp32(d), bit for bit, for d <= 0 (-inf included) and NaN: exp32 without its
    overflow select, and with its underflow select a clamp (d < -104, where exp32 is 0, is
    taken as -104, where exp_core is 0 too). For d = x - max(row), as in a gradient. d > 0
    is outside its domain (garbage). A test compares it with exp32 on every float32 <= 0."""
    return exp_core(_NONPOS_FLOOR if d < _NONPOS_FLOOR else d)   # NaN: the compare is false


_SQRTHF = np.float32(0.707106781186547524)
_TINY = np.float32(1.17549435e-38)   # least normal float32
_TWO23 = np.float32(8388608.0)


@_sjit()
def log_reduce(x):
    """(f, k) with x = 2**k (1 + f), f in [sqrt(1/2) - 1, sqrt(2) - 1], k a float32 integer,
    for finite x > 0 (subnormals exact); garbage otherwise, for the callers to select away."""
    sub = x < _TINY
    xs = x * _TWO23 if sub else x
    bits = _float_bits(xs)
    e = (bits >> np.int32(23)) - np.int32(126)
    e = e - np.int32(23) if sub else e
    m = _bits_f32((bits & np.int32(0x007FFFFF)) | np.int32(0x3F000000))   # [0.5, 1)
    small = m < _SQRTHF
    e = e - np.int32(1) if small else e
    f = (m + m - _F1) if small else (m - _F1)
    return f, np.float32(e)


@_sjit()
def log_core(f, k, extra):
    """log(1 + f) + k ln2 + extra for f in [sqrt(1/2) - 1, sqrt(2) - 1] (Cephes logf);
    `extra`, a correction far below ulp(1) (0 for a plain log), is added with the low-order
    terms."""
    z = f * f
    y = np.float32(7.0376836292e-2)
    y = y * f + np.float32(-1.1514610310e-1)
    y = y * f + np.float32(1.1676998740e-1)
    y = y * f + np.float32(-1.2420140846e-1)
    y = y * f + np.float32(1.4249322787e-1)
    y = y * f + np.float32(-1.6668057665e-1)
    y = y * f + np.float32(2.0000714765e-1)
    y = y * f + np.float32(-2.4999993993e-1)
    y = y * f + np.float32(3.3333331174e-1)
    y = y * f * z
    y = y + (k * _LN2_LO + extra)
    y = y - np.float32(0.5) * z
    r = f + y
    return r + k * _LN2_HI


@_sjit()
def log32(x):
    """Natural log of a float32, vectorisable; about 1 ulp.

    log(0) = -inf, log(x < 0) = NaN, log(+inf) = +inf, log(NaN) = NaN; subnormals exact.
    """
    f, k = log_reduce(x)
    r = log_core(f, k, _F0)
    r = _FINF if x == _FINF else r
    r = -_FINF if x == _F0 else r
    r = _FNAN if x < _F0 else r
    return x if x != x else r


# ----------------------------------------------------------------------------- float64 exp/log

# The float64 twins of exp32/log32. Conversions between float64 and int64 are single
# instructions only with AVX-512DQ, so they go through the "magic number" 1.5 * 2**52 instead:
# for an integer-valued double |n| < 2**51, the bits of n + _MAGIC are _MAGIC's bits plus n.
# (Exact only without 'reassoc', which would fold (x + _MAGIC) - _MAGIC to x: STRICT.)
_MAGIC = 6755399441055744.0
_MAGIC_BITS = np.int64(0x4338000000000000)
_EXP64_LO = -745.1332191019412    # below: exp rounds to 0
_EXP64_HI = 709.782712893384      # above: exp overflows to inf
_LOG2E64 = 1.4426950408889634
_LN2_HI64 = 6.93147180369123816490e-01   # 32 significant bits: n * _LN2_HI64 is exact
_LN2_LO64 = 1.90821492927058770002e-10
_SQRTHF64 = 0.7071067811865476
_TINY64 = 2.2250738585072014e-308        # least normal float64
_TWO54 = 18014398509481984.0


@intrinsic
def _bits_f64(typingctx, i):
    if i != types.int64:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return types.float64(i), codegen


@_sjit()
def _exp64_reduced(x):
    """(y, n) with exp(x) = y * 2**n, n as int64, for finite |x| < 2**50 (garbage n
    otherwise): reduction by ln 2 in two steps, Taylor polynomial of degree 13 on |r| <=
    ln2/2 (truncation error below 5e-18)."""
    t = x * _LOG2E64 + _MAGIC
    n = t - _MAGIC                          # rint(x / ln 2), an integer-valued double
    ni = _float_bits(t) - _MAGIC_BITS       # the same integer as int64
    r = x - n * _LN2_HI64
    r = r - n * _LN2_LO64
    # sum_{k=2..13} r^k / k! by Estrin's scheme: a Horner chain of 12 dependent FMAs would
    # bound the loop by FMA latency
    r2 = r * r
    r4 = r2 * r2
    a0 = 0.5 + r * (1.0 / 6.0)
    a1 = 1.0 / 24.0 + r * (1.0 / 120.0)
    a2 = 1.0 / 720.0 + r * (1.0 / 5040.0)
    a3 = 1.0 / 40320.0 + r * (1.0 / 362880.0)
    a4 = 1.0 / 3628800.0 + r * (1.0 / 39916800.0)
    a5 = 1.0 / 479001600.0 + r * (1.0 / 6227020800.0)
    b0 = a0 + r2 * a1
    b1 = a2 + r2 * a3
    b2 = a4 + r2 * a5
    p = (b0 + r4 * b1) + (r4 * r4) * b2
    return p * r2 + r + 1.0, ni


@_sjit()
def exp64_core(x):
    """exp(x) for x in [_EXP64_LO, _EXP64_HI] (garbage outside, for callers to select away);
    2**n as two normal powers of two (subnormal results approximate)."""
    y, ni = _exp64_reduced(x)
    n1 = ni >> np.int64(1)
    n2 = ni - n1
    y = y * _bits_f64((n1 + np.int64(1023)) << np.int64(52))
    return y * _bits_f64((n2 + np.int64(1023)) << np.int64(52))


_SUM_LO64 = -708.0   # the least x whose 2**n (n = -1021) is a normal float64


@_sjit()
def exp_term64(d):
    """exp_term32 for float64: about 1 ulp for d <= 0, d < -708 gives exp(-708) ~ 3e-308,
    NaN gives NaN, d > 0 is outside its domain."""
    d = _SUM_LO64 if d < _SUM_LO64 else d
    y, ni = _exp64_reduced(d)
    return y * _bits_f64((ni + np.int64(1023)) << np.int64(52))


@_sjit()
def exp64(x):
    """exp of a float64, vectorisable; about 1 ulp.

    Exactly 0 below -745.133 (including -inf), +inf above 709.7827 (including +inf), NaN
    for NaN; subnormal results are approximate (two-step scaling)."""
    y = exp64_core(x)
    y = 0.0 if x < _EXP64_LO else y
    y = np.inf if x > _EXP64_HI else y
    return x if x != x else y


@_sjit()
def log64(x):
    """Natural log of a float64, vectorisable; about 1 ulp.

    x = 2**k (1 + f) with 1 + f in [sqrt(1/2), sqrt(2)); log(1 + f) = 2 atanh(s),
    s = f / (2 + f), as f - (f^2/2 - s (f^2/2 + R(s^2))) with fdlibm's minimax R.
    log(0) = -inf, log(x < 0) = NaN, log(+inf) = +inf, log(NaN) = NaN; subnormals exact."""
    sub = x < _TINY64
    xs = x * _TWO54 if sub else x
    bits = _float_bits(xs)
    e = (bits >> np.int64(52)) - np.int64(1022)
    e = e - np.int64(54) if sub else e
    m = _bits_f64((bits & np.int64(0x000FFFFFFFFFFFFF)) | np.int64(0x3FE0000000000000))
    small = m < _SQRTHF64
    e = e - np.int64(1) if small else e
    f = (m + m - 1.0) if small else (m - 1.0)
    k = _bits_f64(e + _MAGIC_BITS) - _MAGIC     # e as a double, without cvtqq2pd
    s = f / (2.0 + f)
    z = s * s
    w = z * z
    t1 = w * (3.999999999940941908e-01 + w * (2.222219843214978396e-01
                                             + w * 1.531383769920937332e-01))
    t2 = z * (6.666666666666735130e-01 + w * (2.857142874366239149e-01
                                             + w * (1.818357216161805012e-01
                                                    + w * 1.479819860511658591e-01)))
    hfsq = 0.5 * f * f
    r = k * _LN2_HI64 - ((hfsq - (s * (hfsq + (t1 + t2)) + k * _LN2_LO64)) - f)
    r = np.inf if x == np.inf else r
    r = -np.inf if x == 0.0 else r
    r = np.nan if x < 0.0 else r
    return x if x != x else r


# ----------------------------------------------------------------------------- float16 bits

# With F16C (every x86-64 CPU since 2012) LLVM lowers half <-> float conversions to single
# vcvtph2ps/vcvtps2ph instructions that vectorise; without it, it would call compiler-rt
# routines Numba's JIT may not resolve, so the bit-twiddling versions below are used.
_NATIVE_HALF = host_has("f16c")


@intrinsic
def _half_bits_to_f32(typingctx, h):
    if h != types.uint16:
        return None

    def codegen(context, builder, sig, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())

    return types.float32(h), codegen


@intrinsic
def _f32_to_half_bits(typingctx, f):
    if f != types.float32:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(builder.fptrunc(args[0], ir.HalfType()), ir.IntType(16))

    return types.uint16(f), codegen


@_sjit()
def h2f_bits(h):
    """float16 bit pattern (uint16) -> float32, exact (subnormals, inf, NaN included)."""
    u = np.int32(h)
    em = u & np.int32(0x7FFF)
    sign = (u & np.int32(0x8000)) << np.int32(16)
    # exponent/mantissa shifted into float32 place, rescaled by 2**112 (handles subnormals)
    f = _bits_f32(em << np.int32(13)) * np.float32(5.192296858534828e33)
    bits = _float_bits(f)
    bits = ((em << np.int32(13)) | np.int32(0x7F800000)) if em >= np.int32(0x7C00) else bits
    return _bits_f32(bits | sign)


@_sjit()
def f2h_bits(f):
    """float32 -> float16 bit pattern (uint16), round to nearest even; overflow gives inf,
    NaN gives a quiet NaN of the same sign, subnormal halves are rounded correctly."""
    bits = _float_bits(f)
    sign = bits & np.int32(-0x80000000)
    a = bits ^ sign                                         # |f| as bits
    # subnormal half or zero: let the FPU round by adding a magic number
    magic = np.int32((127 - 15 + 23 - 10 + 1) << 23)
    sub = _float_bits(_bits_f32(a) + _bits_f32(magic)) - magic
    # normal half: rebias, round to nearest even on the 13 dropped bits
    odd = (a >> np.int32(13)) & np.int32(1)
    nrm = (a + np.int32(((15 - 127) << 23) + 0xFFF) + odd) >> np.int32(13)
    o = sub if a < np.int32(113 << 23) else nrm
    o = np.int32(0x7C00) if a >= np.int32((127 + 16) << 23) else o
    o = np.int32(0x7E00) if a > np.int32(0x7F800000) else o
    return np.uint16(o | (sign >> np.int32(16)) & np.int32(0x8000))


h2f = _sjit()(lambda h: _half_bits_to_f32(h)) if _NATIVE_HALF else h2f_bits
h2f.__doc__ = "float16 bit pattern (uint16) -> float32, exact (subnormals, inf, NaN included)."
f2h = _sjit()(lambda f: _f32_to_half_bits(f)) if _NATIVE_HALF else f2h_bits


# ----------------------------------------------------------------------------- dtype-generic


def load(buf, i):
    """buf[i] in the compute dtype (float16 bit patterns -> float32)."""


def store(buf, i, v):
    """buf[i] = v, converting from the compute dtype (float32 -> float16 bits: RNE)."""


def cval(buf, v):
    """v cast to the compute dtype of buffer `buf`."""


def cexp(v):
    """exp in v's own (compute) dtype: exp32 for float32, exp64 for float64."""


def cexp_term(v):
    """exp_term32/exp_term64 by v's compute dtype: a term exp(x - max) of a row's sum."""


def cexp_nonpos(v):
    """cexp(v) for v <= 0 or NaN (v = x - max(row)), bit for bit: exp_nonpos32 for float32,
    exp64 for float64."""


def clog(v):
    """log in v's own dtype: log32 for float32, log64 for float64."""


_OPTS = dict(fastmath=set(FASTMATH), error_model="numpy", inline="always", no_cfunc_wrapper=True)


def _is_half(buf):
    return buf.dtype == types.uint16


def is_half(buf):
    """Whether `buf` holds float16 bit patterns (a compile-time constant)."""


@overload(is_half, jit_options=_OPTS)
def _ol_is_half(buf):
    half = _is_half(buf)
    return lambda buf: half


def _element_pointer(context, builder, aryty, ary, i, ity):
    """Pointer to element i of a 1-D array, without wraparound or bounds check."""
    a = make_array(aryty)(context, builder, ary)
    k = context.cast(builder, i, ity, types.intp)
    if aryty.layout != "C":
        itemsize = context.get_abi_sizeof(context.get_data_type(aryty.dtype))
        stride = cgutils.unpack_tuple(builder, a.strides, 1)[0]
        k = builder.mul(k, builder.sdiv(stride, context.get_constant(types.intp, itemsize)))
    return builder.gep(a.data, [k], inbounds=True)


def _indexable(buf, i):
    return isinstance(buf, types.Array) and buf.ndim == 1 and isinstance(i, types.Integer)


@intrinsic
def at(typingctx, buf, i):
    """buf[i], for 0 <= i < len(buf) only: no bounds check and no negative-index
    wraparound. Numba's wraparound (i < 0 ? i + n : i) is a select LLVM often cannot remove
    from a loop whose start it cannot prove non-negative; it then vectorises the loop with
    gathers (2-2.5x slower on AVX-512). Kernels index through `at`/`put` (or load/store)."""
    if not _indexable(buf, i):
        return None

    def codegen(context, builder, sig, args):
        return builder.load(_element_pointer(context, builder, sig.args[0], args[0], args[1],
                                             sig.args[1]))

    return buf.dtype(buf, i), codegen


@intrinsic
def put(typingctx, buf, i, v):
    """buf[i] = v (v cast to buf's dtype), for 0 <= i < len(buf) only: see `at`."""
    if not _indexable(buf, i) or not isinstance(v, (types.Number, types.Boolean)):
        return None

    def codegen(context, builder, sig, args):
        ptr = _element_pointer(context, builder, sig.args[0], args[0], args[1], sig.args[1])
        builder.store(context.cast(builder, args[2], sig.args[2], sig.args[0].dtype), ptr)
        return context.get_dummy_value()

    return types.void(buf, i, v), codegen


@overload(load, jit_options=_OPTS)
def _ol_load(buf, i):
    if _is_half(buf):
        return lambda buf, i: h2f(at(buf, i))
    return lambda buf, i: at(buf, i)


@overload(store, jit_options=_OPTS)
def _ol_store(buf, i, v):
    if _is_half(buf):
        def impl(buf, i, v):
            put(buf, i, f2h(np.float32(v)))
        return impl

    def impl(buf, i, v):
        put(buf, i, v)
    return impl


@overload(cval, jit_options=_OPTS)
def _ol_cval(buf, v):
    if _is_half(buf) or buf.dtype == types.float32:
        return lambda buf, v: np.float32(v)
    return lambda buf, v: np.float64(v)


@overload(cexp, jit_options=_OPTS)
def _ol_cexp(v):
    if v == types.float32:
        return lambda v: exp32(v)
    return lambda v: exp64(v)


@overload(cexp_term, jit_options=_OPTS)
def _ol_cexp_term(v):
    if v == types.float32:
        return lambda v: exp_term32(v)
    return lambda v: exp_term64(v)


@overload(cexp_nonpos, jit_options=_OPTS)
def _ol_cexp_nonpos(v):
    if v == types.float32:
        return lambda v: exp_nonpos32(v)
    return lambda v: exp64(v)


@overload(clog, jit_options=_OPTS)
def _ol_clog(v):
    if v == types.float32:
        return lambda v: log32(v)
    return lambda v: log64(v)


@_sjit()
def sub2(x, a, b):
    """(x - a) - b in this order: the kernels' 'reassoc' flag could otherwise fold a + b
    first and lose the accuracy of x - a when |a| is large."""
    return (x - a) - b


def cempty(buf, n):
    """np.empty(n) of the compute dtype of buffer `buf` (scratch space)."""


@overload(cempty, jit_options=_OPTS)
def _ol_cempty(buf, n):
    if buf.dtype == types.float64:
        return lambda buf, n: np.empty(n, np.float64)
    return lambda buf, n: np.empty(n, np.float32)


def compute_or(view, scratch):
    """`view` if its dtype is the compute dtype (float32, float64), else `scratch` (a
    float16 view: values of the compute dtype need a scratch of their own). Decided at
    compile time, so that either choice unifies with `scratch`'s type."""


@overload(compute_or, jit_options=_OPTS)
def _ol_compute_or(view, scratch):
    if _is_half(view):
        return lambda view, scratch: scratch
    return lambda view, scratch: view


@intrinsic
def borrow(typingctx, a):
    """A 1-D array as a view without a reference count (see `crow`): kernels borrow their
    array arguments once, so that passing them to per-row helpers from several threads
    costs no atomic reference counting on a shared cache line."""
    if not (isinstance(a, types.Array) and a.ndim == 1 and a.layout == "C"):
        return None

    def codegen(context, builder, sig, args):
        src = make_array(sig.args[0])(context, builder, args[0])
        return _borrowed_view(context, builder, sig.args[0], sig.return_type, args[0],
                              context.get_constant(types.intp, 0), src.nitems,
                              context.get_constant(types.intp, 1))

    return types.Array(a.dtype, 1, "C")(a), codegen


def stack_scratch(n):
    """An intrinsic `f(buf)`: a C-contiguous 1-D array of n elements of buf's compute dtype
    on the caller's stack (one per function, allocated at its entry), no reference count.

    Partial sums kept in it stay in registers: LLVM knows that a stack array which nothing
    else sees aliases no other array, where a heap scratch (np.empty) may alias the row
    being read, so each update of the sums went through memory (a store and a reload per
    vector; on Zen 5 the exp sum alone ran 2-12% slower so). Contents start undefined."""

    @intrinsic
    def scratch(typingctx, buf):
        if not isinstance(buf, types.Array):
            return None
        dtype = types.float64 if buf.dtype == types.float64 else types.float32
        retty = types.Array(dtype, 1, "C")

        def codegen(context, builder, sig, args):
            data = cgutils.alloca_once(builder, context.get_data_type(dtype),
                                       size=context.get_constant(types.intp, n))
            data.align = 64
            dst = make_array(retty)(context, builder)
            itemsize = context.get_constant(types.intp, context.get_abi_sizeof(
                context.get_data_type(dtype)))
            populate_array(dst, data=data, shape=[context.get_constant(types.intp, n)],
                           strides=[itemsize], itemsize=itemsize, meminfo=None)
            return dst._getvalue()

        return retty(buf), codegen

    return scratch


@intrinsic
def prefetch(typingctx, buf, i):
    """A hint to bring the cache line of element i of C-contiguous 1-D array `buf` into
    L1 (llvm.prefetch: read, high locality). i may lie past the array's end (a prefetch
    never faults; the address is computed without an in-bounds assumption)."""
    if not (isinstance(buf, types.Array) and buf.ndim == 1 and buf.layout == "C"
            and isinstance(i, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        a = make_array(sig.args[0])(context, builder, args[0])
        k = context.cast(builder, args[1], sig.args[1], types.intp)
        ptr = builder.gep(a.data, [k], inbounds=False)
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [ptr.type, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        builder.call(fn, [ptr, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return types.none(buf, i), codegen


@intrinsic
def alive(typingctx, a):
    """A use of array `a` here, and nothing else: Numba frees an array after its last use,
    so a loop that works on `borrow`ed views of its own scratch calls alive(scratch) after
    the loop. (Passing an owned scratch to a per-row helper costs two atomic reference-count
    updates per call: 13% of a (4096, 1000) forward.)"""
    if not isinstance(a, types.Array):
        return None

    def codegen(context, builder, sig, args):
        return context.get_dummy_value()

    return types.none(a), codegen


@_sjit()
def diff_add(a, b, c):
    """(a - b) + c in this order (see `sub2`)."""
    return (a - b) + c
