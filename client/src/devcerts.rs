//! Certificates for local use (`grantctl dev certs`): a CA, one certificate
//! per node and one per example workload, each naming its SPIFFE ID in its
//! only URI SAN (the X.509-SVID form), plus the role mapping that goes with
//! them. Node certificates also carry DNS and IP SANs (`localhost` and the
//! loopback addresses by default), so that a standard TLS client, which
//! verifies the host name it dialled, accepts them; grant-ledger itself
//! still verifies nodes by SPIFFE ID. For production use certificates from
//! SPIRE or your own CA (docs/security.md).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// Most node certificates one `grantctl dev certs` writes.
pub const NODES_MAX: u64 = 64;

/// Most extra host names and addresses (`--node-san`) a node certificate
/// carries.
pub const NODE_SANS_MAX: usize = 32;

/// The host names and addresses every development node certificate names,
/// so that a standard client dialling a local cluster verifies it.
pub const DEFAULT_NODE_SANS: &[&str] = &["localhost", "127.0.0.1", "::1"];

/// How long development certificates stay valid.
pub const DEV_CERT_DAYS: u64 = 365;

/// The example workloads: file stem and SPIFFE ID path.
pub const WORKLOADS: &[(&str, &str)] = &[
    ("admin", "ops/admin"),
    ("orchestrator", "orchestrator"),
    ("tool", "tool/github"),
    ("auditor", "auditor"),
    ("agent", "agent/planner"),
];

/// A certificate authority held in memory.
pub struct DevCa {
    params: CertificateParams,
    key: KeyPair,
    pub cert_pem: String,
}

/// A certificate and its private key, PEM.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

fn unix(t: SystemTime) -> time::OffsetDateTime {
    rcgen::date_time_ymd(1970, 1, 1) + t.duration_since(UNIX_EPOCH).unwrap_or_default()
}

impl DevCa {
    pub fn new(name: &str) -> Result<DevCa, rcgen::Error> {
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.distinguished_name.push(DnType::CommonName, name);
        let now = SystemTime::now();
        params.not_before = unix(now - Duration::from_secs(3600));
        params.not_after = unix(now + Duration::from_secs(DEV_CERT_DAYS * 2 * 86_400));
        let key = KeyPair::generate()?;
        let cert_pem = params.self_signed(&key)?.pem();
        Ok(DevCa {
            params,
            key,
            cert_pem,
        })
    }

    /// A certificate for `uris` (normally exactly one SPIFFE ID), valid
    /// from `not_before` to `not_after`, usable as client and server.
    pub fn issue_with(
        &self,
        uris: &[&str],
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<Issued, rcgen::Error> {
        self.issue_for_hosts(uris, &[], not_before, not_after)
    }

    /// As [`DevCa::issue_with`], also naming `hosts` (DNS names and IP
    /// addresses, each as [`host_san`] reads it) for standard clients.
    pub fn issue_for_hosts(
        &self,
        uris: &[&str],
        hosts: &[SanType],
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<Issued, rcgen::Error> {
        let mut p = CertificateParams::default();
        for u in uris {
            p.subject_alt_names
                .push(SanType::URI((*u).try_into().map_err(|_| {
                    rcgen::Error::InvalidAsn1String(rcgen::InvalidAsn1String::Ia5String(
                        u.to_string(),
                    ))
                })?));
        }
        p.subject_alt_names.extend(hosts.iter().cloned());
        p.distinguished_name
            .push(DnType::CommonName, uris.first().copied().unwrap_or("none"));
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.not_before = unix(not_before);
        p.not_after = unix(not_after);
        let key = KeyPair::generate()?;
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = p.signed_by(&key, &issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A node certificate: its SPIFFE ID and `hosts` (see [`node_hosts`]),
    /// valid from an hour ago for `days`.
    pub fn issue_node(
        &self,
        spiffe_id: &str,
        hosts: &[SanType],
        days: u64,
    ) -> Result<Issued, rcgen::Error> {
        let now = SystemTime::now();
        self.issue_for_hosts(
            &[spiffe_id],
            hosts,
            now - Duration::from_secs(3600),
            now + Duration::from_secs(days * 86_400),
        )
    }

    /// A certificate for one SPIFFE ID, valid from an hour ago for `days`.
    pub fn issue(&self, spiffe_id: &str, days: u64) -> Result<Issued, rcgen::Error> {
        let now = SystemTime::now();
        self.issue_with(
            &[spiffe_id],
            now - Duration::from_secs(3600),
            now + Duration::from_secs(days * 86_400),
        )
    }
}

/// One `--node-san` value as a SAN: an IP address when it parses as one,
/// else a DNS name (letters, digits, '-', '.', and a leading "*." for a
/// wildcard), which is what a client's host-name check compares with.
pub fn host_san(value: &str) -> Result<SanType, String> {
    if let Ok(ip) = value.parse::<std::net::IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let name = value.strip_prefix("*.").unwrap_or(value);
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if value.len() > 253 || !name.split('.').all(label_ok) {
        return Err(format!(
            "--node-san {value:?}: give a DNS name (letters, digits, '-', dots; \"*.\" may lead) \
             or an IP address"
        ));
    }
    Ok(SanType::DnsName(
        value
            .to_ascii_lowercase()
            .try_into()
            .map_err(|_| format!("--node-san {value:?}: not a DNS name"))?,
    ))
}

/// The host SANs of a node certificate: [`DEFAULT_NODE_SANS`], then
/// `extra` (at most [`NODE_SANS_MAX`]), without repeats.
pub fn node_hosts(extra: &[String]) -> Result<Vec<SanType>, String> {
    if extra.len() > NODE_SANS_MAX {
        return Err(format!("at most {NODE_SANS_MAX} --node-san values"));
    }
    let mut hosts = Vec::new();
    for v in DEFAULT_NODE_SANS
        .iter()
        .copied()
        .chain(extra.iter().map(String::as_str))
    {
        let san = host_san(v)?;
        if !hosts.contains(&san) {
            hosts.push(san);
        }
    }
    Ok(hosts)
}

impl Issued {
    /// Write `<dir>/<stem>.pem` and `<dir>/<stem>.key` (the key mode 0600).
    pub fn write(&self, dir: &Path, stem: &str) -> std::io::Result<(PathBuf, PathBuf)> {
        let cert = dir.join(format!("{stem}.pem"));
        let key = dir.join(format!("{stem}.key"));
        std::fs::write(&cert, &self.cert_pem)?;
        write_private(&key, &self.key_pem)?;
        Ok((cert, key))
    }
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())
}

/// The `[roles]` section that grants the example workloads their roles.
pub fn roles_toml(td: &str) -> String {
    format!(
        r#"[roles]
peer = ["spiffe://{td}/grantd/*"]
admin = ["spiffe://{td}/ops/admin"]
checker = ["spiffe://{td}/tool/*", "spiffe://{td}/ops/admin"]
revoker = ["spiffe://{td}/orchestrator", "spiffe://{td}/ops/admin"]
auditor = ["spiffe://{td}/auditor", "spiffe://{td}/ops/admin"]

[[roles.issuer]]
callers = ["spiffe://{td}/orchestrator", "spiffe://{td}/ops/admin"]
subjects = ["spiffe://{td}/agent/*"]
"#
    )
}

/// Write a CA, `nodes` node certificates (`node-<i>`, naming the
/// [`DEFAULT_NODE_SANS`] and `node_sans`), the example workloads'
/// certificates and `grantd-tls.toml` (the CA path and the role mapping)
/// into `dir`. Returns the files written.
pub fn generate(
    dir: &Path,
    td: &str,
    nodes: u64,
    node_sans: &[String],
) -> anyhow::Result<Vec<PathBuf>> {
    let hosts = node_hosts(node_sans).map_err(anyhow::Error::msg)?;
    std::fs::create_dir_all(dir)?;
    let dir = dir.canonicalize()?;
    let ca = DevCa::new(&format!("grant-ledger development CA ({td})"))?;
    let mut written = Vec::new();
    let ca_path = dir.join("ca.pem");
    std::fs::write(&ca_path, &ca.cert_pem)?;
    written.push(ca_path);
    for i in 1..=nodes {
        let (c, k) = ca
            .issue_node(
                &format!("spiffe://{td}/grantd/node-{i}"),
                &hosts,
                DEV_CERT_DAYS,
            )?
            .write(&dir, &format!("node-{i}"))?;
        written.extend([c, k]);
    }
    for (stem, path) in WORKLOADS {
        let (c, k) = ca
            .issue(&format!("spiffe://{td}/{path}"), DEV_CERT_DAYS)?
            .write(&dir, stem)?;
        written.extend([c, k]);
    }
    let conf = dir.join("grantd-tls.toml");
    std::fs::write(
        &conf,
        format!(
            "# Written by `grantctl dev certs`: for local use only.\n\
             # Each node adds its own --tls-cert-file and --tls-key-file.\n\
             # Relative paths are found beside this file.\n\
             tls_ca_file = \"ca.pem\"\n\n{}",
            roles_toml(td)
        ),
    )?;
    written.push(conf);
    Ok(written)
}
