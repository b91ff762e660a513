//! Building the manifest tree from a stream of bytes, and walking it back.
//!
//! [`build_into`] reads its input one chunk at a time and hands every blob
//! (chunks, then the manifests above them) to a sink as soon as it is made:
//! memory holds one chunk and one unfinished manifest per level, whatever
//! the file's size.

use std::collections::HashMap;
use std::io::Read;

use super::chunk::{Hash, MAX_CHUNK_SIZE};
use super::manifest::{Child, Entries, Manifest, MAX_DEPTH, MAX_ENTRIES, VERSION};
use crate::error::{Error, Result};

/// What a build made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// The root manifest's hash: the key.
    pub root: Hash,
    /// Bytes of content.
    pub size: u64,
    /// Chunks made.
    pub chunks: u64,
    /// Manifests made (the root included).
    pub manifests: u64,
}

/// A build kept in memory (small content; tests).
#[derive(Debug, Clone)]
pub struct Built {
    /// The root manifest's hash.
    pub root: Hash,
    /// Every blob by hash.
    pub blobs: HashMap<Hash, Vec<u8>>,
    /// Chunks made.
    pub chunks: u64,
}

/// Builds the tree of `data` in memory.
pub fn build(data: impl Read, chunk_size: usize, name: Option<String>) -> Result<Built> {
    let mut blobs = HashMap::new();
    let summary = build_into(data, chunk_size, name, Vec::new(), |hash, bytes| {
        blobs.insert(hash, bytes);
        Ok(())
    })?;
    Ok(Built {
        root: summary.root,
        blobs,
        chunks: summary.chunks,
    })
}

/// Reads `data` to its end in chunks of `chunk_size`, handing each chunk
/// and each manifest to `sink` (hash, bytes) as soon as it is made, the root
/// last. The root carries `name` and `keywords`.
pub fn build_into(
    mut data: impl Read,
    chunk_size: usize,
    name: Option<String>,
    keywords: Vec<String>,
    sink: impl FnMut(Hash, Vec<u8>) -> Result<()>,
) -> Result<Summary> {
    if chunk_size == 0 || chunk_size > MAX_CHUNK_SIZE {
        return Err(Error::Config(format!(
            "chunk size {chunk_size}: 1 byte to {MAX_CHUNK_SIZE}"
        )));
    }
    let mut builder = Builder {
        sink,
        chunk_size: chunk_size as u32,
        leaf: Vec::new(),
        leaf_size: 0,
        levels: Vec::new(),
        summary: Summary {
            root: Hash([0; 32]),
            size: 0,
            chunks: 0,
            manifests: 0,
        },
    };
    let mut buf = vec![0u8; chunk_size];
    loop {
        let n = read_full(&mut data, &mut buf)?;
        if n == 0 {
            break;
        }
        builder.add_chunk(buf[..n].to_vec())?;
        if n < chunk_size {
            break;
        }
    }
    builder.finish(name, keywords)
}

/// The unfinished tree: one leaf and one list per level above it.
struct Builder<S> {
    sink: S,
    chunk_size: u32,
    leaf: Vec<Hash>,
    leaf_size: u64,
    /// `levels[i]`: children of the unfinished manifest at height i + 1.
    levels: Vec<Vec<Child>>,
    summary: Summary,
}

impl<S: FnMut(Hash, Vec<u8>) -> Result<()>> Builder<S> {
    fn manifest(
        &mut self,
        size: u64,
        entries: Entries,
        name: Option<String>,
        keywords: Vec<String>,
    ) -> Result<Hash> {
        let bytes = Manifest {
            version: VERSION,
            size,
            chunk_size: self.chunk_size,
            entries,
            name,
            keywords,
        }
        .encode()?;
        let hash = Hash::of(&bytes);
        self.summary.manifests += 1;
        (self.sink)(hash, bytes)?;
        Ok(hash)
    }

    fn add_chunk(&mut self, bytes: Vec<u8>) -> Result<()> {
        // A full leaf is finished (it is not the root: more data follows).
        if self.leaf.len() == MAX_ENTRIES {
            let chunks = std::mem::take(&mut self.leaf);
            let size = std::mem::take(&mut self.leaf_size);
            let hash = self.manifest(size, Entries::Chunks(chunks), None, Vec::new())?;
            self.push(0, Child { hash, size })?;
        }
        let n = bytes.len() as u64;
        let hash = Hash::of(&bytes);
        (self.sink)(hash, bytes)?;
        self.leaf.push(hash);
        self.leaf_size += n;
        self.summary.chunks += 1;
        self.summary.size += n;
        Ok(())
    }

    /// Adds `child` to the unfinished manifest at `level`, finishing that
    /// first when it is full (and so on upwards).
    fn push(&mut self, level: usize, child: Child) -> Result<()> {
        if level + 1 >= MAX_DEPTH {
            return Err(Error::Config(
                "content too large for the manifest tree".into(),
            ));
        }
        if self.levels.len() <= level {
            self.levels.resize_with(level + 1, Vec::new);
        }
        if self.levels[level].len() == MAX_ENTRIES {
            let full = std::mem::take(&mut self.levels[level]);
            let size = full.iter().map(|c| c.size).sum();
            let hash = self.manifest(size, Entries::Manifests(full), None, Vec::new())?;
            self.push(level + 1, Child { hash, size })?;
        }
        self.levels[level].push(child);
        Ok(())
    }

    /// Finishes every level bottom up; the topmost manifest is the root.
    fn finish(mut self, name: Option<String>, keywords: Vec<String>) -> Result<Summary> {
        let mut entries = Entries::Chunks(std::mem::take(&mut self.leaf));
        let mut size = self.leaf_size;
        let mut level = 0;
        // (`push` may finish a full list and open the level above.)
        while level < self.levels.len() {
            let hash = self.manifest(size, entries, None, Vec::new())?;
            self.push(level, Child { hash, size })?;
            let children = std::mem::take(&mut self.levels[level]);
            size = children.iter().map(|c| c.size).sum();
            entries = Entries::Manifests(children);
            level += 1;
        }
        self.summary.root = self.manifest(size, entries, name, keywords)?;
        Ok(self.summary)
    }
}

/// Reads until `buf` is full or the input ends.
fn read_full(data: &mut impl Read, buf: &mut [u8]) -> Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match data.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(filled)
}

/// The chunks a leaf manifest lists (empty for a manifest of manifests).
pub fn chunks_of(manifest: &Manifest) -> &[Hash] {
    match &manifest.entries {
        Entries::Chunks(c) => c,
        Entries::Manifests(_) => &[],
    }
}

/// Every chunk under `root`, in order, with its offset: walks the tree
/// through `get` (which returns a manifest's verified bytes).
pub fn walk(
    root: Hash,
    mut get: impl FnMut(&Hash) -> Result<Vec<u8>>,
    mut each: impl FnMut(u64, Hash, u32) -> Result<()>,
) -> Result<Manifest> {
    let top = std::rc::Rc::new(Manifest::decode(&get(&root)?)?);
    // Depth-first, children in order: a stack of (manifest, next index, offset).
    let mut stack: Vec<(std::rc::Rc<Manifest>, usize, u64)> = vec![(top.clone(), 0, 0)];
    while let Some((m, i, offset)) = stack.pop() {
        match &m.entries {
            Entries::Chunks(chunks) => {
                let mut at = offset;
                for (j, c) in chunks.iter().enumerate() {
                    let len = if j + 1 == chunks.len() {
                        offset + m.size - at
                    } else {
                        m.chunk_size as u64
                    };
                    each(at, *c, len as u32)?;
                    at += len;
                }
            }
            Entries::Manifests(children) => {
                if i >= children.len() {
                    continue;
                }
                if stack.len() >= MAX_DEPTH {
                    return Err(Error::Malformed("manifest tree too deep".into()));
                }
                let child = children[i];
                let next_offset = offset + child.size;
                stack.push((m.clone(), i + 1, next_offset));
                let sub = Manifest::decode(&get(&child.hash)?)?;
                if sub.size != child.size || sub.chunk_size != m.chunk_size {
                    return Err(Error::Malformed(
                        "a child manifest does not match its parent".into(),
                    ));
                }
                stack.push((std::rc::Rc::new(sub), 0, offset));
            }
        }
    }
    Ok(std::rc::Rc::unwrap_or_clone(top))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 % 251) as u8).collect()
    }

    /// Rebuilds the content from the blobs by walking the tree.
    fn reassemble(built: &Built) -> Vec<u8> {
        let mut out = Vec::new();
        walk(
            built.root,
            |h| Ok(built.blobs[h].clone()),
            |offset, h, len| {
                assert_eq!(offset as usize, out.len());
                let chunk = &built.blobs[&h];
                assert_eq!(chunk.len(), len as usize);
                out.extend_from_slice(chunk);
                Ok(())
            },
        )
        .unwrap();
        out
    }

    #[test]
    fn content_of_any_size_round_trips_through_its_tree() {
        // Chunk size 1 makes multi-level trees small: 4096 chunks a leaf.
        for n in [0, 1, 4095, 4096, 4097, 8192, 3 * 4096 + 5] {
            let data = pattern(n);
            let built = build(&data[..], 1, Some("p".into())).unwrap();
            assert_eq!(built.chunks, n as u64);
            assert_eq!(reassemble(&built), data, "{n} bytes");
            let root = Manifest::decode(&built.blobs[&built.root]).unwrap();
            assert_eq!(root.size, n as u64);
            assert_eq!(root.name.as_deref(), Some("p"));
        }
        // Three levels: more than 4096 leaves' worth.
        let n = 4096 * 4096 + 3;
        let data = pattern(n);
        let mut blobs = 0;
        let summary = build_into(&data[..], 1, None, vec![], |_, _| {
            blobs += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(summary.chunks, n as u64);
        // 4097 leaves; above them one full manifest and one of the last
        // leaf; the root over those two.
        assert_eq!(summary.manifests, 4097 + 2 + 1);
        assert_eq!(blobs as u64, summary.chunks + summary.manifests);
    }

    #[test]
    fn the_same_content_gives_the_same_key_and_any_change_another() {
        let data = pattern(10_000);
        let a = build(&data[..], 1000, None).unwrap();
        let b = build(&data[..], 1000, None).unwrap();
        assert_eq!(a.root, b.root);
        let mut changed = data.clone();
        changed[9_999] ^= 1;
        assert_ne!(build(&changed[..], 1000, None).unwrap().root, a.root);
        assert_ne!(build(&data[..], 999, None).unwrap().root, a.root);
    }

    #[test]
    fn a_tampered_manifest_is_refused_while_walking() {
        let data = pattern(9000);
        let built = build(&data[..], 1, None).unwrap();
        let root = Manifest::decode(&built.blobs[&built.root]).unwrap();
        let Entries::Manifests(children) = &root.entries else {
            panic!("two levels expected")
        };
        let victim = children[0].hash;
        let result = walk(
            built.root,
            |h| {
                let mut bytes = built.blobs[h].clone();
                if *h == victim {
                    // A manifest whose size disagrees with its parent.
                    let mut m = Manifest::decode(&bytes).unwrap();
                    if let Entries::Chunks(c) = &mut m.entries {
                        c.pop();
                    }
                    m.size -= 1;
                    bytes = m.encode().unwrap();
                }
                Ok(bytes)
            },
            |_, _, _| Ok(()),
        );
        assert!(result.is_err());
    }
}
