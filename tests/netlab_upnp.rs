//! UPnP port mapping against a real gateway: miniupnpd (nftables backend) in
//! the router's namespace, found by the node through igd-next's SSDP search.
//! 2.3.9 (built from Debian's source by .ci/miniupnpd.sh) maps ports although
//! every address here is reserved; bookworm's 2.3.1 refuses, which is the
//! fallback case. Needs root: see tests/netlab/mod.rs; notes in
//! shared/notes/netlab.md.

mod netlab;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use netlab::{Lab, Miniupnpd, Nat};

const NODE: &[&str] = &["--no-discovery", "--register-ms", "500"];

/// The external address of a `upnp mapped ADDR (...)` line.
fn mapped(line: &str) -> SocketAddr {
    line.strip_prefix("upnp mapped ")
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("not a mapping line: {line}"))
}

/// `butter stats ID@ADDR` from `from`.
async fn stats_at(lab: &Lab, from: &netlab::Host, target: &str) -> HashMap<String, u64> {
    let (ok, out, err) = lab.butter(from, &["stats", target]).await;
    assert!(ok, "butter stats {target}: {err}");
    out.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// `butter ping ID@ADDR` from `from`: the output, or the error.
async fn ping(lab: &Lab, from: &netlab::Host, target: &str) -> Result<String, String> {
    let (ok, out, err) = lab.butter(from, &["ping", target]).await;
    if ok {
        Ok(out.trim().to_string())
    } else {
        Err(err)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upnp_mapping_is_made_renewed_used_advertised_and_removed() {
    let test = "upnp_mapping_is_made_renewed_used_advertised_and_removed";
    let Some(mut lab) = netlab::lab(test) else {
        return;
    };
    let world = lab.nat_world(&[Nat::Upnp], 2);
    let Some(gateway) = lab.miniupnpd(test, &world, 1, Miniupnpd::Maps).await else {
        return;
    };
    let router = world.router(0).clone();
    let public = world.public.clone();
    let intro = lab.introducer(&public, &[]).await;

    // A short lease, so renewals happen within the test.
    let mut a = lab
        .node(
            &world.lans[0][0],
            &[
                NODE,
                &["--introducer", &intro.addr, "--upnp-lease-secs", "4"],
            ]
            .concat(),
        )
        .await;
    let line = a
        .wait_line(20, "a UPnP mapping", |l| l.starts_with("upnp "))
        .await;
    assert!(
        line.starts_with("upnp mapped "),
        "{line}\ngateway log:\n{}",
        gateway.log.lock().unwrap()
    );
    let external = mapped(&line);
    assert_eq!(external, format!("{}:7400", router.ip).parse().unwrap());
    let rules = lab.nft_chain(&router, "filter", "prerouting_miniupnpd");
    assert!(
        rules.contains("dnat") && rules.contains(&world.lans[0][0].ip.to_string()),
        "no DNAT rule for A in the gateway:\n{rules}"
    );

    // Used: a host outside reaches A at the mapped address, directly.
    let reply = ping(&lab, &public, &format!("{}@{external}", a.id))
        .await
        .expect("A answers at its mapped address");
    assert!(reply.contains(&format!("via direct {external}")), "{reply}");

    // The router does filter: a node without a mapping cannot be reached so.
    let mut shy = lab
        .node(
            &world.lans[0][1],
            &[NODE, &["--no-upnp", "--listen", "0.0.0.0:7402"]].concat(),
        )
        .await;
    let unmapped = format!("{}@{}:7402", shy.id, router.ip);
    assert!(
        ping(&lab, &public, &unmapped).await.is_err(),
        "an unmapped port got through the router"
    );
    shy.kill().await;

    // Advertised: B on the same router asks for 7400 too, gets another port
    // (the gateway says 7400 is taken), and peers outside find B by NodeId
    // through its registration at that port.
    let mut b = lab
        .node(
            &world.lans[0][1],
            &[NODE, &["--introducer", &intro.addr]].concat(),
        )
        .await;
    let b_external = mapped(
        &b.wait_line(20, "B's UPnP mapping", |l| l.starts_with("upnp "))
            .await,
    );
    assert_eq!(b_external.ip(), router.ip);
    assert_ne!(b_external.port(), 7400, "the gateway gave 7400 twice");
    let reply = ping(&lab, &public, &format!("{}@{b_external}", b.id))
        .await
        .expect("B answers at its mapped address");
    assert!(reply.contains("via direct"), "{reply}");
    let (ok, out, err) = lab
        .butter(&public, &["ping", &b.id, "--introducer", &intro.addr])
        .await;
    assert!(ok, "B by NodeId: {err}");
    assert!(!out.contains("via relay"), "{out}");

    // Renewed: the lease (4 s) is renewed every 2 s and the mapping outlives it.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = stats_at(&lab, &public, &format!("{}@{external}", a.id)).await;
        if s.get("upnp_renewed").copied().unwrap_or(0) >= 3 {
            assert_eq!(s.get("upnp_mapped"), Some(&1), "{s:?}");
            break;
        }
        assert!(Instant::now() < deadline, "no lease renewals: {s:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    ping(&lab, &public, &format!("{}@{external}", a.id))
        .await
        .expect("the mapping outlived its first lease");

    // Removed on shutdown.
    let said = a.stop().await;
    assert!(
        said.iter().any(|l| l == "upnp released"),
        "A did not release its mapping: {said:?}"
    );
    let rules = lab.nft_chain(&router, "filter", "prerouting_miniupnpd");
    assert!(
        !rules.contains(&format!("{} ", world.lans[0][0].ip))
            && !rules.contains(&format!("{}:", world.lans[0][0].ip)),
        "A's DNAT rule is still there:\n{rules}"
    );
    assert!(
        rules.contains(&world.lans[0][1].ip.to_string()),
        "B's mapping went too:\n{rules}"
    );
    b.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_or_absent_gateway_is_a_clean_fallback() {
    let test = "refused_or_absent_gateway_is_a_clean_fallback";
    let Some(mut lab) = netlab::lab(test) else {
        return;
    };
    // LAN 1: a gateway that refuses (reserved WAN address); LAN 2: none at all.
    let world = lab.nat_world(&[Nat::Upnp, Nat::Cone], 1);
    let Some(gateway) = lab.miniupnpd(test, &world, 1, Miniupnpd::Refuses).await else {
        return;
    };
    let intro = lab.introducer(&world.public, &[]).await;
    let node = [NODE, &["--bench", "--introducer", &intro.addr]].concat();
    let mut a = lab.node(&world.lans[0][0], &node).await;
    let mut b = lab.node(&world.lans[1][0], &node).await;

    let refused = a
        .wait_line(20, "the gateway's answer", |l| l.starts_with("upnp "))
        .await;
    assert!(
        refused.starts_with("upnp unavailable: gateway 10.1.0.1:5000 refused"),
        "{refused}\ngateway log:\n{}",
        gateway.log.lock().unwrap()
    );
    let absent = b
        .wait_line(20, "the UPnP search to end", |l| l.starts_with("upnp "))
        .await;
    assert!(
        absent.starts_with("upnp unavailable: no UPnP gateway answered"),
        "{absent}"
    );

    // Both carry on: B reaches A by NodeId alone, punched through both NATs,
    // and a transfer works.
    let (ok, out, err) = lab
        .butter(
            &world.lans[1][0],
            &["ping", &a.id, "--introducer", &intro.addr],
        )
        .await;
    assert!(ok, "{err}");
    assert!(out.contains("via punched"), "{out}");
    lab.bench(&world.lans[1][0], &a.id, "4M", &intro.addr).await;
    // The router is on A's LAN: it can ask A directly.
    let s = lab.stats(world.router(0), &a).await;
    assert_eq!(s.get("upnp_mapped"), Some(&0), "{s:?}");
    let said = a.stop().await;
    assert!(!said.iter().any(|l| l == "upnp released"), "{said:?}");
    b.kill().await;
}

/// The pair that needs the relay without UPnP (one side symmetric): with the
/// other side's port mapped, the symmetric side dials it directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mapped_port_makes_a_symmetric_pair_direct() {
    let test = "a_mapped_port_makes_a_symmetric_pair_direct";
    let Some(mut lab) = netlab::lab(test) else {
        return;
    };
    let world = lab.nat_world(&[Nat::Upnp, Nat::Symmetric], 1);
    let Some(_gateway) = lab.miniupnpd(test, &world, 1, Miniupnpd::Maps).await else {
        return;
    };
    let intro = lab.introducer(&world.public, &[]).await;
    let node = [NODE, &["--bench", "--introducer", &intro.addr]].concat();
    let mut a = lab.node(&world.lans[0][0], &node).await;
    let line = a
        .wait_line(20, "a UPnP mapping", |l| l.starts_with("upnp "))
        .await;
    let external = mapped(&line);
    // A's registration carries the mapped address from its next refresh on.
    let registrations = lab.stats(world.router(0), &a).await["introducer_registrations"];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = lab.stats(world.router(0), &a).await;
        if s.get("introducer_registrations").copied().unwrap_or(0) > registrations {
            break;
        }
        assert!(Instant::now() < deadline, "A stopped registering: {s:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let b = &world.lans[1][0];
    let (ok, out, err) = lab
        .butter(b, &["ping", &a.id, "--introducer", &intro.addr])
        .await;
    assert!(ok, "{err}");
    // Its own (mapped) address, so a direct path, not a punched or relayed one.
    assert!(out.contains(&format!("via direct {external}")), "{out}");
    println!("{}", out.trim());
    let out = lab.bench(b, &a.id, "16M", &intro.addr).await;
    assert!(out.contains(&format!("via direct {external}")), "{out}");
    println!("{}", out.trim());
}
