//! Peers across real kernel NATs (nftables routers in network namespaces):
//! punched paths, the relay, WAN-side filtering, two peers on one LAN, an
//! introducer restart. Needs root: see tests/netlab/mod.rs. Topology and NAT
//! behaviour: shared/notes/netlab.md.

mod netlab;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use netlab::{Host, Lab, Nat, NodeProc};

/// Registration refreshes fast, so the tests do not wait for the default 10 s.
const NODE: &[&str] = &["--no-discovery", "--bench", "--register-ms", "500"];

fn args<'a>(base: &[&'a str], intro: &'a str) -> Vec<&'a str> {
    let mut v = base.to_vec();
    v.extend(["--introducer", intro]);
    v
}

/// Waits (bounded) until a counter of `node`, read from `from`, reaches `min`.
async fn counter_at_least(lab: &Lab, from: &Host, node: &NodeProc, name: &str, min: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (ok, out, _) = lab.butter(from, &["stats", &node.addr]).await;
        if ok && stats(&out).get(name).copied().unwrap_or(0) >= min {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} of {} never reached {min}",
            node.id
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn stats(out: &str) -> HashMap<String, u64> {
    out.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// `butter ping ID --introducer I` from `from`: the output line and the time the
/// whole command took (process start to exit; the line has the time from the
/// first dial to the first reply).
async fn ping_by_id(lab: &Lab, from: &Host, id: &str, intro: &str) -> (String, Duration) {
    let start = Instant::now();
    let (ok, out, err) = lab.butter(from, &["ping", id, "--introducer", intro]).await;
    let took = start.elapsed();
    if std::env::var("NETLAB_CLI_LOG").is_ok() {
        eprintln!("{err}");
    }
    assert!(ok, "ping {id} from {}: {err}", from.ns);
    assert!(out.starts_with(&format!("reply from {id} ")), "{out}");
    (out.trim().to_string(), took)
}

async fn bench_by_id(lab: &Lab, from: &Host, id: &str, intro: &str) -> String {
    let (ok, out, err) = lab
        .butter(
            from,
            &["bench", id, "--bytes", "64M", "--introducer", intro],
        )
        .await;
    assert!(ok, "bench {id} from {}: {err}", from.ns);
    assert!(out.contains("hash ok"), "{out}");
    out.trim().to_string()
}

/// Introducer + A on LAN 1 + B on LAN 2; B registered. Returns the processes.
async fn two_lans(lab: &mut Lab, nats: [Nat; 2]) -> (netlab::World, NodeProc, NodeProc, NodeProc) {
    let world = lab.nat_world(&nats, 1);
    let intro = lab.introducer(&world.public, &[]).await;
    let a = lab.node(&world.lans[0][0], &args(NODE, &intro.addr)).await;
    let b = lab.node(&world.lans[1][0], &args(NODE, &intro.addr)).await;
    counter_at_least(lab, &world.lans[1][0], &b, "introducer_registrations", 1).await;
    counter_at_least(lab, &world.lans[0][0], &a, "introducer_registrations", 1).await;
    (world, intro, a, b)
}

#[tokio::test]
async fn cone_nats_on_both_sides_punch_a_direct_path() {
    let Some(mut lab) = netlab::lab("cone_nats_on_both_sides_punch_a_direct_path") else {
        return;
    };
    let (world, intro, _a, b) = two_lans(&mut lab, [Nat::Cone, Nat::Cone]).await;
    let a_host = &world.lans[0][0];
    let (line, took) = ping_by_id(&lab, a_host, &b.id, &intro.addr).await;
    println!("cone x cone: {line} (command took {took:?})");
    // Punched: B's router's WAN address, not B's LAN address and not the relay.
    assert!(
        line.contains(&format!("via punched {}:", world.routers[1].ip)),
        "{line}"
    );
    let bench = bench_by_id(&lab, a_host, &b.id, &intro.addr).await;
    println!("cone x cone: {bench}");
    assert!(bench.contains("via punched"), "{bench}");
    let (_, out, _) = lab.butter(&world.public, &["stats", &intro.addr]).await;
    let f = stats(&out);
    assert!(f["intro.punches_succeeded"] >= 2, "{out}");
    assert_eq!(
        f["intro.relayed_bytes"], 0,
        "nothing went through the relay"
    );
}

#[tokio::test]
async fn wan_side_filtering_on_both_routers_still_punches() {
    let Some(mut lab) = netlab::lab("wan_side_filtering_on_both_routers_still_punches") else {
        return;
    };
    let (world, intro, _a, b) = two_lans(&mut lab, [Nat::Filtered, Nat::Filtered]).await;
    let (line, took) = ping_by_id(&lab, &world.lans[0][0], &b.id, &intro.addr).await;
    println!("filtered x filtered: {line} (command took {took:?})");
    assert!(line.contains("via punched"), "{line}");
}

#[tokio::test]
async fn a_symmetric_nat_falls_back_to_the_relay() {
    let Some(mut lab) = netlab::lab("a_symmetric_nat_falls_back_to_the_relay") else {
        return;
    };
    let (world, intro, _a, b) = two_lans(&mut lab, [Nat::Cone, Nat::Symmetric]).await;
    let a_host = &world.lans[0][0];
    let (line, took) = ping_by_id(&lab, a_host, &b.id, &intro.addr).await;
    println!("cone x symmetric: {line} (command took {took:?})");
    assert!(line.ends_with(")") && line.contains("via relay"), "{line}");
    let bench = bench_by_id(&lab, a_host, &b.id, &intro.addr).await;
    println!("cone x symmetric: {bench}");
    assert!(bench.contains("via relay"), "{bench}");
    let (_, out, _) = lab.butter(&world.public, &["stats", &intro.addr]).await;
    let f = stats(&out);
    // The relay carried the transfer...
    assert!(f["intro.relayed_bytes"] >= 64 << 20, "{out}");
    // ...yet the reply came from B's key: `ping` checks the id in the reply, and
    // the TLS handshake inside the tunnel only accepts B's certificate key, which
    // the introducer (with its own key) cannot present. The tunnel carries QUIC
    // packets whose keys only A and B derived: the relay moved ciphertext.
    assert!(line.starts_with(&format!("reply from {} ", b.id)));
    assert_ne!(intro.id, b.id);
}

#[tokio::test]
async fn two_nodes_on_one_lan_connect_over_the_lan() {
    let Some(mut lab) = netlab::lab("two_nodes_on_one_lan_connect_over_the_lan") else {
        return;
    };
    let world = lab.nat_world(&[Nat::Cone], 2);
    let intro = lab.introducer(&world.public, &[]).await;
    let [h1, h2] = [&world.lans[0][0], &world.lans[0][1]];
    // LAN discovery on: they find each other by multicast.
    let base = ["--bench", "--register-ms", "500", "--want", "1"];
    let mut a = lab.node(h1, &args(&base, &intro.addr)).await;
    let b = lab.node(h2, &args(&base, &intro.addr)).await;
    a.wait_until(20, "b on the LAN", |k| k.contains(&b.id))
        .await;
    let peers = lab.peers(h1, &a).await;
    assert!(peers.contains(&b.id));
    // By id, through the introducer's rendezvous: the LAN address wins over
    // the router's (no hairpin), and nothing is relayed.
    counter_at_least(&lab, h2, &b, "introducer_registrations", 1).await;
    let (line, took) = ping_by_id(&lab, h1, &b.id, &intro.addr).await;
    println!("same LAN: {line} (command took {took:?})");
    assert!(
        line.contains(&format!("via direct {}:7400", h2.ip)),
        "{line}"
    );
    let (_, out, _) = lab.butter(&world.public, &["stats", &intro.addr]).await;
    assert_eq!(stats(&out)["intro.relayed_bytes"], 0, "{out}");
}

#[tokio::test]
async fn nodes_re_register_after_an_introducer_restart() {
    let Some(mut lab) = netlab::lab("nodes_re_register_after_an_introducer_restart") else {
        return;
    };
    let (world, mut intro, _a, b) = two_lans(&mut lab, [Nat::Cone, Nat::Cone]).await;
    intro.kill().await;
    // Same identity (data dir) and address: what a restarted service looks like.
    let intro2 = lab.introducer(&world.public, &[]).await;
    assert_eq!(intro2.id, intro.id);
    counter_at_least(&lab, &world.public, &intro2, "intro.registrations", 2).await;
    let (line, _) = ping_by_id(&lab, &world.lans[0][0], &b.id, &intro2.addr).await;
    assert!(line.contains("via punched"), "{line}");
}
