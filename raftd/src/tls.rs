//! TLS on the peer and client ports (rustls, ring as the crypto provider).
//!
//! **Peer port: mutual TLS, identities bound to certificates.** Every node presents its peer
//! certificate both as a server (to the nodes that dial it) and as a client (to the nodes it
//! dials), and trusts only certificates issued by `--peer-trusted-ca-file`. A node's
//! certificate names its id and cluster as a DNS subject alternative name,
//! `node-<id>.<cluster-id>` ([`node_name`]): a node dialling peer 2 of cluster `prod` accepts
//! only a certificate valid for `node-2.prod`, and a node accepts a peer's Hello only from the
//! id its client certificate names. A certificate of the same CA for another id, another
//! cluster, or a client, speaks for no other node.
//!
//! **Client port: TLS, client certificates optional** (`--client-cert-auth`, any certificate
//! issued by `--trusted-ca-file`; the token still applies when set).
//!
//! Certificates and keys are read again on SIGHUP ([`TlsContext::reload`]): new connections
//! use the new ones, established ones keep theirs, and a reload that fails keeps the old ones.
//!
//! [`TlsStream`] runs a rustls connection over a non-blocking socket for the node's mio loop:
//! reads return plaintext until the socket would block; writes encrypt into a bounded buffer
//! and return `WouldBlock` once it is full; `flush` says (with `WouldBlock`) whether encrypted
//! bytes still wait for the socket, so that the connection asks for a writable event.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};

/// Encrypted bytes a connection may hold for its socket before writes return `WouldBlock`
/// (the framed queue in front of it has its own limit).
pub const TLS_SEND_BUFFER_BYTES: usize = 256 * 1024;
/// The first byte of every TLS connection: a handshake record.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// The DNS name a node's peer certificate must hold: `node-<id>.<cluster_id>`.
pub fn node_name(id: u64, cluster_id: &str) -> String {
    format!("node-{id}.{cluster_id}")
}

/// Whether `bytes`, the first a connection sent, open a TLS handshake (a TLS client on a
/// plaintext port).
pub fn looks_like_tls(bytes: &[u8]) -> bool {
    matches!(bytes, [TLS_HANDSHAKE_RECORD, 0x03, ..])
}

/// The peer port's files: mutual TLS, always.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerTlsFiles {
    /// This node's certificate chain (PEM), naming `node-<id>.<cluster>`.
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// The CA(s) whose certificates identify the other nodes (PEM).
    pub trusted_ca: PathBuf,
}

/// The client port's files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientTlsFiles {
    /// The certificate chain served to clients (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// The CA(s) whose certificates clients present (PEM); required by `client_cert_auth`.
    pub trusted_ca: Option<PathBuf>,
    /// Clients must present a certificate issued by `trusted_ca`.
    pub client_cert_auth: bool,
}

/// Which ports speak TLS, with which files.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsSettings {
    /// The peer port (None: plaintext).
    pub peer: Option<PeerTlsFiles>,
    /// The client port (None: plaintext).
    pub client: Option<ClientTlsFiles>,
}

impl TlsSettings {
    /// Whether any port speaks TLS.
    pub fn any(&self) -> bool {
        self.peer.is_some() || self.client.is_some()
    }
}

/// The crypto provider: ring, which builds with the C compiler alone (aws-lc, rustls's
/// default, needs more of a toolchain). rustls 0.23.48 deprecates it for lacking a
/// post-quantum key exchange (X25519MLKEM768); moving to aws-lc is this one function.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    #[allow(deprecated)]
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificate chain in the PEM file at `path`.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate in it", path.display()));
    }
    Ok(certs)
}

/// The private key in the PEM file at `path`.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// The CA certificates in the PEM file at `path`, as trust roots.
pub fn load_roots(path: &Path) -> Result<Arc<RootCertStore>, String> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(Arc::new(roots))
}

/// Whether `cert` (an end-entity certificate) is valid for the DNS name `name`.
pub fn certificate_names(cert: &CertificateDer<'_>, name: &str) -> Result<(), String> {
    let parsed = webpki::EndEntityCert::try_from(cert)
        .map_err(|e| format!("unreadable certificate: {e}"))?;
    let server_name =
        ServerName::try_from(name).map_err(|e| format!("{name:?} is no DNS name: {e}"))?;
    parsed
        .verify_is_valid_for_subject_name(&server_name)
        .map_err(|_| format!("the certificate does not name {name}"))
}

/// Whether the client certificate of an accepted peer connection names node `id` of
/// `cluster_id`: the reason for refusing its Hello when not.
pub fn check_peer_identity(
    tls: &rustls::CommonState,
    id: u64,
    cluster_id: &str,
) -> Result<(), String> {
    let Some(cert) = tls.peer_certificates().and_then(|c| c.first()) else {
        return Err("no client certificate".to_string());
    };
    let name = node_name(id, cluster_id);
    certificate_names(cert, &name).map_err(|why| {
        format!("a Hello from node {id}, but {why} (peer certificates name nodes as {name})")
    })
}

/// A certificate chain and its private key, read from their files.
struct Identity {
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    /// The files, for messages.
    files: String,
}

impl Identity {
    fn load(cert: &Path, key: &Path) -> Result<Identity, String> {
        Ok(Identity {
            certs: load_certs(cert)?,
            key: load_key(key)?,
            files: format!("{} with {}", cert.display(), key.display()),
        })
    }
}

/// The configuration of a TLS client: trusts `ca`, presents `cert_key` when given.
pub fn client_config(
    ca: &Path,
    cert_key: Option<(&Path, &Path)>,
) -> Result<Arc<ClientConfig>, String> {
    let identity = cert_key.map(|(cert, key)| Identity::load(cert, key)).transpose()?;
    client_config_of(load_roots(ca)?, identity.as_ref())
}

fn client_config_of(
    roots: Arc<RootCertStore>,
    identity: Option<&Identity>,
) -> Result<Arc<ClientConfig>, String> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some(id) => builder
            .with_client_auth_cert(id.certs.clone(), id.key.clone_key())
            .map_err(|e| format!("{}: {e}", id.files))?,
    };
    Ok(Arc::new(config))
}

/// A server presenting `identity`, requiring client certificates of `client_roots` if given.
fn server_config(
    identity: &Identity,
    client_roots: Option<Arc<RootCertStore>>,
) -> Result<Arc<ServerConfig>, String> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match client_roots {
        None => builder.with_no_client_auth(),
        Some(roots) => {
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider())
                    .build()
                    .map_err(|e| format!("the trusted CA: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder
        .with_single_cert(identity.certs.clone(), identity.key.clone_key())
        .map_err(|e| format!("{}: {e}", identity.files))?;
    Ok(Arc::new(config))
}

/// The loaded configurations of a node's TLS ports.
struct Loaded {
    peer_server: Option<Arc<ServerConfig>>,
    peer_client: Option<Arc<ClientConfig>>,
    client_server: Option<Arc<ServerConfig>>,
}

/// A node's TLS: its settings, and the configurations loaded from their files.
pub struct TlsContext {
    settings: TlsSettings,
    id: u64,
    cluster_id: String,
    loaded: Loaded,
}

impl TlsContext {
    /// Loads the files of `settings` for node `id` of `cluster_id`: refused when a file is
    /// unreadable, a key does not match its certificate, or the peer certificate does not
    /// name this node.
    pub fn load(settings: &TlsSettings, id: u64, cluster_id: &str) -> Result<TlsContext, String> {
        let loaded = Self::load_files(settings, id, cluster_id)?;
        Ok(TlsContext {
            settings: settings.clone(),
            id,
            cluster_id: cluster_id.to_string(),
            loaded,
        })
    }

    fn load_files(settings: &TlsSettings, id: u64, cluster_id: &str) -> Result<Loaded, String> {
        let mut loaded = Loaded { peer_server: None, peer_client: None, client_server: None };
        if let Some(peer) = &settings.peer {
            // Each file read once: what is checked is what is served.
            let identity = Identity::load(&peer.cert, &peer.key)?;
            certificate_names(&identity.certs[0], &node_name(id, cluster_id)).map_err(|why| {
                format!(
                    "--peer-cert-file {}: {why}; a node's peer certificate names it as a DNS \
                     subject alternative name",
                    peer.cert.display()
                )
            })?;
            let roots = load_roots(&peer.trusted_ca)?;
            loaded.peer_server = Some(server_config(&identity, Some(Arc::clone(&roots)))?);
            loaded.peer_client = Some(client_config_of(roots, Some(&identity))?);
        }
        if let Some(client) = &settings.client {
            let identity = Identity::load(&client.cert, &client.key)?;
            let roots = match (&client.trusted_ca, client.client_cert_auth) {
                (Some(ca), true) => Some(load_roots(ca)?),
                _ => None,
            };
            loaded.client_server = Some(server_config(&identity, roots)?);
        }
        Ok(loaded)
    }

    /// Reads every file again; on failure keeps what it had and says why.
    pub fn reload(&mut self) -> Result<(), String> {
        self.loaded = Self::load_files(&self.settings, self.id, &self.cluster_id)?;
        Ok(())
    }

    /// The settings.
    pub fn settings(&self) -> &TlsSettings {
        &self.settings
    }

    /// The cluster whose node names the peer certificates hold.
    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    /// A server connection for a socket accepted on the peer port (None: plaintext port).
    pub fn accept_peer(&self) -> Option<io::Result<ServerConnection>> {
        self.loaded
            .peer_server
            .as_ref()
            .map(|c| ServerConnection::new(Arc::clone(c)).map_err(io::Error::other))
    }

    /// A server connection for a socket accepted on the client port (None: plaintext port).
    pub fn accept_client(&self) -> Option<io::Result<ServerConnection>> {
        self.loaded
            .client_server
            .as_ref()
            .map(|c| ServerConnection::new(Arc::clone(c)).map_err(io::Error::other))
    }

    /// A client connection to peer `to`, which must present a certificate naming it (None:
    /// plaintext peer port).
    pub fn dial_peer(&self, to: u64) -> Option<io::Result<ClientConnection>> {
        let config = self.loaded.peer_client.as_ref()?;
        let name = match ServerName::try_from(node_name(to, &self.cluster_id)) {
            Ok(n) => n,
            Err(e) => return Some(Err(io::Error::other(e))),
        };
        Some(ClientConnection::new(Arc::clone(config), name).map_err(io::Error::other))
    }
}

/// Reads from a socket and keeps the first byte that arrived.
struct Sniff<'a, S> {
    inner: &'a mut S,
    first: Option<u8>,
}

impl<S: Read> Read for Sniff<'_, S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n > 0 && self.first.is_none() {
            self.first = Some(buf[0]);
        }
        Ok(n)
    }
}

/// A TLS failure, as the `InvalidData` error a [`TlsStream`] returns.
pub fn tls_error(what: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("TLS: {what}"))
}

/// A rustls connection over a non-blocking socket `S` (see the module's description).
pub struct TlsStream<S> {
    tls: rustls::Connection,
    sock: S,
    /// Server side until the first byte arrived: written in plaintext, as is, to a client
    /// that does not speak TLS (a framed refusal it can read).
    plaintext_refusal: Option<Vec<u8>>,
    /// The socket reached its end.
    eof: bool,
}

impl<S: Read + Write> TlsStream<S> {
    /// The server side of a connection accepted on `sock`; a plaintext client is sent
    /// `plaintext_refusal` before the connection fails.
    pub fn server(tls: ServerConnection, sock: S, plaintext_refusal: Vec<u8>) -> TlsStream<S> {
        Self::new(tls.into(), sock, Some(plaintext_refusal))
    }

    /// The client side of a connection dialled on `sock`.
    pub fn client(tls: ClientConnection, sock: S) -> TlsStream<S> {
        Self::new(tls.into(), sock, None)
    }

    fn new(mut tls: rustls::Connection, sock: S, plaintext_refusal: Option<Vec<u8>>) -> Self {
        tls.set_buffer_limit(Some(TLS_SEND_BUFFER_BYTES));
        TlsStream { tls, sock, plaintext_refusal, eof: false }
    }

    /// The socket.
    pub fn socket(&self) -> &S {
        &self.sock
    }

    /// The socket, for registering it.
    pub fn socket_mut(&mut self) -> &mut S {
        &mut self.sock
    }

    /// The TLS state (the peer's certificates once the handshake is done).
    pub fn connection(&self) -> &rustls::Connection {
        &self.tls
    }

    /// Writes encrypted bytes until none wait or the socket would block (false).
    fn write_out(&mut self) -> io::Result<bool> {
        while self.tls.wants_write() {
            match self.tls.write_tls(&mut self.sock) {
                Ok(0) => {
                    return Err(io::Error::new(io::ErrorKind::WriteZero, "socket wrote nothing"))
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Reads encrypted bytes from the socket into the TLS state (0: the socket's end).
    fn read_in(&mut self) -> io::Result<usize> {
        let Some(refusal) = &self.plaintext_refusal else {
            return self.tls.read_tls(&mut self.sock);
        };
        let mut sniff = Sniff { inner: &mut self.sock, first: None };
        let n = self.tls.read_tls(&mut sniff)?;
        match sniff.first {
            None => Ok(n),
            Some(TLS_HANDSHAKE_RECORD) => {
                self.plaintext_refusal = None;
                Ok(n)
            }
            Some(_) => {
                let _ = self.sock.write_all(refusal);
                Err(tls_error("a plaintext client on a TLS port (refused; it was told so)"))
            }
        }
    }
}

impl<S: Read + Write> Read for TlsStream<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.tls.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // The socket ended without a close_notify: the end, all the same.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e),
            }
            if self.eof {
                return Ok(0);
            }
            if self.read_in()? == 0 {
                self.eof = true;
            }
            if let Err(e) = self.tls.process_new_packets() {
                // The alert rustls queued tells the other side why.
                let _ = self.write_out();
                return Err(tls_error(e));
            }
            // Handshake answers (and key updates) leave at once; what the socket does not
            // take waits for `flush`.
            self.write_out()?;
        }
    }
}

impl<S: Read + Write> Write for TlsStream<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_out()?;
        let n = self.tls.writer().write(buf)?;
        self.write_out()?;
        if n == 0 && !buf.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.write_out()? {
            Ok(())
        } else {
            Err(io::ErrorKind::WouldBlock.into())
        }
    }
}
