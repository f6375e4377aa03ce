//! What `lpm migrate` refuses before it asks a host for anything, each
//! refusal naming the argument and why.

use std::process::{Command, Stdio};

mod common;
use common::LPM;

/// `lpm migrate` arguments no migration can honour are refused by name,
/// before any lab is looked for.
#[test]
fn migrate_refuses_arguments_it_cannot_honour() {
    let nowhere = std::env::temp_dir().join(format!("lpm-no-lab-{}", std::process::id()));
    for (args, said) in [
        (&["--streams", "0"][..], "--streams 0: pages need 1 to 64 streams"),
        (&["--streams", "65"][..], "--streams 65"),
        (&["--max-downtime", "0"][..], "--max-downtime 0"),
        (&["--max-time", "0"][..], "--max-time 0"),
        (&["--compress", "zstd:23"][..], "zstd levels are"),
        (&["--compress", "zstd:-200000"][..], "zstd levels are"),
        (&["--compress", "zstd:x"][..], "not a whole number"),
        (&["--compress", "lz4"][..], "unknown compression"),
    ] {
        let out = Command::new(LPM)
            .args(["migrate", "web", "--to", "h2"])
            .args(args)
            .env("LPM_LAB", &nowhere)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "migrate {args:?} was accepted");
        assert!(err.contains(said) && !err.contains("no lab"), "migrate {args:?}: {err}");
    }
    // zstd's own limits are accepted (they reach the check for a lab).
    for level in ["zstd:-5", "zstd:22", "zstd"] {
        let out = Command::new(LPM).args(["migrate", "web", "--to", "h2", "--compress", level]).env("LPM_LAB", &nowhere).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("no lab"), "--compress {level}: {err}");
    }
}
