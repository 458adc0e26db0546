//! The vectorisable exp the CPU backend's hot loops use (`Real::fast_exp`) against the
//! standard library's, over the whole range the ops feed it.

use msclip::tensor::Real;

/// Distance in units in the last place between two finite positive f32 values.
fn ulps(a: f32, b: f32) -> u32 {
    a.to_bits().abs_diff(b.to_bits())
}

#[test]
fn f32_fast_exp_is_within_two_ulp_of_exp() {
    let mut worst = (0, 0.0f32);
    // Every 97th bit pattern between -87 and 88: about 20 million inputs.
    let (lo, hi) = (-87.0f32, 88.0f32);
    let mut x = lo;
    let mut visit = |x: f32| {
        let e = ulps(x.fast_exp(), x.exp());
        if e > worst.0 {
            worst = (e, x);
        }
    };
    while x < 0.0 {
        visit(x);
        x = f32::from_bits(x.to_bits() - 97);
    }
    x = 0.0;
    while x < hi {
        visit(x);
        x = f32::from_bits(x.to_bits() + 97);
    }
    visit(-0.0);
    assert!(worst.0 <= 2, "fast_exp is {} ulp away from exp at x = {}", worst.0, worst.1);
}

#[test]
fn f32_fast_exp_saturates_instead_of_overflowing_and_keeps_nan() {
    assert_eq!(1.0f32.fast_exp(), 1.0f32.exp());
    assert_eq!(0.0f32.fast_exp(), 1.0);
    assert!(f32::NAN.fast_exp().is_nan());
    let tiny = (-1000.0f32).fast_exp();
    assert!(tiny > 0.0 && tiny < 1.3e-38, "exp(-1000) gave {tiny}");
    assert_eq!(f32::NEG_INFINITY.fast_exp(), tiny);
    let big = 1000.0f32.fast_exp();
    assert!(big.is_finite() && ulps(big, 88.0f32.exp()) <= 2, "exp(1000) gave {big}");
}

#[test]
fn f64_fast_exp_is_exact_exp() {
    for x in [-700.0, -3.5, 0.0, 1e-9, 2.0, 700.0] {
        assert_eq!(f64::fast_exp(x), f64::exp(x));
    }
}
