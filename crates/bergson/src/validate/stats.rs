//! The correlations `validate` reports, as SciPy computes them (`scipy.stats.spearmanr`,
//! `pearsonr`): Spearman's ρ is Pearson's r of the ranks (ties averaged); both p-values are
//! two-sided from Student's t with `n - 2` degrees of freedom, `p = I_{df/(df+t²)}(df/2, 1/2)`
//! (SciPy's Pearson p from its Beta distribution is the same number). Constant inputs give NaN,
//! as SciPy's do. Plus a seeded percentile bootstrap of either correlation.

use crate::data::pyrandom::PyRandom;

/// A correlation and its two-sided p-value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Correlation {
    /// The coefficient.
    pub statistic: f64,
    /// The two-sided p-value (NaN where undefined).
    pub pvalue: f64,
}

/// Ranks from 1, ties given their average rank (`scipy.stats.rankdata`).
pub fn ranks(x: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..x.len()).collect();
    idx.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    let mut r = vec![0.0; x.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && x[idx[j + 1]] == x[idx[i]] {
            j += 1;
        }
        let rank = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            r[k] = rank;
        }
        i = j + 1;
    }
    r
}

/// Pearson's r (NaN for fewer than two points or a constant input).
pub fn pearson_r(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len().min(b.len());
    if n < 2 {
        return f64::NAN;
    }
    let (a, b) = (&a[..n], &b[..n]);
    let ma = a.iter().sum::<f64>() / n as f64;
    let mb = b.iter().sum::<f64>() / n as f64;
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        let (dx, dy) = (x - ma, y - mb);
        sab += dx * dy;
        saa += dx * dx;
        sbb += dy * dy;
    }
    if saa == 0.0 || sbb == 0.0 {
        return f64::NAN;
    }
    (sab / (saa * sbb).sqrt()).clamp(-1.0, 1.0)
}

/// The two-sided p-value of correlation `r` over `n` points (t-test, `n - 2` dof).
pub fn correlation_pvalue(r: f64, n: usize) -> f64 {
    if r.is_nan() || n < 3 {
        return f64::NAN;
    }
    let df = (n - 2) as f64;
    if r.abs() >= 1.0 {
        return 0.0;
    }
    let t2 = r * r * df / ((1.0 + r) * (1.0 - r));
    regularized_beta(df / (df + t2), df / 2.0, 0.5)
}

/// `scipy.stats.pearsonr(a, b)` (two points: r = ±1 with p = 1, as SciPy).
pub fn pearson(a: &[f64], b: &[f64]) -> Correlation {
    let r = pearson_r(a, b);
    let pvalue = if a.len() == 2 && !r.is_nan() {
        1.0
    } else {
        correlation_pvalue(r, a.len())
    };
    Correlation {
        statistic: r,
        pvalue,
    }
}

/// `scipy.stats.spearmanr(a, b)`.
pub fn spearman(a: &[f64], b: &[f64]) -> Correlation {
    let r = pearson_r(&ranks(a), &ranks(b));
    Correlation {
        statistic: r,
        pvalue: correlation_pvalue(r, a.len()),
    }
}

/// `ln Γ(x)` for `x > 0` (Lanczos, g = 7, n = 9; ~1e-15 relative).
fn ln_gamma(x: f64) -> f64 {
    const G: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection.
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = G[0];
    let t = x + 7.5;
    for (i, g) in G.iter().enumerate().skip(1) {
        a += g / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// The regularized incomplete beta function `I_x(a, b)` (continued fraction, modified Lentz).
pub fn regularized_beta(x: f64, a: f64, b: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let ln_front = ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln();
    if x < (a + 1.0) / (a + b + 2.0) {
        ln_front.exp() * beta_continued_fraction(x, a, b) / a
    } else {
        1.0 - ln_front.exp() * beta_continued_fraction(1.0 - x, b, a) / b
    }
}

fn beta_continued_fraction(x: f64, a: f64, b: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0;
    let mut d = 1.0 - qab * x / qap;
    if d.abs() < TINY {
        d = TINY;
    }
    d = 1.0 / d;
    let mut h = d;
    for m in 1..10_000 {
        let m = m as f64;
        let m2 = 2.0 * m;
        let aa = m * (b - m) * x / ((qam + m2) * (a + m2));
        d = 1.0 + aa * d;
        if d.abs() < TINY {
            d = TINY;
        }
        c = 1.0 + aa / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        h *= d * c;
        let aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        d = 1.0 + aa * d;
        if d.abs() < TINY {
            d = TINY;
        }
        c = 1.0 + aa / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        let del = d * c;
        h *= del;
        if (del - 1.0).abs() < 1e-16 {
            break;
        }
    }
    h
}

/// Resamples of the bootstrap confidence intervals.
pub const BOOTSTRAP_RESAMPLES: usize = 10_000;

/// The percentile bootstrap 95% interval of `stat(a, b)`: `resamples` draws of the `n` pairs
/// with replacement (indices from `random.Random(seed)`'s `randbelow`), the 2.5th and 97.5th
/// percentiles (linear interpolation, as `numpy.percentile`) of the finite statistics. NaN
/// when fewer than two pairs or no finite resample.
pub fn bootstrap_ci(
    a: &[f64],
    b: &[f64],
    stat: fn(&[f64], &[f64]) -> Correlation,
    resamples: usize,
    seed: u64,
) -> (f64, f64) {
    let n = a.len().min(b.len());
    if n < 2 {
        return (f64::NAN, f64::NAN);
    }
    let mut rng = PyRandom::new(i128::from(seed));
    let mut values = Vec::with_capacity(resamples);
    let (mut ra, mut rb) = (vec![0.0; n], vec![0.0; n]);
    for _ in 0..resamples {
        for k in 0..n {
            let i = rng.randbelow(n as u64) as usize;
            ra[k] = a[i];
            rb[k] = b[i];
        }
        let v = stat(&ra, &rb).statistic;
        if v.is_finite() {
            values.push(v);
        }
    }
    if values.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    values.sort_by(f64::total_cmp);
    (percentile(&values, 2.5), percentile(&values, 97.5))
}

/// `numpy.percentile(sorted, q)` (linear interpolation) of sorted values.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    let pos = q / 100.0 * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, rel: f64) -> bool {
        (a - b).abs() <= rel * b.abs().max(1e-300)
    }

    /// Values from SciPy 1.17.1: `spearmanr([1, 2, 3, 4, 5, 6], [2, 1, 4, 3, 6, 5])`,
    /// `pearsonr([0.1, 0.4, 0.35, 0.8, 0.9], [1.0, 2.1, 2.0, 3.9, 5.2])`, and ties:
    /// `spearmanr([1, 1, 2, 3, 5, 8, 8, 9], [3, 1, 2, 2, 9, 7, 5, 10])`.
    #[test]
    fn match_scipy() {
        let s = spearman(&[1., 2., 3., 4., 5., 6.], &[2., 1., 4., 3., 6., 5.]);
        assert!(close(s.statistic, 0.8285714285714287, 1e-12), "{s:?}");
        assert!(close(s.pvalue, 0.04156268221574335, 1e-9), "{s:?}");
        let p = pearson(&[0.1, 0.4, 0.35, 0.8, 0.9], &[1.0, 2.1, 2.0, 3.9, 5.2]);
        assert!(close(p.statistic, 0.9821170948445049, 1e-12), "{p:?}");
        assert!(close(p.pvalue, 0.002863008011427866, 1e-9), "{p:?}");
        let t = spearman(
            &[1., 1., 2., 3., 5., 8., 8., 9.],
            &[3., 1., 2., 2., 9., 7., 5., 10.],
        );
        assert!(close(t.statistic, 0.8121361275222275, 1e-12), "{t:?}");
        assert!(close(t.pvalue, 0.014327901214114133, 1e-9), "{t:?}");
    }

    #[test]
    fn degenerate_inputs_are_nan_or_exact() {
        assert!(spearman(&[1., 1., 1.], &[1., 2., 3.]).statistic.is_nan());
        let perfect = spearman(&[1., 2., 3., 4.], &[10., 20., 30., 40.]);
        assert_eq!((perfect.statistic, perfect.pvalue), (1.0, 0.0));
        // SciPy: two points correlate perfectly, with p = 1 (pearsonr) or NaN (spearmanr).
        assert_eq!(pearson(&[1., 2.], &[2., 1.]).pvalue, 1.0);
        assert!(spearman(&[1., 2.], &[2., 1.]).pvalue.is_nan());
    }

    /// `scipy.special.betainc(2.5, 0.5, 0.3)` and `betainc(10, 0.5, 0.9)`.
    #[test]
    fn incomplete_beta_matches_scipy() {
        assert!(close(
            regularized_beta(0.3, 2.5, 0.5),
            0.018927124071945658,
            1e-10
        ));
        assert!(close(
            regularized_beta(0.9, 10.0, 0.5),
            0.15164090963470994,
            1e-10
        ));
    }

    #[test]
    fn bootstrap_is_seeded_and_brackets_the_estimate() {
        let a: Vec<f64> = (0..30).map(|i| i as f64).collect();
        let b: Vec<f64> = (0..30)
            .map(|i| (i as f64) + ((i * 7) % 5) as f64 * 3.0)
            .collect();
        let ci = bootstrap_ci(&a, &b, spearman, 2_000, 0);
        assert_eq!(ci, bootstrap_ci(&a, &b, spearman, 2_000, 0));
        assert_ne!(ci, bootstrap_ci(&a, &b, spearman, 2_000, 1));
        let rho = spearman(&a, &b).statistic;
        assert!(ci.0 < rho && rho < ci.1 && ci.1 <= 1.0, "{ci:?} {rho}");
    }
}
