//! Per-example gradient capture, random projection and normalizers.

pub mod projection;
