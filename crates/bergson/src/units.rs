//! Human-readable sizes for summaries and error messages.

/// `bytes` in binary units: `512 B`, `1.5 MiB`, ... up to EiB (sizes a request could never
/// fit read "over 1,000 EiB").
pub fn human_bytes(bytes: f64) -> String {
    if bytes >= 1024f64.powi(7) {
        return "over 1,000 EiB".to_string();
    }
    let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut v = bytes;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes:.0} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(human_bytes(512.0), "512 B");
        assert_eq!(human_bytes(131_072.0), "128.0 KiB");
        assert_eq!(human_bytes(1.5 * 1024f64.powi(3)), "1.5 GiB");
        assert_eq!(human_bytes(1e300), "over 1,000 EiB");
    }
}
