//! The distribution of a query's scores as an inline SVG histogram, its tails (the rows listed
//! as top and bottom) in the heat map's colours.

use std::fmt::Write;

use super::html::{escape, format_score};

/// Counts of values in equal-width bins over `[lo, hi]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    /// Left edge of the first bin.
    pub lo: f64,
    /// Right edge of the last bin.
    pub hi: f64,
    /// Values per bin.
    pub counts: Vec<usize>,
    /// Sum of the values per bin (its mean decides the bar's colour).
    pub sums: Vec<f64>,
}

impl Histogram {
    /// Bins the finite `values` into `bins` bins spanning their range; `None` when there are
    /// none. Equal values get a unit-wide range around them.
    pub fn of(values: &[f64], bins: usize) -> Option<Self> {
        let finite = values.iter().copied().filter(|v| v.is_finite());
        let (mut lo, mut hi) = finite.clone().fold(None, |acc: Option<(f64, f64)>, v| {
            Some(acc.map_or((v, v), |(l, h)| (l.min(v), h.max(v))))
        })?;
        if lo == hi {
            lo -= 0.5;
            hi += 0.5;
        }
        let bins = bins.max(1);
        let mut counts = vec![0; bins];
        let mut sums = vec![0.0; bins];
        for v in finite {
            let b = bin_of(v, lo, hi, bins);
            counts[b] += 1;
            sums[b] += v;
        }
        Some(Histogram {
            lo,
            hi,
            counts,
            sums,
        })
    }

    /// The value range of bin `i`.
    pub fn edges(&self, i: usize) -> (f64, f64) {
        let w = (self.hi - self.lo) / self.counts.len() as f64;
        (self.lo + w * i as f64, self.lo + w * (i + 1) as f64)
    }

    /// The bin holding `v` (clamped to the range).
    pub fn bin(&self, v: f64) -> usize {
        bin_of(v, self.lo, self.hi, self.counts.len())
    }
}

fn bin_of(v: f64, lo: f64, hi: f64, bins: usize) -> usize {
    let x = ((v - lo) / (hi - lo) * bins as f64).floor();
    (x.max(0.0) as usize).min(bins - 1)
}

const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 170.0;
const LEFT: f64 = 44.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 10.0;
const BOTTOM: f64 = 34.0;

/// The histogram as an `<svg>` element: bars in the heat map's colours (supporting scores blue,
/// opposing red, by the sign of the bin's mean under the run's orientation), bins holding
/// rows the page lists in full colour and the others faint, the zero line and axis labels.
pub fn histogram_svg(h: &Histogram, listed: &[f64], higher_is_better: bool) -> String {
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let max = h.counts.iter().copied().max().unwrap_or(0).max(1) as f64;
    let x_of = |v: f64| LEFT + (v - h.lo) / (h.hi - h.lo) * plot_w;
    let bar_w = plot_w / h.counts.len() as f64;
    let mut shown = vec![false; h.counts.len()];
    for &v in listed {
        shown[h.bin(v)] = true;
    }

    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg class="hist" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" role="img" aria-label="histogram of scores">"#
    );
    // Grid lines at whole counts: the maximum, and half of it when that is a whole number.
    let half = (max as usize).is_multiple_of(2).then_some(max / 2.0);
    for tick in [half, Some(max)].into_iter().flatten() {
        let y = TOP + plot_h * (1.0 - tick / max);
        let _ = write!(
            s,
            r#"<line class="grid" x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}"/><text class="axis" x="{}" y="{:.1}" text-anchor="end">{}</text>"#,
            WIDTH - RIGHT,
            LEFT - 6.0,
            y + 4.0,
            tick
        );
    }
    for (i, &count) in h.counts.iter().enumerate() {
        if count == 0 {
            continue;
        }
        let bar_h = (count as f64 / max * plot_h).max(1.0);
        let (a, b) = h.edges(i);
        let mean = h.sums[i] / count as f64;
        let side = if (mean >= 0.0) == higher_is_better {
            "sup"
        } else {
            "opp"
        };
        let class = if shown[i] {
            format!("bar {side}")
        } else {
            format!("bar {side} faint")
        };
        let _ = write!(
            s,
            r#"<rect class="{class}" x="{:.2}" y="{:.2}" width="{:.2}" height="{bar_h:.2}"><title>{} to {}: {count}</title></rect>"#,
            LEFT + bar_w * i as f64 + 0.5,
            TOP + plot_h - bar_h,
            (bar_w - 1.0).max(0.5),
            escape(&format_score(a)),
            escape(&format_score(b)),
        );
    }
    let base = TOP + plot_h;
    let _ = write!(
        s,
        r#"<line class="base" x1="{LEFT}" x2="{}" y1="{base}" y2="{base}"/>"#,
        WIDTH - RIGHT
    );
    let mut labels = vec![(h.lo, "start"), (h.hi, "end")];
    if h.lo < 0.0 && h.hi > 0.0 {
        let x = x_of(0.0);
        let _ = write!(
            s,
            r#"<line class="zero" x1="{x:.2}" x2="{x:.2}" y1="{TOP}" y2="{base}"/>"#
        );
        // Only when it does not collide with the end labels.
        if x - LEFT > 40.0 && WIDTH - RIGHT - x > 40.0 {
            labels.push((0.0, "middle"));
        }
    }
    for (v, anchor) in labels {
        let _ = write!(
            s,
            r#"<text class="axis" x="{:.2}" y="{}" text-anchor="{anchor}">{}</text>"#,
            x_of(v),
            base + 16.0,
            escape(&format_score(v))
        );
    }
    s.push_str("</svg>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bins_cover_the_range_and_count_every_value() {
        let values = [0.0, 0.1, 0.5, 0.99, 1.0, f64::NAN];
        let h = Histogram::of(&values, 4).unwrap();
        assert_eq!((h.lo, h.hi), (0.0, 1.0));
        assert_eq!(h.counts, vec![2, 0, 1, 2]);
        assert_eq!(h.edges(1), (0.25, 0.5));
        let flat = Histogram::of(&[2.0, 2.0], 3).unwrap();
        assert_eq!(
            (flat.lo, flat.hi, flat.counts.iter().sum::<usize>()),
            (1.5, 2.5, 2)
        );
        assert!(Histogram::of(&[f64::NAN], 3).is_none());
    }

    #[test]
    fn svg_colours_the_tails_and_draws_zero() {
        let values: Vec<f64> = (-10..=10).map(f64::from).collect();
        let h = Histogram::of(&values, 21).unwrap();
        let svg = histogram_svg(&h, &[10.0, 9.0, -10.0], true);
        assert_eq!(svg.matches(r#"class="bar sup""#).count(), 2);
        assert_eq!(svg.matches(r#"class="bar opp""#).count(), 1);
        // -9..=-1 are opposing, 0..=8 supporting (one value per bin).
        assert_eq!(svg.matches(r#"class="bar opp faint""#).count(), 9);
        assert_eq!(svg.matches(r#"class="bar sup faint""#).count(), 9);
        // A bin reaching past zero takes the side of its values.
        let wide = Histogram::of(&[-5.0, 1.0, 100.0], 2).unwrap();
        assert!(histogram_svg(&wide, &[-5.0], true).contains(r#"class="bar opp""#));
        assert!(svg.contains(r#"class="zero""#));
        let flipped = histogram_svg(&h, &[10.0], false);
        assert_eq!(flipped.matches(r#"class="bar opp""#).count(), 1);
    }
}
