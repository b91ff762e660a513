//! The container network: `tests/compose.sh` builds the `FROM scratch`
//! images (static binaries), brings `docker-compose.yml` up (an introducer,
//! three peers on each of two LANs), shares a file on LAN 1, fetches it on
//! LAN 2 (again with the sharer stopped), restarts the stopped peer (same
//! identity, same stored bytes) and removes everything it created.
//!
//! Needs Docker with `docker-compose` or `docker compose`; skipped without
//! them unless `BUTTER_NETLAB_REQUIRED=1` (CI), where a missing Docker fails.

use std::process::Command;

fn docker_available() -> bool {
    let ok = |cmd: &mut Command| cmd.output().map(|o| o.status.success()).unwrap_or(false);
    ok(Command::new("docker").arg("info"))
        && (ok(Command::new("docker-compose").arg("version"))
            || ok(Command::new("docker").args(["compose", "version"])))
}

#[test]
fn a_compose_network_shares_across_lans_and_keeps_a_restarted_peer() {
    if !docker_available() {
        assert!(
            std::env::var("BUTTER_NETLAB_REQUIRED").as_deref() != Ok("1"),
            "Docker and docker-compose are required here (BUTTER_NETLAB_REQUIRED=1)"
        );
        eprintln!("skipped: no Docker daemon or no docker-compose");
        return;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/compose.sh");
    // Bounded: a hung build or container fails the test instead.
    let status = Command::new("timeout")
        .args(["1500", "bash", script])
        .status()
        .expect("running tests/compose.sh");
    assert!(status.success(), "tests/compose.sh failed: {status}");
}
