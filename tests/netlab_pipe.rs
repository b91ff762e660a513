//! `butter pipe` across two strict NATs: the only path is the introducer's
//! relay; 256 MiB go each way, byte-identical. Processes in network
//! namespaces. Needs root: see tests/netlab/mod.rs.

mod netlab;

use std::process::Stdio;
use std::time::{Duration, Instant};

use netlab::Nat;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

fn data(seed: &[u8]) -> Vec<u8> {
    let mut v = vec![0u8; 256 << 20];
    blake3::Hasher::new()
        .update(seed)
        .finalize_xof()
        .fill(&mut v);
    v
}

fn butter_in(host: &netlab::Host) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new("ip");
    cmd.args(["netns", "exec", &host.ns, env!("CARGO_BIN_EXE_butter")])
        // The log level is the flags' (-v), not the environment's.
        .env_remove("RUST_LOG")
        .kill_on_drop(true);
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipe_between_two_strict_nats_goes_through_the_relay() {
    let test = "a_pipe_between_two_strict_nats_goes_through_the_relay";
    let Some(mut lab) = netlab::lab(test) else {
        return;
    };
    let world = lab.nat_world(&[Nat::Symmetric, Nat::Symmetric], 1);
    let intro = lab.introducer(&world.public, &[]).await;
    let (l_host, c_host) = (&world.lans[0][0], &world.lans[1][0]);
    let (to_connect, to_listen) = (data(b"listener"), data(b"connector"));

    let mut listener = butter_in(l_host)
        .args([
            "pipe",
            "listen",
            "--listen",
            "0.0.0.0:7400",
            "--introducer",
            &intro.addr,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(listener.stderr.take().unwrap()).lines();
    let addr = tokio::time::timeout(Duration::from_secs(20), err.next_line())
        .await
        .expect("the address in time")
        .unwrap()
        .expect("a line");
    let id = addr.split('@').next().unwrap().to_string();
    // Registered before anyone asks for it.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut stdin = listener.stdin.take().unwrap();
    let feed = to_connect.clone();
    let feeding = tokio::spawn(async move { stdin.write_all(&feed).await.unwrap() });
    let mut out = listener.stdout.take().unwrap();
    let reading = tokio::spawn(async move {
        let mut got = Vec::new();
        out.read_to_end(&mut got).await.unwrap();
        got
    });

    let started = Instant::now();
    let mut connector = butter_in(c_host)
        .args(["-v", "pipe", "connect", &id, "--introducer", &intro.addr])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut cin = connector.stdin.take().unwrap();
    let feed = to_listen.clone();
    let cfeeding = tokio::spawn(async move { cin.write_all(&feed).await.unwrap() });
    let out = tokio::time::timeout(Duration::from_secs(120), connector.wait_with_output())
        .await
        .expect("the connector ends in time")
        .unwrap();
    let took = started.elapsed();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(
        out.stdout == to_connect,
        "{} bytes to the connector",
        out.stdout.len()
    );
    assert!(said.contains("relayed"), "not through the relay: {said}");
    let got = tokio::time::timeout(Duration::from_secs(60), reading)
        .await
        .expect("the listener's output ends")
        .unwrap();
    assert!(got == to_listen, "{} bytes to the listener", got.len());
    feeding.await.unwrap();
    cfeeding.await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(20), listener.wait())
        .await
        .expect("the listener exits")
        .unwrap();
    assert!(status.success());
    let report = format!(
        "pipe strict NAT <-> strict NAT through the relay: 256 MiB each way at once in {:.1} s ({:.0} MiB/s each way)",
        took.as_secs_f64(),
        256.0 / took.as_secs_f64()
    );
    println!("{report}");
    netlab::keep_figures("pipe-relayed", &report);
}
