//! Certificates and verifiers: how a NodeId becomes a mutually authenticated QUIC
//! connection.
//!
//! Each node presents a self-signed certificate (made with rcgen) over its ed25519
//! node key. Trust does not come from a CA: the client accepts the server only if
//! the certificate key equals the NodeId it dialed (carried in the TLS server name),
//! and the server accepts any ed25519 client certificate and learns the caller's
//! NodeId from it. In both directions the TLS 1.3 CertificateVerify signature proves
//! possession of the key, so presenting someone else's certificate fails.
//!
//! Defence in depth, as libp2p-tls does: only Ed25519 signatures are accepted,
//! a certificate chain is refused (a node presents exactly one self-signed
//! certificate), the certificate's SubjectPublicKeyInfo must be byte for byte the
//! canonical encoding of an Ed25519 key, its self-signature must verify, and it
//! must be within its validity period (with [`CLOCK_SKEW`](crate::identity::tls::CLOCK_SKEW) of slack). Only
//! TLS 1.3 is spoken (QUIC requires it; rustls is built without TLS 1.2).

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};

use super::{Identity, NodeId};
use crate::error::{Error, Result};

/// The ALPN protocol id; its suffix is the wire protocol version.
pub const ALPN: &[u8] = b"butter/1";

/// Suffix of the TLS server name: `<base32 node id>.butter`.
const SERVER_NAME_SUFFIX: &str = ".butter";

/// The TLS server name under which `id` is dialed.
pub fn server_name(id: &NodeId) -> String {
    format!("{}{SERVER_NAME_SUFFIX}", id.to_base32())
}

/// How far a peer's clock may be off before its certificate's validity period is
/// held against it.
pub const CLOCK_SKEW: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// The only signature algorithm a peer may use: Ed25519, for certificates and
/// for the handshake's CertificateVerify.
static ED25519_ONLY: rustls::crypto::WebPkiSupportedAlgorithms =
    rustls::crypto::WebPkiSupportedAlgorithms {
        all: &[webpki::ring::ED25519],
        mapping: &[(SignatureScheme::ED25519, &[webpki::ring::ED25519])],
    };

/// DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410): SEQUENCE {
/// SEQUENCE { OID 1.3.101.112 }, BIT STRING (0 unused bits) }; the 32 key bytes follow.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

fn provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.signature_verification_algorithms = ED25519_ONLY;
    Arc::new(provider)
}

/// The last server identity mismatches seen (expected, answered), so the
/// dialer's error can name the node that answered instead (the TLS error
/// cannot carry it). A few only: the newest are the ones asked for.
static MISMATCHES: std::sync::Mutex<std::collections::VecDeque<(NodeId, NodeId)>> =
    std::sync::Mutex::new(std::collections::VecDeque::new());

fn record_mismatch(expected: NodeId, actual: NodeId) {
    let mut seen = MISMATCHES.lock().unwrap_or_else(|p| p.into_inner());
    if seen.len() >= 64 {
        seen.pop_front();
    }
    seen.push_back((expected, actual));
}

/// The node that answered when `expected` was dialed and another key
/// answered (the newest such answer, taken).
pub(crate) fn answered_instead(expected: &NodeId) -> Option<NodeId> {
    let mut seen = MISMATCHES.lock().unwrap_or_else(|p| p.into_inner());
    let i = seen.iter().rposition(|(e, _)| e == expected)?;
    seen.remove(i).map(|(_, actual)| actual)
}

fn cert_error(e: CertificateError) -> rustls::Error {
    rustls::Error::InvalidCertificate(e)
}

fn other_cert_error(why: &str) -> rustls::Error {
    cert_error(CertificateError::Other(rustls::OtherError(Arc::new(
        Error::IdentityMismatch(why.into()),
    ))))
}

/// The NodeId an Ed25519 SubjectPublicKeyInfo holds; anything but the canonical
/// 44-byte encoding of a valid Ed25519 point is refused.
pub fn node_id_of_spki(spki: &[u8]) -> std::result::Result<NodeId, rustls::Error> {
    let key: [u8; 32] = spki
        .strip_prefix(&ED25519_SPKI_PREFIX[..])
        .and_then(|k| k.try_into().ok())
        .ok_or_else(|| other_cert_error("certificate key is not ed25519"))?;
    ed25519_dalek::VerifyingKey::from_bytes(&key)
        .map_err(|_| other_cert_error("certificate key is not a valid ed25519 point"))?;
    Ok(NodeId::from_bytes(key))
}

/// Checks a peer's certificate as a whole: one certificate, no chain; an
/// Ed25519 key in canonical form; a valid self-signature; within its validity
/// period at `now` (± [`CLOCK_SKEW`](crate::identity::tls::CLOCK_SKEW)). Returns the NodeId it speaks for.
pub fn check_peer_cert(
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
    client: bool,
) -> std::result::Result<NodeId, rustls::Error> {
    if !intermediates.is_empty() {
        return Err(other_cert_error(
            "a certificate chain was presented; a node presents one self-signed certificate",
        ));
    }
    let id = node_id_of_cert(end_entity)?;
    let parsed = webpki::EndEntityCert::try_from(end_entity)
        .map_err(|_| cert_error(CertificateError::BadEncoding))?;
    let anchor = webpki::anchor_from_trusted_cert(end_entity)
        .map_err(|_| cert_error(CertificateError::BadEncoding))?;
    let verify_at = |at: UnixTime| {
        let usage = if client {
            webpki::KeyUsage::client_auth()
        } else {
            webpki::KeyUsage::server_auth()
        };
        parsed
            .verify_for_usage(
                ED25519_ONLY.all,
                std::slice::from_ref(&anchor),
                &[],
                at,
                usage,
                None,
                None,
            )
            .map(|_| ())
    };
    let skewed = |forward: bool| {
        let secs = now.as_secs();
        let at = if forward {
            secs.saturating_add(CLOCK_SKEW.as_secs())
        } else {
            secs.saturating_sub(CLOCK_SKEW.as_secs())
        };
        UnixTime::since_unix_epoch(std::time::Duration::from_secs(at))
    };
    let outcome = match verify_at(now) {
        Err(webpki::Error::CertNotValidYet { .. }) => verify_at(skewed(true)),
        Err(webpki::Error::CertExpired { .. }) => verify_at(skewed(false)),
        other => other,
    };
    match outcome {
        Ok(()) => Ok(id),
        Err(webpki::Error::CertExpired { .. }) => Err(cert_error(CertificateError::Expired)),
        Err(webpki::Error::CertNotValidYet { .. }) => {
            Err(cert_error(CertificateError::NotValidYet))
        }
        Err(e) => {
            tracing::debug!(error = %e, "peer certificate refused");
            Err(cert_error(CertificateError::BadSignature))
        }
    }
}

/// A self-signed X.509 certificate over the identity's key, made with rcgen.
pub fn self_signed_cert(identity: &Identity) -> Result<CertificateDer<'static>> {
    let key_pair = rcgen::KeyPair::try_from(identity.pkcs8_der()?.as_slice())
        .map_err(|e| Error::Config(format!("rcgen key: {e}")))?;
    let mut params = rcgen::CertificateParams::new(vec![server_name(&identity.id())])
        .map_err(|e| Error::Config(format!("rcgen params: {e}")))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, identity.id().to_string());
    let cert = params
        .self_signed(&key_pair)
        .map_err(|e| Error::Config(format!("rcgen self-sign: {e}")))?;
    Ok(cert.der().clone())
}

fn private_key(identity: &Identity) -> Result<PrivateKeyDer<'static>> {
    Ok(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        identity.pkcs8_der()?,
    )))
}

/// The NodeId a certificate speaks for: its ed25519 subject public key.
pub fn node_id_of_cert(cert: &CertificateDer<'_>) -> std::result::Result<NodeId, rustls::Error> {
    let parsed = webpki::EndEntityCert::try_from(cert)
        .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
    node_id_of_spki(parsed.subject_public_key_info().as_ref())
}

/// The authenticated NodeId of the peer of an established connection.
pub fn peer_id(conn: &quinn::Connection) -> Option<NodeId> {
    let certs = conn
        .peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()?;
    node_id_of_cert(certs.first()?).ok()
}

/// Verifies peers in both directions (see the module docs).
#[derive(Debug)]
struct NodeVerifier {
    provider: Arc<CryptoProvider>,
}

impl NodeVerifier {
    fn verify_tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
}

impl ServerCertVerifier for NodeVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let expected = match server_name {
            ServerName::DnsName(name) => name
                .as_ref()
                .strip_suffix(SERVER_NAME_SUFFIX)
                .and_then(|b32| b32.parse::<NodeId>().ok()),
            _ => None,
        }
        .ok_or_else(|| rustls::Error::General("server name is not a butter node id".into()))?;
        let actual = check_peer_cert(end_entity, intermediates, now, false)?;
        if actual != expected {
            tracing::debug!(expected = %expected.short(), actual = %actual.short(), "server identity mismatch");
            record_mismatch(expected, actual);
            // Maps to the AccessDenied alert, which the endpoint turns back into
            // Error::IdentityMismatch.
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls13RequiredForQuic,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.verify_tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

impl ClientCertVerifier for NodeVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> std::result::Result<ClientCertVerified, rustls::Error> {
        // Any ed25519 key may call us; who it is comes from the key itself.
        check_peer_cert(end_entity, intermediates, now, true)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls13RequiredForQuic,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.verify_tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }
}

fn verifier() -> Arc<NodeVerifier> {
    Arc::new(NodeVerifier {
        provider: provider(),
    })
}

/// QUIC server crypto for this identity: presents its certificate, requires an
/// ed25519 client certificate.
pub fn server_crypto(identity: &Identity) -> Result<Arc<quinn::crypto::rustls::QuicServerConfig>> {
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(server_tls(identity)?)
        .map_err(|e| Error::Config(e.to_string()))?;
    Ok(Arc::new(quic))
}

/// [`server_crypto`], counting the handshakes that resume an earlier
/// session with `resumed` (see [`super::resume`]).
pub fn server_crypto_counting(
    identity: &Identity,
    resumed: super::resume::Counter,
) -> Result<Arc<quinn::crypto::rustls::QuicServerConfig>> {
    let mut tls = server_tls(identity)?;
    tls.session_storage = Arc::new(super::resume::CountingServerSessions::new(resumed));
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| Error::Config(e.to_string()))?;
    Ok(Arc::new(quic))
}

/// [`client_crypto`], counting the handshakes that offer an earlier
/// session's ticket with `offered` (see [`super::resume`]).
pub fn client_crypto_counting(
    identity: &Identity,
    offered: super::resume::Counter,
) -> Result<Arc<quinn::crypto::rustls::QuicClientConfig>> {
    let mut tls = client_tls(certified_key(identity)?)?;
    tls.resumption = rustls::client::Resumption::store(Arc::new(
        super::resume::CountingClientSessions::new(offered),
    ));
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| Error::Config(e.to_string()))?;
    Ok(Arc::new(quic))
}

fn server_tls(identity: &Identity) -> Result<rustls::ServerConfig> {
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::Config(e.to_string()))?
        .with_client_cert_verifier(verifier())
        .with_single_cert(vec![self_signed_cert(identity)?], private_key(identity)?)
        .map_err(|e| Error::Config(e.to_string()))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.max_early_data_size = 0;
    Ok(tls)
}

/// QUIC client crypto for this identity. Servers are accepted only if their
/// certificate key equals the NodeId in the server name (see [`server_name`]).
pub fn client_crypto(identity: &Identity) -> Result<Arc<quinn::crypto::rustls::QuicClientConfig>> {
    client_crypto_with(Arc::new(certified_key(identity)?))
}

fn certified_key(identity: &Identity) -> Result<rustls::sign::CertifiedKey> {
    rustls::sign::CertifiedKey::from_der(
        vec![self_signed_cert(identity)?],
        private_key(identity)?,
        &provider(),
    )
    .map_err(|e| Error::Config(e.to_string()))
}

/// Like [`client_crypto`] with an explicit certificate and signing key, which are
/// not checked against each other. Meant for tools and tests that must present
/// something other than a node's own certificate (a forged one, a hardware key).
pub fn client_crypto_with(
    key: Arc<rustls::sign::CertifiedKey>,
) -> Result<Arc<quinn::crypto::rustls::QuicClientConfig>> {
    let quic =
        quinn::crypto::rustls::QuicClientConfig::try_from(client_tls(Arc::unwrap_or_clone(key))?)
            .map_err(|e| Error::Config(e.to_string()))?;
    Ok(Arc::new(quic))
}

fn client_tls(key: rustls::sign::CertifiedKey) -> Result<rustls::ClientConfig> {
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier())
        .with_client_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(key)));
    tls.alpn_protocols = vec![ALPN.to_vec()];
    Ok(tls)
}

/// A rustls signing key for the identity (for [`client_crypto_with`]).
pub fn signing_key(identity: &Identity) -> Result<Arc<dyn rustls::sign::SigningKey>> {
    provider()
        .key_provider
        .load_private_key(private_key(identity)?)
        .map_err(|e| Error::Config(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cert_carries_the_node_key() {
        let id = Identity::generate();
        let cert = self_signed_cert(&id).unwrap();
        assert_eq!(node_id_of_cert(&cert).unwrap(), id.id());
    }

    #[test]
    fn garbage_cert_is_a_typed_error() {
        let err = node_id_of_cert(&CertificateDer::from(vec![0x30, 0x03, 1, 2, 3])).unwrap_err();
        assert!(matches!(err, rustls::Error::InvalidCertificate(_)));
    }

    #[test]
    fn only_the_canonical_ed25519_spki_is_a_node_id() {
        let id = Identity::generate().id();
        let mut spki = ED25519_SPKI_PREFIX.to_vec();
        spki.extend_from_slice(id.as_bytes());
        assert_eq!(node_id_of_spki(&spki).unwrap(), id);
        // The same key with NULL parameters after the OID (a foreign encoding).
        let mut with_params = vec![
            0x30, 0x2c, 0x30, 0x07, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x05, 0x00,
        ];
        with_params.extend_from_slice(&[0x03, 0x21, 0x00]);
        with_params.extend_from_slice(id.as_bytes());
        assert!(node_id_of_spki(&with_params).is_err());
        // Trailing bytes, a short key, X25519's OID (1.3.101.110), garbage.
        let mut trailing = spki.clone();
        trailing.push(0);
        assert!(node_id_of_spki(&trailing).is_err());
        assert!(node_id_of_spki(&spki[..43]).is_err());
        let mut x25519 = spki.clone();
        x25519[8] = 0x6e;
        assert!(node_id_of_spki(&x25519).is_err());
        assert!(node_id_of_spki(&[]).is_err());
    }

    #[test]
    fn a_tls12_client_hello_is_refused() {
        let server = Arc::new(server_tls(&Identity::generate()).unwrap());
        // A TLS 1.2 ClientHello: no supported_versions extension, one ECDHE
        // cipher suite, Ed25519 signatures, X25519.
        let mut body = vec![0x03, 0x03];
        body.extend_from_slice(&[7u8; 32]);
        body.push(0); // session id
        body.extend_from_slice(&[0x00, 0x02, 0xc0, 0x2b]);
        body.extend_from_slice(&[0x01, 0x00]); // null compression
        let ext = [
            0x00, 0x0d, 0x00, 0x04, 0x00, 0x02, 0x08, 0x07, // signature_algorithms
            0x00, 0x0a, 0x00, 0x04, 0x00, 0x02, 0x00, 0x1d, // supported_groups
        ];
        body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        body.extend_from_slice(&ext);
        let mut hs = vec![0x01, 0x00];
        hs.extend_from_slice(&(body.len() as u16).to_be_bytes());
        hs.extend_from_slice(&body);
        let mut record = vec![0x16, 0x03, 0x01];
        record.extend_from_slice(&(hs.len() as u16).to_be_bytes());
        record.extend_from_slice(&hs);
        let mut conn = rustls::ServerConnection::new(server).unwrap();
        conn.read_tls(&mut record.as_slice()).unwrap();
        let err = conn.process_new_packets().unwrap_err();
        assert!(
            matches!(err, rustls::Error::PeerIncompatible(_)),
            "TLS 1.2 hello: {err:?}"
        );
    }

    #[test]
    fn certificates_are_valid_for_centuries_and_pass_our_own_checks() {
        let id = Identity::generate();
        let cert = self_signed_cert(&id).unwrap();
        let now = UnixTime::now();
        assert_eq!(check_peer_cert(&cert, &[], now, true).unwrap(), id.id());
        assert_eq!(check_peer_cert(&cert, &[], now, false).unwrap(), id.id());
        let in_300_years = UnixTime::since_unix_epoch(std::time::Duration::from_secs(
            now.as_secs() + 300 * 365 * 24 * 3600,
        ));
        assert!(check_peer_cert(&cert, &[], in_300_years, false).is_ok());
        assert!(check_peer_cert(&cert, std::slice::from_ref(&cert), now, false).is_err());
    }

    #[test]
    fn server_name_fits_a_dns_label() {
        let id = Identity::generate().id();
        let name = server_name(&id);
        assert!(ServerName::try_from(name.clone()).is_ok());
        assert!(name.split('.').all(|l| l.len() <= 63));
    }
}
