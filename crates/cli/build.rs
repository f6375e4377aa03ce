// The same version string as lpmd's: crate version and git commit.
include!("../agent/build.rs");
