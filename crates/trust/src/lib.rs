//! lpm's site PKI and mutual TLS.
//!
//! A site has one certificate authority (`lpm pki init`); each host gets a
//! certificate from it (`lpm host enroll NAME`), and so does each operator
//! whose CLI talks to hosts. Identities live in lpm's own name space, not
//! in DNS: host `h1` is `h1.hosts.lpm` in its certificate, operator `ann`
//! is `ann.operators.lpm`, so a host's certificate never passes for an
//! operator's, nor one host's for another's, whatever the network's names.
//!
//! Both ends of every connection present a certificate from the site's CA
//! and check the other's before anything else is read: a certificate from
//! another CA, an expired one, or one for a name other than the peer
//! claims fails the TLS handshake ([`server_config`], [`client_config`],
//! [`check_peer`]). Private keys are written 0600 in 0700 directories and
//! refused when group or others may read them.
//!
//! The files of a PKI directory (`/etc/lpm/pki` on a host):
//! `ca.crt`, `ca.key`, `ca.name` (the CA's common name, with which its
//! issuer is rebuilt), `hosts/NAME.{crt,key}`, `operators/NAME.{crt,key}`.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use time::OffsetDateTime;

pub mod mover;

/// How long a host's or operator's certificate is valid.
pub const LEAF_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// How long the site CA is valid.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Where a host keeps its PKI files.
pub const DEFAULT_DIR: &str = "/etc/lpm/pki";

/// Errors of the PKI; each names the file or the identity.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// A file or directory could not be read or written.
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
    /// A private key others may read.
    #[error("{path}: mode {mode:04o} lets others read a private key; chmod 600 it")]
    TooOpen {
        /// The key's file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// `init` over an existing CA.
    #[error("{0}: a site CA is already there (remove it first to start a new site)")]
    Exists(PathBuf),
    /// Not a name lpm gives an identity.
    #[error("{name:?}: {why}")]
    BadName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// Making a key or certificate failed.
    #[error("{what}: {source}")]
    Make {
        /// What was being made.
        what: String,
        /// The cause.
        #[source]
        source: rcgen::Error,
    },
    /// A file holds no usable certificate or key.
    #[error("{path}: {why}")]
    Bad {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// A TLS configuration could not be built.
    #[error("TLS configuration: {0}")]
    Tls(String),
    /// A TLS handshake failed, or a connection after it is not what the
    /// mover speaks.
    #[error("{0}")]
    Handshake(String),
    /// The peer's certificate is not for the identity it claims.
    #[error("the peer's certificate is not {claimed}'s: {why}")]
    NotThePeer {
        /// The identity the peer claims.
        claimed: String,
        /// Why the certificate does not prove it.
        why: String,
    },
}

/// Result of this crate.
pub type Result<T> = std::result::Result<T, TrustError>;

/// What an identity is: a host (its lpmd) or an operator (a CLI).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// A host's lpmd: serves and connects to other hosts.
    Host,
    /// An operator's CLI: connects to hosts.
    Operator,
    /// A console: serves operators and connects to hosts' APIs, which
    /// take it as an operator and name it as the console it is.
    Console,
}

impl Role {
    fn dir(self) -> &'static str {
        match self {
            Role::Host => "hosts",
            Role::Operator => "operators",
            Role::Console => "consoles",
        }
    }

    /// The name in lpm's name space that a certificate of this role for
    /// `name` carries.
    pub fn subject(self, name: &str) -> String {
        format!("{name}.{}.lpm", self.dir())
    }
}

/// Checks that `name` can name an identity: a DNS label (letters, digits,
/// '-', at most 63, not starting or ending with '-').
pub fn check_name(name: &str) -> Result<()> {
    let bad = |why| Err(TrustError::BadName { name: name.to_string(), why });
    if name.is_empty() || name.len() > 63 {
        return bad("a name is 1 to 63 characters");
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return bad("a name holds only letters, digits and '-'");
    }
    if name.starts_with('-') || name.ends_with('-') {
        return bad("a name neither starts nor ends with '-'");
    }
    Ok(())
}

/// A site's PKI directory.
#[derive(Clone, Debug)]
pub struct Pki {
    dir: PathBuf,
}

/// The paths of an identity's certificate and key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issued {
    /// Its certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM, 0600).
    pub key: PathBuf,
}

impl Pki {
    /// Makes a new site CA in `dir` (created 0700); refuses a directory
    /// that already holds one.
    pub fn init(dir: &Path) -> Result<Pki> {
        let pki = Pki { dir: dir.to_path_buf() };
        if pki.ca_cert().exists() || pki.ca_key().exists() {
            return Err(TrustError::Exists(pki.ca_cert()));
        }
        private_dir(dir)?;
        let name = format!("lpm site CA {:016x}", rand_u64());
        let key = KeyPair::generate().map_err(|source| TrustError::Make { what: "the CA's key".into(), source })?;
        let now = OffsetDateTime::now_utc();
        let params = ca_params(&name, now - time::Duration::hours(1), now + CA_VALIDITY);
        let cert = params.self_signed(&key).map_err(|source| TrustError::Make { what: "the CA's certificate".into(), source })?;
        write_private(&pki.ca_key(), key.serialize_pem().as_bytes())?;
        write_public(&pki.dir.join("ca.name"), name.as_bytes())?;
        write_public(&pki.ca_cert(), cert.pem().as_bytes())?;
        Ok(pki)
    }

    /// The PKI in `dir`.
    pub fn open(dir: &Path) -> Result<Pki> {
        let pki = Pki { dir: dir.to_path_buf() };
        for p in [pki.ca_cert(), pki.ca_key()] {
            if !p.exists() {
                return Err(TrustError::Bad { path: p, why: "missing: run `lpm pki init` first".into() });
            }
        }
        Ok(pki)
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The CA's certificate, which every host and operator trusts.
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    fn ca_key(&self) -> PathBuf {
        self.dir.join("ca.key")
    }

    /// Where the identity `name` of `role` keeps its files.
    pub fn paths(&self, role: Role, name: &str) -> Issued {
        let d = self.dir.join(role.dir());
        Issued { cert: d.join(format!("{name}.crt")), key: d.join(format!("{name}.key")) }
    }

    /// Issues a certificate for `name` of `role`, valid from an hour ago
    /// for [`LEAF_VALIDITY`]; replaces one issued before.
    pub fn enroll(&self, role: Role, name: &str) -> Result<Issued> {
        let now = OffsetDateTime::now_utc();
        self.issue(role, name, now - time::Duration::hours(1), now + LEAF_VALIDITY)
    }

    /// Issues a certificate for `name` of `role` valid from `from` to
    /// `until`.
    pub fn issue(&self, role: Role, name: &str, from: OffsetDateTime, until: OffsetDateTime) -> Result<Issued> {
        check_name(name)?;
        let ca_name = std::fs::read_to_string(self.dir.join("ca.name")).map_err(io("read", &self.dir.join("ca.name")))?;
        let ca_key_pem = read_private(&self.ca_key())?;
        let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(|e| TrustError::Bad { path: self.ca_key(), why: e.to_string() })?;
        // The issuer needs the CA's subject and key only: its
        // parameters are rebuilt as they were made.
        let issuer = Issuer::new(ca_params(ca_name.trim(), from, until), ca_key);
        let subject = role.subject(name);
        let mut params =
            CertificateParams::new(vec![subject.clone()]).map_err(|source| TrustError::Make { what: subject.clone(), source })?;
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, subject.clone());
        params.not_before = from;
        params.not_after = until;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = match role {
            Role::Host => vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth],
            Role::Operator => vec![ExtendedKeyUsagePurpose::ClientAuth],
            Role::Console => vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth],
        };
        let key = KeyPair::generate().map_err(|source| TrustError::Make { what: format!("{subject}'s key"), source })?;
        let cert =
            params.signed_by(&key, &issuer).map_err(|source| TrustError::Make { what: format!("{subject}'s certificate"), source })?;
        let out = self.paths(role, name);
        private_dir(&self.dir.join(role.dir()))?;
        write_private(&out.key, key.serialize_pem().as_bytes())?;
        // The chain a peer checks: the leaf, then the CA.
        let ca_pem = std::fs::read_to_string(self.ca_cert()).map_err(io("read", &self.ca_cert()))?;
        write_public(&out.cert, format!("{}{}", cert.pem(), ca_pem).as_bytes())?;
        Ok(out)
    }
}

fn ca_params(name: &str, from: OffsetDateTime, until: OffsetDateTime) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params.not_before = from;
    params.not_after = until;
    params
}

fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    // /dev/urandom never runs dry; a failure to read it leaves a zero id,
    // which only names the CA (its key is what is trusted).
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut b);
    }
    u64::from_ne_bytes(b)
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> TrustError + 'a {
    move |source| TrustError::Io { op, path: path.to_path_buf(), source }
}

/// Creates `dir` (and its parents) 0700, or tightens it to 0700.
fn private_dir(dir: &Path) -> Result<()> {
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io("create", dir))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io("chmod", dir))
}

fn write_with_mode(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new().create(true).write(true).truncate(true).mode(mode).open(&tmp).map_err(io("create", &tmp))?;
    f.write_all(data).map_err(io("write", &tmp))?;
    f.sync_all().map_err(io("sync", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io("rename into", path))
}

fn write_private(path: &Path, data: &[u8]) -> Result<()> {
    write_with_mode(path, data, 0o600)
}

fn write_public(path: &Path, data: &[u8]) -> Result<()> {
    write_with_mode(path, data, 0o644)
}

/// Reads a private key's file, refusing one that group or others may
/// read or write.
pub fn read_private(path: &Path) -> Result<String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).map_err(io("stat", path))?;
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(TrustError::TooOpen { path: path.to_path_buf(), mode });
    }
    std::fs::read_to_string(path).map_err(io("read", path))
}

/// An identity ready for TLS: its certificate chain and private key.
pub struct Identity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    ca: CertificateDer<'static>,
}

impl Identity {
    /// Loads the identity whose files are `issued`, trusting the CA of
    /// `ca_cert`.
    pub fn load(ca_cert: &Path, issued: &Issued) -> Result<Identity> {
        let chain = read_certs(&issued.cert)?;
        let key_pem = read_private(&issued.key)?;
        let key = rustls_pki_types::pem::PemObject::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| TrustError::Bad { path: issued.key.clone(), why: format!("no private key: {e}") })?;
        let ca = read_certs(ca_cert)?
            .into_iter()
            .next()
            .ok_or_else(|| TrustError::Bad { path: ca_cert.to_path_buf(), why: "no certificate".into() })?;
        Ok(Identity { chain, key, ca })
    }

    fn roots(&self) -> Result<Arc<RootCertStore>> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.clone()).map_err(|e| TrustError::Tls(format!("the site CA: {e}")))?;
        Ok(Arc::new(roots))
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    use rustls_pki_types::pem::PemObject;
    let data = std::fs::read(path).map_err(io("read", path))?;
    let certs: std::result::Result<Vec<_>, _> = CertificateDer::pem_slice_iter(&data).collect();
    let certs = certs.map_err(|e| TrustError::Bad { path: path.to_path_buf(), why: format!("not PEM certificates: {e}") })?;
    if certs.is_empty() {
        return Err(TrustError::Bad { path: path.to_path_buf(), why: "no certificate".into() });
    }
    Ok(certs)
}

/// The ring provider: aws-lc-rs (rustls' default, with post-quantum key
/// exchange) needs a long C build this project does not carry yet; ring's
/// classical X25519 and P-256 key exchange is what TLS 1.3 gives without it.
#[allow(deprecated)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A server's TLS configuration: it presents `id` and accepts only
/// clients with a valid certificate from the same CA (TLS 1.3). Which
/// identity a client has is checked after the handshake ([`check_peer`]).
pub fn server_config(id: &Identity) -> Result<Arc<ServerConfig>> {
    let p = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(id.roots()?, p.clone())
        .build()
        .map_err(|e| TrustError::Tls(format!("client verifier: {e}")))?;
    let c = ServerConfig::builder_with_provider(p)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TrustError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(id.chain.clone(), id.key.clone_key())
        .map_err(|e| TrustError::Tls(format!("our certificate: {e}")))?;
    Ok(Arc::new(c))
}

/// A server's TLS configuration that also takes clients without a
/// certificate (TLS 1.3): the console, whose operators present a
/// certificate of the same CA or a bearer token inside the connection.
/// A certificate presented must still be valid and of the site CA.
pub fn server_config_optional_client(id: &Identity) -> Result<Arc<ServerConfig>> {
    let p = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(id.roots()?, p.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| TrustError::Tls(format!("client verifier: {e}")))?;
    let c = ServerConfig::builder_with_provider(p)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TrustError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(id.chain.clone(), id.key.clone_key())
        .map_err(|e| TrustError::Tls(format!("our certificate: {e}")))?;
    Ok(Arc::new(c))
}

/// The name a client expects in console `name`'s certificate.
pub fn console_server_name(name: &str) -> Result<ServerName<'static>> {
    check_name(name)?;
    ServerName::try_from(Role::Console.subject(name))
        .map_err(|_| TrustError::BadName { name: name.to_string(), why: "not a valid console name" })
}

/// A client's TLS configuration: it presents `id` and accepts only a
/// server whose certificate is from the same CA and for the host it
/// connects to ([`host_server_name`]) (TLS 1.3).
pub fn client_config(id: &Identity) -> Result<Arc<ClientConfig>> {
    let c = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TrustError::Tls(e.to_string()))?
        .with_root_certificates(id.roots()?)
        .with_client_auth_cert(id.chain.clone(), id.key.clone_key())
        .map_err(|e| TrustError::Tls(format!("our certificate: {e}")))?;
    Ok(Arc::new(c))
}

/// A client's TLS configuration without a certificate of its own (TLS
/// 1.3): it accepts only a server of the CA of `ca_cert`. An operator with
/// a console token calls the console so, and authenticates inside.
pub fn anonymous_client_config(ca_cert: &Path) -> Result<Arc<ClientConfig>> {
    let ca = read_certs(ca_cert)?
        .into_iter()
        .next()
        .ok_or_else(|| TrustError::Bad { path: ca_cert.to_path_buf(), why: "no certificate".into() })?;
    let mut roots = RootCertStore::empty();
    roots.add(ca).map_err(|e| TrustError::Tls(format!("the site CA: {e}")))?;
    let c = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TrustError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(c))
}

/// The name a client expects in host `name`'s certificate.
pub fn host_server_name(name: &str) -> Result<ServerName<'static>> {
    check_name(name)?;
    ServerName::try_from(Role::Host.subject(name)).map_err(|_| TrustError::BadName { name: name.to_string(), why: "not a valid host name" })
}

/// Checks that the certificate a peer presented (already verified against
/// the site CA by the handshake) is for `name` of `role`.
pub fn check_peer(certs: Option<&[CertificateDer<'_>]>, role: Role, name: &str) -> Result<()> {
    let claimed = role.subject(name);
    let not = |why: String| TrustError::NotThePeer { claimed: claimed.clone(), why };
    let leaf = certs.and_then(|c| c.first()).ok_or_else(|| not("it presented no certificate".into()))?;
    let cert = webpki::EndEntityCert::try_from(leaf).map_err(|e| not(format!("unreadable: {e}")))?;
    let want = ServerName::try_from(claimed.as_str()).map_err(|e| not(format!("not a valid name: {e}")))?;
    cert.verify_is_valid_for_subject_name(&want).map_err(|e| not(format!("{e:?}")))
}

/// The name of `role` that the certificate a peer presented (already
/// verified against the site CA by the handshake) is for: a server that
/// takes any operator learns which one called.
pub fn peer_name(certs: Option<&[CertificateDer<'_>]>, role: Role) -> Result<String> {
    let wanted = format!("an identity of role {role:?}");
    let not = |why: String| TrustError::NotThePeer { claimed: wanted.clone(), why };
    let leaf = certs.and_then(|c| c.first()).ok_or_else(|| not("it presented no certificate".into()))?;
    let cert = webpki::EndEntityCert::try_from(leaf).map_err(|e| not(format!("unreadable: {e}")))?;
    let suffix = format!(".{}.lpm", role.dir());
    let names: Vec<&str> = cert.valid_dns_names().collect();
    names
        .iter()
        .find_map(|n| n.strip_suffix(&suffix).filter(|name| check_name(name).is_ok()))
        .map(str::to_string)
        .ok_or_else(|| not(format!("its names are {}", if names.is_empty() { "none".into() } else { names.join(", ") })))
}

#[cfg(test)]
mod tests;
