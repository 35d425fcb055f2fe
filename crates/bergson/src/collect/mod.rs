//! Per-example gradient capture, random projection and normalizers.
