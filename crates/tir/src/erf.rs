//! The error function shared by the loop interpreter and compiled code's runtime hooks.
//!
//! Invariant: [`erf64`] is FreeBSD's `erf` (below one `f64` ulp of the exact value) with
//! `NaN -> NaN` and `|x| >= 4 -> ±1`; within one `f32` ulp of the Taylor series after
//! rounding (tested on a dense grid).

/// The error function in `f64`: FreeBSD's `s_erf.c` rational approximations (error below one
/// `f64` ulp), with Kiln's conventions at the edges (`NaN` passes through, `|x| >= 4` gives
/// `±1`). The interpreter and the runtime hooks of compiled code both call it, so `erf` agrees
/// bit for bit between them in `f32` and `f64`; the Taylor series the tests check it against
/// is slow near `|x| = 4` and inexact there by cancellation.
///
/// ```text
/// Copyright (C) 1993 by Sun Microsystems, Inc. All rights reserved.
/// Developed at SunPro, a Sun Microsystems, Inc. business.
/// Permission to use, copy, modify, and distribute this software is freely granted, provided
/// that this notice is preserved.
/// ```
pub fn erf64(x: f64) -> f64 {
    if x.is_nan() {
        return x;
    }
    let ax = x.abs();
    if ax >= 4.0 {
        return x.signum();
    }
    let y = if ax < 0.84375 {
        if ax < f64::from_bits(0x3e30_0000_0000_0000) {
            return 0.125 * (8.0 * x + EFX8 * x);
        }
        let z = x * x;
        let r = PP0 + z * (PP1 + z * (PP2 + z * (PP3 + z * PP4)));
        let s = 1.0 + z * (QQ1 + z * (QQ2 + z * (QQ3 + z * (QQ4 + z * QQ5))));
        return x + x * (r / s);
    } else if ax < 1.25 {
        let s = ax - 1.0;
        let p = PA0 + s * (PA1 + s * (PA2 + s * (PA3 + s * (PA4 + s * (PA5 + s * PA6)))));
        let q = 1.0 + s * (QA1 + s * (QA2 + s * (QA3 + s * (QA4 + s * (QA5 + s * QA6)))));
        ERX + p / q
    } else {
        1.0 - erfc_tail(ax)
    };
    if x < 0.0 {
        -y
    } else {
        y
    }
}

/// `erfc(x)` for `1.25 <= x < 4` (the `erfc2` branch of `s_erf.c`).
fn erfc_tail(x: f64) -> f64 {
    let s = 1.0 / (x * x);
    let (r, big_s) = if x < 1.0 / 0.35 {
        (
            RA0 + s * (RA1 + s * (RA2 + s * (RA3 + s * (RA4 + s * (RA5 + s * (RA6 + s * RA7)))))),
            1.0 + s
                * (SA1
                    + s * (SA2
                        + s * (SA3 + s * (SA4 + s * (SA5 + s * (SA6 + s * (SA7 + s * SA8))))))),
        )
    } else {
        (
            RB0 + s * (RB1 + s * (RB2 + s * (RB3 + s * (RB4 + s * (RB5 + s * RB6))))),
            1.0 + s * (SB1 + s * (SB2 + s * (SB3 + s * (SB4 + s * (SB5 + s * (SB6 + s * SB7)))))),
        )
    };
    // `x` with its low 32 bits cleared, so that `z * z` is exact.
    let z = f64::from_bits(x.to_bits() & 0xffff_ffff_0000_0000);
    (-z * z - 0.5625).exp() * ((z - x) * (z + x) + r / big_s).exp() / x
}

/// Coefficients of `s_erf.c`, as printed there (more digits than an `f64` holds).
#[allow(clippy::excessive_precision)]
mod erf_coeffs {
    pub(super) const ERX: f64 = 8.45062911510467529297e-01;
    pub(super) const EFX8: f64 = 1.02703333676410069053e+00;
    pub(super) const PP0: f64 = 1.28379167095512558561e-01;
    pub(super) const PP1: f64 = -3.25042107247001499370e-01;
    pub(super) const PP2: f64 = -2.84817495755985104766e-02;
    pub(super) const PP3: f64 = -5.77027029648944159157e-03;
    pub(super) const PP4: f64 = -2.37630166566501626084e-05;
    pub(super) const QQ1: f64 = 3.97917223959155352819e-01;
    pub(super) const QQ2: f64 = 6.50222499887672944485e-02;
    pub(super) const QQ3: f64 = 5.08130628187576562776e-03;
    pub(super) const QQ4: f64 = 1.32494738004321644526e-04;
    pub(super) const QQ5: f64 = -3.96022827877536812320e-06;
    pub(super) const PA0: f64 = -2.36211856075265944077e-03;
    pub(super) const PA1: f64 = 4.14856118683748331666e-01;
    pub(super) const PA2: f64 = -3.72207876035701323847e-01;
    pub(super) const PA3: f64 = 3.18346619901161753674e-01;
    pub(super) const PA4: f64 = -1.10894694282396677476e-01;
    pub(super) const PA5: f64 = 3.54783043256182359371e-02;
    pub(super) const PA6: f64 = -2.16637559486879084300e-03;
    pub(super) const QA1: f64 = 1.06420880400844228286e-01;
    pub(super) const QA2: f64 = 5.40397917702171048937e-01;
    pub(super) const QA3: f64 = 7.18286544141962662868e-02;
    pub(super) const QA4: f64 = 1.26171219808761642112e-01;
    pub(super) const QA5: f64 = 1.36370839120290507362e-02;
    pub(super) const QA6: f64 = 1.19844998467991074170e-02;
    pub(super) const RA0: f64 = -9.86494403484714822705e-03;
    pub(super) const RA1: f64 = -6.93858572707181764372e-01;
    pub(super) const RA2: f64 = -1.05586262253232909814e+01;
    pub(super) const RA3: f64 = -6.23753324503260060396e+01;
    pub(super) const RA4: f64 = -1.62396669462573470355e+02;
    pub(super) const RA5: f64 = -1.84605092906711035994e+02;
    pub(super) const RA6: f64 = -8.12874355063065934246e+01;
    pub(super) const RA7: f64 = -9.81432934416914548592e+00;
    pub(super) const SA1: f64 = 1.96512716674392571292e+01;
    pub(super) const SA2: f64 = 1.37657754143519042600e+02;
    pub(super) const SA3: f64 = 4.34565877475229228821e+02;
    pub(super) const SA4: f64 = 6.45387271733267880336e+02;
    pub(super) const SA5: f64 = 4.29008140027567833386e+02;
    pub(super) const SA6: f64 = 1.08635005541779435134e+02;
    pub(super) const SA7: f64 = 6.57024977031928170135e+00;
    pub(super) const SA8: f64 = -6.04244152148580987438e-02;
    pub(super) const RB0: f64 = -9.86494292470009928597e-03;
    pub(super) const RB1: f64 = -7.99283237680523006574e-01;
    pub(super) const RB2: f64 = -1.77579549177547519889e+01;
    pub(super) const RB3: f64 = -1.60636384855821916062e+02;
    pub(super) const RB4: f64 = -6.37566443368389627722e+02;
    pub(super) const RB5: f64 = -1.02509513161107724954e+03;
    pub(super) const RB6: f64 = -4.83519191608651397019e+02;
    pub(super) const SB1: f64 = 3.03380607434824582924e+01;
    pub(super) const SB2: f64 = 3.25792512996573918826e+02;
    pub(super) const SB3: f64 = 1.53672958608443695994e+03;
    pub(super) const SB4: f64 = 3.19985821950859553908e+03;
    pub(super) const SB5: f64 = 2.55305040643316442583e+03;
    pub(super) const SB6: f64 = 4.74528541206955367215e+02;
    pub(super) const SB7: f64 = -2.24409524465858183362e+01;
}
use erf_coeffs::*;

#[cfg(test)]
mod tests {
    use super::*;

    /// The interpreter's Taylor series (kept here as the oracle of `erf64`).
    fn erf_series(x: f64) -> f64 {
        if x.is_nan() {
            return x;
        }
        if x.abs() >= 4.0 {
            return x.signum();
        }
        let x2 = x * x;
        let (mut term, mut sum) = (x, x);
        for n in 1..200 {
            term *= -x2 / n as f64;
            let t = term / (2 * n + 1) as f64;
            sum += t;
            if t.abs() <= 1e-17 * sum.abs() {
                break;
            }
        }
        sum * std::f64::consts::FRAC_2_SQRT_PI
    }

    #[test]
    fn erf_matches_the_series_within_an_f32_ulp() {
        for i in -50_000..=50_000 {
            let x = i as f64 * 1e-4;
            let (fast, series) = (erf64(x), erf_series(x));
            // The series itself cancels catastrophically near |x| = 4 (terms up to ~1e7).
            assert!(
                (fast - series).abs() <= 1e-8,
                "erf({x}): {fast} vs {series}"
            );
            let (a, b) = (fast as f32, series as f32);
            assert!(
                a.to_bits().abs_diff(b.to_bits()) <= 1,
                "erf({x}) in f32: {a} vs {b}"
            );
        }
        assert!(erf64(f64::NAN).is_nan());
        assert_eq!(erf64(f64::INFINITY), 1.0);
        assert_eq!(erf64(-7.0), -1.0);
        assert_eq!(erf64(0.0), 0.0);
    }
}
