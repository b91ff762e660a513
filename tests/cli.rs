//! The `butter` CLI and the examples, run as real processes.

mod common;

use std::path::PathBuf;
use std::process::Stdio;

use common::within;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

/// Tests that move hundreds of MiB, or whose network must answer in time,
/// run one at a time: on 2 cores a 256 MiB pipe beside a `share` starves
/// the share's pushes.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn butter() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_butter"));
    cmd.kill_on_drop(true).env("RUST_LOG", "warn");
    cmd
}

/// Examples are built by `cargo test` next to the binaries.
fn example(name: &str) -> Command {
    let path: PathBuf = PathBuf::from(env!("CARGO_BIN_EXE_butter"))
        .parent()
        .unwrap()
        .join("examples")
        .join(name);
    assert!(
        path.exists(),
        "{} is missing: `cargo test` builds the examples",
        path.display()
    );
    let mut cmd = Command::new(path);
    cmd.kill_on_drop(true);
    cmd
}

struct Running {
    /// Kept: the process is killed when this is dropped.
    _child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Running {
    fn start(mut cmd: Command) -> Self {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Running {
            _child: child,
            lines,
        }
    }

    async fn line(&mut self, what: &str) -> String {
        within(20, what, self.lines.next_line())
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{what}: stdout closed"))
    }
}

struct Output {
    ok: bool,
    stdout: String,
    stderr: String,
}

async fn run(mut cmd: Command, stdin: Option<&str>) -> Output {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).await.unwrap();
    }
    drop(input);
    let out = within(30, "command", child.wait_with_output())
        .await
        .unwrap();
    Output {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[tokio::test]
async fn ping_and_call_the_ohce_example() {
    let mut ohce = example("ohce");
    ohce.args(["--listen", "127.0.0.1:0"]);
    let mut ohce = Running::start(ohce);
    let addr = ohce.line("ohce address").await;
    let id = addr.split('@').next().unwrap().to_string();

    let mut cmd = butter();
    cmd.args(["ping", &addr]);
    let out = run(cmd, None).await;
    assert!(out.ok, "{}", out.stderr);
    assert!(
        out.stdout.starts_with(&format!("reply from {id} in ")),
        "{}",
        out.stdout
    );

    let mut cmd = butter();
    cmd.args(["call", &addr, "reverse", "hello"]);
    let out = run(cmd, None).await;
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(out.stdout, "olleh", "the reply as it is, no newline added");

    let mut cmd = butter();
    cmd.args(["call", &addr, "reverse"]);
    let out = run(cmd, Some("from stdin")).await;
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(out.stdout, "nidts morf");

    // Same address, someone else's id: refused, one line saying why.
    let wrong = format!(
        "{}{}",
        if id.starts_with('0') { "1" } else { "0" },
        &addr[1..]
    );
    let mut cmd = butter();
    cmd.args(["call", &wrong, "reverse", "hello"]);
    let out = run(cmd, None).await;
    assert!(!out.ok);
    assert!(out.stdout.is_empty());
    assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);
    assert!(out.stderr.contains("identity mismatch"), "{}", out.stderr);
    assert!(
        out.stderr.contains(&id),
        "names who answered: {}",
        out.stderr
    );

    let mut cmd = butter();
    cmd.args(["call", &addr, "nope", "x"]);
    let out = run(cmd, None).await;
    assert!(!out.ok);
    assert!(out.stderr.contains("no such route"), "{}", out.stderr);

    let mut cmd = butter();
    cmd.args(["ping", "not-an-address"]);
    let out = run(cmd, None).await;
    assert!(!out.ok);
    assert!(out.stderr.contains("NODEID@IP:PORT"), "{}", out.stderr);
}

#[tokio::test]
async fn node_and_id_share_the_persisted_identity() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap();
    let mut cmd = butter();
    cmd.args(["id", "--data-dir", data_dir]);
    let first = run(cmd, None).await;
    assert!(first.ok, "{}", first.stderr);
    let id = first.stdout.trim().to_string();
    assert_eq!(id.len(), 64);
    let mut cmd = butter();
    cmd.args(["id", "--data-dir", data_dir]);
    assert_eq!(run(cmd, None).await.stdout.trim(), id);

    let mut node = butter();
    node.args(["node", "--listen", "127.0.0.1:0", "--data-dir", data_dir]);
    let mut node = Running::start(node);
    let addr = node.line("node address").await;
    assert!(addr.starts_with(&format!("{id}@127.0.0.1:")), "{addr}");
    let mut cmd = butter();
    cmd.args(["ping", &addr]);
    let out = run(cmd, None).await;
    assert!(out.ok, "{}", out.stderr);

    std::fs::write(dir.path().join("node.key"), "garbage").unwrap();
    let mut cmd = butter();
    cmd.args(["id", "--data-dir", data_dir]);
    let out = run(cmd, None).await;
    assert!(!out.ok);
    assert!(out.stderr.contains("node.key"), "{}", out.stderr);
}

/// `butter dht`: one-shot lookups as a guest against a network of
/// `butter node`s joined through `--bootstrap`; the result alone on stdout,
/// one clear line and a non-zero exit when nothing is found, and the guests
/// never enter anyone's table.
#[tokio::test]
async fn dht_commands_put_get_and_find_through_a_bootstrapped_network() {
    let _heavy = HEAVY.lock().await;
    let dirs: Vec<_> = (0..5).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes = Vec::new();
    let mut addrs: Vec<String> = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        let mut cmd = butter();
        let listen = format!("127.0.0.{}:0", 20 + i);
        cmd.args([
            "node",
            "--events",
            "--listen",
            &listen,
            "--no-discovery",
            "--no-upnp",
            "--data-dir",
            dir.path().to_str().unwrap(),
        ]);
        if let Some(first) = addrs.first() {
            cmd.args(["--bootstrap", first]);
        }
        let mut node = Running::start(cmd);
        addrs.push(node.line("node address").await);
        nodes.push(node);
    }
    let ids: Vec<String> = addrs
        .iter()
        .map(|a| a.split('@').next().unwrap().to_string())
        .collect();
    // Joined: each node says so once its lookup for its own id was
    // answered (the first one through the others' arrival).
    for node in &mut nodes {
        while node.line("dht joined").await != "dht joined" {}
    }
    // The first node, asked by each newcomer, knows the other four.
    let mut cmd = butter();
    cmd.args(["peers", &addrs[0]]);
    let out = run(cmd, None).await;
    assert_eq!(out.stdout.lines().skip(1).count(), 4, "{}", out.stdout);

    let mut cmd = butter();
    cmd.args([
        "dht",
        "--bootstrap",
        &addrs[1],
        "put",
        "greeting",
        "hello, dht",
    ]);
    let put = run(cmd, None).await;
    assert!(put.ok, "{}", put.stderr);
    let key = put.stdout.trim().to_string();
    assert_eq!(key.len(), 64, "{}", put.stdout);
    assert!(put.stderr.contains("hops"), "{}", put.stderr);

    let mut cmd = butter();
    cmd.args(["dht", "--bootstrap", &addrs[3], "get", &key]);
    let get = run(cmd, None).await;
    assert!(get.ok, "{}", get.stderr);
    assert_eq!(get.stdout, "hello, dht\n");
    assert!(get.stderr.contains("messages"), "{}", get.stderr);

    let mut cmd = butter();
    cmd.args(["dht", "--bootstrap", &addrs[0], "find-node", &ids[4]]);
    let found = run(cmd, None).await;
    assert!(found.ok, "{}", found.stderr);
    assert!(
        found
            .stdout
            .trim()
            .starts_with(&format!("{}@127.0.0.24:", ids[4])),
        "{}",
        found.stdout
    );

    // Nothing there: one line on stderr, nothing on stdout, non-zero.
    let nobody = "ab".repeat(32);
    for what in ["get", "providers", "find-node"] {
        let mut cmd = butter();
        cmd.args(["dht", "--bootstrap", &addrs[2], what, &nobody]);
        let out = run(cmd, None).await;
        assert!(!out.ok, "{what}: {}", out.stdout);
        assert!(out.stdout.is_empty(), "{what}: {}", out.stdout);
        assert_eq!(
            out.stderr.trim().lines().count(),
            1,
            "{what}: {}",
            out.stderr
        );
        assert!(out.stderr.contains("not found"), "{what}: {}", out.stderr);
    }
    let mut cmd = butter();
    cmd.args(["dht", "get", &key]);
    let out = run(cmd, None).await;
    assert!(!out.ok);
    assert!(out.stderr.contains("--bootstrap"), "{}", out.stderr);

    // The guests are in nobody's table: every table holds node ids only.
    for addr in &addrs {
        let mut cmd = butter();
        cmd.args(["peers", addr]);
        let out = run(cmd, None).await;
        for line in out.stdout.lines().skip(1) {
            let id = line.split_whitespace().next().unwrap();
            assert!(
                ids.iter().any(|i| i == id),
                "a guest entered a table: {line}"
            );
        }
    }
}

/// `butter share` pushes a file to the network and exits; `butter search`
/// finds it by its keywords; `butter fetch` (with the sharer gone) writes it
/// byte-identical; a key nobody shared is one clear line and a non-zero
/// exit.
#[tokio::test]
async fn share_then_fetch_with_the_sharer_gone() {
    let _heavy = HEAVY.lock().await;
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes = Vec::new();
    let mut addrs: Vec<String> = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        let mut cmd = butter();
        let listen = format!("127.0.0.{}:0", 30 + i);
        cmd.args([
            "node",
            "--listen",
            &listen,
            "--no-discovery",
            "--no-upnp",
            "--data-dir",
            dir.path().to_str().unwrap(),
        ]);
        if let Some(first) = addrs.first() {
            cmd.args(["--bootstrap", first]);
        }
        let mut node = Running::start(cmd);
        addrs.push(node.line("node address").await);
        nodes.push(node);
    }
    within(30, "the network forms", async {
        loop {
            let mut cmd = butter();
            cmd.args(["peers", &addrs[0]]);
            if run(cmd, None).await.stdout.lines().skip(1).count() >= 3 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    })
    .await;
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("photo.bin");
    let mut data = vec![0u8; 3 << 20];
    blake3::Hasher::new()
        .update(b"photo")
        .finalize_xof()
        .fill(&mut data);
    std::fs::write(&file, &data).unwrap();

    let mut cmd = butter();
    cmd.args([
        "share",
        file.to_str().unwrap(),
        "--listen",
        "127.0.0.40:0",
        "--bootstrap",
        &addrs[1],
        "--keywords",
        "holiday,seaside",
    ]);
    let shared = run(cmd, None).await;
    assert!(shared.ok, "{}", shared.stderr);
    let key = shared.stdout.lines().next().unwrap().trim().to_string();
    assert_eq!(key.len(), 64, "{}", shared.stdout);
    assert!(
        shared.stderr.contains("each on at least 3 holders"),
        "{}",
        shared.stderr
    );

    // The sharer has exited; another machine finds it by its keywords:
    // the key first on the line, then the score and the name.
    let mut cmd = butter();
    cmd.args(["search", "seaside holiday", "--bootstrap", &addrs[3]]);
    let found = run(cmd, None).await;
    assert!(found.ok, "{}", found.stderr);
    let first = found.stdout.lines().next().unwrap_or_default().to_string();
    let fields: Vec<&str> = first.split('\t').collect();
    assert_eq!(fields.first(), Some(&key.as_str()), "{}", found.stdout);
    assert_eq!(fields.get(2), Some(&"photo.bin"), "{first}");
    assert!(found.stderr.contains("messages"), "{}", found.stderr);

    // Another machine fetches.
    let out = work.path().join("fetched.bin");
    let mut cmd = butter();
    cmd.args([
        "fetch",
        &key,
        "-o",
        out.to_str().unwrap(),
        "--bootstrap",
        &addrs[2],
    ]);
    let fetched = run(cmd, None).await;
    assert!(fetched.ok, "{}", fetched.stderr);
    assert!(fetched.stdout.is_empty(), "{}", fetched.stdout);
    assert!(fetched.stderr.contains("verified"), "{}", fetched.stderr);
    assert!(
        std::fs::read(&out).unwrap() == data,
        "the fetched file differs"
    );

    let mut cmd = butter();
    let nobody = "cd".repeat(32);
    cmd.args([
        "fetch",
        &nobody,
        "-o",
        out.to_str().unwrap(),
        "--bootstrap",
        &addrs[3],
    ]);
    let missing = run(cmd, None).await;
    assert!(!missing.ok);
    assert_eq!(
        missing.stderr.trim().lines().count(),
        1,
        "{}",
        missing.stderr
    );
    assert!(missing.stderr.contains("not found"), "{}", missing.stderr);
}

/// `kill -9` while a node writes a large item into its store: the store
/// opens afterwards, rolls the unfinished write back, and holds either the
/// whole item or nothing of it; a node started on it serves.
#[tokio::test]
async fn kill_9_during_a_large_store_leaves_it_whole_or_empty() {
    let _heavy = HEAVY.lock().await;
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("large.bin");
    let mut data = vec![0u8; 96 << 20];
    blake3::Hasher::new()
        .update(b"large")
        .finalize_xof()
        .fill(&mut data);
    std::fs::write(&file, &data).unwrap();
    let dir = work.path().join("node");
    // Nowhere to push to: the write into its own store is all it does.
    let nowhere = format!("{}@127.0.0.1:9", "ab".repeat(32));
    let mut cmd = butter();
    cmd.args([
        "share",
        file.to_str().unwrap(),
        "--serve",
        "--listen",
        "127.0.0.50:0",
        "--bootstrap",
        &nowhere,
        "--data-dir",
        dir.to_str().unwrap(),
    ]);
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Killed once the store file exists and grows: mid-write.
    let store = dir.join("store.redb");
    within(30, "the write starts", async {
        while std::fs::metadata(&store).map_or(0, |m| m.len()) < 40 << 20 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    child.start_kill().unwrap();
    let _ = child.wait().await;

    let (opened, recovery) = butter::store::Store::open_reporting(&store, 1 << 40).unwrap();
    let items = opened.items().unwrap();
    println!(
        "after kill -9: {recovery:?}, {} items, {} bytes",
        items.len(),
        opened.used()
    );
    if items.is_empty() {
        assert_eq!(opened.used(), 0, "an unfinished item left bytes behind");
        assert!(
            opened.keys(None, 1).unwrap().is_empty(),
            "blobs left behind"
        );
    } else {
        // Finished before the kill: every blob of it is there.
        let (root, size) = items[0];
        assert_eq!(size, data.len() as u64);
        let mut bytes = 0u64;
        butter::content::tree::walk(
            butter::content::Hash(root),
            |h| {
                opened
                    .get(&h.0)?
                    .map(|b| b.to_vec())
                    .ok_or(butter::Error::NotFound("manifest".into()))
            },
            |_, h, len| {
                assert!(opened.has(&h.0).unwrap());
                bytes += len as u64;
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(bytes, size);
    }
    drop(opened);
    // A node on that store starts and serves.
    let mut node = butter();
    node.args([
        "node",
        "--listen",
        "127.0.0.51:0",
        "--no-discovery",
        "--no-upnp",
        "--data-dir",
    ])
    .arg(&dir);
    let mut node = Running::start(node);
    let addr = node.line("node address").await;
    let mut cmd = butter();
    cmd.args(["ping", &addr]);
    assert!(run(cmd, None).await.ok);
}

/// `butter demo`, the README's main job: a network in one process shares,
/// loses the sharer, and still fetches the file intact.
#[tokio::test]
async fn the_demo_spreads_a_file_and_fetches_it_after_the_sharer_left() {
    let _heavy = HEAVY.lock().await;
    let mut cmd = butter();
    cmd.args(["demo", "--nodes", "6"]);
    let out = run(cmd, None).await;
    assert!(out.ok, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("has left the network"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("identical: true"), "{}", out.stdout);
    // Every node registered with the demo's introducer.
    assert!(
        out.stdout.contains("6 registered with the introducer"),
        "{}",
        out.stdout
    );
}

/// `butter msg`: a message to a listener that runs arrives at once; one to
/// a listener that is down is kept in its mailbox by the network and
/// printed when it starts; both as `FROM_ID TEXT`.
#[tokio::test]
async fn msg_send_reaches_a_listener_online_and_one_that_was_offline() {
    let _heavy = HEAVY.lock().await;
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let dir = |i: usize| dirs[i].path().to_str().unwrap().to_string();
    // Three nodes that hold mailboxes.
    let mut nodes = Vec::new();
    let mut addrs: Vec<String> = Vec::new();
    for i in 0..3 {
        let mut cmd = butter();
        let listen = format!("127.0.6.{}:0", 1 + i);
        cmd.args(["node", "--listen", &listen, "--no-discovery", "--no-upnp"])
            .args(["--data-dir", &dir(i)]);
        if let Some(first) = addrs.first() {
            cmd.args(["--bootstrap", first]);
        }
        let mut node = Running::start(cmd);
        addrs.push(node.line("node address").await);
        nodes.push(node);
    }
    let id_of = |d: String| async move {
        let mut cmd = butter();
        cmd.args(["id", "--data-dir", &d]);
        run(cmd, None).await.stdout.trim().to_string()
    };
    let listener_id = id_of(dir(3)).await;
    let sender_dir = tempfile::tempdir().unwrap();
    let sender_id = id_of(sender_dir.path().to_str().unwrap().to_string()).await;
    let send = |text: &str| {
        let mut cmd = butter();
        cmd.args(["msg", "send", &listener_id, text])
            .args(["--data-dir", sender_dir.path().to_str().unwrap()])
            .args(["--bootstrap", &addrs[1], "--timeout-secs", "20"]);
        cmd
    };
    // Offline: kept in the mailbox.
    let out = run(send("while you were out"), None).await;
    assert!(out.ok, "{}", out.stderr);
    assert!(out.stderr.contains("mailbox"), "{}", out.stderr);
    assert_eq!(
        out.stdout.trim().len(),
        32,
        "the message id: {}",
        out.stdout
    );
    // The listener starts and prints it.
    let mut cmd = butter();
    cmd.args(["msg", "listen", "--listen", "127.0.6.9:0", "--no-discovery"])
        .args(["--data-dir", &dir(3), "--bootstrap", &addrs[0]]);
    let mut listener = Running::start(cmd);
    assert_eq!(
        listener.line("the mailbox's message").await,
        format!("{sender_id} while you were out")
    );
    // Online: delivered directly, with a line break kept on one line.
    let out = run(send("hello\nthere"), None).await;
    assert!(out.ok, "{}", out.stderr);
    assert!(out.stderr.contains("delivered"), "{}", out.stderr);
    assert_eq!(
        listener.line("the direct message").await,
        format!("{sender_id} hello\\nthere")
    );
}

/// Failures a person can act on: one line, naming the fix where it is known.
#[tokio::test]
async fn errors_say_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = butter();
    cmd.args([
        "node",
        "--listen",
        "127.0.6.20:0",
        "--no-discovery",
        "--no-upnp",
    ])
    .args(["--data-dir", dir.path().to_str().unwrap()]);
    let mut node = Running::start(cmd);
    let addr = node.line("node address").await;
    let id = addr.split('@').next().unwrap().to_string();
    let check = |out: Output, hint: &str| {
        assert!(!out.ok);
        assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);
        assert!(out.stderr.contains(hint), "{}", out.stderr);
    };
    // An id alone, with nothing to find it through.
    let mut cmd = butter();
    cmd.args(["ping", &id]);
    check(run(cmd, None).await, "--introducer");
    // bench against a node that does not serve the sink.
    let mut cmd = butter();
    cmd.args(["bench", &addr, "--bytes", "1M"]);
    check(run(cmd, None).await, "--bench");
    // A malformed address list (clap's usage error, with its help hint).
    let mut cmd = butter();
    cmd.args(["ping", &format!("{addr},,")]);
    let out = run(cmd, None).await;
    assert!(
        !out.ok && out.stderr.contains("empty address"),
        "{}",
        out.stderr
    );
    // A taken port.
    let taken = addr.split('@').nth(1).unwrap().split(',').next().unwrap();
    let mut cmd = butter();
    cmd.args(["node", "--listen", taken, "--no-discovery", "--no-upnp"])
        .args([
            "--data-dir",
            tempfile::tempdir().unwrap().path().to_str().unwrap(),
        ]);
    check(run(cmd, None).await, taken);
}

/// An introducer that cannot be reached is one plain warning line (no
/// colour codes in a pipe), not one per retry; `-q` silences it.
#[tokio::test]
async fn an_unreachable_introducer_is_one_plain_warning() {
    let dir = tempfile::tempdir().unwrap();
    let nobody = format!("{}@127.0.6.30:9", butter::Identity::generate().id());
    let start = |quiet: bool| {
        let mut cmd = butter();
        cmd.env_remove("RUST_LOG");
        if quiet {
            cmd.arg("-q");
        }
        cmd.args([
            "node",
            "--listen",
            "127.0.6.31:0",
            "--no-discovery",
            "--no-upnp",
        ])
        .args(["--data-dir", dir.path().to_str().unwrap()])
        .args(["--introducer", &nobody, "--register-ms", "200"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
    };
    let mut child = start(false);
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let first = within(20, "the warning", lines.next_line())
        .await
        .unwrap()
        .expect("a line");
    assert!(first.contains("WARN"), "{first}");
    assert!(
        first.contains("cannot register with the introducer"),
        "{first}"
    );
    assert!(
        !first.contains('\u{1b}'),
        "colour codes in a pipe: {first:?}"
    );
    // Retries every 200 ms or so for 2 s: no second line.
    let more = tokio::time::timeout(std::time::Duration::from_secs(2), lines.next_line()).await;
    assert!(more.is_err(), "another line: {more:?}");
    child.kill().await.unwrap();
    let mut child = start(true);
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let quiet = tokio::time::timeout(std::time::Duration::from_secs(2), lines.next_line()).await;
    assert!(quiet.is_err(), "-q printed: {quiet:?}");
    child.kill().await.unwrap();
}

/// An introducer in this process (its service, for its figures; its node).
async fn introducer(listen: &str) -> (butter::introducer::Introducer, butter::Node) {
    let service = butter::introducer::Introducer::new(Default::default());
    let node = butter::introducer::builder(listen.parse().unwrap())
        .service(service.clone())
        .spawn()
        .await
        .unwrap();
    (service, node)
}

/// One-shot commands reaching a node by id through an introducer do not
/// register there (nobody keeps trying to reach a client that has exited),
/// and `peers` and `stats` take an id with `--introducer` like the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_shot_commands_leave_no_registration_behind() {
    let (service, intro) = introducer("127.0.6.40:0").await;
    let intro_addr = intro.addr().to_string();
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = butter();
    cmd.args([
        "node",
        "--listen",
        "127.0.6.41:0",
        "--no-discovery",
        "--no-upnp",
    ])
    .args(["--data-dir", dir.path().to_str().unwrap()])
    .args(["--introducer", &intro_addr, "--register-ms", "300"]);
    let mut node = Running::start(cmd);
    let addr = node.line("node address").await;
    let id = addr.split('@').next().unwrap().to_string();
    common::eventually(20, "the node registered", || {
        service.stats().registrations == 1
    })
    .await;
    for args in [vec!["ping", &id], vec!["peers", &id], vec!["stats", &id]] {
        let mut cmd = butter();
        cmd.args(&args).args(["--introducer", &intro_addr]);
        let out = run(cmd, None).await;
        assert!(out.ok, "{args:?}: {}", out.stderr);
        assert!(
            out.stdout.contains(&id) || args[0] != "ping",
            "{}",
            out.stdout
        );
    }
    assert_eq!(
        service.stats().registrations,
        1,
        "a one-shot command registered"
    );
    intro.shutdown().await;
}

/// Runs `cmd` with `input` on stdin; (success, stdout bytes, stderr).
async fn run_bytes(mut cmd: Command, input: Vec<u8>) -> (bool, Vec<u8>, String) {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let feed = tokio::spawn(async move {
        let _ = stdin.write_all(&input).await;
    });
    let out = within(120, "command", child.wait_with_output())
        .await
        .unwrap();
    feed.await.unwrap();
    (
        out.status.success(),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `butter node --route NAME=COMMAND` serves a command; `butter call` moves
/// any bytes through it exactly (0 B, 1 B, 64 MiB, to stdout or a file),
/// reports a failing command's error, and `butter routes` lists the routes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_moves_any_bytes_through_a_command_route() {
    let _heavy = HEAVY.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = butter();
    cmd.args([
        "node",
        "--listen",
        "127.0.6.50:0",
        "--no-discovery",
        "--no-upnp",
    ])
    .args(["--data-dir", dir.path().to_str().unwrap()])
    .args(["--route", "cat=cat"])
    .args(["--route", "fail=echo oops >&2; exit 3"])
    .args(["--route", "who=printf %s \"$BUTTER_PEER\""]);
    let mut node = Running::start(cmd);
    let addr = node.line("node address").await;
    let call = |route: &str| {
        let mut cmd = butter();
        cmd.args(["call", &addr, route]);
        cmd
    };
    let mut big = vec![0u8; 64 << 20];
    blake3::Hasher::new()
        .update(b"cli bytes")
        .finalize_xof()
        .fill(&mut big);
    for body in [Vec::new(), vec![0u8], vec![b'\n'], big.clone()] {
        let (ok, out, err) = run_bytes(call("cat"), body.clone()).await;
        assert!(ok, "{err}");
        assert!(
            out == body,
            "{} bytes came back as {}",
            body.len(),
            out.len()
        );
    }
    let file = dir.path().join("reply.bin");
    let mut cmd = call("cat");
    cmd.args(["-o", file.to_str().unwrap()]);
    let (ok, out, err) = run_bytes(cmd, big.clone()).await;
    assert!(ok && out.is_empty(), "{err}");
    assert!(std::fs::read(&file).unwrap() == big);
    // A failing command: an error naming it, with its stderr.
    let (ok, _, err) = run_bytes(call("fail"), b"x".to_vec()).await;
    assert!(!ok);
    assert!(err.contains("oops") && err.contains('3'), "{err}");
    // The caller's id reaches the command.
    let data = tempfile::tempdir().unwrap();
    let mut cmd = call("who");
    cmd.args(["--data-dir", data.path().to_str().unwrap()]);
    let (ok, out, err) = run_bytes(cmd, Vec::new()).await;
    assert!(ok, "{err}");
    let mut id = butter();
    id.args(["id", "--data-dir", data.path().to_str().unwrap()]);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        run(id, None).await.stdout.trim()
    );
    // The routes, one per line.
    let mut cmd = butter();
    cmd.args(["routes", &addr]);
    let out = run(cmd, None).await;
    assert!(out.ok, "{}", out.stderr);
    let routes: Vec<&str> = out.stdout.lines().collect();
    for r in ["cat", "fail", "who", "butter/ping", "butter/routes"] {
        assert!(routes.contains(&r), "{r} missing: {routes:?}");
    }
}

/// `butter pipe`: 256 MiB each way at once between `listen` and `connect`,
/// byte-identical, and both processes end on their own.
/// Starts `cmd` with its stderr piped and waits for the first line it
/// writes there (`what`: e.g. the address a listener took). The rest of
/// stderr stays readable (and open) in the returned lines.
async fn spawn_until_first_line(
    mut cmd: Command,
    what: &str,
) -> (Child, Lines<BufReader<tokio::process::ChildStderr>>, String) {
    let mut child = cmd.stderr(Stdio::piped()).spawn().unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap()).lines();
    let line = within(20, what, err.next_line())
        .await
        .unwrap()
        .expect("a line");
    (child, err, line)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipe_moves_256_mib_each_way() {
    let _heavy = HEAVY.lock().await;
    let data = |seed: &[u8]| {
        let mut v = vec![0u8; 256 << 20];
        blake3::Hasher::new()
            .update(seed)
            .finalize_xof()
            .fill(&mut v);
        v
    };
    let (to_connect, to_listen) = (data(b"listener's"), data(b"connector's"));
    let mut listen = butter();
    listen
        .args(["pipe", "listen", "--listen", "127.0.6.60:0"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let (mut listener, _err, addr) = spawn_until_first_line(listen, "the address").await;
    let mut stdin = listener.stdin.take().unwrap();
    let feed = to_connect.clone();
    let feeding = tokio::spawn(async move {
        stdin.write_all(&feed).await.unwrap();
    });
    let mut out = listener.stdout.take().unwrap();
    let reading = tokio::spawn(async move {
        let mut got = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut out, &mut got)
            .await
            .unwrap();
        got
    });
    let mut connect = butter();
    connect.args(["pipe", "connect", &addr]);
    let (ok, got_by_connect, errs) = run_bytes(connect, to_listen.clone()).await;
    assert!(ok, "{errs}");
    assert!(
        got_by_connect == to_connect,
        "{} bytes",
        got_by_connect.len()
    );
    let got_by_listen = within(60, "the listener's stdout", reading).await.unwrap();
    assert!(got_by_listen == to_listen, "{} bytes", got_by_listen.len());
    feeding.await.unwrap();
    let status = within(20, "the listener exits", listener.wait())
        .await
        .unwrap();
    assert!(status.success());
}

/// `butter pipe --tcp` / `--tcp-connect`: an HTTP request and its answer
/// through a tunnelled TCP port (python3's http.server behind the listener).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipe_forwards_tcp_for_an_http_server() {
    let site = tempfile::tempdir().unwrap();
    std::fs::write(site.path().join("hello.txt"), "served through butter\n").unwrap();
    let web_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut web = Command::new("python3");
    web.args([
        "-m",
        "http.server",
        &web_port.to_string(),
        "--bind",
        "127.0.0.1",
    ])
    .current_dir(site.path())
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .kill_on_drop(true);
    let _web = web.spawn().expect("python3");
    let mut listen = butter();
    listen
        .args(["pipe", "listen", "--listen", "127.0.6.61:0"])
        .args(["--tcp-connect", &format!("127.0.0.1:{web_port}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    let (mut listener, _err, addr) = spawn_until_first_line(listen, "the address").await;
    let local_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let local = format!("127.0.0.1:{local_port}");
    let mut connect = butter();
    connect
        .args(["pipe", "connect", &addr, "--tcp", &local])
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    let (mut connector, _err2, said) = spawn_until_first_line(connect, "forwarding").await;
    assert!(said.contains("forwarding"), "{said}");
    // The web server may take a moment to start: a few tries.
    let mut answer = String::new();
    for _ in 0..50 {
        if let Ok(mut s) = tokio::net::TcpStream::connect(&local).await {
            s.write_all(b"GET /hello.txt HTTP/1.0\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            let mut buf = Vec::new();
            let _ = within(
                20,
                "the answer",
                tokio::io::AsyncReadExt::read_to_end(&mut s, &mut buf),
            )
            .await;
            answer = String::from_utf8_lossy(&buf).into_owned();
            if answer.contains("200") {
                break;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");
    assert!(answer.ends_with("served through butter\n"), "{answer}");
    connector.kill().await.unwrap();
    listener.kill().await.unwrap();
}

/// A chat process: its stdout (lines) and stderr (joins and leaves).
struct Chatter {
    child: tokio::process::Child,
    out: Lines<BufReader<ChildStdout>>,
    err: Lines<BufReader<tokio::process::ChildStderr>>,
    /// Stderr lines read but not asked for yet (joins come in any order).
    seen: Vec<String>,
}

impl Chatter {
    fn start(args: &[&str]) -> Self {
        let mut cmd = example("chat");
        cmd.args(args)
            .env("RUST_LOG", "error")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let out = BufReader::new(child.stdout.take().unwrap()).lines();
        let err = BufReader::new(child.stderr.take().unwrap()).lines();
        Chatter {
            child,
            out,
            err,
            seen: Vec::new(),
        }
    }

    async fn out_line(&mut self, what: &str) -> String {
        within(20, what, self.out.next_line())
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{what}: stdout closed"))
    }

    /// Waits for a stderr line containing `text` (or finds one read
    /// already).
    async fn said(&mut self, secs: u64, text: &str) {
        if let Some(i) = self.seen.iter().position(|l| l.contains(text)) {
            self.seen.remove(i);
            return;
        }
        within(secs, text, async {
            loop {
                let line = self.err.next_line().await.unwrap().expect("stderr open");
                if line.contains(text) {
                    return;
                }
                self.seen.push(line);
            }
        })
        .await
    }

    async fn type_line(&mut self, text: &str) {
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin
            .write_all(format!("{text}\n").as_bytes())
            .await
            .unwrap();
        stdin.flush().await.unwrap();
    }

    /// Closes stdin: the chatter says goodbye and exits.
    async fn leave(mut self) {
        drop(self.child.stdin.take());
        let status = within(10, "chat exits", self.child.wait()).await.unwrap();
        assert!(status.success());
    }
}

/// The chat example with two, then three participants as processes:
/// labelled lines reach everyone, a newcomer learns the room through the
/// one it joined, a leaving peer is announced within a second, and a new
/// peer is welcome after one left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_rooms_of_two_and_three() {
    let mut ann = Chatter::start(&["--name", "ann"]);
    let room = ann.out_line("ann's address").await;
    let mut bob = Chatter::start(&["--name", "bob", &room]);
    let bob_addr = bob.out_line("bob's address").await;
    ann.said(20, "bob joined").await;
    bob.said(20, "ann joined").await;
    bob.type_line("hi from bob").await;
    assert_eq!(ann.out_line("ann hears bob").await, "bob: hi from bob");
    ann.type_line("hi from ann").await;
    assert_eq!(bob.out_line("bob hears ann").await, "ann: hi from ann");

    // Cy joins through bob and meets ann too.
    let mut cy = Chatter::start(&["--name", "cy", &bob_addr]);
    let _ = cy.out_line("cy's address").await;
    ann.said(20, "cy joined").await;
    cy.said(20, "ann joined").await;
    cy.said(20, "bob joined").await;
    cy.type_line("hello all").await;
    assert_eq!(ann.out_line("ann hears cy").await, "cy: hello all");
    assert_eq!(bob.out_line("bob hears cy").await, "cy: hello all");

    // Bob leaves: announced to both within a second.
    let left = std::time::Instant::now();
    bob.leave().await;
    ann.said(1, "bob left").await;
    cy.said(1, "bob left").await;
    assert!(left.elapsed() < std::time::Duration::from_secs(3));

    // A newcomer after someone left is welcome.
    let mut dee = Chatter::start(&["--name", "dee", &room]);
    let _ = dee.out_line("dee's address").await;
    ann.said(20, "dee joined").await;
    dee.said(20, "ann joined").await;
    dee.said(20, "cy joined").await;
    dee.type_line("am I late?").await;
    assert_eq!(ann.out_line("ann hears dee").await, "dee: am I late?");
    assert_eq!(cy.out_line("cy hears dee").await, "dee: am I late?");
    for c in [ann, cy, dee] {
        c.leave().await;
    }
}

/// The chat example reaches a peer by id alone through an introducer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_by_id_through_an_introducer() {
    let (service, intro) = introducer("127.0.6.70:0").await;
    let intro_addr = intro.addr().to_string();
    let mut ann = Chatter::start(&["--name", "ann", "--introducer", &intro_addr]);
    let room = ann.out_line("ann's address").await;
    let id = room.split('@').next().unwrap().to_string();
    // Registered before bob asks for it.
    common::eventually(20, "ann registered", || service.stats().registrations == 1).await;
    let mut bob = Chatter::start(&["--name", "bob", &id, "--introducer", &intro_addr]);
    let _ = bob.out_line("bob's address").await;
    ann.said(20, "bob joined").await;
    bob.said(20, "ann joined").await;
    bob.type_line("found you by id").await;
    assert_eq!(ann.out_line("ann hears bob").await, "bob: found you by id");
    for c in [ann, bob] {
        c.leave().await;
    }
    intro.shutdown().await;
}

/// One-shot commands reach a node that listens on IPv6 only.
#[tokio::test]
async fn one_shot_commands_reach_an_ipv6_node() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = butter();
    cmd.args(["node", "--listen", "[::1]:0", "--no-discovery", "--no-upnp"])
        .args(["--data-dir", dir.path().to_str().unwrap()])
        .args(["--route", "echo=cat"]);
    let mut node = Running::start(cmd);
    let addr = node.line("node address").await;
    assert!(addr.contains("[::1]:"), "{addr}");
    let mut cmd = butter();
    cmd.args(["ping", &addr]);
    let out = run(cmd, None).await;
    assert!(
        out.ok && out.stdout.contains("via direct [::1]"),
        "{}{}",
        out.stdout,
        out.stderr
    );
    let mut cmd = butter();
    cmd.args(["call", &addr, "echo", "over ipv6"]);
    let out = run(cmd, None).await;
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(out.stdout, "over ipv6");
}
