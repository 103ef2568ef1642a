//! Throwaway certificates for trying TLS (`raftctl certs`, `scripts/cluster.sh start --tls`,
//! the tests): a CA, one certificate per node, one for clients.
//!
//! A node's certificate names it as raftd's peer port expects, `node-<id>.<cluster-id>` (a DNS
//! subject alternative name), besides the hosts clients reach it at; it serves for server and
//! client authentication, so one file serves the peer port and the client port. The CA's key
//! stays beside its certificate so that a node added later gets a certificate of the same CA.
//! For production, issue certificates from the organization's own CA with the same names.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// The common name of a CA made here; a CA is rebuilt from its key and this name.
const CA_COMMON_NAME: &str = "raftd throwaway CA";
/// How far back a certificate is valid from, for clocks slightly behind.
const NOT_BEFORE_SLACK: Duration = Duration::from_secs(3600);

/// A certificate's validity: from `not_before` to `not_after`.
#[derive(Clone, Copy, Debug)]
pub struct Validity {
    /// Valid from.
    pub not_before: SystemTime,
    /// Valid until.
    pub not_after: SystemTime,
}

impl Validity {
    /// From an hour ago for `days` days.
    pub fn days(days: u64) -> Validity {
        let now = SystemTime::now();
        Validity {
            not_before: now - NOT_BEFORE_SLACK,
            not_after: now + Duration::from_secs(days.saturating_mul(86_400)),
        }
    }
}

fn offset_date_time(t: SystemTime) -> Result<time::OffsetDateTime, String> {
    let secs = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).map_err(|e| e.to_string())?,
        Err(e) => -i64::try_from(e.duration().as_secs()).map_err(|e| e.to_string())?,
    };
    time::OffsetDateTime::from_unix_timestamp(secs).map_err(|e| e.to_string())
}

/// A CA: its parameters and key.
pub struct Ca {
    params: CertificateParams,
    key: KeyPair,
    cert_pem: String,
}

fn ca_params(validity: Validity) -> Result<CertificateParams, String> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, CA_COMMON_NAME);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = offset_date_time(validity.not_before)?;
    params.not_after = offset_date_time(validity.not_after)?;
    Ok(params)
}

impl Ca {
    /// A new CA, valid for `validity`.
    pub fn new(validity: Validity) -> Result<Ca, String> {
        let key = KeyPair::generate().map_err(|e| e.to_string())?;
        let params = ca_params(validity)?;
        let cert_pem = params.self_signed(&key).map_err(|e| e.to_string())?.pem();
        Ok(Ca { params, key, cert_pem })
    }

    /// The CA whose certificate and key [`Ca::save`] wrote in `dir`.
    pub fn load(dir: &Path) -> Result<Ca, String> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))
        };
        let key =
            KeyPair::from_pem(&read("ca-key.pem")?).map_err(|e| format!("ca-key.pem: {e}"))?;
        // Certificates it issues name it by its name and key: the validity does not matter.
        let params = ca_params(Validity::days(1))?;
        Ok(Ca { params, key, cert_pem: read("ca.pem")? })
    }

    /// The CA's certificate (PEM).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Writes `ca.pem` and `ca-key.pem` into `dir`.
    pub fn save(&self, dir: &Path) -> Result<(), String> {
        write(&dir.join("ca.pem"), &self.cert_pem)?;
        write_private(&dir.join("ca-key.pem"), &self.key.serialize_pem())
    }

    /// A certificate for `names` (DNS names or IP addresses), for server and client
    /// authentication, valid for `validity`: its PEM and its key's PEM.
    pub fn issue(&self, names: &[String], validity: Validity) -> Result<(String, String), String> {
        let mut params = CertificateParams::new(names.to_vec()).map_err(|e| e.to_string())?;
        params
            .distinguished_name
            .push(DnType::CommonName, names.first().cloned().unwrap_or_default());
        params.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.not_before = offset_date_time(validity.not_before)?;
        params.not_after = offset_date_time(validity.not_after)?;
        let key = KeyPair::generate().map_err(|e| e.to_string())?;
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).map_err(|e| e.to_string())?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// Node `id`'s certificate, naming `node-<id>.<cluster_id>` and `hosts`.
    pub fn issue_node(
        &self,
        id: u64,
        cluster_id: &str,
        hosts: &[String],
        validity: Validity,
    ) -> Result<(String, String), String> {
        let mut names = vec![raftd::tls::node_name(id, cluster_id)];
        names.extend(hosts.iter().cloned());
        self.issue(&names, validity)
    }
}

fn write(path: &Path, contents: &str) -> Result<(), String> {
    std::fs::write(path, contents).map_err(|e| format!("{}: {e}", path.display()))
}

/// Writes a private key, readable by its owner only.
fn write_private(path: &Path, contents: &str) -> Result<(), String> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(contents.as_bytes()))
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// What [`create`] wrote.
pub struct Created {
    /// Files written (the ones that existed are kept).
    pub written: Vec<PathBuf>,
}

/// Makes `dir` hold a CA (`ca.pem`, `ca-key.pem`: kept if there), a certificate per node of
/// `nodes` (`node-<id>.pem`, `node-<id>-key.pem`: kept if there) naming it and `hosts`, and a
/// client certificate (`client.pem`, `client-key.pem`), each valid for `days`.
pub fn create(
    dir: &Path,
    cluster_id: &str,
    nodes: &[u64],
    hosts: &[String],
    days: u64,
) -> Result<Created, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let validity = Validity::days(days);
    let mut written = Vec::new();
    let ca = if dir.join("ca-key.pem").exists() {
        Ca::load(dir)?
    } else {
        let ca = Ca::new(validity)?;
        ca.save(dir)?;
        written.push(dir.join("ca.pem"));
        ca
    };
    for &id in nodes {
        let cert = dir.join(format!("node-{id}.pem"));
        if cert.exists() {
            continue;
        }
        let (pem, key) = ca.issue_node(id, cluster_id, hosts, validity)?;
        write_private(&dir.join(format!("node-{id}-key.pem")), &key)?;
        write(&cert, &pem)?;
        written.push(cert);
    }
    let client = dir.join("client.pem");
    if !client.exists() {
        let (pem, key) = ca.issue(&["raftctl".to_string()], validity)?;
        write_private(&dir.join("client-key.pem"), &key)?;
        write(&client, &pem)?;
        written.push(client);
    }
    Ok(Created { written })
}
