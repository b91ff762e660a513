//! The README's shell blocks paste and run: every `butter` (and
//! `butter-introducer`) command in them names subcommands and flags its
//! `--help` knows, and none uses `[optional]` notation or `...` inside a
//! command. Fails as soon as a block and the CLI drift apart.

use std::collections::HashMap;
use std::process::Command;

/// Shell-like words of a line (quotes kept together, unquoted `#` starts a
/// comment; redirections and pipes end the command).
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut started = false;
    for c in line.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => cur.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                started = true;
            }
            (None, '#') if !started => break,
            (None, c) if c.is_whitespace() => {
                if started {
                    out.push(std::mem::take(&mut cur));
                    started = false;
                }
            }
            (None, c) => {
                cur.push(c);
                started = true;
            }
        }
    }
    if started {
        out.push(cur);
    }
    let end = out
        .iter()
        .position(|w| matches!(w.as_str(), "<" | ">" | "|" | "&&" | ";"))
        .unwrap_or(out.len());
    out.truncate(end);
    out
}

/// The commands of the README's shell blocks (continuations joined):
/// (program, its arguments, the line).
fn commands() -> Vec<(String, Vec<String>, String)> {
    let readme = include_str!("../README.md");
    let mut out = Vec::new();
    let mut in_block = false;
    let mut pending = String::new();
    for line in readme.lines() {
        if line.starts_with("```") {
            in_block = matches!(line.trim(), "```sh" | "```bash" | "```shell");
            continue;
        }
        if !in_block {
            continue;
        }
        let trimmed = line.trim_end();
        if let Some(head) = trimmed.strip_suffix('\\') {
            pending.push_str(head);
            pending.push(' ');
            continue;
        }
        let full = format!("{pending}{trimmed}");
        pending.clear();
        let w = words(&full);
        if let Some(i) = w
            .iter()
            .position(|t| t == "butter" || t.ends_with("/butter"))
        {
            out.push(("butter".into(), w[i + 1..].to_vec(), full.clone()));
        } else if w.first().map(String::as_str) == Some("cargo")
            && w.get(1).map(String::as_str) == Some("run")
        {
            let Some(dash) = w.iter().position(|t| t == "--") else {
                continue;
            };
            let program = if w.iter().any(|t| t == "butter-introducer") {
                "butter-introducer"
            } else if w.iter().any(|t| t == "--example" || t == "--bin") {
                continue;
            } else {
                "butter"
            };
            out.push((program.into(), w[dash + 1..].to_vec(), full.clone()));
        }
    }
    out
}

fn binary(program: &str) -> std::path::PathBuf {
    let butter = std::path::PathBuf::from(env!("CARGO_BIN_EXE_butter"));
    if program == "butter" {
        butter
    } else {
        butter.with_file_name(program)
    }
}

fn help(
    program: &str,
    path: &[String],
    cache: &mut HashMap<(String, Vec<String>), String>,
) -> Option<String> {
    let key = (program.to_string(), path.to_vec());
    if let Some(h) = cache.get(&key) {
        return Some(h.clone());
    }
    let out = Command::new(binary(program))
        .args(path)
        .arg("--help")
        .output()
        .expect("run --help");
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    cache.insert(key, text.clone());
    Some(text)
}

/// The subcommand names a help text lists.
fn subcommands(help: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut inside = false;
    for line in help.lines() {
        if line.starts_with("Commands:") {
            inside = true;
            continue;
        }
        if inside {
            if !line.starts_with("  ") {
                break;
            }
            if let Some(name) = line.split_whitespace().next() {
                names.push(name.to_string());
            }
        }
    }
    names
}

#[test]
fn every_readme_command_is_accepted_by_the_cli() {
    let commands = commands();
    assert!(
        commands.len() >= 20,
        "too few commands found: {}",
        commands.len()
    );
    if !binary("butter-introducer").exists() {
        panic!("butter-introducer is not built: `cargo test --workspace` builds it");
    }
    let mut cache = HashMap::new();
    let mut problems = Vec::new();
    for (program, args, line) in &commands {
        for a in args {
            if a.starts_with('[') || a.contains("...") {
                problems.push(format!("optional notation `{a}` in: {line}"));
            }
        }
        let mut path: Vec<String> = Vec::new();
        let mut rest = args.as_slice();
        let root = help(program, &[], &mut cache).expect("root help");
        let mut text = root.clone();
        while let Some(first) = rest.first() {
            if first.starts_with('-') || !subcommands(&text).contains(first) {
                break;
            }
            path.push(first.clone());
            text = help(program, &path, &mut cache).expect("subcommand help");
            rest = &rest[1..];
        }
        if program == "butter" && path.is_empty() {
            problems.push(format!("no subcommand in: {line}"));
            continue;
        }
        for flag in rest.iter().filter(|a| a.starts_with('-') && *a != "-") {
            let name = flag.split('=').next().unwrap();
            let known = |h: &str| {
                h.split(|c: char| c.is_whitespace() || c == ',' || c == '[' || c == '<')
                    .any(|w| w == name)
            };
            if !known(&text) && !known(&root) {
                problems.push(format!(
                    "`{name}` unknown to `{program} {}`: {line}",
                    path.join(" ")
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "README commands the CLI refuses:\n{}",
        problems.join("\n")
    );
}

#[test]
fn words_split_like_a_shell() {
    assert_eq!(
        words("butter node --route upper='tr a-z A-Z'  # comment"),
        ["butter", "node", "--route", "upper=tr a-z A-Z"]
    );
    assert_eq!(
        words("butter call X r -o f < big.bin"),
        ["butter", "call", "X", "r", "-o", "f"]
    );
}
