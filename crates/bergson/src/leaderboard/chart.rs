//! `leaderboard.png`: one horizontal bar per row of the table (method and tool), its LDS with
//! the 95% interval as a whisker, the labels and values written in the public-domain 8×8
//! bitmap font of `font8x8` (drawn at twice its size), so no plotting library or system font
//! is needed.

use crate::error::IoContext;
use crate::Result;
use font8x8::UnicodeFonts;
use std::path::Path;

const WIDTH: usize = 1100;
const ROW: usize = 30;
const TOP: usize = 60;
const LABEL_W: usize = 420;
const PLOT_W: usize = 540;
const SCALE: usize = 2;

/// One bar: its label, value and interval (NaN: none), and whether it is Python Bergson's.
#[derive(Debug, Clone)]
pub struct Bar {
    /// Text left of the bar.
    pub label: String,
    /// The LDS.
    pub value: f64,
    /// The interval's ends.
    pub low: f64,
    /// The interval's ends.
    pub high: f64,
    /// Drawn in the second colour.
    pub python: bool,
}

struct Canvas {
    pixels: Vec<u8>,
    height: usize,
}

impl Canvas {
    fn put(&mut self, x: usize, y: usize, rgb: [u8; 3]) {
        if x < WIDTH && y < self.height {
            let i = (y * WIDTH + x) * 3;
            self.pixels[i..i + 3].copy_from_slice(&rgb);
        }
    }

    fn rect(&mut self, x0: usize, y0: usize, x1: usize, y1: usize, rgb: [u8; 3]) {
        for y in y0..y1 {
            for x in x0..x1 {
                self.put(x, y, rgb);
            }
        }
    }

    fn text(&mut self, x: usize, y: usize, s: &str, rgb: [u8; 3]) {
        for (i, c) in s.chars().enumerate() {
            let glyph = font8x8::BASIC_FONTS.get(c).unwrap_or([0; 8]);
            for (row, bits) in glyph.iter().enumerate() {
                for col in 0..8 {
                    if bits >> col & 1 == 1 {
                        let (px, py) = (x + (i * 8 + col) * SCALE, y + row * SCALE);
                        self.rect(px, py, px + SCALE, py + SCALE, rgb);
                    }
                }
            }
        }
    }
}

/// Writes the chart of `bars` (LDS axis from min(0, lowest) to 1) with `title` to `out`.
pub fn write_chart(title: &str, bars: &[Bar], out: &Path) -> Result<()> {
    let height = TOP + ROW * bars.len() + 50;
    let mut c = Canvas {
        pixels: vec![255u8; WIDTH * height * 3],
        height,
    };
    c.text(10, 15, title, [20, 20, 20]);
    let lo = bars
        .iter()
        .flat_map(|b| [b.value, b.low])
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::min)
        .max(-1.0);
    let (lo, hi) = ((lo * 10.0).floor() / 10.0, 1.0);
    let x_of = |v: f64| LABEL_W + ((v.clamp(lo, hi) - lo) / (hi - lo) * PLOT_W as f64) as usize;
    let bottom = TOP + ROW * bars.len();
    // Grid every 0.2 and the zero line.
    let mut t = (lo * 5.0).ceil() / 5.0;
    while t <= hi + 1e-9 {
        let x = x_of(t);
        let shade = if t.abs() < 1e-9 { 90 } else { 220 };
        c.rect(x, TOP - 5, x + 1, bottom, [shade, shade, shade]);
        c.text(
            x.saturating_sub(24),
            bottom + 10,
            &format!("{t:.1}"),
            [90, 90, 90],
        );
        t += 0.2;
    }
    for (i, b) in bars.iter().enumerate() {
        let y = TOP + i * ROW;
        let label: String = b.label.chars().take(LABEL_W / (8 * SCALE) - 1).collect();
        c.text(5, y + 7, &label, [30, 30, 30]);
        let colour = if b.python {
            [230, 126, 34]
        } else {
            [31, 119, 180]
        };
        if b.value.is_finite() {
            let (x0, x1) = (x_of(0.0), x_of(b.value));
            c.rect(x0.min(x1), y + 5, x0.max(x1) + 1, y + ROW - 5, colour);
            if b.low.is_finite() && b.high.is_finite() {
                let (wl, wh) = (x_of(b.low), x_of(b.high));
                let mid = y + ROW / 2;
                c.rect(wl, mid - 1, wh + 1, mid + 1, [20, 20, 20]);
                c.rect(wl, mid - 6, wl + 2, mid + 6, [20, 20, 20]);
                c.rect(wh, mid - 6, wh + 2, mid + 6, [20, 20, 20]);
            }
        }
        let value = if b.value.is_finite() {
            format!("{:.3}", b.value)
        } else {
            "n/a".into()
        };
        c.text(LABEL_W + PLOT_W + 20, y + 7, &value, [30, 30, 30]);
    }
    let file = std::fs::File::create(out).at_path(out)?;
    let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), WIDTH as u32, height as u32);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let io = |e: png::EncodingError| crate::Error::internal(format!("{}: {e}", out.display()));
    let mut writer = encoder.write_header().map_err(io)?;
    writer.write_image_data(&c.pixels).map_err(io)?;
    writer.finish().map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_png_whose_bars_grow_with_the_value() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("c.png");
        let bar = |v: f64| Bar {
            label: format!("m {v}"),
            value: v,
            low: v - 0.05,
            high: v + 0.05,
            python: false,
        };
        write_chart("LDS", &[bar(0.9), bar(0.2), bar(f64::NAN)], &out).unwrap();
        let decoder =
            png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&out).unwrap()));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!(info.width as usize, WIDTH);
        // Count bar-coloured pixels on each bar's row.
        let blue = |row: usize| {
            let y = TOP + row * ROW + 8;
            (0..WIDTH)
                .filter(|&x| buf[(y * WIDTH + x) * 3..(y * WIDTH + x) * 3 + 3] == [31, 119, 180])
                .count()
        };
        assert!(
            blue(0) > 4 * blue(1) && blue(1) > 50,
            "{} {}",
            blue(0),
            blue(1)
        );
        assert_eq!(blue(2), 0);
    }
}
