//! The project's multi-host test harness: hosts in Linux network namespaces on a
//! LAN bridge (the bridge lives in a "switch" namespace of its own: a bridge in the
//! root namespace drops traffic on Docker hosts, see shared/notes/netlab.md), real
//! `butter` processes inside them, and cleanup of everything on drop, also when a
//! test fails.
//!
//! Needs root. When it cannot run it says why; with `BUTTER_NETLAB_REQUIRED=1`
//! (set by CI) that is a failure instead of a skip.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Child;
use tokio::sync::mpsc;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Why the lab cannot run here, if it cannot.
fn cannot_run() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2))
        .unwrap_or("?");
    if euid != "0" {
        return Some(format!(
            "network-namespace tests need root (creating namespaces, veths and bridges); effective uid is {euid}"
        ));
    }
    match Command::new("ip").arg("-V").output() {
        Ok(o) if o.status.success() => None,
        _ => Some("the `ip` command (Debian package iproute2) is missing".into()),
    }
}

/// Says why `test` cannot run: a failure under `BUTTER_NETLAB_REQUIRED=1`,
/// a skip otherwise.
fn cannot_run_because(test: &str, reason: &str) {
    if std::env::var("BUTTER_NETLAB_REQUIRED").is_ok_and(|v| v == "1") {
        panic!("{test}: cannot run although BUTTER_NETLAB_REQUIRED=1: {reason}");
    }
    eprintln!("SKIPPED {test}: {reason} (set BUTTER_NETLAB_REQUIRED=1 to make this a failure)");
}

/// Keeps a test's figures in `target/tmp/figures/<name>.md`, where CI shows
/// them after the run (the test harness captures what passing tests print).
pub fn keep_figures(name: &str, text: &str) {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("figures");
    let written = std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::write(dir.join(format!("{name}.md")), text));
    if let Err(e) = written {
        eprintln!(
            "cannot keep the figures of {name} in {}: {e}",
            dir.display()
        );
    }
}

/// Returns a lab, or None (after saying why) when it cannot run here.
pub fn lab(test: &str) -> Option<Lab> {
    if let Some(reason) = cannot_run() {
        cannot_run_because(test, &reason);
        return None;
    }
    let tag = format!(
        "bt{}x{}",
        std::process::id() % 100_000,
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    Some(Lab {
        tag,
        namespaces: Vec::new(),
        dir: tempfile::tempdir().expect("temp dir"),
    })
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A set of namespaces, deleted (with their interfaces) on drop.
pub struct Lab {
    tag: String,
    namespaces: Vec<String>,
    dir: tempfile::TempDir,
}

/// One host of a lab.
#[derive(Debug, Clone)]
pub struct Host {
    pub ns: String,
    pub ip: Ipv4Addr,
}

impl Lab {
    fn add_ns(&mut self, name: String) -> String {
        ip(&["netns", "add", &name]);
        self.namespaces.push(name.clone());
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        name
    }

    /// `n` hosts on one LAN bridge, 10.77.0.1/24 upwards, with multicast routed
    /// out of their LAN interface.
    pub fn lan(&mut self, n: usize) -> Vec<Host> {
        let sw = self.switch("sw");
        (0..n).map(|i| self.add_host(&sw, i)).collect()
    }

    fn add_host(&mut self, sw: &str, i: usize) -> Host {
        let ns = self.add_ns(format!("{}h{i}", self.tag));
        let port = format!("p{}", i);
        ip(&[
            "-n", sw, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ]);
        ip(&["-n", sw, "link", "set", &port, "master", "sw0"]);
        ip(&["-n", sw, "link", "set", &port, "up"]);
        let addr = Ipv4Addr::new(10, 77, 0, i as u8 + 1);
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        ip(&["-n", &ns, "route", "add", "224.0.0.0/4", "dev", "eth0"]);
        Host { ns, ip: addr }
    }

    /// A switch namespace with a bridge, for one network segment.
    fn switch(&mut self, name: &str) -> String {
        let sw = self.add_ns(format!("{}{name}", self.tag));
        ip(&["-n", &sw, "link", "add", "name", "sw0", "type", "bridge"]);
        // Without a multicast querier, snooping could drop group traffic.
        ip(&[
            "-n",
            &sw,
            "link",
            "set",
            "sw0",
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ]);
        ip(&["-n", &sw, "link", "set", "sw0", "up"]);
        sw
    }

    /// Plugs namespace `ns` into switch `sw` as interface `ifname` with `cidr`.
    fn plug(&mut self, sw: &str, port: &str, ns: &str, ifname: &str, cidr: &str) {
        ip(&[
            "-n", sw, "link", "add", port, "type", "veth", "peer", "name", ifname, "netns", ns,
        ]);
        ip(&["-n", sw, "link", "set", port, "master", "sw0"]);
        ip(&["-n", sw, "link", "set", port, "up"]);
        ip(&["-n", ns, "addr", "add", cidr, "dev", ifname]);
        ip(&["-n", ns, "link", "set", ifname, "up"]);
    }

    /// The NAT topology: a "public" segment 198.51.100.0/24 with one host
    /// (198.51.100.1, for the introducer), and per entry of `nats` a router
    /// (WAN 198.51.100.1x) in front of LAN i (10.i.0.0/24, router .1) with
    /// `hosts_per_lan` hosts (.2 upwards, default route via the router).
    pub fn nat_world(&mut self, nats: &[Nat], hosts_per_lan: usize) -> World {
        let public = self.switch("pub");
        let ns = self.add_ns(format!("{}pubh", self.tag));
        self.plug(&public, "pubh", &ns, "eth0", "198.51.100.1/24");
        let public_host = Host {
            ns,
            ip: Ipv4Addr::new(198, 51, 100, 1),
        };
        let mut lans = Vec::new();
        let mut routers = Vec::new();
        for (i, nat) in nats.iter().enumerate() {
            let n = i as u8 + 1;
            if *nat == Nat::None {
                // Hosts on the public segment itself: 198.51.100.1n0 upwards.
                let mut hosts = Vec::new();
                for j in 0..hosts_per_lan {
                    let h = self.add_ns(format!("{}l{n}h{j}", self.tag));
                    let addr = Ipv4Addr::new(198, 51, 100, 100 + 10 * n + j as u8);
                    self.plug(
                        &public,
                        &format!("n{n}{j}"),
                        &h,
                        "eth0",
                        &format!("{addr}/24"),
                    );
                    hosts.push(Host { ns: h, ip: addr });
                }
                lans.push(hosts);
                routers.push(None);
                continue;
            }
            let lan = self.switch(&format!("l{n}"));
            let r = self.add_ns(format!("{}r{n}", self.tag));
            let wan_ip = Ipv4Addr::new(198, 51, 100, 10 + n);
            self.plug(
                &public,
                &format!("w{n}"),
                &r,
                "rwan",
                &format!("{wan_ip}/24"),
            );
            self.plug(&lan, "gw", &r, "rlan", &format!("10.{n}.0.1/24"));
            let out = self.exec_ns(&r, "sysctl", &["-qw", "net.ipv4.ip_forward=1"]);
            assert!(
                out.status.success(),
                "ip_forward: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            self.load_nft(&r, &nat.ruleset(n));
            routers.push(Some(Host { ns: r, ip: wan_ip }));
            let mut hosts = Vec::new();
            for j in 0..hosts_per_lan {
                let h = self.add_ns(format!("{}l{n}h{j}", self.tag));
                let addr = Ipv4Addr::new(10, n, 0, 2 + j as u8);
                self.plug(&lan, &format!("p{j}"), &h, "eth0", &format!("{addr}/24"));
                ip(&[
                    "-n",
                    &h,
                    "route",
                    "add",
                    "default",
                    "via",
                    &format!("10.{n}.0.1"),
                ]);
                hosts.push(Host { ns: h, ip: addr });
            }
            lans.push(hosts);
        }
        World {
            public: public_host,
            routers,
            lans,
        }
    }

    fn load_nft(&self, ns: &str, ruleset: &str) {
        use std::io::Write;
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run nft (Debian package nftables)");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(ruleset.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "nft: {}\n{ruleset}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn exec_ns(&self, ns: &str, program: &str, args: &[&str]) -> std::process::Output {
        Command::new("ip")
            .args(["netns", "exec", ns, program])
            .args(args)
            .output()
            .expect("run in namespace")
    }

    /// A per-host data dir.
    pub fn data_dir(&self, host: &Host) -> PathBuf {
        self.dir.path().join(&host.ns)
    }

    /// Starts `butter node` on a host (port 7400 unless `extra` says
    /// `--listen`) with events on stdout; returns once it printed its address.
    pub async fn node(&self, host: &Host, extra: &[&str]) -> NodeProc {
        let data_dir = self.data_dir(host);
        let mut args: Vec<String> = ["node", "--events", "--data-dir"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.push(data_dir.display().to_string());
        if !extra.contains(&"--listen") {
            args.extend(["--listen".into(), "0.0.0.0:7400".into()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        self.spawn(host, env!("CARGO_BIN_EXE_butter"), &args).await
    }

    /// Starts `butter-introducer` on a host (port 7401, its data dir kept across
    /// restarts); returns once it printed its address.
    pub async fn introducer(&self, host: &Host, extra: &[&str]) -> NodeProc {
        let bin = PathBuf::from(env!("CARGO_BIN_EXE_butter")).with_file_name("butter-introducer");
        assert!(
            bin.exists(),
            "{} is missing: build it first (`cargo test --workspace` does, or `cargo build -p butter-introducer`)",
            bin.display()
        );
        let mut args: Vec<String> = vec![
            "--listen".into(),
            format!("{}:7401", host.ip),
            "--data-dir".into(),
            self.data_dir(host).display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        self.spawn(host, bin.to_str().unwrap(), &args).await
    }

    /// Starts `butter msg listen` on a host (its data dir, port 7400); its
    /// stdout lines are the messages (`addr` and `id` stay empty: it prints
    /// its address on stderr).
    pub async fn listener(&self, host: &Host, extra: &[&str]) -> NodeProc {
        let mut args: Vec<String> = ["msg", "listen", "--listen", "0.0.0.0:7400", "--data-dir"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.push(self.data_dir(host).display().to_string());
        args.extend(extra.iter().map(|s| s.to_string()));
        self.spawn_with(host, env!("CARGO_BIN_EXE_butter"), &args, false)
            .await
    }

    async fn spawn(&self, host: &Host, program: &str, args: &[String]) -> NodeProc {
        self.spawn_with(host, program, args, true).await
    }

    async fn spawn_with(
        &self,
        host: &Host,
        program: &str,
        args: &[String],
        prints_addr: bool,
    ) -> NodeProc {
        let mut cmd = tokio::process::Command::new("ip");
        cmd.args(["netns", "exec", &host.ns, program])
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("NETLAB_NODE_LOG").unwrap_or("warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let started = Instant::now();
        let mut child = cmd.spawn().expect("start process in namespace");
        let stdout = child.stdout.take().unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if tx.send((Instant::now(), line)).is_err() {
                    break;
                }
            }
        });
        let addr = if prints_addr {
            tokio::time::timeout(Duration::from_secs(20), rx.recv())
                .await
                .expect("process prints its address in time")
                .expect("process printed its address")
                .1
        } else {
            String::new()
        };
        let id = addr.split('@').next().unwrap().to_string();
        NodeProc {
            host: host.clone(),
            child: Some(child),
            lines: rx,
            addr,
            id,
            known: BTreeSet::new(),
            started,
            first_host_after: None,
        }
    }

    /// Runs a `butter` subcommand inside a host's namespace.
    pub async fn butter(&self, host: &Host, args: &[&str]) -> (bool, String, String) {
        let out = tokio::time::timeout(
            Duration::from_secs(30),
            tokio::process::Command::new("ip")
                .args(["netns", "exec", &host.ns, env!("CARGO_BIN_EXE_butter")])
                .args(args)
                .env(
                    "RUST_LOG",
                    std::env::var("NETLAB_CLI_LOG").unwrap_or("error".into()),
                )
                .kill_on_drop(true)
                .output(),
        )
        .await
        .expect("butter command in time")
        .expect("run butter");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `butter bench ID --bytes N --introducer I` from `from`: streams N bytes
    /// to the node's `bench/sink` (reached by NodeId alone) and checks they
    /// arrived intact; returns the output line (throughput and path).
    pub async fn bench(&self, from: &Host, id: &str, bytes: &str, intro: &str) -> String {
        let (ok, out, err) = self
            .butter(
                from,
                &["bench", id, "--bytes", bytes, "--introducer", intro],
            )
            .await;
        assert!(ok, "bench {id} from {}: {err}", from.ns);
        assert!(out.contains("hash ok"), "{out}");
        out.trim().to_string()
    }

    /// A node's counters, fetched with `butter stats` from `from`.
    pub async fn stats(
        &self,
        from: &Host,
        node: &NodeProc,
    ) -> std::collections::HashMap<String, u64> {
        let (ok, out, err) = self.butter(from, &["stats", &node.addr]).await;
        assert!(ok, "butter stats {}: {err}", node.addr);
        out.lines()
            .filter_map(|l| {
                let (k, v) = l.split_once(' ')?;
                Some((k.to_string(), v.parse().ok()?))
            })
            .collect()
    }

    /// The ids in a node's table, fetched with `butter peers` from `from`.
    pub async fn peers(&self, from: &Host, node: &NodeProc) -> BTreeSet<String> {
        let (ok, out, err) = self.butter(from, &["peers", &node.addr]).await;
        assert!(ok, "butter peers {}: {err}", node.addr);
        out.lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .collect()
    }

    /// Runs a program inside a host's namespace and waits for it.
    pub fn exec(&self, host: &Host, program: &str, args: &[&str]) -> std::process::Output {
        Command::new("ip")
            .args(["netns", "exec", &host.ns, program])
            .args(args)
            .output()
            .expect("run in namespace")
    }
}

/// How a router of [`Lab::nat_world`] translates (see shared/notes/netlab.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nat {
    /// No router: the host sits on the public segment itself.
    None,
    /// `masquerade`, and every UDP port of the WAN address forwarded (DNAT) to
    /// the LAN's first host: endpoint-independent filtering, "open".
    Open,
    /// `masquerade` (endpoint-independent mapping, source port kept) and the
    /// input filter every home router has: the cone-like "moderate" NAT.
    Cone,
    /// Cone, plus WAN-side filtering of forwarded traffic: only established or
    /// related packets come in.
    Filtered,
    /// `masquerade random`: a new port per destination (symmetric, "strict").
    Symmetric,
    /// Filtered, plus the chains miniupnpd's nftables backend manages: inbound
    /// traffic gets in only through a mapping the gateway made
    /// ([`Lab::miniupnpd`] runs the gateway).
    Upnp,
}

impl Nat {
    /// The router's ruleset in front of LAN `lan` (10.lan.0.0/24).
    fn ruleset(self, lan: u8) -> String {
        let dnat = if self == Nat::Open {
            format!(
                "chain prerouting {{ type nat hook prerouting priority -100; policy accept;\n  iifname \"rwan\" udp dport 1024-65535 dnat ip to 10.{lan}.0.2\n }}\n"
            )
        } else {
            String::new()
        };
        let masq = if self == Nat::Symmetric {
            "masquerade random"
        } else {
            "masquerade"
        };
        let forward = match self {
            Nat::Filtered => "chain forward { type filter hook forward priority 0; policy drop;\n ct state established,related accept\n iifname \"rlan\" accept\n }",
            // The layout of miniupnpd's netfilter_nft/scripts/nft_init.sh, in the
            // table its config names (upnp_table_name = upnp_nat_table_name = filter).
            Nat::Upnp => "chain forward { type filter hook forward priority 0; policy drop;\n ct state established,related accept\n iifname \"rlan\" accept\n jump miniupnpd\n }\n\
                chain miniupnpd { }\n\
                chain prerouting { type nat hook prerouting priority -100; policy accept;\n jump prerouting_miniupnpd\n }\n\
                chain postrouting { type nat hook postrouting priority 100; policy accept;\n jump postrouting_miniupnpd\n }\n\
                chain prerouting_miniupnpd { }\n\
                chain postrouting_miniupnpd { }",
            _ => "",
        };
        format!(
            "table inet nat {{\n {dnat} chain postrouting {{ type nat hook postrouting priority 100; policy accept;\n  oifname \"rwan\" {masq}\n }}\n}}\n\
             table inet filter {{\n chain input {{ type filter hook input priority 0; policy drop;\n  ct state established,related accept\n  iif lo accept\n  iifname \"rlan\" accept\n }}\n {forward}\n}}\n"
        )
    }
}

/// A tokio runtime whose threads live in a host's network namespace: library
/// nodes built on it bind their sockets there, so a test can drive the
/// `Node` API (connection info, calls in flight) across the lab's NATs.
/// Threads inherit the namespace of the thread that creates them, and the
/// runtime's threads are created by one that joined the host's namespace.
pub struct NsRuntime {
    rt: Option<tokio::runtime::Runtime>,
}

impl NsRuntime {
    pub fn new(host: &Host) -> NsRuntime {
        let path = format!("/var/run/netns/{}", host.ns);
        let rt = std::thread::spawn(move || {
            use std::os::fd::AsRawFd;
            let ns = std::fs::File::open(&path).expect("open the namespace");
            // SAFETY: a plain syscall on a valid descriptor; it only changes
            // this thread's network namespace.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime")
        })
        .join()
        .expect("namespace thread");
        NsRuntime { rt: Some(rt) }
    }

    /// Runs `f` on the namespace's runtime and waits for it.
    pub async fn run<F>(&self, f: F) -> F::Output
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.rt
            .as_ref()
            .expect("runtime")
            .spawn(f)
            .await
            .expect("task in namespace")
    }

    /// Starts `f` on the namespace's runtime.
    pub fn spawn<F>(&self, f: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.rt.as_ref().expect("runtime").spawn(f)
    }
}

impl Drop for NsRuntime {
    fn drop(&mut self) {
        // Dropped from inside the test's own runtime: must not block.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl Lab {
    /// Replaces a router's translation (its whole ruleset) and, with
    /// `flush`, forgets its connection tracking, as a router reconfigured or
    /// rebooted would.
    pub fn set_nat(&self, router: &Host, nat: Nat, flush: bool) {
        let out = self.exec_ns(&router.ns, "nft", &["flush", "ruleset"]);
        assert!(
            out.status.success(),
            "nft flush: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let lan = router.ip.octets()[3] - 10;
        self.load_nft(&router.ns, &nat.ruleset(lan));
        if flush {
            let out = self.exec_ns(&router.ns, "conntrack", &["-F"]);
            assert!(
                out.status.success(),
                "conntrack -F (Debian package conntrack): {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// Which miniupnpd plays a router's UPnP gateway (both fetched into
/// target/tools by `.ci/miniupnpd.sh`; see shared/notes/netlab.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Miniupnpd {
    /// 2.3.9, built from Debian trixie's source: maps ports even with a
    /// reserved WAN address (`ext_allow_private_ipv4` + `ext_ip`).
    Maps,
    /// Debian bookworm's 2.3.1: refuses to map while its WAN address is
    /// reserved (UPnP error 501).
    Refuses,
}

impl Miniupnpd {
    fn binary(self) -> PathBuf {
        let dir = std::env::var_os("BUTTER_TOOLS_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/tools"));
        let version = match self {
            Miniupnpd::Maps => "2.3.9",
            Miniupnpd::Refuses => "2.3.1",
        };
        dir.join(format!("miniupnpd-{version}/miniupnpd"))
    }
}

/// A running miniupnpd; killed on drop.
pub struct Gateway {
    child: Child,
    /// Its log so far (stderr), for failure messages.
    pub log: std::sync::Arc<std::sync::Mutex<String>>,
    /// Where its SSDP service answers (the router's LAN address, port 1900).
    pub ssdp: String,
}

impl Lab {
    /// Starts miniupnpd on router `n` (1-based) of a [`Lab::nat_world`] whose
    /// router is [`Nat::Upnp`]; returns once it serves. None (after saying why)
    /// when the binary is missing.
    pub async fn miniupnpd(
        &self,
        test: &str,
        world: &World,
        n: u8,
        which: Miniupnpd,
    ) -> Option<Gateway> {
        let bin = which.binary();
        if !bin.exists() {
            cannot_run_because(
                test,
                &format!(
                    "{} is missing: run `bash .ci/miniupnpd.sh` (as root) to fetch and build it",
                    bin.display()
                ),
            );
            return None;
        }
        let router = world.router(usize::from(n) - 1);
        let dir = self.dir.path().join(format!("{}-upnp", router.ns));
        std::fs::create_dir_all(&dir).unwrap();
        let mut conf = format!(
            "ext_ifname=rwan\nlistening_ip=rlan\nhttp_port=5000\nenable_natpmp=yes\n\
             secure_mode=yes\nupnp_table_name=filter\nupnp_nat_table_name=filter\n\
             uuid=3d3cec3a-8cf0-11e0-98ee-00{:010x}\nlease_file={}\n\
             allow 1024-65535 10.{n}.0.0/24 1024-65535\ndeny 0-65535 0.0.0.0/0 0-65535\n",
            u64::from(std::process::id()) << 8 | u64::from(n),
            dir.join("leases").display(),
        );
        if which == Miniupnpd::Maps {
            // Both needed for 2.3.9 to map on a reserved WAN address (notes).
            conf.push_str(&format!(
                "ext_allow_private_ipv4=yes\next_ip={}\n",
                router.ip
            ));
        }
        let conf_path = dir.join("miniupnpd.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let mut child = tokio::process::Command::new("ip")
            .args(["netns", "exec", &router.ns])
            .arg(&bin)
            .args(["-d", "-f"])
            .arg(&conf_path)
            .arg("-P")
            .arg(dir.join("pid"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start miniupnpd");
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (ready_tx, ready) = tokio::sync::oneshot::channel();
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        tokio::spawn(async move {
            let mut ready_tx = Some(ready_tx);
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("HTTP listening on port") {
                    if let Some(tx) = ready_tx.take() {
                        let _ = tx.send(());
                    }
                }
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let started = tokio::time::timeout(Duration::from_secs(10), ready).await;
        assert!(
            matches!(started, Ok(Ok(()))),
            "miniupnpd did not start:\n{}",
            log.lock().unwrap()
        );
        Some(Gateway {
            child,
            log,
            ssdp: format!("10.{n}.0.1:1900"),
        })
    }

    /// The rules of a router's nftables chain, as `nft` lists them.
    pub fn nft_chain(&self, router: &Host, table: &str, chain: &str) -> String {
        let out = self.exec_ns(&router.ns, "nft", &["list", "chain", "inet", table, chain]);
        assert!(
            out.status.success(),
            "nft list: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl World {
    /// Router `i` (0-based); panics for a [`Nat::None`] side.
    pub fn router(&self, i: usize) -> &Host {
        self.routers[i].as_ref().expect("this side has a router")
    }
}

/// The namespaces of [`Lab::nat_world`].
pub struct World {
    /// The host on the public segment (198.51.100.1).
    pub public: Host,
    /// The routers, WAN address as `ip` (None for [`Nat::None`]).
    pub routers: Vec<Option<Host>>,
    /// The hosts of each LAN.
    pub lans: Vec<Vec<Host>>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Deleting a namespace deletes its veths (and their peers) and bridge.
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// A running `butter node` and the known-host changes it printed.
pub struct NodeProc {
    pub host: Host,
    child: Option<Child>,
    lines: mpsc::UnboundedReceiver<(Instant, String)>,
    pub addr: String,
    pub id: String,
    /// Known hosts, as followed from the events.
    pub known: BTreeSet<String>,
    pub started: Instant,
    pub first_host_after: Option<Duration>,
}

impl NodeProc {
    fn apply(&mut self, at: Instant, line: &str) {
        let mut parts = line.splitn(3, ' ');
        match (parts.next(), parts.next()) {
            (Some("+"), Some(id)) => {
                self.first_host_after.get_or_insert(at - self.started);
                self.known.insert(id.to_string());
            }
            (Some("-"), Some(id)) => {
                self.known.remove(id);
            }
            _ => {}
        }
    }

    /// Waits (bounded) until the known hosts satisfy `cond`, following events.
    pub async fn wait_until(
        &mut self,
        secs: u64,
        what: &str,
        cond: impl Fn(&BTreeSet<String>) -> bool,
    ) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        while !cond(&self.known) {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some((at, line))) => self.apply(at, &line),
                Ok(None) => panic!("{}: node exited while waiting for {what}", self.host.ns),
                Err(_) => panic!(
                    "{}: timed out after {secs}s waiting for {what}; knows {:?}",
                    self.host.ns, self.known
                ),
            }
        }
    }

    /// Applies the events printed so far without waiting.
    pub fn drain(&mut self) {
        while let Ok((at, line)) = self.lines.try_recv() {
            self.apply(at, &line);
        }
    }

    /// Waits (bounded) for a stdout line matching `pred`, applying events on
    /// the way; returns the line.
    pub async fn wait_line(
        &mut self,
        secs: u64,
        what: &str,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some((at, line))) => {
                    self.apply(at, &line);
                    if pred(&line) {
                        return line;
                    }
                }
                Ok(None) => panic!("{}: node exited while waiting for {what}", self.host.ns),
                Err(_) => panic!(
                    "{}: timed out after {secs}s waiting for {what}",
                    self.host.ns
                ),
            }
        }
    }

    /// Stops the node as an operator would (SIGTERM) and waits (bounded) for
    /// it to exit; returns what it printed meanwhile.
    pub async fn stop(&mut self) -> Vec<String> {
        let mut child = self.child.take().expect("node still running");
        let pid = child.id().expect("pid").to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        assert!(sent.success(), "kill -TERM {pid}");
        let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .expect("node exits within 10 s of SIGTERM")
            .expect("wait");
        assert!(status.success(), "{}: exit status {status}", self.host.ns);
        let mut out = Vec::new();
        while let Some((_, line)) = self.lines.recv().await {
            out.push(line);
        }
        out
    }

    /// Kills the node process (SIGKILL: no goodbye to anyone).
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }
}
