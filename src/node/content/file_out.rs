//! The file a fetch writes ([`Node::get_to_file`](super::Node::get_to_file)):
//! chunks appended in order, made durable at the end.
//!
//! A large file is written with `O_DIRECT` on Linux: the bytes go from
//! an aligned staging buffer to the disk without a copy into the page
//! cache. Measured on the 2-core machine, that copy (allocating and filling
//! fresh page-cache pages) was the largest single cost of a 1 GiB fetch,
//! larger than decrypting it. Where the file system refuses `O_DIRECT`
//! (tmpfs, some network file systems) or a write is refused for its
//! alignment, the file falls back to ordinary buffered writes, started in
//! the background every [`WRITE_BEHIND`] bytes so that the final `fsync`
//! has little left to wait for. Small files are always buffered: they are
//! likely read again soon, from the page cache.

use std::fs::File;
use std::io::Write;
use std::path::Path;

/// Files smaller than this are written through the page cache.
pub(super) const DIRECT_FROM: u64 = 32 << 20;

/// Bytes staged per direct write (a multiple of [`ALIGN`]).
const STAGE: usize = 1 << 20;

/// Alignment of a direct write's buffer, offset and length (the largest
/// logical block size in common use).
const ALIGN: usize = 4096;

/// Bytes written to a buffered file between two starts of its write-back.
const WRITE_BEHIND: u64 = 16 << 20;

/// A file being written in order.
pub(super) struct FileOut {
    file: File,
    /// Bytes handed to [`write`](Self::write).
    written: u64,
    /// Where the buffered file's write-back was last started.
    started: u64,
    /// The staging buffer while writes are direct (`None`: buffered).
    direct: Option<Stage>,
}

/// An aligned window of an over-allocated buffer (no `unsafe` needed).
struct Stage {
    buf: Vec<u8>,
    at: usize,
    filled: usize,
}

impl Stage {
    fn new() -> Stage {
        let buf = vec![0u8; STAGE + ALIGN];
        let at = buf.as_ptr().align_offset(ALIGN);
        Stage { buf, at, filled: 0 }
    }

    fn window(&mut self) -> &mut [u8] {
        &mut self.buf[self.at..self.at + STAGE]
    }
}

impl FileOut {
    /// Creates (truncates) the file at `path`, to hold `size` bytes.
    pub(super) fn create(path: &Path, size: u64) -> std::io::Result<FileOut> {
        if size >= DIRECT_FROM {
            if let Some(file) = open_direct(path) {
                return Ok(FileOut {
                    file,
                    written: 0,
                    started: 0,
                    direct: Some(Stage::new()),
                });
            }
        }
        Ok(FileOut {
            file: File::create(path)?,
            written: 0,
            started: 0,
            direct: None,
        })
    }

    /// Whether writes bypass the page cache.
    #[cfg(test)]
    pub(super) fn is_direct(&self) -> bool {
        self.direct.is_some()
    }

    /// Appends `bytes`.
    pub(super) fn write(&mut self, mut bytes: &[u8]) -> std::io::Result<()> {
        self.written += bytes.len() as u64;
        if self.direct.is_none() {
            self.file.write_all(bytes)?;
            self.write_behind();
            return Ok(());
        }
        if let Some(stage) = &self.direct {
            if stage.filled == 0
                && bytes.as_ptr().align_offset(ALIGN) == 0
                && bytes.len() % ALIGN == 0
            {
                // Aligned already (a chunk as the network layer joins it).
                return match self.file.write_all(bytes) {
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                        self.fall_back()?;
                        self.file.write_all(bytes)
                    }
                    other => other,
                };
            }
        }
        while !bytes.is_empty() {
            let Some(stage) = self.direct.as_mut() else {
                // Fell back to buffered writes below.
                self.file.write_all(bytes)?;
                return Ok(());
            };
            let n = (STAGE - stage.filled).min(bytes.len());
            let filled = stage.filled;
            stage.window()[filled..filled + n].copy_from_slice(&bytes[..n]);
            stage.filled += n;
            bytes = &bytes[n..];
            if stage.filled == STAGE {
                self.flush_stage(STAGE)?;
            }
        }
        Ok(())
    }

    /// Writes the staged bytes (`len`, a multiple of [`ALIGN`]) directly,
    /// or, if the file system refuses, buffered from now on.
    fn flush_stage(&mut self, len: usize) -> std::io::Result<()> {
        let Some(stage) = self.direct.as_mut() else {
            return Ok(());
        };
        let at = stage.at;
        match self.file.write_all(&stage.buf[at..at + len]) {
            Ok(()) => {
                stage.filled = 0;
                Ok(())
            }
            // Alignment refused (a refused write writes nothing).
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => self.fall_back(),
            Err(e) => Err(e),
        }
    }

    /// Turns direct writes off, writing what is staged buffered.
    fn fall_back(&mut self) -> std::io::Result<()> {
        let Some(stage) = self.direct.take() else {
            return Ok(());
        };
        set_direct(&self.file, false)?;
        tracing::debug!("direct writes refused; writing through the page cache");
        self.file
            .write_all(&stage.buf[stage.at..stage.at + stage.filled])
    }

    /// Writes what is staged, sets the exact length and waits for the disk.
    pub(super) fn finish(mut self) -> std::io::Result<()> {
        if let Some(stage) = self.direct.as_mut() {
            let real = stage.filled;
            if real > 0 {
                // The last piece padded to the alignment, then cut back.
                let padded = real.div_ceil(ALIGN) * ALIGN;
                let at = stage.at;
                stage.buf[at + real..at + padded].fill(0);
                self.flush_stage(padded)?;
            }
            self.file.set_len(self.written)?;
        }
        self.file.sync_all()
    }

    fn write_behind(&mut self) {
        if self.written - self.started < WRITE_BEHIND {
            return;
        }
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            // SAFETY: a valid open descriptor and a range of it; the call
            // only queues write-back (no flag makes it wait).
            unsafe {
                libc::sync_file_range(
                    self.file.as_raw_fd(),
                    self.started as libc::off64_t,
                    (self.written - self.started) as libc::off64_t,
                    libc::SYNC_FILE_RANGE_WRITE,
                );
            }
        }
        self.started = self.written;
    }
}

/// The file opened for direct writes, or `None` where that is refused.
#[cfg(target_os = "linux")]
fn open_direct(path: &Path) -> Option<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .ok()
}

#[cfg(not(target_os = "linux"))]
fn open_direct(_: &Path) -> Option<File> {
    None
}

/// Turns `O_DIRECT` on or off for an open file.
#[cfg(target_os = "linux")]
fn set_direct(file: &File, on: bool) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on a valid descriptor with integer arguments.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let flags = if on {
        flags | libc::O_DIRECT
    } else {
        flags & !libc::O_DIRECT
    };
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn set_direct(_: &File, _: bool) -> std::io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect()
    }

    /// `bytes` at a page-aligned address.
    fn aligned(bytes: &[u8]) -> bytes::Bytes {
        let mut v = Vec::<u8>::with_capacity(bytes.len() + ALIGN);
        let at = v.as_ptr().align_offset(ALIGN);
        v.resize(at, 0);
        v.extend_from_slice(bytes);
        bytes::Bytes::from(v).slice(at..)
    }

    /// Pieces of awkward sizes (not multiples of the alignment, larger and
    /// smaller than the stage) come out as one byte-identical file, direct
    /// or buffered.
    #[test]
    fn any_pieces_make_the_same_file_direct_or_buffered() {
        let dir = tempfile::tempdir().unwrap();
        for (size, name) in [(DIRECT_FROM + 12_345, "big"), (100_001, "small")] {
            let path = dir.path().join(name);
            let mut out = FileOut::create(&path, size).unwrap();
            if size >= DIRECT_FROM && cfg!(target_os = "linux") {
                // ext4 and xfs take O_DIRECT; tmpfs falls back.
                println!("direct: {}", out.is_direct());
            } else {
                assert!(!out.is_direct());
            }
            let mut want = Vec::new();
            let mut left = size as usize;
            // Aligned pieces first (written as they are), then any.
            for seed in 100..if size >= DIRECT_FROM { 103 } else { 100 } {
                let piece = aligned(&pattern(262_144, seed));
                assert_eq!(piece.as_ptr().align_offset(ALIGN), 0);
                out.write(&piece).unwrap();
                want.extend_from_slice(&piece);
                left -= piece.len();
            }
            let mut seed = 0u8;
            while left > 0 {
                let n = [1, 4095, 262_144, 3 * STAGE + 7, 77][seed as usize % 5].min(left);
                let piece = pattern(n, seed);
                out.write(&piece).unwrap();
                want.extend_from_slice(&piece);
                left -= n;
                seed = seed.wrapping_add(1);
            }
            out.finish().unwrap();
            let got = std::fs::read(&path).unwrap();
            assert_eq!(got.len(), want.len(), "{name}: length");
            assert!(got == want, "{name}: bytes differ");
        }
    }

    /// A direct file that the file system then refuses aligned writes on
    /// (turned off mid-way here) still ends byte-identical.
    #[test]
    fn falling_back_mid_file_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut out = FileOut::create(&path, DIRECT_FROM).unwrap();
        let a = pattern(STAGE + 100, 1);
        out.write(&a).unwrap();
        // As if a refusal had happened: buffered from here.
        out.fall_back().unwrap();
        assert!(!out.is_direct());
        let b = pattern(5000, 2);
        out.write(&b).unwrap();
        out.finish().unwrap();
        let got = std::fs::read(&path).unwrap();
        assert_eq!(got.len(), a.len() + b.len());
        assert!(got[..a.len()] == a[..] && got[a.len()..] == b[..]);
    }
}
