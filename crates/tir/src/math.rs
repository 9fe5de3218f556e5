//! The f32 approximations compiled code uses for `exp`, `sigmoid` and `erf` in vector code, written
//! once here as the specification every code generator follows operation by operation (so the
//! Cranelift vector code and the x86 micro-kernel epilogues agree bit for bit), and checked
//! against the exact `f64` functions the interpreter computes.
//!
//! Invariant: [`exp`] is within [`EXP_MAX_ULP`] ulp of the correctly rounded `exp(x)` for every
//! `x` whose result is a normal f32, gives `+inf` above the overflow threshold, a denormal or
//! zero far below, and NaN for NaN; [`sigmoid`] is within [`SIGMOID_MAX_ULP`] ulp of the
//! correctly rounded `1 / (1 + exp(-x))` where that is a normal f32, and within the smallest
//! normal f32 (1.2e-38) of it where it is not (it gives 0 once `exp(-x)` overflows).
//!
//! The algorithm (Cody-Waite reduction, Cephes' `expf` polynomial): clamp `x` to
//! `[-104, 89]`, `n = round_half_even(x · log2 e)`, `r = x - n·C1 - n·C2` (two fmas), `p =
//! P0..P5` in Horner form by fmas, `y = fma(p, r·r, r) + 1`, and the result `y · 2^⌊n/2⌋ ·
//! 2^(n - ⌊n/2⌋)` (two exact power-of-two factors, so overflow and denormals round once).

/// `log2(e)` as an f32.
pub const LOG2E: f32 = std::f32::consts::LOG2_E;
/// `ln 2` split in two: `C1` exact in few bits, `C2` the rest.
pub const C1: f32 = 0.693_359_4;
pub const C2: f32 = -2.121_944_4e-4;
/// Cephes' `expf` polynomial coefficients, highest degree first.
pub const P: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    0.166_666_65,
    0.5,
];
/// The clamp applied before reduction.
pub const CLAMP_LO: f32 = -104.0;
pub const CLAMP_HI: f32 = 89.0;

/// Largest error of [`exp`] in ulp where the result is normal (checked in the tests).
pub const EXP_MAX_ULP: u32 = 2;
/// Largest error of [`sigmoid`] in ulp where the result is normal (checked in the tests).
pub const SIGMOID_MAX_ULP: u32 = 3;

/// `2^k` for `k` in `-126..=127`, from its exponent bits.
fn pow2(k: i32) -> f32 {
    f32::from_bits(((k + 127) as u32) << 23)
}

/// `exp(x)` by the algorithm of the module doc.
pub fn exp(x: f32) -> f32 {
    // `max`/`min` that keep a NaN `x` (as the vector code's operand order does).
    let x = if x.is_nan() {
        x
    } else {
        x.clamp(CLAMP_LO, CLAMP_HI)
    };
    let n = (x * LOG2E).round_ties_even();
    let r = n.mul_add(-C1, x);
    let r = n.mul_add(-C2, r);
    let mut p = P[0];
    for &c in &P[1..] {
        p = p.mul_add(r, c);
    }
    let y = p.mul_add(r * r, r) + 1.0;
    if n.is_nan() {
        return y;
    }
    let n = n as i32;
    let k1 = n >> 1;
    y * pow2(k1) * pow2(n - k1)
}

/// `1 / (1 + exp(-x))` with [`exp`].
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// Below this `|x|`, [`erf`] is `x · P(x²)`; above it `±(1 - exp(Q(|x|)))`.
pub const ERF_SPLIT: f32 = 0.921_875;
/// Above this `|x|`, `erf(x)` rounds to `±1` in f32 (`Q` is evaluated at this bound).
pub const ERF_CLAMP: f32 = 4.0;
/// `erf(x) / x` on `[0, ERF_SPLIT]` as a polynomial in `x²` (least squares in relative error,
/// fitted in f64 and rounded to f32), lowest degree first. The constant term is the fit's, one
/// ulp from `2/√π`.
#[allow(clippy::approx_constant)]
pub const ERF_SMALL: [f32; 6] = [
    1.128_379_1,
    -0.376_125_25,
    0.112_820_39,
    -0.026_772_946,
    0.005_000_880_5,
    -0.000_602_453_4,
];
/// `ln(erfc(x))` on `[ERF_SPLIT, ERF_CLAMP]` as a polynomial in `x`, lowest degree first.
pub const ERF_LARGE: [f32; 9] = [
    0.000_302_534_26,
    -1.130_164,
    -0.631_941_7,
    -0.109_973_99,
    0.026_362_348,
    -0.004_739_406,
    0.000_592_599_16,
    -4.557_087_6e-5,
    1.613_085_7e-6,
];
/// Largest absolute error of [`erf`] (checked in the tests; f32's ulp at 1 is 6e-8).
pub const ERF_MAX_ABS: f32 = 2.5e-7;

/// `erf(x)`: `x · P(x²)` for `|x| < ERF_SPLIT`, else `±(1 - exp(Q(min(|x|, ERF_CLAMP))))` with
/// [`exp`]; both polynomials in Horner form by fmas.
pub fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = x * x;
    let mut p = ERF_SMALL[ERF_SMALL.len() - 1];
    for &c in ERF_SMALL[..ERF_SMALL.len() - 1].iter().rev() {
        p = p.mul_add(t, c);
    }
    let small = x * p;
    let a = if a.is_nan() { a } else { a.min(ERF_CLAMP) };
    let mut q = ERF_LARGE[ERF_LARGE.len() - 1];
    for &c in ERF_LARGE[..ERF_LARGE.len() - 1].iter().rev() {
        q = q.mul_add(a, c);
    }
    let large = (1.0 - exp(q)).copysign(x);
    if x.abs() < ERF_SPLIT {
        small
    } else {
        large
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_is_within_its_bound_and_odd() {
        let mut worst = 0f32;
        for i in -60_000..=60_000 {
            let x = i as f32 * 1e-4;
            let got = erf(x);
            let exact = crate::erf64(f64::from(x)) as f32;
            worst = worst.max((got - exact).abs());
            assert_eq!(erf(-x), -got, "{x}");
            if x.abs() < ERF_SPLIT && x != 0.0 {
                // Relative accuracy where erf is small.
                assert!(
                    ((got - exact) / exact).abs() < 4e-7,
                    "{x}: {got} vs {exact}"
                );
            }
        }
        assert!(worst <= ERF_MAX_ABS, "worst {worst}");
        assert_eq!(erf(100.0), 1.0);
        assert_eq!(erf(f32::INFINITY), 1.0);
        assert_eq!(erf(0.0), 0.0);
        assert!(erf(f32::NAN).is_nan());
    }

    /// Distance in ulp between two finite f32 of the same sign.
    fn ulps(a: f32, b: f32) -> u32 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
    }

    fn grid() -> impl Iterator<Item = f32> {
        // Every 97th f32 bit pattern of both signs up to |x| = 110, plus the edges.
        (0..0x42dc_0000u32)
            .step_by(97)
            .flat_map(|b| [f32::from_bits(b), -f32::from_bits(b)])
            .chain([0.0, -0.0, 88.72, 88.73, -87.3, -103.9, -150.0, 150.0])
    }

    #[test]
    fn exp_is_within_its_ulp_bound_and_handles_the_edges() {
        let mut worst = 0;
        for x in grid() {
            let want = (x as f64).exp() as f32;
            let got = exp(x);
            if want.is_infinite() {
                assert_eq!(got, want, "exp({x})");
            } else if want >= f32::MIN_POSITIVE {
                worst = worst.max(ulps(got, want));
            } else {
                assert!((got - want).abs() <= 1e-44, "exp({x}) = {got}, want {want}");
            }
        }
        assert!(worst <= EXP_MAX_ULP, "exp: {worst} ulp");
        assert!(exp(f32::NAN).is_nan());
        assert_eq!(exp(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(0.0), 1.0);
    }

    #[test]
    fn sigmoid_is_within_its_ulp_bound() {
        let mut worst = 0;
        for x in grid() {
            let want = (1.0 / (1.0 + (-(x as f64)).exp())) as f32;
            let got = sigmoid(x);
            if want >= f32::MIN_POSITIVE {
                worst = worst.max(ulps(got, want));
            } else {
                assert!(
                    (got - want).abs() <= f32::MIN_POSITIVE,
                    "sigmoid({x}) = {got}, want {want}"
                );
            }
        }
        assert!(worst <= SIGMOID_MAX_ULP, "sigmoid: {worst} ulp");
        assert!(sigmoid(f32::NAN).is_nan());
        assert_eq!(sigmoid(f32::INFINITY), 1.0);
        assert_eq!(sigmoid(f32::NEG_INFINITY), 0.0);
    }
}
