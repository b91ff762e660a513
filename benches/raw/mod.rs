//! The raw-quinn baseline's endpoints, shared by the benchmarks: the same
//! TLS (Butter's certificates and verifiers) and transport parameters as a
//! Butter node, no Butter framing. Each benchmark serves its own streams.

use std::net::SocketAddr;
use std::sync::Arc;

use butter::unstable::tls;
use butter::{Identity, Limits, TransportSettings};

/// Butter's default transport parameters.
pub fn transport() -> Arc<quinn::TransportConfig> {
    butter::transport_config(&Limits::default(), &TransportSettings::default())
}

/// A server endpoint at `at` with a fresh identity.
pub fn server(at: SocketAddr) -> (quinn::Endpoint, Identity) {
    let id = Identity::generate();
    let mut config = quinn::ServerConfig::with_crypto(tls::server_crypto(&id).unwrap());
    config.transport_config(transport());
    (quinn::Endpoint::server(config, at).unwrap(), id)
}

/// A client endpoint at `at` with a fresh identity.
pub fn client(at: SocketAddr) -> quinn::Endpoint {
    let mut client = quinn::Endpoint::client(at).unwrap();
    let mut config = quinn::ClientConfig::new(tls::client_crypto(&Identity::generate()).unwrap());
    config.transport_config(transport());
    client.set_default_client_config(config);
    client
}

/// `client` connected to the server `id` at `addr`.
pub async fn dial(client: &quinn::Endpoint, addr: SocketAddr, id: &Identity) -> quinn::Connection {
    client
        .connect(addr, &tls::server_name(&id.id()))
        .unwrap()
        .await
        .unwrap()
}

/// A client endpoint at `at` connected to `server` (identity `id`) at `addr`.
pub async fn connect(
    at: SocketAddr,
    addr: SocketAddr,
    id: &Identity,
) -> (quinn::Endpoint, quinn::Connection) {
    let client = client(at);
    let conn = dial(&client, addr, id).await;
    (client, conn)
}
