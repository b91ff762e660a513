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
        line.contains(&format!("via punched {}:", world.router(1).ip)),
        "{line}"
    );
    let bench = lab.bench(a_host, &b.id, "64M", &intro.addr).await;
    println!("cone x cone: {bench}");
    netlab::keep_figures(
        "nat-punched",
        &format!("cone x cone: {line}\ncone x cone: {bench}\n"),
    );
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
async fn symmetric_nats_on_both_sides_fall_back_to_the_relay() {
    // One symmetric NAT is beaten by port prediction (tests/netlab_matrix.rs);
    // two are not: nothing but the relay connects them.
    let Some(mut lab) = netlab::lab("symmetric_nats_on_both_sides_fall_back_to_the_relay") else {
        return;
    };
    let (world, intro, _a, b) = two_lans(&mut lab, [Nat::Symmetric, Nat::Symmetric]).await;
    let a_host = &world.lans[0][0];
    let (line, took) = ping_by_id(&lab, a_host, &b.id, &intro.addr).await;
    println!("symmetric x symmetric: {line} (command took {took:?})");
    assert!(line.ends_with(")") && line.contains("via relay"), "{line}");
    let bench = lab.bench(a_host, &b.id, "64M", &intro.addr).await;
    println!("symmetric x symmetric: {bench}");
    netlab::keep_figures(
        "nat-relayed",
        &format!("symmetric x symmetric: {line}\nsymmetric x symmetric: {bench}\n"),
    );
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

/// Both routers start symmetric, so A reaches B over the relay; then B's is
/// reconfigured to a plain `masquerade` (and forgets its connections, as a
/// reconfigured router does). A's relayed connection keeps trying a punch
/// (with port prediction, A's NAT being still symmetric) and moves to the
/// direct path; a streamed call running across the switch and
/// the calls made meanwhile all succeed. Library nodes, run inside the
/// namespaces, so the test sees `connection_info` and the calls themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relayed_connection_moves_to_direct_when_the_nat_allows() {
    use butter::{Body, Node, NodeAddr, PathKind, Request, StreamRequest};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use tokio::io::AsyncReadExt;

    let Some(mut lab) = netlab::lab("relayed_connection_moves_to_direct_when_the_nat_allows")
    else {
        return;
    };
    if let Ok(filter) = std::env::var("NETLAB_LOG") {
        let _ = tracing_subscriber::fmt().with_env_filter(filter).try_init();
    }
    let world = lab.nat_world(&[Nat::Symmetric, Nat::Symmetric], 1);
    let intro = lab.introducer(&world.public, &[]).await;
    let intro: NodeAddr = intro.addr.parse().unwrap();
    let settings = butter::NatSettings {
        introducers: vec![intro.clone()],
        register_interval: Duration::from_millis(500),
        upgrade_interval: Duration::from_secs(1),
        upnp: butter::UpnpSettings {
            enabled: false,
            ..Default::default()
        },
        ..Default::default()
    };
    let build = |settings: butter::NatSettings| async move {
        Node::builder()
            .listen("0.0.0.0:7400".parse().unwrap())
            .lan_discovery(false)
            .nat(settings)
            .route(
                "echo",
                |req: Request| async move { Ok(req.body().to_vec()) },
            )
            // Counts what arrives until the caller finishes its stream.
            .stream_route("drip", |mut req: StreamRequest| async move {
                let total = tokio::io::copy(&mut req.body, &mut tokio::io::sink()).await?;
                Ok(total.to_le_bytes().to_vec())
            })
            .spawn()
            .await
            .expect("node starts")
    };
    let a_ns = netlab::NsRuntime::new(&world.lans[0][0]);
    let b_ns = netlab::NsRuntime::new(&world.lans[1][0]);
    let a = a_ns.run(build(settings.clone())).await;
    let b = b_ns.run(build(settings)).await;
    let b_id = b.id();
    let registered = b.clone();
    b_ns.run(async move {
        let deadline = Instant::now() + Duration::from_secs(10);
        while registered.stats().introducer_registrations == 0 {
            assert!(Instant::now() < deadline, "B never registered");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;

    let node = a.clone();
    let reply = a_ns
        .run(async move { node.call(b_id, "echo", "over the relay").await })
        .await
        .expect("A reaches B by NodeId");
    assert_eq!(&reply[..], b"over the relay");
    assert_eq!(a.connection_info(&b_id).unwrap().path, PathKind::Relayed);

    // In flight across the switch: one long streamed call, and a call every 50 ms.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (node, stop2, sent2) = (a.clone(), stop.clone(), sent.clone());
    let long_call = a_ns.spawn(async move {
        let chunks = futures_util::stream::unfold((), move |()| {
            let (stop, sent) = (stop2.clone(), sent2.clone());
            async move {
                if stop.load(Ordering::Relaxed) {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                sent.fetch_add(1024, Ordering::Relaxed);
                Some((Ok(bytes::Bytes::from(vec![7u8; 1024])), ()))
            }
        });
        let mut reply = node
            .call_stream(b_id, "drip", Body::from_stream(chunks))
            .await?;
        let mut got = Vec::new();
        reply.read_to_end(&mut got).await?;
        Ok::<_, butter::Error>(got)
    });
    let (node, stop2) = (a.clone(), stop.clone());
    let calls = a_ns.spawn(async move {
        let mut results = Vec::new();
        let mut i = 0u32;
        while !stop2.load(Ordering::Relaxed) {
            let body = format!("call {i}");
            let r = node.call(b_id, "echo", body.clone()).await;
            results.push(r.map(|reply| reply == body.as_bytes()));
            i += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        results
    });
    tokio::time::sleep(Duration::from_millis(300)).await;

    lab.set_nat(world.router(1), Nat::Cone, true);
    let switched = Instant::now();
    let deadline = switched + Duration::from_secs(30);
    let info = loop {
        let info = a.connection_info(&b_id);
        if let Some(info) = info.filter(|i| i.path != PathKind::Relayed) {
            break info;
        }
        assert!(
            Instant::now() < deadline,
            "still {info:?} 30 s after the NAT allowed a direct path"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let took = switched.elapsed();
    // A's NAT is still symmetric: a punch with port prediction.
    assert!(
        matches!(info.path, PathKind::Punched | PathKind::Predicted),
        "{info:?}"
    );
    // B, which accepted the direct connection, uses it too, and names how it
    // came about.
    let a_id = a.id();
    loop {
        let seen = b.connection_info(&a_id);
        if seen.is_some_and(|i| matches!(i.path, PathKind::Punched | PathKind::Predicted)) {
            break;
        }
        assert!(Instant::now() < deadline, "B still uses {seen:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Keep calling for a while on the new path.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);

    let got = tokio::time::timeout(Duration::from_secs(30), long_call)
        .await
        .expect("the long call ends")
        .unwrap()
        .expect("the call in flight across the switch succeeds");
    let total = u64::from_le_bytes(got.try_into().expect("8 bytes"));
    assert_eq!(total, sent.load(Ordering::Relaxed));
    let results = tokio::time::timeout(Duration::from_secs(30), calls)
        .await
        .expect("the calls end")
        .unwrap();
    let failed: Vec<_> = results.iter().filter(|r| !matches!(r, Ok(true))).collect();
    assert!(
        failed.is_empty(),
        "{} of {} calls failed across the switch: {failed:?}",
        failed.len(),
        results.len()
    );
    // Counted by whichever side's traversal made the direct connection (B's
    // own liveness checks may get there first; A then accepts it).
    assert!(
        a.stats().upgrades + b.stats().upgrades >= 1,
        "{:?} {:?}",
        a.stats(),
        b.stats()
    );
    println!(
        "relayed → {} {} {took:?} after the switch; {} calls and a {total}-byte stream across it, all ok",
        info.path,
        info.remote,
        results.len()
    );
    a_ns.run(async move { a.shutdown().await }).await;
    b_ns.run(async move { b.shutdown().await }).await;
}
