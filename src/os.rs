//! What the shell takes from the operating system, in one place: wall-clock time, randomness
//! (the core reads neither; the shell passes them in: `now_ms` arguments, `Boot`, dialer
//! draws), and atomic file writes.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `N` random bytes from the operating system.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], getrandom::Error> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b)?;
    Ok(b)
}

/// A uniform random `u64` for jitter and fresh ids. Where the operating system has no
/// randomness (it never fails on Linux once booted), the time in nanoseconds stands in: jitter
/// and id uniqueness degrade, nothing else depends on it.
pub fn random_u64() -> u64 {
    match random_bytes::<8>() {
        Ok(b) => u64::from_le_bytes(b),
        Err(_) => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0),
    }
}

/// Writes `bytes` to `path` with `mode`, atomically: a temporary file beside it
/// (`NAME.EXT.tmp`), synced, then renamed over it, so that a reader never sees half of it.
pub fn write_atomic(path: &std::path::Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension(format!(
        "{}.tmp",
        path.extension().and_then(|e| e.to_str()).unwrap_or("")
    ));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    // The clock is past 2023 and randomness differs between draws.
    #[test]
    fn clock_and_randomness() {
        assert!(now_ms() > 1_700_000_000_000);
        assert_ne!(random_bytes::<16>().unwrap(), random_bytes::<16>().unwrap());
        assert_ne!(random_u64(), random_u64());
    }
}
