//! Sizes: human-readable bytes for summaries and error messages, and the machine's memory.

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

/// A `/proc/meminfo` field (`MemTotal`, `MemAvailable`, ...) in bytes; None where the file
/// or the field is missing (not Linux).
fn meminfo(field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.split(':').next() == Some(field))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Physical memory in bytes, if known.
pub fn memory_total() -> Option<u64> {
    meminfo("MemTotal")
}

/// Memory available to new allocations without swapping, in bytes, if known.
pub fn memory_available() -> Option<u64> {
    meminfo("MemAvailable")
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

    /// On Linux both fields are read, and what is available is part of the total.
    #[cfg(target_os = "linux")]
    #[test]
    fn memory_fields_are_read_from_meminfo() {
        let total = memory_total().expect("MemTotal");
        let available = memory_available().expect("MemAvailable");
        assert!(total > 1 << 20 && available > 0 && available <= total);
        assert_eq!(meminfo("NoSuchField"), None);
    }
}
