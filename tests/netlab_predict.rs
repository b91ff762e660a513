//! Port prediction between a moderate NAT (`masquerade` + input filter) and a
//! strict one (`masquerade random`), both orders, 20 runs each with the
//! default settings: how often it connects, the probes it took, the time to
//! the first reply; then what a failed prediction costs, and that no socket
//! outlives its run. Library nodes inside the namespaces (the test counts its
//! own file descriptors), so this file holds one test. Needs root: see
//! tests/netlab/mod.rs.

mod netlab;

use std::time::{Duration, Instant};

use butter::{NatSettings, Node, NodeAddr, PathKind, Request, UpnpSettings};
use netlab::{Nat, NsRuntime};

const RUNS: usize = 20;

fn settings(intro: &NodeAddr) -> NatSettings {
    NatSettings {
        introducers: vec![intro.clone()],
        register_interval: Duration::from_millis(500),
        // The relay would win the race after 1 s and hide the prediction's
        // own figures; here it waits.
        relay_after: Duration::from_secs(10),
        upnp: UpnpSettings {
            enabled: false,
            ..Default::default()
        },
        ..Default::default()
    }
}

async fn node(ns: &NsRuntime, port: u16, settings: NatSettings) -> Node {
    let node = ns
        .run(async move {
            Node::builder()
                .listen(format!("0.0.0.0:{port}").parse().unwrap())
                .lan_discovery(false)
                // No introductions: only the call under test traverses.
                .want_hosts(0)
                .nat(settings)
                .route(
                    "echo",
                    |req: Request| async move { Ok(req.body().to_vec()) },
                )
                .spawn()
                .await
        })
        .await
        .expect("node starts");
    let deadline = Instant::now() + Duration::from_secs(10);
    while node.stats().introducer_registrations == 0 {
        assert!(Instant::now() < deadline, "{node:?} never registered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    node
}

/// Sockets this process has open.
fn sockets() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|dir| {
            dir.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .filter(|l| l.to_string_lossy().starts_with("socket:"))
                .count()
        })
        .unwrap_or(0)
}

fn spread(mut v: Vec<f64>) -> String {
    if v.is_empty() {
        return "-".into();
    }
    v.sort_by(f64::total_cmp);
    format!(
        "min {:.0} / median {:.0} / max {:.0}",
        v[0],
        v[v.len() / 2],
        v[v.len() - 1]
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prediction_connects_moderate_and_strict_both_ways_and_cleans_up() {
    let test = "prediction_connects_moderate_and_strict_both_ways_and_cleans_up";
    let mut report = String::new();
    for (a_nat, b_nat, order) in [
        (Nat::Cone, Nat::Symmetric, "moderate → strict"),
        (Nat::Symmetric, Nat::Cone, "strict → moderate"),
    ] {
        let Some(mut lab) = netlab::lab(test) else {
            return;
        };
        let world = lab.nat_world(&[a_nat, b_nat], 2);
        let intro = lab.introducer(&world.public, &[]).await;
        let intro: NodeAddr = intro.addr.parse().unwrap();
        let a_ns = NsRuntime::new(&world.lans[0][0]);
        let b_ns = NsRuntime::new(&world.lans[1][0]);
        let baseline = sockets();

        let (mut ok, mut predicted, mut probes, mut times) = (0, 0, Vec::new(), Vec::new());
        // Single prediction attempts, as A took part in them (a run that
        // fails its first attempt retries once before the relay is due).
        let (mut attempts, mut attempts_ok) = (0, 0);
        for run in 0..RUNS {
            // Fresh nodes (new ports, new identities): new mappings on both
            // NATs. (A long-lived moderate peer would keep, for 30 s, the
            // conntrack entries its earlier probes left on its router; a new
            // strict mapping often lands on one, which flatters the figures.)
            let b = node(&b_ns, 0, settings(&intro)).await;
            let a = node(&a_ns, 0, settings(&intro)).await;
            let moderate = if a_nat == Nat::Cone { &a } else { &b };
            let probes_before = moderate.stats().prediction_probes_sent;
            let (caller, id) = (a.clone(), b.id());
            let started = Instant::now();
            let reply = a_ns
                .run(async move { caller.call(id, "echo", "hello").await })
                .await;
            let took = started.elapsed();
            assert_eq!(&reply.expect("A reaches B")[..], b"hello", "run {run}");
            let path = a.connection_info(&b.id()).map(|i| i.path);
            let st = a.stats();
            attempts += st.predictions_tried;
            attempts_ok += st.predictions_succeeded;
            // Direct either way: the prediction's sockets, or the plain punch
            // that runs beside it and sometimes gets there first.
            if matches!(path, Some(PathKind::Predicted | PathKind::Punched)) {
                ok += 1;
                predicted += usize::from(path == Some(PathKind::Predicted));
                times.push(took.as_secs_f64() * 1e3);
                probes.push((moderate.stats().prediction_probes_sent - probes_before) as f64);
            } else {
                println!("{order}, run {run}: {path:?} after {took:?}");
            }
            a_ns.run(async move { a.shutdown().await }).await;
            b_ns.run(async move { b.shutdown().await }).await;
        }
        let line = format!(
            "{order}: direct {ok}/{RUNS} ({predicted} predicted, the rest punched); single attempts {attempts_ok}/{attempts}; probes {}; first reply ms {}",
            spread(probes),
            spread(times)
        );
        println!("{line}");
        report.push_str(&line);
        report.push('\n');
        assert!(
            ok >= RUNS - 1,
            "{order}: a direct path in only {ok} of {RUNS} runs"
        );
        // Every socket a run opened (the strict side's 256, its endpoint, the
        // callers' own) is closed once the run's node and connections are gone.
        let deadline = Instant::now() + Duration::from_secs(15);
        while sockets() > baseline {
            assert!(
                Instant::now() < deadline,
                "{order}: {} sockets open, {baseline} before the runs; the hosts' UDP sockets:\n{}",
                sockets(),
                world
                    .lans
                    .iter()
                    .flatten()
                    .map(|h| {
                        let out = lab.exec(h, "ss", &["-uanp"]).stdout;
                        format!("{}:\n{}", h.ns, String::from_utf8_lossy(&out))
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        // The usual case outside tests: a long-lived callee (a service, whose
        // router keeps the state earlier runs left) and one-shot callers (CLI
        // runs), each with a new port and identity, with the relay's default
        // head start (1 s). Held to the fresh pairs' bar: at most one run
        // relayed when the call returns.
        let mixed_runs = RUNS / 2;
        let b = node(&b_ns, 0, settings(&intro)).await;
        let (mut mixed_ok, mut mixed_attempts, mut mixed_attempts_ok) = (0, 0, 0);
        for run in 0..mixed_runs {
            // The default head start of the relay, as a CLI run has it.
            let mut usual = settings(&intro);
            usual.relay_after = NatSettings::default().relay_after;
            let a = node(&a_ns, 0, usual).await;
            let (caller, id) = (a.clone(), b.id());
            let started = Instant::now();
            let reply = a_ns
                .run(async move { caller.call(id, "echo", "hello").await })
                .await;
            assert_eq!(&reply.expect("A reaches B")[..], b"hello", "run {run}");
            let path = a.connection_info(&b.id()).map(|i| i.path);
            let st = a.stats();
            mixed_attempts += st.predictions_tried;
            mixed_attempts_ok += st.predictions_succeeded;
            if matches!(path, Some(PathKind::Predicted | PathKind::Punched)) {
                mixed_ok += 1;
            } else {
                println!(
                    "{order}, long-lived callee, run {run}: {path:?} after {:?}",
                    started.elapsed()
                );
            }
            a_ns.run(async move { a.shutdown().await }).await;
        }
        b_ns.run(async move { b.shutdown().await }).await;
        let line = format!(
            "{order}, long-lived callee and one-shot callers: direct at the first reply {mixed_ok}/{mixed_runs}; single attempts {mixed_attempts_ok}/{mixed_attempts}"
        );
        println!("{line}");
        report.push_str(&line);
        report.push('\n');
        assert!(
            mixed_ok + 1 >= mixed_runs,
            "{order}: long-lived callee, direct in only {mixed_ok} of {mixed_runs} runs"
        );

        if a_nat == Nat::Cone {
            // A failed prediction: the strict peer takes no part (no sockets),
            // so the moderate side's probes find nothing. The call still goes
            // through (relay), the probes stop at their limit, the attempt ends.
            let mut shy = settings(&intro);
            shy.predict.sockets = 0;
            let b2_ns = NsRuntime::new(&world.lans[1][1]);
            let b2 = node(&b2_ns, 7400, shy).await;
            let mut quick = settings(&intro);
            quick.relay_after = Duration::from_secs(1);
            let a = node(&a_ns, 0, quick).await;
            let (caller, id) = (a.clone(), b2.id());
            let reply = a_ns
                .run(async move { caller.call(id, "echo", "anyway").await })
                .await;
            assert_eq!(&reply.expect("the relay connects")[..], b"anyway");
            assert_eq!(a.connection_info(&b2.id()).unwrap().path, PathKind::Relayed);
            let deadline = Instant::now() + Duration::from_secs(15);
            // (It may also succeed, rarely: a probe can land on the mapping the
            // peer's own socket holds towards us.)
            while a.stats().predictions_failed + a.stats().predictions_succeeded == 0 {
                assert!(
                    Instant::now() < deadline,
                    "the prediction never ended: {:?} {:?}",
                    a.stats(),
                    a.connection_info(&b2.id())
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            // The relayed connection keeps retrying (after 1 s, 2 s, ...): each
            // attempt stops at the limit.
            let s = a.stats();
            let limit = butter::PredictSettings::default().probes as u64;
            assert!(
                s.prediction_probes_sent <= limit * s.predictions_tried
                    && s.prediction_probes_sent > limit / 2,
                "{s:?}"
            );
            let line = format!(
                "failed prediction: {} probes in {} attempts (limit {limit} each), then the relay",
                s.prediction_probes_sent, s.predictions_tried
            );
            println!("{line}");
            report.push_str(&line);
            report.push('\n');
            a_ns.run(async move { a.shutdown().await }).await;
            b2_ns.run(async move { b2.shutdown().await }).await;
        }
    }
    netlab::keep_figures("port-prediction", &report);
}
