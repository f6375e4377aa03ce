//! Kernel feature probes (filled in).
