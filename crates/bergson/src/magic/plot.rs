//! `score_vs_step.png`: the magnitude of the scores against the training step, Python Bergson
//! 2.5.1's diagnostic plot (`magic/score_plot.py`): rows `[s·B, (s+1)·B)` of the score matrix
//! (B the batch size; trailing axes pooled) make step `s`, whose level is the median of
//! `log10|score|` over its finite nonzero scores. A scatter of the levels, drawn here without a
//! plotting library: a white 1080×480 image, a light line at every integer `log10`, one dot per
//! step, no text.

use crate::error::IoContext;
use crate::Result;
use std::path::Path;
use tch::{Kind, Tensor};

/// The median `log10|score|` of each step (NaN where a step has no finite nonzero score), as
/// Bergson's `per_step_level`; a trailing partial step is dropped.
pub fn per_step_level(scores: &Tensor, batch_size: usize) -> Vec<f64> {
    let a = scores.detach().to_kind(Kind::Double).abs().contiguous();
    let n = a.size().first().copied().unwrap_or(0) as usize;
    let steps = n / batch_size.max(1);
    let flat: Vec<f64> = Vec::try_from(a.reshape([-1])).unwrap_or_default();
    let per_row = flat.len().checked_div(n).unwrap_or(0);
    let width = per_row * batch_size;
    (0..steps)
        .map(|s| {
            let mut logs: Vec<f64> = flat[s * width..(s + 1) * width]
                .iter()
                .filter(|v| v.is_finite() && **v > 0.0)
                .map(|v| v.log10())
                .collect();
            median(&mut logs)
        })
        .collect()
}

/// numpy's median (the mean of the two middle values for an even count); NaN when empty.
fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

const WIDTH: usize = 1080;
const HEIGHT: usize = 480;
const MARGIN: usize = 40;

/// Writes the plot of `levels` to `out`; returns false (writing nothing) when no level is
/// finite, as Bergson does.
pub fn write_score_plot(levels: &[f64], out: &Path) -> Result<bool> {
    let finite: Vec<f64> = levels.iter().copied().filter(|v| v.is_finite()).collect();
    if finite.is_empty() {
        return Ok(false);
    }
    let lo = finite.iter().copied().fold(f64::INFINITY, f64::min).floor() - 0.5;
    let hi = finite
        .iter()
        .copied()
        .fold(f64::NEG_INFINITY, f64::max)
        .ceil()
        + 0.5;
    let mut pixels = vec![255u8; WIDTH * HEIGHT * 3];
    let mut put = |x: usize, y: usize, rgb: [u8; 3]| {
        if x < WIDTH && y < HEIGHT {
            pixels[(y * WIDTH + x) * 3..(y * WIDTH + x) * 3 + 3].copy_from_slice(&rgb);
        }
    };
    let (plot_w, plot_h) = (WIDTH - 2 * MARGIN, HEIGHT - 2 * MARGIN);
    let y_of = |v: f64| MARGIN + ((hi - v) / (hi - lo) * plot_h as f64).round() as usize;
    let mut decade = lo.ceil();
    while decade <= hi {
        let y = y_of(decade);
        for x in MARGIN..MARGIN + plot_w {
            put(x, y, [225, 225, 225]);
        }
        decade += 1.0;
    }
    for x in MARGIN..=MARGIN + plot_w {
        put(x, MARGIN + plot_h, [60, 60, 60]);
    }
    for y in MARGIN..=MARGIN + plot_h {
        put(MARGIN, y, [60, 60, 60]);
    }
    let steps = levels.len().max(2) - 1;
    for (s, v) in levels.iter().enumerate() {
        if !v.is_finite() {
            continue;
        }
        let x = MARGIN + (s as f64 / steps as f64 * plot_w as f64).round() as usize;
        let y = y_of(*v);
        for dx in 0..3 {
            for dy in 0..3 {
                put(x + dx - 1, y + dy - 1, [31, 119, 180]);
            }
        }
    }
    let file = std::fs::File::create(out).at_path(out)?;
    let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), WIDTH as u32, HEIGHT as u32);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let io = |e: png::EncodingError| crate::Error::internal(format!("{}: {e}", out.display()));
    let mut writer = encoder.write_header().map_err(io)?;
    writer.write_image_data(&pixels).map_err(io)?;
    writer.finish().map_err(io)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against the levels worked out by hand: two steps of two rows, zeros and non-finite
    /// values left out, numpy's even-count median.
    #[test]
    fn levels_follow_bergson() {
        let s =
            Tensor::from_slice(&[10.0f64, -1000.0, 0.0, f64::NAN, 1.0, 0.01, 7.0]).reshape([7, 1]);
        let l = per_step_level(&s, 2);
        assert_eq!(l.len(), 3);
        assert!((l[0] - 2.0).abs() < 1e-12, "{l:?}"); // median(1, 3)
        assert!(l[1].is_nan(), "{l:?}");
        assert!((l[2] - (-1.0)).abs() < 1e-12, "{l:?}"); // median(0, -2)
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("p.png");
        assert!(write_score_plot(&l, &out).unwrap());
        let decoder =
            png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&out).unwrap()));
        let info = decoder.read_info().unwrap().info().clone();
        assert_eq!((info.width, info.height), (1080, 480));
        assert!(!write_score_plot(&[f64::NAN], &tmp.path().join("q.png")).unwrap());
    }
}
