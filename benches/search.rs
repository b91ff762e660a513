//! Search benchmark on real text: the package descriptions of Debian's
//! package lists on this machine (`/var/lib/apt/lists/*_Packages*`, after
//! `apt-get update`; text not written by this project), indexed on an
//! N-node loopback network, then queried. For each query, recall@10
//! against an exact brute-force ranking of the same corpus by the same
//! rule ([`Ranker`]), messages sent and latency. Two kinds of query:
//! near-duplicates (a description with three words replaced) and keyword
//! queries (three of a description's rarest words in the corpus). Prints
//! figures, no assertions.
//!
//! `cargo bench --bench search` (`BUTTER_BENCH_NODES`, default 50;
//! `BUTTER_BENCH_DOCS`, default 10000; `BUTTER_BENCH_QUERIES` per kind,
//! default 100).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use butter::content::Hash;
use butter::search::rank::{Rank, Ranker};
use butter::search::text::words;
use butter::{Document, Node};
use futures_util::StreamExt;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// (package, description) of every package list here, each package once.
fn corpus() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let Ok(dir) = std::fs::read_dir("/var/lib/apt/lists") else {
        return out;
    };
    let mut files: Vec<_> = dir
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().contains("_Packages"))
        .collect();
    files.sort();
    for f in files {
        // apt-helper reads every compression apt writes (lz4, xz, gz...).
        let text = std::process::Command::new("/usr/lib/apt/apt-helper")
            .arg("cat-file")
            .arg(&f)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .or_else(|| std::fs::read_to_string(&f).ok())
            .unwrap_or_default();
        for stanza in text.split("\n\n") {
            let mut package = None;
            let mut desc = String::new();
            let mut in_desc = false;
            for line in stanza.lines() {
                if let Some(p) = line.strip_prefix("Package: ") {
                    package = Some(p.trim().to_string());
                    in_desc = false;
                } else if let Some(d) = line.strip_prefix("Description: ") {
                    desc.push_str(d);
                    in_desc = true;
                } else if in_desc && line.starts_with(' ') {
                    desc.push(' ');
                    desc.push_str(line.trim_start_matches(" .").trim());
                } else {
                    in_desc = false;
                }
            }
            if let Some(p) = package {
                if !desc.is_empty() && seen.insert(p.clone()) {
                    out.push((p, desc));
                }
            }
        }
    }
    out
}

fn key_of(name: &str) -> Hash {
    Hash(*blake3::hash(name.as_bytes()).as_bytes())
}

struct Indexed {
    name: String,
    signature: butter::search::Signature,
    terms: Vec<String>,
}

/// Recall@10 of `got` (ranks of the hits returned, best first) against
/// the brute-force ranking of `all`: the share of the ten best (ties with
/// the tenth count as good as it) that the query returned in its ten.
fn recall(got: &[Rank], all: &mut [Rank]) -> f64 {
    all.sort();
    let want = all.len().min(10);
    if want == 0 {
        return 1.0;
    }
    let tenth = all[want - 1];
    let good = got.iter().take(10).filter(|r| **r <= tenth).count();
    good.min(want) as f64 / want as f64
}

fn pct<T: Copy + Ord>(v: &mut [T], p: f64) -> T {
    v.sort();
    v[((v.len() - 1) as f64 * p) as usize]
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run());
}

async fn run() {
    let n = env("BUTTER_BENCH_NODES", 50) as usize;
    let docs_wanted = env("BUTTER_BENCH_DOCS", 10_000) as usize;
    let queries = env("BUTTER_BENCH_QUERIES", 100) as usize;
    let defaults = butter::SearchSettings::default();
    let settings = butter::SearchSettings {
        probes: env("BUTTER_BENCH_PROBES", defaults.probes as u64) as usize,
        terms_per_doc: env("BUTTER_BENCH_TERMS", defaults.terms_per_doc as u64) as usize,
        similarity_terms: env("BUTTER_BENCH_SIM_TERMS", defaults.similarity_terms as u64) as usize,
        limits: butter::search::store::IndexLimits {
            per_key: env("BUTTER_BENCH_PER_KEY", defaults.limits.per_key as u64) as usize,
            ..defaults.limits.clone()
        },
        ..defaults.clone()
    };
    let mut rng = StdRng::seed_from_u64(2026);
    let mut all = corpus();
    if all.is_empty() {
        println!("no package lists in /var/lib/apt/lists: run apt-get update first");
        return;
    }
    let total = all.len();
    all.shuffle(&mut rng);
    all.truncate(docs_wanted);
    println!(
        "search benchmark: {} of {total} Debian package descriptions, {n} nodes on loopback; \
         {} probes, {} terms per document, {} terms per similarity query",
        all.len(),
        settings.probes,
        settings.terms_per_doc,
        settings.similarity_terms
    );
    // The network: every node knows every other.
    let mut nodes: Vec<Node> = Vec::new();
    for i in 0..n {
        let mut b = Node::builder()
            .listen(format!("127.0.5.{}:0", i + 1).parse().unwrap())
            .lan_discovery(false)
            .search(settings.clone());
        if let Some(first) = nodes.first() {
            b = b.bootstrap(first.addr());
        }
        nodes.push(b.spawn().await.unwrap());
    }
    for a in &nodes {
        for b in &nodes {
            if a.id() != b.id() {
                a.add_known_host(b.addr()).await.unwrap();
            }
        }
    }
    // Indexed from random nodes; the brute-force side keeps each entry's
    // signature and terms (what the network's entries carry).
    let started = Instant::now();
    let mut truth = Vec::new();
    let mut jobs = Vec::new();
    for (name, desc) in &all {
        let doc = Document::text(desc.clone()).named(name.clone());
        truth.push(Indexed {
            name: name.clone(),
            signature: doc.sketch().unwrap().signature,
            terms: doc.terms(butter::search::entry::MAX_TERMS),
        });
        let node = nodes[rng.random_range(0..n)].clone();
        let name = name.clone();
        jobs.push(async move { node.index(key_of(&name), 0, &doc).await });
    }
    let indexed: Vec<_> = futures_util::stream::iter(jobs)
        .buffer_unordered(64)
        .collect()
        .await;
    let (mut bands_short, mut terms_placed, mut terms_full) = (0, 0, 0);
    for i in indexed.into_iter().flatten() {
        bands_short += i.bands - i.bands_placed;
        terms_placed += i.terms_placed;
        terms_full += i.terms_full;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "indexed in {secs:.1} s ({:.0} documents/s); band keys not placed: {bands_short}; \
         terms per document {:.1}, common words passed over {:.1}",
        all.len() as f64 / secs,
        terms_placed as f64 / all.len() as f64,
        terms_full as f64 / all.len() as f64
    );
    // Document frequency of each word, for the keyword queries' rare words.
    let mut df: HashMap<String, usize> = HashMap::new();
    for (_, desc) in &all {
        let mut w = words(desc);
        w.sort();
        w.dedup();
        for w in w {
            *df.entry(w).or_default() += 1;
        }
    }
    let vocab: Vec<String> = df.keys().cloned().collect();
    let mut results: Vec<(&str, f64, usize, Duration, bool, usize, bool)> = Vec::new();
    let mut tenth: Vec<u32> = Vec::new();
    for kind in ["near-duplicate", "keywords"] {
        for _ in 0..queries {
            let d = rng.random_range(0..all.len());
            let desc = &all[d].1;
            let query = if kind == "near-duplicate" {
                let mut w: Vec<String> = desc.split_whitespace().map(String::from).collect();
                for _ in 0..3.min(w.len()) {
                    let at = rng.random_range(0..w.len());
                    w[at] = vocab[rng.random_range(0..vocab.len())].clone();
                }
                w.join(" ")
            } else {
                let mut w = words(desc);
                w.sort();
                w.dedup();
                w.sort_by_key(|x| df.get(x).copied().unwrap_or(0));
                w.truncate(3);
                w.join(" ")
            };
            let asker = &nodes[rng.random_range(0..n)];
            let ranker = Ranker::of_text(&query, 4);
            let found = asker.search(query.as_str(), 10).await.unwrap();
            let mut brute: Vec<Rank> = truth
                .iter()
                .map(|t| ranker.rank(t.signature, &t.terms))
                .filter(|r| ranker.is_hit(r))
                .collect();
            let got: Vec<Rank> = found.hits.iter().map(|h| h.rank).collect();
            let r = recall(&got, &mut brute);
            if kind == "near-duplicate" && brute.len() >= 10 {
                tenth.push(brute[9].distance);
            }
            // The original among the first three (or as good as the third:
            // many descriptions are the same text).
            let own = ranker.rank(truth[d].signature, &truth[d].terms);
            // The same for the brute-force ranking (sorted by `recall`).
            let brute_top3 = brute.len() < 3 || own <= brute[2];
            let original = got.len() < 3 && found.hits.iter().any(|h| h.name == truth[d].name)
                || got.get(2).is_some_and(|third| own <= *third)
                    && found.hits.iter().any(|h| h.name == truth[d].name);
            results.push((
                kind,
                r,
                found.report.messages,
                found.report.elapsed,
                original,
                found.report.keys,
                brute_top3,
            ));
        }
    }
    println!("| queries | recall@10 mean | median | original in top 3 (brute force) | keys median | messages median / p90 | latency median / p90 |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for kind in ["near-duplicate", "keywords"] {
        let of: Vec<_> = results.iter().filter(|r| r.0 == kind).collect();
        let mut recalls: Vec<u64> = of.iter().map(|r| (r.1 * 1000.0) as u64).collect();
        let mean = of.iter().map(|r| r.1).sum::<f64>() / of.len() as f64;
        let mut msgs: Vec<usize> = of.iter().map(|r| r.2).collect();
        let mut lat: Vec<Duration> = of.iter().map(|r| r.3).collect();
        let top3 = of.iter().filter(|r| r.4).count();
        let brute3 = of.iter().filter(|r| r.6).count();
        let mut keys: Vec<usize> = of.iter().map(|r| r.5).collect();
        println!(
            "| {kind} ({}) | {mean:.3} | {:.3} | {top3} of {} ({brute3}) | {} | {} / {} | {:.1} / {:.1} ms |",
            of.len(),
            pct(&mut recalls, 0.5) as f64 / 1000.0,
            of.len(),
            pct(&mut keys, 0.5),
            pct(&mut msgs, 0.5),
            pct(&mut msgs, 0.9),
            pct(&mut lat, 0.5).as_secs_f64() * 1000.0,
            pct(&mut lat, 0.9).as_secs_f64() * 1000.0,
        );
    }
    if !tenth.is_empty() {
        println!(
            "near-duplicates: the tenth nearest signature is {} bits away (median; p90 {})",
            pct(&mut tenth, 0.5),
            pct(&mut tenth, 0.9)
        );
    }
    for node in nodes {
        node.shutdown().await;
    }
}
