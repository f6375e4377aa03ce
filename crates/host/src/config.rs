//! lpmd's configuration file (TOML, `/etc/lpm/lpmd.toml` by default): what
//! a host agent needs to run as a service, the same keys as its command
//! line, which overrides the file key by key.
//!
//! ```toml
//! host = "h1"                        # this host's name (default: the node name)
//! listen = "192.0.2.11:7411"         # the mover's address (required)
//! dir = "/var/lib/lpm"               # state directory
//! control = "/run/lpm/lpmd.sock"     # control socket
//! key = "/etc/lpm/cluster.key"       # the cluster's pre-shared key
//! bridge = "lpmbr0"                  # partition bridge
//! prefix = "lpm"                     # start of the names lpmd creates
//! shared = "/srv/lpm"                # shared storage (default: dir's parent)
//! max_outgoing = 4                   # migrations as the source at once
//! max_incoming = 4                   # migrations as the target at once
//! tls_ca = "/etc/lpm/pki/ca.crt"     # the site CA (`lpm pki init`)
//! tls_cert = "/etc/lpm/pki/hosts/h1.crt"  # this host's certificate
//! tls_key = "/etc/lpm/pki/hosts/h1.key"   # and key (`lpm host enroll h1`)
//! # insecure = true                  # mover without TLS: for measurement only
//! api_listen = "192.0.2.11:7412"     # the remote control API (mutual TLS; needs the tls_* keys)
//! hide = ["/srv/other-secrets"]      # more host paths partitions must not see
//! userns_base = 1000000000           # first host id of `--userns` partitions' ranges
//! ```
//!
//! The mover needs the three TLS files, or `insecure = true` (plain
//! frames behind the cluster key, partitions' memory in clear): lpmd
//! refuses to start with neither.
//!
//! An unknown key is an error naming it (a misspelt key would otherwise
//! leave a default in place without a word).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Where lpmd looks for its configuration when not told.
pub const DEFAULT_PATH: &str = "/etc/lpm/lpmd.toml";
/// State directory of an installed lpmd.
pub const DEFAULT_DIR: &str = "/var/lib/lpm";
/// Control socket of an installed lpmd.
pub const DEFAULT_CONTROL: &str = "/run/lpm/lpmd.sock";
/// The cluster's key of an installed lpmd.
pub const DEFAULT_KEY: &str = "/etc/lpm/cluster.key";
/// The partition bridge's name.
pub const DEFAULT_BRIDGE: &str = "lpmbr0";
/// The start of the names an installed lpmd creates.
pub const DEFAULT_PREFIX: &str = "lpm";

/// The keys of lpmd's configuration, each optional (a default or the
/// command line fills it).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// This host's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The mover's address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// State directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
    /// Control socket.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub control: Option<PathBuf>,
    /// The file holding the cluster's pre-shared key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// Partition bridge in the host's network namespace.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bridge: Option<String>,
    /// Prefix of the names the host creates (namespaces, cgroups).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Shared storage every host sees at the same path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shared: Option<PathBuf>,
    /// Migrations this host runs as the source at once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_outgoing: Option<usize>,
    /// Migrations this host runs as the target at once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_incoming: Option<usize>,
    /// The site CA's certificate (PEM) this host trusts its peers by.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_ca: Option<PathBuf>,
    /// This host's certificate (PEM), issued by `lpm host enroll`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// This host's private key (PEM, mode 0600).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// The mover without TLS (for measurement only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub insecure: Option<bool>,
    /// Where the remote control API listens (HTTP/JSON over mutual TLS).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_listen: Option<SocketAddr>,
    /// More host paths hidden from partitions, besides lpmd's own state
    /// directory, control socket, key and /etc/lpm (other agents' state on
    /// the same machine, say).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hide: Option<Vec<PathBuf>>,
    /// The first host id of the ranges `--userns` partitions' user
    /// namespaces map (65536 ids each, lpm_host::isolation::allocate);
    /// keep it clear of /etc/subuid's ranges, which are skipped anyway.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub userns_base: Option<u32>,
}

/// A configuration file that could not be read or parsed.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Reading or writing the file failed.
    #[error("{op} {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid configuration (the parser names the key and
    /// line).
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, where.
        reason: String,
    },
}

impl AgentConfig {
    /// Parses a configuration text; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<AgentConfig, ConfigError> {
        let c: AgentConfig = toml::from_str(text).map_err(|e| ConfigError::Invalid { path: path.to_path_buf(), reason: e.to_string() })?;
        for (key, n) in [("max_outgoing", c.max_outgoing), ("max_incoming", c.max_incoming)] {
            if n == Some(0) {
                return Err(ConfigError::Invalid {
                    path: path.to_path_buf(),
                    reason: format!("{key}: want a number of migrations, at least 1"),
                });
            }
        }
        Ok(c)
    }

    /// Reads the file at `path`.
    pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io { op: "read", path: path.to_path_buf(), source })?;
        AgentConfig::parse(&text, path)
    }

    /// Reads the file at `path` if there is one.
    pub fn load_if_present(path: &Path) -> Result<Option<AgentConfig>, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => AgentConfig::parse(&text, path).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(ConfigError::Io { op: "read", path: path.to_path_buf(), source }),
        }
    }

    /// Writes the configuration to `path` (mode 0600: it names the key's
    /// file and the state directory).
    pub fn write(&self, path: &Path) -> Result<(), ConfigError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let text = toml::to_string(self).map_err(|e| ConfigError::Invalid { path: path.to_path_buf(), reason: e.to_string() })?;
        let io = |op| move |source| ConfigError::Io { op, path: path.to_path_buf(), source };
        let mut f = std::fs::OpenOptions::new().create(true).write(true).truncate(true).mode(0o600).open(path).map_err(io("create"))?;
        f.write_all(text.as_bytes()).map_err(io("write"))
    }

    /// `self` with every key `over` sets taken from `over`.
    pub fn overridden_by(self, over: AgentConfig) -> AgentConfig {
        AgentConfig {
            host: over.host.or(self.host),
            listen: over.listen.or(self.listen),
            dir: over.dir.or(self.dir),
            control: over.control.or(self.control),
            key: over.key.or(self.key),
            bridge: over.bridge.or(self.bridge),
            prefix: over.prefix.or(self.prefix),
            shared: over.shared.or(self.shared),
            max_outgoing: over.max_outgoing.or(self.max_outgoing),
            max_incoming: over.max_incoming.or(self.max_incoming),
            tls_ca: over.tls_ca.or(self.tls_ca),
            tls_cert: over.tls_cert.or(self.tls_cert),
            tls_key: over.tls_key.or(self.tls_key),
            insecure: over.insecure.or(self.insecure),
            api_listen: over.api_listen.or(self.api_listen),
            hide: over.hide.or(self.hide),
            userns_base: over.userns_base.or(self.userns_base),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_file_parses_and_round_trips() {
        let text = r#"
host = "h1"
listen = "192.0.2.11:7411"
dir = "/var/lib/lpm"
control = "/run/lpm/lpmd.sock"
key = "/etc/lpm/cluster.key"
bridge = "br9"
prefix = "lpm"
shared = "/srv/lpm"
max_outgoing = 2
max_incoming = 3
tls_ca = "/etc/lpm/ca.crt"
tls_cert = "/etc/lpm/host.crt"
tls_key = "/etc/lpm/host.key"
api_listen = "192.0.2.11:7412"
"#;
        let c = AgentConfig::parse(text, Path::new("t.toml")).unwrap();
        assert_eq!(c.host.as_deref(), Some("h1"));
        assert_eq!(c.listen, Some("192.0.2.11:7411".parse().unwrap()));
        assert_eq!(c.bridge.as_deref(), Some("br9"));
        assert_eq!((c.max_outgoing, c.max_incoming), (Some(2), Some(3)));
        assert_eq!(c.api_listen, Some("192.0.2.11:7412".parse().unwrap()));
        let again = AgentConfig::parse(&toml::to_string(&c).unwrap(), Path::new("t.toml")).unwrap();
        assert_eq!(again, c);
    }

    #[test]
    fn bad_files_name_what_is_wrong() {
        let e = AgentConfig::parse("hots = \"h1\"\n", Path::new("/etc/lpm/lpmd.toml")).unwrap_err().to_string();
        assert!(e.contains("/etc/lpm/lpmd.toml") && e.contains("hots"), "{e}");
        let e = AgentConfig::parse("listen = \"not an address\"\n", Path::new("x.toml")).unwrap_err().to_string();
        assert!(e.contains("listen"), "{e}");
        let e = AgentConfig::parse("max_incoming = 0\n", Path::new("x.toml")).unwrap_err().to_string();
        assert!(e.contains("max_incoming") && e.contains("at least 1"), "{e}");
        let e = AgentConfig::parse("max_outgoing = -1\n", Path::new("x.toml")).unwrap_err().to_string();
        assert!(e.contains("max_outgoing"), "{e}");
    }

    /// The example in dist/ is what the docs tell an operator to copy.
    #[test]
    fn the_shipped_example_parses() {
        let c = AgentConfig::parse(include_str!("../../../dist/lpmd.toml"), Path::new("dist/lpmd.toml")).unwrap();
        assert!(c.host.is_some() && c.listen.is_some() && c.key.is_some(), "{c:?}");
    }

    /// The unit in dist/ passes systemd's own check (with its binary
    /// standing in for lpmd's, which is not installed here).
    #[test]
    fn the_shipped_unit_passes_systemd_analyze() {
        let unit = include_str!("../../../dist/lpmd.service").replace("/usr/local/bin/lpmd", "/bin/true");
        let dir = std::env::temp_dir().join(format!("lpm-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("lpmd.service");
        std::fs::write(&path, unit).unwrap();
        let out = std::process::Command::new("systemd-analyze").args(["verify", "--man=no"]).arg(&path).output();
        let _ = std::fs::remove_dir_all(&dir);
        let out = out.expect("systemd-analyze (Debian's systemd package; scripts/setup.sh installs it)");
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && said.trim().is_empty(), "systemd-analyze verify: {said}");
    }

    #[test]
    fn the_command_line_overrides_the_file_key_by_key() {
        let file = AgentConfig { host: Some("h1".into()), dir: Some("/a".into()), max_incoming: Some(2), ..Default::default() };
        let line = AgentConfig { dir: Some("/b".into()), ..Default::default() };
        let c = file.overridden_by(line);
        assert_eq!((c.host.as_deref(), c.dir.as_deref(), c.max_incoming), (Some("h1"), Some(Path::new("/b")), Some(2)));
    }
}
