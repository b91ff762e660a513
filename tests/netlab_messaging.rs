//! Messages across NATs: A, behind a moderate NAT, messages B, behind a
//! strict NAT, while B is offline; the message waits in B's mailbox on the
//! network (a public holder and one behind another moderate NAT) and B
//! prints it when it starts. Then, with B online, a second message goes
//! through as A's one-shot sender waits for B's acknowledgement. Both as
//! CLI processes (`butter msg send`, `butter msg listen`). Needs root: see
//! tests/netlab/mod.rs.

mod netlab;

use std::time::Instant;

use netlab::Nat;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_from_behind_a_moderate_nat_reaches_an_offline_peer_behind_a_strict_nat() {
    let test = "a_message_from_behind_a_moderate_nat_reaches_an_offline_peer_behind_a_strict_nat";
    let Some(mut lab) = netlab::lab(test) else {
        return;
    };
    let world = lab.nat_world(&[Nat::None, Nat::Cone, Nat::Symmetric, Nat::Cone], 1);
    let intro = lab.introducer(&world.public, &[]).await;
    let common = [
        "--no-discovery",
        "--no-upnp",
        "--register-ms",
        "500",
        "--introducer",
        &intro.addr,
    ];
    let mut p = lab.node(&world.lans[0][0], &common).await;
    let mut m_args = common.to_vec();
    m_args.extend(["--bootstrap", &p.addr]);
    let mut m = lab.node(&world.lans[3][0], &m_args).await;
    p.wait_until(30, "P knows M", |k| k.contains(&m.id)).await;
    m.wait_until(30, "M knows P", |k| k.contains(&p.id)).await;

    let (a_host, b_host) = (&world.lans[1][0], &world.lans[2][0]);
    let id_of = |host: &netlab::Host| {
        let dir = lab.data_dir(host).display().to_string();
        let lab = &lab;
        let host = host.clone();
        async move {
            let (ok, out, err) = lab.butter(&host, &["id", "--data-dir", &dir]).await;
            assert!(ok, "butter id: {err}");
            out.trim().to_string()
        }
    };
    let a_id = id_of(a_host).await;
    let b_id = id_of(b_host).await;
    let a_dir = lab.data_dir(a_host).display().to_string();
    let send = |text: &'static str, wait: bool| {
        let mut args = vec![
            "msg",
            "send",
            b_id.as_str(),
            text,
            "--data-dir",
            a_dir.as_str(),
            "--introducer",
            intro.addr.as_str(),
            "--bootstrap",
            p.addr.as_str(),
            "--timeout-secs",
            "25",
        ];
        if wait {
            args.push("--wait");
        }
        let lab = &lab;
        async move { lab.butter(a_host, &args).await }
    };

    // B is offline: the message is kept in its mailbox.
    let started = Instant::now();
    let (ok, out, err) = send("sent while you were offline", false).await;
    assert!(ok, "send to the offline peer failed: {err}");
    assert!(err.contains("mailbox"), "not stored: {err}");
    assert_eq!(out.trim().len(), 32, "message id: {out}");
    let stored_in = started.elapsed();

    // B starts behind the strict NAT and prints it.
    let started = Instant::now();
    let mut b = lab
        .listener(
            b_host,
            &[
                "--no-discovery",
                "--introducer",
                &intro.addr,
                "--bootstrap",
                &p.addr,
            ],
        )
        .await;
    b.wait_line(60, "the mailbox's message", |l| {
        l == format!("{a_id} sent while you were offline")
    })
    .await;
    let drained_in = started.elapsed();

    // B online: delivered and acknowledged across both NATs.
    let started = Instant::now();
    let (ok, _, err) = send("and now you are online", true).await;
    assert!(ok, "send to the online peer failed: {err}");
    b.wait_line(30, "the online message", |l| {
        l == format!("{a_id} and now you are online")
    })
    .await;
    let online_in = started.elapsed();
    let report = format!(
        "moderate NAT -> strict NAT: stored in the offline peer's mailbox in {:.1} s; \
         printed {:.1} s after the peer started; with the peer online, sent and \
         acknowledged in {:.1} s ({})",
        stored_in.as_secs_f64(),
        drained_in.as_secs_f64(),
        online_in.as_secs_f64(),
        err.trim()
    );
    println!("{report}");
    netlab::keep_figures("messaging-across-nats", &report);
    b.kill().await;
}
