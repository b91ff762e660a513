//! The NAT matrix: every ordered pair of router types (A dials B by NodeId
//! through an introducer on the public segment), with the path each pair ends
//! up on, the time from the first dial to the first reply, the attempts, and a
//! 16 MiB streamed transfer. Prints the table. Needs root: see
//! tests/netlab/mod.rs; router behaviour: shared/notes/netlab.md.
//!
//! Router types: `none` (host on the public segment), `open` (masquerade and
//! every UDP port forwarded to the host), `moderate` (masquerade + input
//! filter: the home router), `strict` (`masquerade random`: symmetric).

mod netlab;

use std::time::{Duration, Instant};

use netlab::{Lab, Nat};

const TYPES: [(Nat, &str); 4] = [
    (Nat::None, "none"),
    (Nat::Open, "open"),
    (Nat::Cone, "moderate"),
    (Nat::Symmetric, "strict"),
];

/// The path a pair must end up on: direct (plain, punched or predicted) but
/// for strict × strict, which nothing short of a relay connects.
fn expected(a: Nat, b: Nat) -> &'static str {
    match (a, b) {
        (Nat::Symmetric, Nat::Symmetric) => "relay",
        _ => "direct",
    }
}

struct Row {
    a: &'static str,
    b: &'static str,
    path: String,
    first_reply: String,
    attempts: String,
    transfer: String,
}

/// Field `name` of a `butter ping` line: the text after `name` up to `sep`.
fn field<'a>(line: &'a str, name: &str, sep: char) -> &'a str {
    line.split_once(name)
        .map(|(_, rest)| rest.split(sep).next().unwrap_or("").trim())
        .unwrap_or("?")
}

async fn pair(
    lab: &mut Lab,
    (a, a_name): (Nat, &'static str),
    (b, b_name): (Nat, &'static str),
) -> Row {
    let world = lab.nat_world(&[a, b], 1);
    let intro = lab.introducer(&world.public, &[]).await;
    let node = [
        "--no-discovery",
        "--no-upnp",
        "--bench",
        "--register-ms",
        "500",
        "--introducer",
        &intro.addr,
    ];
    let b_node = lab.node(&world.lans[1][0], &node).await;
    // B registered: its counter, read over the LAN (or the public segment).
    let reader = world.routers[1]
        .clone()
        .unwrap_or_else(|| world.public.clone());
    let deadline = Instant::now() + Duration::from_secs(20);
    while lab.stats(&reader, &b_node).await["introducer_registrations"] == 0 {
        assert!(Instant::now() < deadline, "{b_name}: B never registered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let a_host = &world.lans[0][0];
    let (ok, out, err) = lab
        .butter(
            a_host,
            &["ping", &b_node.id, "-c", "5", "--introducer", &intro.addr],
        )
        .await;
    if std::env::var("NETLAB_CLI_LOG").is_ok() {
        eprintln!("{err}");
    }
    assert!(ok, "{a_name} → {b_name}: no reply: {err}");
    // Five pings a second apart: the path of the first reply, and the one the
    // connection settled on (a late punch or prediction replaces a relay).
    let lines: Vec<&str> = out.lines().collect();
    let line = lines.first().copied().unwrap_or("").to_string();
    let path_of = |l: &str| {
        if l.contains("via relay") {
            "relay".to_string()
        } else {
            field(l, " via ", '(').to_string()
        }
    };
    let first_path = path_of(&line);
    let path = path_of(lines.last().copied().unwrap_or(""));
    let kind = path.split_whitespace().next().unwrap_or("?");
    let want = expected(a, b);
    let direct = matches!(kind, "direct" | "punched" | "predicted");
    assert!(
        (want == "relay" && kind == "relay") || (want == "direct" && direct),
        "{a_name} → {b_name}: expected {want}, got {out}"
    );
    let bench = lab.bench(a_host, &b_node.id, "16M", &intro.addr).await;
    Row {
        a: a_name,
        b: b_name,
        path: if first_path == path {
            path
        } else {
            format!(
                "{} → {path}",
                first_path.split_whitespace().next().unwrap_or("?")
            )
        },
        first_reply: field(&line, "first reply after ", ';').to_string(),
        attempts: field(&line, "attempts: ", ')').to_string(),
        transfer: format!(
            "{} via {}",
            field(&bench, " s (", ')'),
            field(&bench, ") via ", ',')
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_nat_pair_connects_and_the_table_is_printed() {
    let test = "every_nat_pair_connects_and_the_table_is_printed";
    let mut rows = Vec::new();
    let started = Instant::now();
    // NETLAB_PAIRS=moderate-strict,none-open runs those pairs alone.
    let only = std::env::var("NETLAB_PAIRS").ok();
    for a in TYPES {
        for b in TYPES {
            if only
                .as_ref()
                .is_some_and(|o| !o.split(',').any(|p| p == format!("{}-{}", a.1, b.1)))
            {
                continue;
            }
            // A lab per pair: nothing (conntrack, registrations) leaks between pairs.
            let Some(mut lab) = netlab::lab(test) else {
                return;
            };
            rows.push(pair(&mut lab, a, b).await);
        }
    }
    let mut table = String::from("| A \\ B | path | first reply | attempts | 16 MiB |\n");
    table.push_str("| --- | --- | --- | --- | --- |\n");
    for r in &rows {
        table.push_str(&format!(
            "| {} → {} | {} | {} | {} | {} |\n",
            r.a, r.b, r.path, r.first_reply, r.attempts, r.transfer
        ));
    }
    table.push_str(&format!("\nmatrix took {:?}\n", started.elapsed()));
    println!("\n{table}");
    netlab::keep_figures("nat-matrix", &table);
}

/// The usual case from outside: a long-lived node (`butter node`, default
/// settings) behind one NAT of a predicted pair, and one-shot CLI callers
/// (`butter ping -c 1`: a new process, port and identity each) behind the
/// other. Counts the runs whose first reply came over a direct path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_shot_callers_of_a_long_lived_node_in_a_predicted_pair() {
    let test = "one_shot_callers_of_a_long_lived_node_in_a_predicted_pair";
    const RUNS: usize = 11;
    let mut report = String::new();
    for (a, b) in [(TYPES[2], TYPES[3]), (TYPES[3], TYPES[2])] {
        let Some(mut lab) = netlab::lab(test) else {
            return;
        };
        let world = lab.nat_world(&[a.0, b.0], 1);
        let intro = lab.introducer(&world.public, &[]).await;
        let b_node = lab
            .node(
                &world.lans[1][0],
                &[
                    "--no-upnp",
                    "--register-ms",
                    "500",
                    "--introducer",
                    &intro.addr,
                ],
            )
            .await;
        let reader = world.routers[1]
            .clone()
            .unwrap_or_else(|| world.public.clone());
        let deadline = Instant::now() + Duration::from_secs(20);
        while lab.stats(&reader, &b_node).await["introducer_registrations"] == 0 {
            assert!(Instant::now() < deadline, "B never registered");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut direct = 0;
        let mut paths = Vec::new();
        for _ in 0..RUNS {
            let (ok, out, err) = lab
                .butter(
                    &world.lans[0][0],
                    &["ping", &b_node.id, "-c", "1", "--introducer", &intro.addr],
                )
                .await;
            assert!(ok, "{} → {}: no reply: {err}", a.1, b.1);
            let line = out.lines().next().unwrap_or("").to_string();
            let path = if line.contains("via relay") {
                "relay"
            } else {
                field(&line, " via ", '(')
                    .split_whitespace()
                    .next()
                    .unwrap_or("?")
            }
            .to_string();
            direct += usize::from(matches!(path.as_str(), "direct" | "punched" | "predicted"));
            paths.push(format!("{path} ({})", field(&line, "attempts: ", ')')));
        }
        let line = format!(
            "{} → {} (long-lived): direct at the first reply {direct}/{RUNS}: {}",
            a.1,
            b.1,
            paths.join(", ")
        );
        println!("{line}");
        report.push_str(&line);
        report.push('\n');
        assert!(
            direct + 2 >= RUNS,
            "{} → {}: direct in only {direct} of {RUNS} one-shot runs",
            a.1,
            b.1
        );
    }
    netlab::keep_figures("one-shot-callers", &report);
}
