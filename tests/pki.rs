//! Certificates for the test clusters: one CA per cluster (made with the
//! same code as `grantctl dev certs`), node certificates on demand, and any
//! workload identity a test wants to call as.

use std::path::{Path, PathBuf};

use grant_client::devcerts::{roles_toml, DevCa, Issued};
use grant_client::{Options, Tls, TlsFiles};

pub const TRUST_DOMAIN: &str = "example.org";
/// The harness's own client: every role (see `roles_toml`).
pub const ADMIN: &str = "ops/admin";

pub struct Pki {
    pub dir: PathBuf,
    pub ca: DevCa,
}

impl Pki {
    pub fn new(dir: &Path) -> Pki {
        std::fs::create_dir_all(dir).expect("pki dir");
        let ca = DevCa::new("grant-ledger test CA").expect("CA");
        std::fs::write(dir.join("ca.pem"), &ca.cert_pem).unwrap();
        std::fs::write(
            dir.join("grantd-tls.toml"),
            format!(
                "tls_ca_file = {:?}\n{}",
                dir.join("ca.pem").display().to_string(),
                roles_toml(TRUST_DOMAIN)
            ),
        )
        .unwrap();
        Pki {
            dir: dir.to_path_buf(),
            ca,
        }
    }

    /// The config file holding the CA path and the role mapping.
    pub fn config(&self) -> PathBuf {
        self.dir.join("grantd-tls.toml")
    }

    /// Write `issued` under `stem` and return its files with our CA.
    pub fn save(&self, stem: &str, issued: &Issued) -> TlsFiles {
        let (cert, key) = issued.write(&self.dir, stem).unwrap();
        TlsFiles {
            ca: self.dir.join("ca.pem"),
            cert,
            key,
        }
    }

    /// Files for `spiffe://example.org/<path>`, made once.
    pub fn identity(&self, path: &str) -> TlsFiles {
        let stem = path.replace('/', "_");
        let files = TlsFiles {
            ca: self.dir.join("ca.pem"),
            cert: self.dir.join(format!("{stem}.pem")),
            key: self.dir.join(format!("{stem}.key")),
        };
        if !files.cert.exists() {
            let issued = self
                .ca
                .issue(&format!("spiffe://{TRUST_DOMAIN}/{path}"), 30)
                .unwrap();
            self.save(&stem, &issued);
        }
        files
    }

    /// Node `id`'s files: its SPIFFE ID and, like `grantctl dev certs`
    /// writes them, `localhost` and the loopback addresses for standard
    /// clients.
    pub fn node(&self, id: u64) -> TlsFiles {
        let stem = format!("grantd_node-{id}");
        let files = TlsFiles {
            ca: self.dir.join("ca.pem"),
            cert: self.dir.join(format!("{stem}.pem")),
            key: self.dir.join(format!("{stem}.key")),
        };
        if !files.cert.exists() {
            let hosts = grant_client::devcerts::node_hosts(&[]).unwrap();
            let issued = self
                .ca
                .issue_node(
                    &format!("spiffe://{TRUST_DOMAIN}/grantd/node-{id}"),
                    &hosts,
                    30,
                )
                .unwrap();
            self.save(&stem, &issued);
        }
        files
    }

    /// Client options presenting `files`.
    pub fn options(&self, files: &TlsFiles) -> Options {
        Options {
            tls: Some(Tls::load(files).expect("test TLS files")),
            ..Options::default()
        }
    }
}

/// A TLS channel to `addr` presenting `identity` as it is, or no client
/// certificate at all, and trusting any server: what a caller whose
/// certificate the client library would not even load can still open.
pub async fn raw_channel(
    addr: &str,
    identity: Option<&TlsFiles>,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let mut tls = tonic::transport::ClientTlsConfig::new();
    if let Some(f) = identity {
        tls = tls.identity(tonic::transport::Identity::from_pem(
            std::fs::read(&f.cert).unwrap(),
            std::fs::read(&f.key).unwrap(),
        ));
    }
    tonic::transport::Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .connect_timeout(std::time::Duration::from_secs(2))
        .tls_config_with_verifier(
            tls,
            std::sync::Arc::new(AnyServer(
                rustls::crypto::ring::default_provider().signature_verification_algorithms,
            )),
        )?
        .connect()
        .await
}

#[derive(Debug)]
struct AnyServer(rustls::crypto::WebPkiSupportedAlgorithms);

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_schemes()
    }
}
