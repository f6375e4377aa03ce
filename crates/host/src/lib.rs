//! The host side of lpm: what `lpmd` needs to run partitions on one host.
//!
//! A partition is a process tree in its own pid, mount, net, uts and ipc
//! namespaces and its own cgroup, with a veth NIC on the host's partition
//! bridge. [`cgroup`] manages cgroups on both the hybrid (v1 controllers and
//! a controller-less cgroup2) and the unified layout; [`net`] the network
//! namespaces, links and the gratuitous ARP; [`partition`] a partition's
//! plumbing and its init process; [`checks`] the named checks of a
//! partition against the hosts (unique name, address and MAC, limits that
//! fit a host's [`cgroup::Headroom`]); [`lab`] a set of hosts on one
//! machine for the demo and the tests.

#![forbid(unsafe_code)]

pub mod cgroup;
pub mod checks;
pub mod config;
pub mod hold;
pub mod hosts;
pub mod isolation;
pub mod lab;
pub mod net;
pub mod partition;
pub mod rtnl;
pub mod volume;
