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

/// This host's CPU description without a task to read an XSAVE area
/// from (XCR0 and the area's size asked of the CPU itself): what a
/// migration's validation compares between hosts.
pub fn this_host() -> CpuInfo {
    let (xcr0, size) = lpm_sys::misc::xsave_features();
    CpuInfo { xcr0, xstate_size: size, ..host(&[]) }
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

    /// What this CPU says of itself matches what a task's XSAVE area
    /// records, so validation and restore judge alike.
    #[test]
    fn this_host_agrees_with_a_task() {
        let me = this_host();
        assert_eq!(me.arch, std::env::consts::ARCH);
        assert!(me.xcr0 & 0x3 == 0x3, "x87 and SSE state not enabled: xcr0 {:#x}", me.xcr0);
        assert!(me.xstate_size >= 576, "xsave area of {} bytes", me.xstate_size);
        assert!(!me.flags.is_empty(), "no CPU flags read");
        check(&me, &me).unwrap();
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
