//! TLS identity, defence in depth: in both directions (a node dialing a hostile
//! server, a hostile client dialing a node) only one self-signed, currently valid
//! Ed25519 certificate is accepted. Everything else is refused with an identity
//! error, and the node keeps serving honest peers.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use butter::unstable::tls;
use butter::{Error, Identity, Node, NodeAddr};
use common::{loopback, reverse_node, within};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

const RSA_KEY: &str = include_str!("data/rsa2048-test-key.pem");

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate over `key` for `name`, shaped by `shape` (validity, CA flag...).
fn cert_with(
    key: &rcgen::KeyPair,
    shape: impl FnOnce(&mut rcgen::CertificateParams),
) -> CertificateDer<'static> {
    let mut params = rcgen::CertificateParams::new(vec!["node.butter".into()]).unwrap();
    shape(&mut params);
    params.self_signed(key).unwrap().der().clone()
}

fn certified(certs: Vec<CertificateDer<'static>>, key: &rcgen::KeyPair) -> Arc<CertifiedKey> {
    Arc::new(
        CertifiedKey::from_der(
            certs,
            PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            &provider(),
        )
        .unwrap(),
    )
}

fn node_key(identity: &Identity) -> rcgen::KeyPair {
    rcgen::KeyPair::from_pem(&identity.to_pem().unwrap()).unwrap()
}

fn p256_key() -> rcgen::KeyPair {
    rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap()
}

fn rsa_key() -> rcgen::KeyPair {
    rcgen::KeyPair::from_pem_and_sign_algo(RSA_KEY, &rcgen::PKCS_RSA_SHA256).unwrap()
}

fn expired(p: &mut rcgen::CertificateParams) {
    p.not_before = rcgen::date_time_ymd(2001, 1, 1);
    p.not_after = rcgen::date_time_ymd(2002, 1, 1);
}

fn not_yet_valid(p: &mut rcgen::CertificateParams) {
    p.not_before = rcgen::date_time_ymd(2200, 1, 1);
    p.not_after = rcgen::date_time_ymd(2300, 1, 1);
}

/// The kinds of hostile certificate, as (what, certified key, NodeId it claims).
fn hostile_certificates() -> Vec<(&'static str, Arc<CertifiedKey>, butter::NodeId)> {
    let victim = Identity::generate();
    let vkey = node_key(&victim);
    let other = Identity::generate();
    let okey = node_key(&other);
    let p256 = p256_key();
    let rsa = rsa_key();
    let own = cert_with(&vkey, |_| {});
    vec![
        (
            "P-256",
            certified(vec![cert_with(&p256, |_| {})], &p256),
            victim.id(),
        ),
        (
            "RSA",
            certified(vec![cert_with(&rsa, |_| {})], &rsa),
            victim.id(),
        ),
        (
            "a chain",
            certified(vec![own.clone(), cert_with(&okey, |_| {})], &vkey),
            victim.id(),
        ),
        (
            "expired",
            certified(vec![cert_with(&vkey, expired)], &vkey),
            victim.id(),
        ),
        (
            "not yet valid",
            certified(vec![cert_with(&vkey, not_yet_valid)], &vkey),
            victim.id(),
        ),
        (
            // A certificate signed by another key than its own (the issuer
            // is not the subject's key): the self-signature does not verify.
            "not self-signed",
            certified(vec![issued_by(&vkey, &okey)], &vkey),
            victim.id(),
        ),
    ]
}

/// A certificate over `subject`'s key issued (signed) by `issuer`'s key.
fn issued_by(subject: &rcgen::KeyPair, issuer: &rcgen::KeyPair) -> CertificateDer<'static> {
    let mut ca = rcgen::CertificateParams::new(vec!["ca.butter".into()]).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let issuer = rcgen::Issuer::new(ca, issuer);
    rcgen::CertificateParams::new(vec!["node.butter".into()])
        .unwrap()
        .signed_by(subject, &issuer)
        .unwrap()
        .der()
        .clone()
}

/// A raw QUIC server presenting `key`, accepting any client.
fn hostile_server(key: Arc<CertifiedKey>) -> (quinn::Endpoint, SocketAddr) {
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(
            Arc::unwrap_or_clone(key),
        )));
    tls.alpn_protocols = vec![tls::ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).unwrap();
    let config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let ep = quinn::Endpoint::server(config, loopback()).unwrap();
    let addr = ep.local_addr().unwrap();
    // Accepts (and holds) whatever connects, so the refusal is the client's.
    let accepting = ep.clone();
    tokio::spawn(async move {
        while let Some(incoming) = accepting.accept().await {
            tokio::spawn(async move {
                if let Ok(conn) = incoming.await {
                    conn.closed().await;
                }
            });
        }
    });
    (ep, addr)
}

#[tokio::test]
async fn a_node_refuses_hostile_server_certificates() {
    let node = Node::builder()
        .listen(loopback())
        .call_timeout(std::time::Duration::from_secs(2))
        .spawn()
        .await
        .unwrap();
    for (what, key, claimed) in hostile_certificates() {
        let (_server, addr) = hostile_server(key);
        let r = within(15, what, node.ping(NodeAddr::new(claimed, [addr]))).await;
        assert!(
            matches!(r, Err(Error::IdentityMismatch(_))),
            "server with {what}: {r:?}"
        );
    }
    // The same node accepts a well-formed server certificate of the right key.
    let honest = Identity::generate();
    let key = node_key(&honest);
    let (_server, addr) = hostile_server(certified(vec![cert_with(&key, |_| {})], &key));
    assert_eq!(node.stats().handshakes_out, 0, "{:?}", node.stats());
    let r = within(
        15,
        "honest server",
        node.ping(NodeAddr::new(honest.id(), [addr])),
    )
    .await;
    // The raw server serves no routes (the ping times out), but the handshake
    // itself succeeded.
    assert!(matches!(r, Err(Error::Timeout(_))), "{r:?}");
    assert_eq!(node.stats().handshakes_out, 1, "{:?}", node.stats());
}

async fn raw_client_connect(
    server: &Node,
    key: Arc<CertifiedKey>,
) -> Result<quinn::Connection, quinn::ConnectionError> {
    let mut ep = quinn::Endpoint::client(loopback()).unwrap();
    ep.set_default_client_config(quinn::ClientConfig::new(
        tls::client_crypto_with(key).unwrap(),
    ));
    ep.connect(server.addr().addrs[0], &tls::server_name(&server.id()))
        .unwrap()
        .await
}

#[tokio::test]
async fn a_node_refuses_hostile_client_certificates() {
    let server = reverse_node().await;
    for (what, key, _) in hostile_certificates() {
        let result = within(15, what, async {
            let conn = raw_client_connect(&server, key).await?;
            // TLS 1.3: the client may finish before the server has checked its
            // certificate; the refusal then closes the connection.
            Err::<(), _>(conn.closed().await)
        })
        .await;
        let err = Error::from(result.unwrap_err());
        assert!(
            matches!(err, Error::IdentityMismatch(_)),
            "client with {what}: {err}"
        );
    }
    assert_eq!(server.stats().handshakes_in, 0, "{:?}", server.stats());
    // The node keeps serving honest peers.
    let honest = reverse_node().await;
    let reply = within(
        10,
        "honest call",
        honest.call(server.addr(), "reverse", "ok"),
    )
    .await
    .unwrap();
    assert_eq!(&reply[..], b"ko");
}

/// A node that connects again to a peer it met resumes the TLS session
/// (counted on both sides), and the resumed connection carries both
/// verified identities: the handler sees the caller's id, the caller
/// reached the id it dialed.
#[tokio::test]
async fn a_repeat_connection_resumes_the_session_with_both_identities() {
    let server = Node::builder()
        .listen(loopback())
        .lan_discovery(false)
        .route("whoami", |req: butter::Request| async move {
            Ok(req.peer().as_bytes().to_vec())
        })
        .spawn()
        .await
        .unwrap();
    let client = Node::builder()
        .listen(loopback())
        .lan_discovery(false)
        .spawn()
        .await
        .unwrap();
    for round in 0..3 {
        let who = within(10, "call", client.call(server.addr(), "whoami", ""))
            .await
            .unwrap();
        assert_eq!(&who[..], client.id().as_bytes(), "round {round}");
        assert!(
            client.disconnect(&server.id()),
            "round {round}: a connection was open"
        );
        // The server sees it close before the next dial.
        common::eventually(10, "closed", || server.connection_count() == 0).await;
    }
    let (c, s) = (client.stats(), server.stats());
    println!("client {c:?}\nserver {s:?}");
    assert_eq!(c.handshakes_out, 3);
    assert_eq!(
        c.resumptions_offered, 2,
        "tickets offered on the 2nd and 3rd dial"
    );
    assert_eq!(
        s.handshakes_resumed_in, 2,
        "the 2nd and 3rd handshakes resumed"
    );
    client.shutdown().await;
    server.shutdown().await;
}

/// A ticket is no pass: a node that took over a peer's address under
/// another identity cannot resume the peer's session (it does not have it)
/// and fails the full handshake's identity check, although the dialer
/// offered the ticket.
#[tokio::test]
async fn a_ticket_does_not_let_another_node_answer_for_its_peer() {
    let genuine = reverse_node().await;
    let at = genuine.addr();
    let client = Node::builder()
        .listen(loopback())
        .lan_discovery(false)
        .spawn()
        .await
        .unwrap();
    within(10, "call", client.call(at.clone(), "reverse", "abc"))
        .await
        .unwrap();
    client.disconnect(&genuine.id());
    let port = at.addrs[0];
    genuine.shutdown().await;
    drop(genuine);
    // Another identity on the same address.
    let impostor = within(10, "impostor", async {
        loop {
            match Node::builder()
                .listen(port)
                .lan_discovery(false)
                .route("reverse", |req: butter::Request| async move {
                    Ok(req.into_body())
                })
                .spawn()
                .await
            {
                Ok(n) => break n,
                // The port is free once the last handle to the old node's
                // socket is gone (no event says so).
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            }
        }
    })
    .await;
    assert_ne!(impostor.id(), at.id);
    let offered = client.stats().resumptions_offered;
    let err = within(10, "call", client.call(at.clone(), "reverse", "abc"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::IdentityMismatch(_)), "{err}");
    assert_eq!(
        client.stats().resumptions_offered,
        offered + 1,
        "the genuine node's ticket was offered"
    );
    assert_eq!(impostor.stats().handshakes_resumed_in, 0);
    client.shutdown().await;
    impostor.shutdown().await;
}
