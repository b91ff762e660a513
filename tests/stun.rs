//! STUN on the node's shared port: node-to-node, hostile datagrams, and interop
//! with coturn's standard client and server (Debian package `coturn`).

mod common;

use std::net::UdpSocket;
use std::process::Command;
use std::time::Duration;

use common::{eventually, loopback, reverse_node, within};

#[tokio::test]
async fn a_node_learns_its_reflexive_address_from_another_node() {
    let server = reverse_node().await;
    let client = reverse_node().await;
    let mapped = within(10, "stun", client.stun(server.addr().addrs[0]))
        .await
        .unwrap();
    assert_eq!(mapped, client.local_addr());
    assert_eq!(server.stats().stun_answered, 1);
    // STUN and QUIC share the port: calls still work.
    within(10, "call", client.call(server.addr(), "reverse", "ab"))
        .await
        .unwrap();
}

#[tokio::test]
async fn hostile_datagrams_on_the_node_port_are_counted_and_dropped() {
    let node = reverse_node().await;
    let port = node.addr().addrs[0];
    let attacker = UdpSocket::bind("127.0.0.1:0").unwrap();
    let (_, request) = butter::unstable::stun::binding_request().unwrap();
    let mut bad_fingerprint = request.clone();
    *bad_fingerprint.last_mut().unwrap() ^= 0x55;
    let mut stray_response = request.clone();
    stray_response[0] = 0x01; // a "response" nobody asked for
    stray_response[1] = 0x01;
    let datagrams: Vec<Vec<u8>> = vec![
        vec![0x00; 7],                         // too short
        request[..request.len() - 3].to_vec(), // truncated STUN
        bad_fingerprint,
        stray_response,
        vec![0x13; 300], // neither QUIC nor STUN
    ];
    for d in &datagrams {
        attacker.send_to(d, port).unwrap();
    }
    // A flood of random payloads (first byte below 0x40: the non-QUIC side).
    for i in 0..2000u32 {
        let mut junk = i.to_le_bytes().repeat(8);
        junk[0] &= 0x3f;
        attacker.send_to(&junk, port).unwrap();
    }
    eventually(10, "garbage counted", || node.stats().udp_garbage >= 5).await;
    // The good request on the same port is still answered, and calls still work.
    attacker.send_to(&request, port).unwrap();
    eventually(10, "stun answered", || node.stats().stun_answered >= 1).await;
    let client = reverse_node().await;
    within(10, "call", client.call(node.addr(), "reverse", "ok"))
        .await
        .unwrap();
}

/// Runs coturn's tools; they are a test requirement (CI installs `coturn`).
fn coturn_available(test: &str) -> bool {
    let found = Command::new("turnutils_stunclient")
        .arg("-h")
        .output()
        .is_ok()
        && Command::new("turnserver").arg("-h").output().is_ok();
    if !found {
        if std::env::var("BUTTER_NETLAB_REQUIRED").is_ok_and(|v| v == "1") {
            panic!("{test}: coturn (turnserver, turnutils_stunclient) is not installed");
        }
        eprintln!("SKIPPED {test}: coturn is not installed (apt-get install coturn)");
    }
    found
}

#[tokio::test]
async fn coturn_stun_client_gets_the_right_mapped_address_from_a_node() {
    if !coturn_available("coturn_stun_client_gets_the_right_mapped_address_from_a_node") {
        return;
    }
    let node = reverse_node().await;
    let port = node.addr().addrs[0].port();
    // turnutils_stunclient picks its own local port and prints the mapped
    // address it was told; on loopback that must be 127.0.0.1 and a real port.
    let out = tokio::task::spawn_blocking(move || {
        Command::new("timeout")
            .args([
                "10",
                "turnutils_stunclient",
                "-p",
                &port.to_string(),
                "127.0.0.1",
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let mapped: std::net::SocketAddr = text
        .lines()
        .find_map(|l| l.split("UDP reflexive addr: ").nth(1))
        .and_then(|a| a.trim().parse().ok())
        .unwrap_or_else(|| panic!("coturn's client reported no reflexive address:\n{text}"));
    assert_eq!(mapped.ip(), std::net::IpAddr::from([127, 0, 0, 1]));
    assert_ne!(mapped.port(), 0);
    assert_ne!(
        mapped.port(),
        port,
        "mapped address is the client's, not the node's"
    );
    assert!(node.stats().stun_answered >= 1);
}

#[tokio::test]
async fn a_node_learns_its_address_from_coturns_server() {
    if !coturn_available("a_node_learns_its_address_from_coturns_server") {
        return;
    }
    let port = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let mut server = tokio::process::Command::new("turnserver")
        .args([
            "--listening-ip",
            "127.0.0.1",
            "--listening-port",
            &port.to_string(),
            "--stun-only",
            "--no-tls",
            "--no-dtls",
            "--no-cli",
            "--log-file",
            "stdout",
            "--simple-log",
            "--no-stdout-log",
        ])
        .current_dir(dir.path())
        .kill_on_drop(true)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start turnserver");
    let node = butter::Node::builder()
        .listen(loopback())
        .spawn()
        .await
        .unwrap();
    let server_addr = format!("127.0.0.1:{port}").parse().unwrap();
    // The server needs a moment to bind; the STUN client retransmits, and we
    // retry a bounded number of times on top.
    let mut mapped = None;
    for _ in 0..20 {
        if let Ok(m) = node.stun(server_addr).await {
            mapped = Some(m);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = server.kill().await;
    assert_eq!(mapped, Some(node.local_addr()), "no answer from turnserver");
}

/// A node is no reflector: a flood of binding requests from one source (as a
/// spoofer would send with its victim's address) gets a bounded number of
/// answers, and another source is still answered.
#[tokio::test]
async fn stun_answers_to_one_source_are_rate_limited() {
    let node = reverse_node().await;
    let port = node.addr().addrs[0];
    let flooder = UdpSocket::bind("127.0.0.1:0").unwrap();
    flooder
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    for _ in 0..2000 {
        let (_, request) = butter::unstable::stun::binding_request().unwrap();
        flooder.send_to(&request, port).unwrap();
    }
    let limits = butter::Limits::default();
    eventually(10, "the flood is counted", || {
        let s = node.stats();
        s.stun_answered + s.stun_refused >= 2000
    })
    .await;
    let mut answers = 0;
    let mut buf = [0u8; 1500];
    while flooder.recv_from(&mut buf).is_ok() {
        answers += 1;
    }
    let s = node.stats();
    println!(
        "STUN flood: 2000 requests from one source, {answers} answers received, {} refused",
        s.stun_refused
    );
    // The burst, and whatever the rate refilled while the flood lasted.
    assert!(
        answers as f64 <= limits.stun_per_source * 2.0 + limits.stun_per_source * 2.0,
        "{answers} answers"
    );
    assert!(s.stun_refused >= 1900, "{s:?}");
    // Another source is answered.
    let client = reverse_node().await;
    within(10, "another source", client.stun(port))
        .await
        .unwrap();
}
