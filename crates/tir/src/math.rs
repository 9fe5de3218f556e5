//! The f32 approximations compiled code uses for `exp` and `sigmoid` in vector code, written
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

#[cfg(test)]
mod tests {
    use super::*;

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
