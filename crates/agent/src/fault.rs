//! Fault injection for the failure tests: named points in the migration
//! where a test can make this lpmd fail on purpose.
//!
//! Compiled in always and inert unless lpmd was started with `LPM_FAULT`
//! in its environment (the failure tests set it; nobody else does).
//! Being written: see `point`.

/// Called at the named point; returns an error when a test asked for a
/// failure here (or does what the test asked, such as killing lpmd).
pub fn point(name: &str) -> anyhow::Result<()> {
    let _ = name;
    Ok(())
}

/// Lets a test corrupt an outgoing frame at the named point.
pub fn corrupt(name: &str, frame: &mut [u8]) {
    let _ = (name, frame);
}
