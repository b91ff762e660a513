//! LAN discovery and known hosts across real hosts (network namespaces on a
//! bridge). Needs root: see tests/netlab/mod.rs.

mod netlab;

use std::time::Duration;

use butter::discovery::beacon::{Beacon, Kind};
use butter::NodeId;

/// Fast liveness so that deaths are noticed in seconds.
const FAST: &[&str] = &["--liveness-ms", "1000", "--want", "4"];

#[tokio::test]
async fn five_hosts_find_each_other_and_then_stop_pinging() {
    let Some(mut lab) = netlab::lab("five_hosts_find_each_other_and_then_stop_pinging") else {
        return;
    };
    let hosts = lab.lan(5);
    let mut nodes = Vec::new();
    for h in &hosts {
        nodes.push(lab.node(h, FAST).await);
    }
    for n in nodes.iter_mut() {
        n.wait_until(20, "two known hosts", |k| k.len() >= 2).await;
    }
    for n in nodes.iter_mut() {
        n.wait_until(30, "all four others", |k| k.len() >= 4).await;
    }
    let mut firsts: Vec<_> = nodes.iter().map(|n| n.first_host_after.unwrap()).collect();
    firsts.sort();
    println!("time from start to first known host: {firsts:?}");

    // Every node is content (4 hosts, known by others): no more multicast pings.
    // Give liveness pings a moment to tell everyone they are known.
    let mut before = Vec::new();
    for n in &nodes {
        let s = lab.stats(&hosts[0], n).await;
        before.push(s["mcast_pings_sent"]);
    }
    // The quiet period is what is measured here, not a synchronisation.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut quiet = true;
    for (i, n) in nodes.iter().enumerate() {
        let s = lab.stats(&hosts[0], n).await;
        println!(
            "node {i}: {} multicast pings sent, then {}",
            before[i], s["mcast_pings_sent"]
        );
        quiet &= s["mcast_pings_sent"] == before[i];
    }
    if !quiet {
        // One more period: a node could have been between liveness rounds.
        let mut again = Vec::new();
        for n in &nodes {
            again.push(lab.stats(&hosts[0], n).await["mcast_pings_sent"]);
        }
        tokio::time::sleep(Duration::from_secs(4)).await;
        for (i, n) in nodes.iter().enumerate() {
            let now = lab.stats(&hosts[0], n).await["mcast_pings_sent"];
            assert_eq!(
                now, again[i],
                "node {i} still sends multicast pings with enough hosts"
            );
        }
    }
}

#[tokio::test]
async fn dead_hosts_leave_and_a_lonely_node_finds_a_newcomer() {
    let Some(mut lab) = netlab::lab("dead_hosts_leave_and_a_lonely_node_finds_a_newcomer") else {
        return;
    };
    let hosts = lab.lan(4);
    let mut a = lab.node(&hosts[0], FAST).await;
    let mut b = lab.node(&hosts[1], FAST).await;
    let mut c = lab.node(&hosts[2], FAST).await;
    let (a_id, b_id, c_id) = (a.id.clone(), b.id.clone(), c.id.clone());
    a.wait_until(20, "b and c", |k| k.contains(&b_id) && k.contains(&c_id))
        .await;
    b.wait_until(20, "a and c", |k| k.contains(&a_id) && k.contains(&c_id))
        .await;

    // Killed without a goodbye: the others notice through liveness checks.
    c.kill().await;
    a.wait_until(15, "c gone", |k| !k.contains(&c_id)).await;
    b.wait_until(15, "c gone", |k| !k.contains(&c_id)).await;

    // a is left alone...
    b.kill().await;
    a.wait_until(15, "b gone", |k| k.is_empty()).await;
    // ...goes back to discovery and finds a node started after it.
    let d = lab.node(&hosts[3], FAST).await;
    let d_id = d.id.clone();
    a.wait_until(20, "the newcomer", |k| k.contains(&d_id))
        .await;
}

/// A table at its capacity (room for one host, from `--memory 4096`) takes
/// one host and keeps it while it answers: newcomers in other buckets are
/// refused, never swapped in (a full table evicts nobody outside the
/// newcomer's own bucket, and there only after a failed ping).
#[tokio::test]
async fn three_nodes_with_room_for_one_host_each_keep_one() {
    let Some(mut lab) = netlab::lab("three_nodes_with_room_for_one_host_each_keep_one") else {
        return;
    };
    let hosts = lab.lan(3);
    let args = ["--memory", "4096", "--liveness-ms", "1000"];
    let mut nodes = Vec::new();
    for h in &hosts {
        nodes.push(lab.node(h, &args).await);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let settled = loop {
        let mut tables = Vec::new();
        for n in &nodes {
            tables.push(lab.peers(&hosts[0], n).await);
        }
        assert!(
            tables.iter().all(|t| t.len() <= 1),
            "a table outgrew its single slot: {tables:?}"
        );
        if tables.iter().all(|t| t.len() == 1) {
            break tables;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not every node found a host: {tables:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    // Several liveness rounds and beacons later, nobody was swapped out.
    tokio::time::sleep(Duration::from_secs(5)).await;
    for (n, before) in nodes.iter().zip(&settled) {
        assert_eq!(
            &lab.peers(&hosts[0], n).await,
            before,
            "a full table swapped its host"
        );
    }
}

#[tokio::test]
async fn garbage_and_spoofed_beacons_are_counted_and_kept_out() {
    let Some(mut lab) = netlab::lab("garbage_and_spoofed_beacons_are_counted_and_kept_out") else {
        return;
    };
    let hosts = lab.lan(3);
    // Only the victim discovers; b is a real node whose address the spoof borrows.
    let mut victim = lab.node(&hosts[0], FAST).await;
    let b = lab.node(&hosts[1], &["--no-discovery"]).await;
    let fake = NodeId::from_bytes([0x42; 32]);
    let spoof_b_addr = Beacon {
        kind: Kind::Ping,
        id: fake,
        port: 7400,
        addrs: vec![format!("{}:7400", hosts[1].ip).parse().unwrap()],
        known: 3,
        known_by: 0,
    };
    let spoof_b_id = Beacon {
        kind: Kind::Ping,
        id: b.id.parse().unwrap(),
        port: 7400,
        addrs: vec![],
        known: 3,
        known_by: 0,
    };
    let mut spoofed_from_b_host = spoof_b_addr.encode().unwrap();
    let truncated = spoof_b_id.encode().unwrap()[..20].to_vec();
    let mut wrong_version = spoof_b_id.encode().unwrap();
    wrong_version[4] = 9;
    let datagrams = [
        b"random garbage".to_vec(),
        vec![0xff; 1500],
        truncated,
        wrong_version,
        spoof_b_id.encode().unwrap(),
    ];
    let hex: Vec<String> = datagrams
        .iter()
        .map(|d| d.iter().map(|b| format!("{b:02x}")).collect())
        .collect();
    let script = "import socket,sys\n\
        s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
        s.setsockopt(socket.IPPROTO_IP,socket.IP_MULTICAST_TTL,1)\n\
        for h in sys.argv[1:]: s.sendto(bytes.fromhex(h),('239.255.42.98',7355))\n";
    let mut args = vec!["-c", script];
    args.extend(hex.iter().map(String::as_str));
    // The attacker is host 2; the beacon claiming b's address comes from b's
    // host itself (a LAN neighbour can do that too).
    let out = lab.exec(&hosts[2], "python3", &args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let spoof_hex: String = std::mem::take(&mut spoofed_from_b_host)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let out = lab.exec(&hosts[1], "python3", &["-c", script, &spoof_hex]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let s = lab.stats(&hosts[2], &victim).await;
        if s["mcast_garbage"] >= 4
            && s["candidates_spoofed"] >= 1
            && s["candidates_unreachable"] >= 1
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "counters did not move: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    victim.drain();
    assert!(
        !victim.known.contains(&fake.to_string()),
        "spoofed id entered the table"
    );
    let table = lab.peers(&hosts[2], &victim).await;
    assert!(!table.contains(&fake.to_string()));
    // The victim still serves.
    let (ok, _, err) = lab.butter(&hosts[2], &["ping", &victim.addr]).await;
    assert!(ok, "{err}");
}

/// Figures, not assertions: multicast packets per node over its first minute on a
/// 5-host LAN. `cargo test --test netlab_lan -- --ignored --nocapture`.
#[tokio::test]
#[ignore = "takes a minute; prints figures"]
async fn figures_first_minute_of_multicast() {
    let Some(mut lab) = netlab::lab("figures_first_minute_of_multicast") else {
        return;
    };
    let hosts = lab.lan(5);
    let mut nodes = Vec::new();
    for h in &hosts {
        nodes.push(lab.node(h, &[]).await);
    }
    tokio::time::sleep(Duration::from_secs(60)).await;
    for (i, n) in nodes.iter_mut().enumerate() {
        n.drain();
        let s = lab.stats(&hosts[0], n).await;
        println!(
            "node {i}: first host after {:?}, {} hosts; first minute: {} multicast pings, {} pongs sent, {} received",
            n.first_host_after, n.known.len(), s["mcast_pings_sent"], s["mcast_pongs_sent"], s["mcast_received"]
        );
    }
}

/// One multicast ping on a LAN of content nodes draws a few pongs, not one per
/// node: each pong waits a random moment and stays unsent once enough others
/// answered (before, every node answered every ping: an amplifier).
#[tokio::test]
async fn one_ping_draws_a_few_pongs_not_one_per_node() {
    let Some(mut lab) = netlab::lab("one_ping_draws_a_few_pongs_not_one_per_node") else {
        return;
    };
    let hosts = lab.lan(9);
    let mut nodes = Vec::new();
    for h in &hosts[..8] {
        nodes.push(lab.node(h, &["--want", "2"]).await);
    }
    for n in nodes.iter_mut() {
        n.wait_until(20, "two known hosts", |k| k.len() >= 2).await;
    }
    // Let the start-up traffic settle (PONG_PER_SOURCE and spacing pass).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pongs = |s: &std::collections::HashMap<String, u64>| s["mcast_pongs_sent"];
    let mut before = 0;
    for n in &nodes {
        before += pongs(&lab.stats(&hosts[8], n).await);
    }
    let stranger = Beacon {
        kind: Kind::Ping,
        id: NodeId::from_bytes([0x51; 32]),
        port: 7400,
        addrs: vec![],
        known: 0,
        known_by: 0,
    };
    let hex: String = stranger
        .encode()
        .unwrap()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let script = "import socket,sys\n\
        s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
        s.setsockopt(socket.IPPROTO_IP,socket.IP_MULTICAST_TTL,1)\n\
        s.sendto(bytes.fromhex(sys.argv[1]),('239.255.42.98',7355))\n";
    let out = lab.exec(&hosts[8], "python3", &["-c", script, &hex]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut after = 0;
    let mut suppressed = 0;
    for n in &nodes {
        let s = lab.stats(&hosts[8], n).await;
        after += pongs(&s);
        suppressed += s["mcast_pongs_suppressed"];
    }
    let drawn = after - before;
    println!("one ping on 8 content nodes drew {drawn} pongs ({suppressed} suppressed in all)");
    assert!(drawn >= 1, "nobody answered");
    assert!(drawn <= 5, "{drawn} pongs for one ping");
}

/// A host with an interface set down and a docker-like bridge without
/// carrier: a node listening on every interface advertises
/// neither, nor loopback, only its LAN address.
#[tokio::test]
async fn the_advertised_addresses_skip_down_interfaces_and_empty_bridges() {
    let Some(mut lab) =
        netlab::lab("the_advertised_addresses_skip_down_interfaces_and_empty_bridges")
    else {
        return;
    };
    let hosts = lab.lan(1);
    let h = &hosts[0];
    let ip = |args: &[&str]| {
        let out = lab.exec(h, "ip", args);
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    ip(&[
        "link", "add", "down0", "type", "veth", "peer", "name", "down1",
    ]);
    ip(&["addr", "add", "10.99.0.1/24", "dev", "down0"]);
    ip(&["link", "add", "docker9", "type", "bridge"]);
    ip(&["addr", "add", "172.30.0.1/16", "dev", "docker9"]);
    ip(&["link", "set", "docker9", "up"]);
    // Like docker0 once its containers stopped: a port whose other end is
    // down, so the bridge has no carrier.
    ip(&["link", "add", "vp0", "type", "veth", "peer", "name", "vp1"]);
    ip(&["link", "set", "vp0", "master", "docker9"]);
    ip(&["link", "set", "vp0", "up"]);
    let node = lab.node(h, &["--no-discovery", "--no-upnp"]).await;
    let addrs = node.addr.split('@').nth(1).unwrap();
    assert_eq!(addrs, format!("{}:7400", h.ip), "advertised {addrs}");
}
