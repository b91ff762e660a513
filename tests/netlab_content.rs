//! Content across NATs: a file shared from behind a moderate NAT is fetched
//! from behind a strict NAT after the sharer has gone offline — and after the
//! only public holder has left too, so that the bytes must come from a holder
//! behind another NAT (reached by port prediction or the relay). Needs root:
//! see tests/netlab/mod.rs.
//!
//! Hosts: an introducer and a holder `P` on the public segment; the sharer
//! (one-shot `butter share`) behind moderate NAT 1; a holder `M` behind
//! moderate NAT 2; the fetcher (one-shot `butter fetch`) behind strict NAT 3.

mod netlab;

use std::time::Instant;

use netlab::Nat;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_shared_behind_a_moderate_nat_is_fetched_behind_a_strict_nat_after_its_sharer_left()
{
    let test =
        "a_file_shared_behind_a_moderate_nat_is_fetched_behind_a_strict_nat_after_its_sharer_left";
    let Some(mut lab) = netlab::lab(test) else {
        return;
    };
    let world = lab.nat_world(&[Nat::None, Nat::Cone, Nat::Cone, Nat::Symmetric], 1);
    let intro = lab.introducer(&world.public, &[]).await;
    let common = [
        "--no-discovery",
        "--no-upnp",
        "--register-ms",
        "500",
        "--storage",
        "256M",
        "--introducer",
        &intro.addr,
    ];
    let mut p = lab.node(&world.lans[0][0], &common).await;
    let mut m_args = common.to_vec();
    m_args.extend(["--bootstrap", &p.addr]);
    let mut m = lab.node(&world.lans[2][0], &m_args).await;
    // The holders know each other (M joined through P; P verified M at the
    // address its NAT gave it).
    p.wait_until(30, "P knows M", |k| k.contains(&m.id)).await;
    m.wait_until(30, "M knows P", |k| k.contains(&p.id)).await;

    // The sharer, behind moderate NAT 1: a one-shot process that exits once
    // every blob is on its holders (both P and M: r = 3, two nodes serve).
    // 24 distinct chunks and a manifest (noise: no chunk repeats another).
    let mut data = vec![0u8; 6 << 20];
    blake3::Hasher::new()
        .update(b"netlab content")
        .finalize_xof()
        .fill(&mut data);
    let file = lab.data_dir(&world.lans[1][0]).with_extension("bin");
    std::fs::write(&file, &data).unwrap();
    let started = Instant::now();
    let (ok, out, err) = lab
        .butter(
            &world.lans[1][0],
            &[
                "share",
                file.to_str().unwrap(),
                "--introducer",
                &intro.addr,
                "--bootstrap",
                &p.addr,
            ],
        )
        .await;
    assert!(ok, "share failed: {err}");
    let key = out.lines().next().expect("the key").trim().to_string();
    let shared_in = started.elapsed();
    assert!(
        err.contains("each on at least 2 holders"),
        "the blobs did not reach both holders: {err}"
    );

    // The sharer is gone (its process exited). The public holder leaves too:
    // what is left of the file lives behind NAT 2 only.
    let said = p.stop().await;
    drop(said);
    // The fetcher, behind strict NAT 3, knows only the introducer.
    let out_file = lab.data_dir(&world.lans[3][0]).with_extension("out");
    let started = Instant::now();
    let (ok, _, err) = lab
        .butter(
            &world.lans[3][0],
            &[
                "fetch",
                &key,
                "-o",
                out_file.to_str().unwrap(),
                "--introducer",
                &intro.addr,
            ],
        )
        .await;
    assert!(ok, "fetch from behind the strict NAT failed: {err}");
    let fetched_in = started.elapsed();
    let got = std::fs::read(&out_file).expect("the fetched file");
    assert!(got == data, "the fetched file differs");
    let mut scratch = out_file.into_os_string();
    scratch.push(".chunks");
    assert!(
        !std::path::Path::new(&scratch).exists(),
        "the scratch store is removed once the file is whole"
    );
    // M served the blobs: its counter, read over its LAN (from its router).
    let router = world.routers[2].clone().expect("NAT 2's router");
    let stats = lab.stats(&router, &m).await;
    assert!(
        stats["blobs_served"] >= 25,
        "M served {} blobs",
        stats["blobs_served"]
    );
    let report = format!(
        "6 MiB shared behind a moderate NAT in {:.1} s; fetched behind a strict NAT \
         from a holder behind another moderate NAT (sharer and public holder gone) \
         in {:.1} s, identical; M served {} blobs (port predictions that connected at M: {}). {}",
        shared_in.as_secs_f64(),
        fetched_in.as_secs_f64(),
        stats["blobs_served"],
        stats["predictions_succeeded"],
        err.lines().last().unwrap_or("")
    );
    println!("{report}");
    netlab::keep_figures("content-across-nats", &report);
}
