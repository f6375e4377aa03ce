//! The CPU state format: XCR0, xstate size and CPUID flags, recorded at
//! checkpoint and checked at restore (a task that used AVX-512 cannot run
//! where AVX-512 is missing).

use lpm_image::CpuInfo;

use crate::{EngineError, Result};

/// This host's CPU description; `xstate` is any thread's XSAVE area.
pub fn host(xstate: &[u8]) -> CpuInfo {
    let flags = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("flags"))
                .map(|l| l.split(':').nth(1).unwrap_or("").split_whitespace().map(String::from).collect())
        })
        .unwrap_or_default();
    CpuInfo { arch: std::env::consts::ARCH.into(), xcr0: lpm_sys::ptrace::xstate_xcr0(xstate), xstate_size: xstate.len() as u32, flags }
}

/// Refuses an image whose CPU state this host cannot hold.
pub fn check(image: &CpuInfo, here: &CpuInfo) -> Result<()> {
    if image.arch != here.arch {
        return Err(EngineError::Incompatible(format!("image is for {}, this host is {}", image.arch, here.arch)));
    }
    let missing_x = image.xcr0 & !here.xcr0;
    if missing_x != 0 {
        return Err(EngineError::Incompatible(format!(
            "xsave components {missing_x:#x} used by the image (xcr0 {:#x}) are not enabled here (xcr0 {:#x})",
            image.xcr0, here.xcr0
        )));
    }
    let missing: Vec<&str> = image.flags.iter().filter(|f| !here.flags.contains(f)).map(String::as_str).collect();
    if !missing.is_empty() {
        return Err(EngineError::Incompatible(format!("CPU features missing here: {}", missing.join(" "))));
    }
    if image.xstate_size > here.xstate_size {
        return Err(EngineError::Incompatible(format!(
            "xstate area of {} bytes does not fit this CPU's {} bytes",
            image.xstate_size, here.xstate_size
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpu(xcr0: u64, flags: &[&str]) -> CpuInfo {
        CpuInfo { arch: "x86_64".into(), xcr0, xstate_size: 2432, flags: flags.iter().map(|s| s.to_string()).collect() }
    }

    #[test]
    fn compatibility_table() {
        assert!(check(&cpu(0x7, &["sse", "avx"]), &cpu(0xe7, &["sse", "avx", "avx512f"])).is_ok());
        let e = check(&cpu(0xe7, &["sse"]), &cpu(0x7, &["sse"])).unwrap_err().to_string();
        assert!(e.contains("xsave components 0xe0"), "{e}");
        let e = check(&cpu(0x7, &["sse", "avx512f"]), &cpu(0x7, &["sse"])).unwrap_err().to_string();
        assert!(e.contains("avx512f"), "{e}");
    }
}
