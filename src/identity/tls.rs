//! Certificates and verifiers: how a NodeId becomes a mutually authenticated QUIC
//! connection.
//!
//! Each node presents a self-signed certificate (made with rcgen) over its ed25519
//! node key. Trust does not come from a CA: the client accepts the server only if
//! the certificate key equals the NodeId it dialed (carried in the TLS server name),
//! and the server accepts any ed25519 client certificate and learns the caller's
//! NodeId from it. In both directions the TLS 1.3 CertificateVerify signature proves
//! possession of the key, so presenting someone else's certificate fails.

use std::sync::Arc;

use ed25519_dalek::pkcs8::DecodePublicKey;
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

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
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
    let spki = parsed.subject_public_key_info();
    let key = ed25519_dalek::VerifyingKey::from_public_key_der(spki.as_ref()).map_err(|_| {
        rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(
            Error::IdentityMismatch("certificate key is not ed25519".into()),
        ))))
    })?;
    Ok(NodeId::from_bytes(key.to_bytes()))
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
        _intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let expected = match server_name {
            ServerName::DnsName(name) => name
                .as_ref()
                .strip_suffix(SERVER_NAME_SUFFIX)
                .and_then(|b32| b32.parse::<NodeId>().ok()),
            _ => None,
        }
        .ok_or_else(|| rustls::Error::General("server name is not a butter node id".into()))?;
        let actual = node_id_of_cert(end_entity)?;
        if actual != expected {
            tracing::debug!(expected = %expected.short(), actual = %actual.short(), "server identity mismatch");
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
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> std::result::Result<ClientCertVerified, rustls::Error> {
        // Any ed25519 key may call us; who it is comes from the key itself.
        node_id_of_cert(end_entity)?;
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
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::Config(e.to_string()))?
        .with_client_cert_verifier(verifier())
        .with_single_cert(vec![self_signed_cert(identity)?], private_key(identity)?)
        .map_err(|e| Error::Config(e.to_string()))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.max_early_data_size = 0;
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| Error::Config(e.to_string()))?;
    Ok(Arc::new(quic))
}

/// QUIC client crypto for this identity. Servers are accepted only if their
/// certificate key equals the NodeId in the server name (see [`server_name`]).
pub fn client_crypto(identity: &Identity) -> Result<Arc<quinn::crypto::rustls::QuicClientConfig>> {
    let key = rustls::sign::CertifiedKey::from_der(
        vec![self_signed_cert(identity)?],
        private_key(identity)?,
        &provider(),
    )
    .map_err(|e| Error::Config(e.to_string()))?;
    client_crypto_with(Arc::new(key))
}

/// Like [`client_crypto`] with an explicit certificate and signing key, which are
/// not checked against each other. Meant for tools and tests that must present
/// something other than a node's own certificate (a forged one, a hardware key).
pub fn client_crypto_with(
    key: Arc<rustls::sign::CertifiedKey>,
) -> Result<Arc<quinn::crypto::rustls::QuicClientConfig>> {
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier())
        .with_client_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(
            Arc::unwrap_or_clone(key),
        )));
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| Error::Config(e.to_string()))?;
    Ok(Arc::new(quic))
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
    fn server_name_fits_a_dns_label() {
        let id = Identity::generate().id();
        let name = server_name(&id);
        assert!(ServerName::try_from(name.clone()).is_ok());
        assert!(name.split('.').all(|l| l.len() <= 63));
    }
}
