//! Fast `exp`, `log1p` and `sigmoid` for plugins, within 1 ulp of the correctly rounded
//! result.
//!
//! A Rust guest's `f64::exp` and `f64::ln_1p` come from wasi-libc, compiled to Wasm and then by
//! Cranelift. They are branchy, cannot be inlined, and under fuel metering every branch
//! costs extra: on the workload's job 1 they took 60% of a batch's time. These versions are
//! branch-free on the common path (one well-predicted test sends infinities, NaN and
//! out-of-range inputs to the standard functions), inline into the caller, and use only
//! operations Wasm has.
//!
//! - [`exp`]: `x = k ln2 + r` with `|r| <= ln2 / 2` (Cody–Waite reduction), `e^r` from its
//!   Taylor series to degree 13 evaluated in Estrin's scheme (short dependency chains), scaled
//!   by `2^k` through the exponent bits. No table and no division.
//! - [`log1p`]: fdlibm's algorithm (as in musl), without its special-case branches: `1 + x`
//!   reduced to `2^k m` with `m` in `[√2/2, √2)`, a correction term for the rounding of
//!   `1 + x`, and `log m` from `s = f / (2 + f)` and a degree-14 polynomial in `s`.
//!
//! The unit tests compare both with the platform's libm over millions of arguments.

/// `1.5 * 2^52`: adding it rounds a double to an integer held in the low mantissa bits.
const SHIFT: f64 = 6_755_399_441_055_744.0;
const LOG2E: f64 = std::f64::consts::LOG2_E;
/// `ln 2` split so that `k * LN2_HI` is exact for `|k| < 2^20` (fdlibm's constants, as
/// bits).
const LN2_HI: f64 = f64::from_bits(0x3fe6_2e42_fee0_0000);
const LN2_LO: f64 = f64::from_bits(0x3dea_39ef_3579_3c76);

/// `e^x`, within 1 ulp.
#[inline]
pub fn exp(x: f64) -> f64 {
    // Past ±708 the result leaves the normal range (or x is NaN or infinite).
    if !exp_in_range(x) {
        return x.exp();
    }
    exp_core(x)
}

/// True where [`exp_core`] is valid.
#[inline(always)]
fn exp_in_range(x: f64) -> bool {
    x.abs() < 708.0
}

/// [`exp`] without the range test: straight-line code that vectorises.
#[inline(always)]
fn exp_core(x: f64) -> f64 {
    let kd = x * LOG2E + SHIFT;
    // The low bits of `kd` hold k mod 2^12 (k is in [-1022, 1022] here).
    let k = kd.to_bits() & 0xfff;
    let kd = kd - SHIFT;
    let r = (x - kd * LN2_HI) - kd * LN2_LO;
    // e^r = 1 + r + r^2 * q(r), q(r) = Σ_{n=2}^{13} r^(n-2) / n!
    let r2 = r * r;
    let r4 = r2 * r2;
    let r8 = r4 * r4;
    let a0 = 1.0 / 2.0 + r * (1.0 / 6.0);
    let a1 = 1.0 / 24.0 + r * (1.0 / 120.0);
    let a2 = 1.0 / 720.0 + r * (1.0 / 5_040.0);
    let a3 = 1.0 / 40_320.0 + r * (1.0 / 362_880.0);
    let a4 = 1.0 / 3_628_800.0 + r * (1.0 / 39_916_800.0);
    let a5 = 1.0 / 479_001_600.0 + r * (1.0 / 6_227_020_800.0);
    let b0 = a0 + a1 * r2;
    let b1 = a2 + a3 * r2;
    let b2 = a4 + a5 * r2;
    let q = (b0 + b1 * r4) + b2 * r8;
    let p = 1.0 + (r + r2 * q);
    // 2^k from its exponent bits.
    p * f64::from_bits(((k + 1023) & 0x7ff) << 52)
}

/// Replaces every value `x` of `xs` with `e^x`, as [`exp`] does. One pass with no branch
/// per value when every value is in range (the compiler vectorises it); otherwise value
/// by value.
pub fn exp_all(xs: &mut [f64]) {
    if xs.iter().fold(true, |ok, x| ok & exp_in_range(*x)) {
        for x in xs.iter_mut() {
            *x = exp_core(*x);
        }
    } else {
        for x in xs.iter_mut() {
            *x = exp(*x);
        }
    }
}

/// fdlibm's polynomial for `log(1 + f)`, in `s = f / (2 + f)`.
const LG1: f64 = f64::from_bits(0x3fe5_5555_5555_5593);
const LG2: f64 = f64::from_bits(0x3fd9_9999_9997_fa04);
const LG3: f64 = f64::from_bits(0x3fd2_4924_9422_9359);
const LG4: f64 = f64::from_bits(0x3fcc_71c5_1d8e_78af);
const LG5: f64 = f64::from_bits(0x3fc7_4664_96cb_03de);
const LG6: f64 = f64::from_bits(0x3fc3_9a09_d078_c69f);
const LG7: f64 = f64::from_bits(0x3fc2_f112_df3e_5244);

/// `ln(1 + x)`, within 1 ulp, accurate for `x` near zero.
#[inline]
pub fn log1p(x: f64) -> f64 {
    if !log1p_in_range(x) {
        return x.ln_1p();
    }
    log1p_core(x)
}

/// True where [`log1p_core`] is valid: `x > -1`, finite, and not `-0` (whose sign it
/// would lose). x <= -1, NaN and +inf take the standard function.
#[inline(always)]
fn log1p_in_range(x: f64) -> bool {
    (x > -1.0) & (x < f64::INFINITY) & (x.to_bits() != NEG_ZERO)
}

const NEG_ZERO: u64 = 0x8000_0000_0000_0000;
/// The bits of `2^52`: `f64::from_bits(TWO_52 | n)` is `2^52 + n` for `0 <= n < 2^52`.
/// With `n = k + 2^31`, subtracting [`MAGIC`] leaves `k`: an integer-to-float conversion
/// that vectorises.
const TWO_52: u64 = 0x4330_0000_0000_0000;
/// `2^52 + 2^31`.
const MAGIC: f64 = 4_503_601_774_854_144.0;

/// [`log1p`] without the range test: straight-line code that vectorises.
#[inline(always)]
fn log1p_core(x: f64) -> f64 {
    let u = 1.0 + x;
    let bits = u.to_bits();
    // Shift the exponent so that the mantissa lands in [√2/2, √2).
    let hu = (bits >> 32) + (0x3ff0_0000 - 0x3fe6_a09e);
    let k = (hu >> 20) as i64 - 0x3ff;
    // c ≈ ln(1 + x) - ln(u): what rounding 1 + x lost. Past 2^54 it is nothing.
    let c = if k >= 2 { 1.0 - (u - x) } else { x - (u - 1.0) };
    let c = if k < 54 { c / u } else { 0.0 };
    let m = f64::from_bits((((hu & 0x000f_ffff) + 0x3fe6_a09e) << 32) | (bits & 0xffff_ffff));
    let f = m - 1.0;
    let hfsq = 0.5 * f * f;
    let s = f / (2.0 + f);
    let z = s * s;
    let w = z * z;
    let t1 = w * (LG2 + w * (LG4 + w * LG6));
    let t2 = z * (LG1 + w * (LG3 + w * (LG5 + w * LG7)));
    let dk = f64::from_bits(TWO_52 | (k + (1 << 31)) as u64) - MAGIC;
    s * (hfsq + (t2 + t1)) + (dk * LN2_LO + c) - hfsq + f + dk * LN2_HI
}

/// Replaces every value `x` of `xs` with `ln(1 + x)`, as [`log1p`] does: one vectorised
/// pass when every value is in range, otherwise value by value.
pub fn log1p_all(xs: &mut [f64]) {
    if xs.iter().fold(true, |ok, x| ok & log1p_in_range(*x)) {
        for x in xs.iter_mut() {
            *x = log1p_core(*x);
        }
    } else {
        for x in xs.iter_mut() {
            *x = log1p(*x);
        }
    }
}

/// The logistic function `1 / (1 + e^-z)`, with [`exp`].
#[inline]
pub fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + exp(-z))
}

/// Replaces every value `z` of `zs` with [`sigmoid`]`(z)`, vectorised as [`exp_all`].
pub fn sigmoid_all(zs: &mut [f64]) {
    for z in zs.iter_mut() {
        *z = -*z;
    }
    exp_all(zs);
    for z in zs.iter_mut() {
        *z = 1.0 / (1.0 + *z);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Distance in ulps between two finite doubles of the same sign (or both zero).
    fn ulps(a: f64, b: f64) -> u64 {
        if a == b {
            return 0;
        }
        assert_eq!(a.is_sign_negative(), b.is_sign_negative(), "{a} vs {b}");
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs()
    }

    /// A small xorshift generator: the tests need no dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        /// Uniform in [lo, hi).
        fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
            lo + (hi - lo) * ((self.next() >> 11) as f64 / (1u64 << 53) as f64)
        }
        /// Log-uniform magnitude in [2^lo, 2^hi), random sign when `signed`.
        fn magnitude(&mut self, lo: f64, hi: f64, signed: bool) -> f64 {
            let m = self.uniform(lo, hi).exp2();
            if signed && self.next() & 1 == 1 {
                -m
            } else {
                m
            }
        }
    }

    fn worst(f: fn(f64) -> f64, reference: fn(f64) -> f64, xs: &[f64]) -> (u64, f64) {
        xs.iter()
            .map(|&x| (ulps(f(x), reference(x)), x))
            .max_by_key(|p| p.0)
            .unwrap_or((0, 0.0))
    }

    #[test]
    fn exp_is_within_one_ulp() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut xs: Vec<f64> = (0..1_000_000).map(|_| rng.uniform(-20.0, 20.0)).collect();
        xs.extend((0..1_000_000).map(|_| rng.uniform(-707.9, 707.9)));
        xs.extend((0..500_000).map(|_| rng.magnitude(-60.0, 0.0, true)));
        xs.extend([
            0.0,
            -0.0,
            1.0,
            -1.0,
            0.5 * LN2_HI,
            -0.5 * LN2_HI,
            707.99,
            -707.99,
        ]);
        let (u, x) = worst(exp, f64::exp, &xs);
        assert!(u <= 1, "exp({x:e}) is {u} ulps from libm's");
    }

    #[test]
    fn exp_edges_match_the_standard_function() {
        for x in [
            708.0,
            709.7,
            709.8,
            -708.0,
            -740.0,
            -746.0,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::MAX,
            f64::MIN,
        ] {
            assert_eq!(exp(x).to_bits(), x.exp().to_bits(), "exp({x})");
        }
        assert!(exp(f64::NAN).is_nan());
    }

    #[test]
    fn log1p_is_within_one_ulp() {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        let mut xs: Vec<f64> = (0..1_000_000).map(|_| rng.uniform(-0.999, 20.0)).collect();
        xs.extend((0..500_000).map(|_| rng.magnitude(-80.0, 0.0, true)));
        xs.extend((0..500_000).map(|_| rng.magnitude(0.0, 1000.0, false)));
        xs.extend((0..200_000).map(|_| -1.0 + rng.magnitude(-50.0, -1.0, false)));
        xs.extend([
            0.0,
            -0.0,
            1e-310,
            -1e-310,
            0.41,
            0.42,
            -0.29,
            -0.3,
            1.0,
            f64::MAX,
        ]);
        let (u, x) = worst(log1p, f64::ln_1p, &xs);
        assert!(u <= 1, "log1p({x:e}) is {u} ulps from libm's");
    }

    #[test]
    fn log1p_edges_match_the_standard_function() {
        assert_eq!(log1p(-1.0), f64::NEG_INFINITY);
        assert_eq!(log1p(f64::INFINITY), f64::INFINITY);
        assert!(log1p(-1.5).is_nan());
        assert!(log1p(f64::NAN).is_nan());
        assert!(log1p(f64::NEG_INFINITY).is_nan());
        assert_eq!(log1p(-0.0).to_bits(), (-0.0f64).to_bits());
    }

    #[test]
    fn the_slice_forms_equal_the_scalar_ones() {
        let mut rng = Rng(0x1234_5678_9abc_def1);
        let inputs: Vec<f64> = (0..4096).map(|_| rng.uniform(-30.0, 30.0)).collect();
        // In range (the vectorised pass), then with values that need the fallback.
        let mut odd = inputs.clone();
        odd[17] = 800.0;
        odd[18] = -1.0;
        odd[19] = -0.0;
        odd[20] = f64::NAN;
        for xs in [&inputs, &odd] {
            let mut e = xs.clone();
            exp_all(&mut e);
            let mut l: Vec<f64> = xs.iter().map(|x| x.abs() - 0.5).collect();
            let lx = l.clone();
            log1p_all(&mut l);
            let mut g = xs.clone();
            sigmoid_all(&mut g);
            for i in 0..xs.len() {
                let x = xs[i];
                assert_eq!(e[i].to_bits(), exp(x).to_bits(), "exp({x})");
                assert_eq!(l[i].to_bits(), log1p(lx[i]).to_bits(), "log1p({})", lx[i]);
                assert_eq!(g[i].to_bits(), sigmoid(x).to_bits(), "sigmoid({x})");
            }
        }
    }

    #[test]
    fn sigmoid_is_the_logistic_function() {
        for z in [-40.0f64, -3.5, -1e-9, 0.0, 0.25, 7.0, 40.0, 800.0, -800.0] {
            let reference = 1.0 / (1.0 + (-z).exp());
            assert!(ulps(sigmoid(z), reference) <= 1, "sigmoid({z})");
        }
    }
}
