// Sets `LPM_VERSION` for `--version`: the crate version with the git
// commit it was built from ("0.1.0 (3f2a9c1)"), or the crate version
// alone where there is no git or no repository (a source tarball).
// crates/cli/build.rs includes this file, so `lpm` and `lpmd` say the same.

use std::process::Command;

/// `git ARGS` in the crate's directory, its trimmed stdout when it succeeds.
fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).current_dir(env!("CARGO_MANIFEST_DIR")).output().ok()?;
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !s.is_empty()).then_some(s)
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let version = env!("CARGO_PKG_VERSION");
    // Only lpm's own repository counts: a tarball unpacked inside another
    // repository (a packaging one) must not take that one's commit.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().ok();
    let ours = git(&["rev-parse", "--show-toplevel"]).and_then(|t| std::path::Path::new(&t).canonicalize().ok()) == root;
    let full = match git(&["rev-parse", "--short=9", "HEAD"]).filter(|_| ours) {
        Some(commit) => {
            // Build again when HEAD moves: a checkout changes HEAD, a commit
            // the branch's ref (loose, or packed by a gc).
            for p in ["HEAD", "packed-refs"] {
                if let Some(path) = git(&["rev-parse", "--path-format=absolute", "--git-path", p]) {
                    println!("cargo:rerun-if-changed={path}");
                }
            }
            if let Some(path) =
                git(&["symbolic-ref", "-q", "HEAD"]).and_then(|r| git(&["rev-parse", "--path-format=absolute", "--git-path", &r]))
            {
                println!("cargo:rerun-if-changed={path}");
            }
            format!("{version} ({commit})")
        }
        None => version.to_string(),
    };
    println!("cargo:rustc-env=LPM_VERSION={full}");
}
