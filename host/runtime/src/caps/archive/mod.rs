//! `archive`: listing and unpacking tar, tgz, tar.bz2 and zip packages.
//!
//! Formats are told apart by their first bytes, never by the file name: gzip
//! (`1f 8b`) and bzip2 (`BZh`) hold a tar stream, `PK\x03\x04` is a zip, and a plain
//! tar carries `ustar` at offset 257.
//!
//! Extraction is all or nothing. Entries are unpacked in one pass into a fresh
//! directory `dest/.posup-extract-<unique>`; only when every entry has passed its
//! checks is the result moved into `dest`, merging into existing directories and
//! replacing existing files (OSCAR's partial updates unpack over an installed tree).
//! Any refusal or error removes the temporary directory, so `dest` holds exactly
//! what it held before. Because nothing is ever written outside that fresh
//! directory until the end, an entry cannot reach outside `dest` through a link
//! that already existed there.
//!
//! Sizes are counted from the bytes actually written, never from headers: a gzip
//! bomb is stopped while it is being inflated. Compressed tar streams are inflated
//! on a second thread, one chunk ahead of the thread writing files, the way
//! `tar -xzf` runs `gzip -d` beside itself.

mod formats;
mod read;
mod unpack;

pub use read::{list_entries, read_entry};
pub use unpack::extract;

use std::sync::Arc;

use posup_world::latest::archive::{self, Entry, ExtractSummary};
use posup_world::latest::types::Error as WitError;
use wasmtime::component::{HasSelf, Linker};

use super::Work;
use crate::beneath::Roots;

/// Size limits of unpacking.
#[derive(Debug, Clone)]
pub struct ArchiveLimits {
    /// Largest single entry, in bytes.
    pub max_entry: u64,
    /// Largest total of all entries, in bytes.
    pub max_total: u64,
    /// Most entries.
    pub max_entries: u64,
}

impl Default for ArchiveLimits {
    fn default() -> Self {
        Self {
            max_entry: 4 << 30,
            max_total: 16 << 30,
            max_entries: 1_000_000,
        }
    }
}

/// The longest GNU long-name or long-link record and PAX extended header the host
/// reads into memory. Real names are far shorter; a record claiming more is refused
/// before it is read.
pub const MAX_EXTENSION: u64 = 64 << 10;
/// The most bytes `read-entry` brings into host memory, whatever the plugin asks:
/// it is for manifests and version files; larger entries are extracted.
pub const MAX_READ_ENTRY: u64 = 8 << 20;
/// The most entries `entries` lists, and the most bytes of names and link targets
/// in one listing.
pub const MAX_LIST_ENTRIES: u64 = 100_000;
pub const MAX_LIST_BYTES: u64 = 16 << 20;
/// Bytes written between two looks at free space and at the step's deadline.
pub(super) const CHECK_EVERY: u64 = 16 << 20;

/// Per-step state of `archive`.
pub struct ArchiveState {
    roots: Arc<Roots>,
    work: Work,
    limits: ArchiveLimits,
    reserve: u64,
}

impl ArchiveState {
    pub fn new(roots: Arc<Roots>, work: Work, limits: ArchiveLimits, reserve: u64) -> Self {
        Self {
            roots,
            work,
            limits,
            reserve,
        }
    }
}

impl archive::Host for ArchiveState {
    async fn entries(&mut self, archive: String) -> Result<Vec<Entry>, WitError> {
        let (roots, limits) = (self.roots.clone(), self.limits.clone());
        let what = format!("listing {archive}");
        super::blocking(&self.work, &what, move || {
            list_entries(&roots, &limits, &archive)
        })
        .await
    }

    async fn read_entry(
        &mut self,
        archive: String,
        entry: String,
        max_bytes: u64,
    ) -> Result<Vec<u8>, WitError> {
        let (roots, limits) = (self.roots.clone(), self.limits.clone());
        let what = format!("reading {entry} from {archive}");
        super::blocking(&self.work, &what, move || {
            read_entry(&roots, &limits, &archive, &entry, max_bytes)
        })
        .await
    }

    async fn extract(&mut self, archive: String, dest: String) -> Result<ExtractSummary, WitError> {
        let (roots, limits) = (self.roots.clone(), self.limits.clone());
        let (work, reserve) = (self.work.clone(), self.reserve);
        let what = format!("extracting {archive} into {dest}");
        super::blocking(&self.work, &what, move || {
            extract(&roots, &limits, &work, reserve, &archive, &dest)
        })
        .await
    }
}

pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> &mut ArchiveState,
) -> wasmtime::Result<()> {
    archive::add_to_linker::<T, HasSelf<ArchiveState>>(linker, get)
}

/// Size of the read buffers and of the chunks handed from the inflating thread to
/// the writing one. Large buffers keep the number of system calls per megabyte low.
pub(super) const BUF: usize = 1 << 20;

/// Chunks the inflating thread may run ahead of the writer; this bounds the memory
/// a bomb can make the host hold to a few megabytes.
pub(super) const AHEAD: usize = 4;

/// Longest symbolic link target read out of a zip entry.
pub(super) const MAX_LINK: u64 = 4096;

pub(super) const S_IFMT: u32 = 0o170_000;
pub(super) const S_IFREG: u32 = 0o100_000;
pub(super) const S_IFDIR: u32 = 0o040_000;
pub(super) const S_IFLNK: u32 = 0o120_000;

/// Mode bits kept on unpacked files: setuid, setgid and sticky are dropped so that
/// an archive cannot plant a privileged program.
pub(super) const MODE_MASK: u32 = 0o777;

#[cfg(test)]
mod tests {
    use super::*;
    // Fixtures are laid out and checked through host paths, outside the
    // capability under test.
    use posup_world::latest::types::{Dir, ErrorKind};
    use std::collections::BTreeMap;
    use std::fs as stdfs;
    use std::io::{self, Write};
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;
    use std::path::{Path, PathBuf};

    use posup_world::latest::archive::EntryKind;

    use crate::caps::CapResult;

    use crate::grants::{DirGrant, Grants};

    fn extract(
        roots: &Roots,
        limits: &ArchiveLimits,
        archive: &str,
        dest: &str,
    ) -> CapResult<ExtractSummary> {
        super::extract(roots, limits, &Work::default(), 0, archive, dest)
    }

    /// A tar whose first record is a GNU long name claiming `claimed` bytes,
    /// followed by only a little data: the host must refuse it before reading.
    fn long_name_bomb(claimed: u64) -> Vec<u8> {
        let mut h = tar::Header::new_gnu();
        h.as_gnu_mut().unwrap().name[..13].copy_from_slice(b"././@LongLink");
        h.set_entry_type(tar::EntryType::GNULongName);
        h.set_size(claimed);
        h.set_mode(0o644);
        h.set_cksum();
        let mut out = h.as_bytes().to_vec();
        out.extend(std::iter::repeat_n(b'a', 1 << 20));
        out
    }

    #[test]
    fn a_huge_long_name_record_is_refused_before_it_is_read() {
        let fx = Fixture::new();
        fx.put("bomb.tgz", &gz(&long_name_bomb(1 << 30)));
        for err in [
            list_entries(&fx.grants, &limits(), "/staging/bomb.tgz").unwrap_err(),
            read_entry(&fx.grants, &limits(), "/staging/bomb.tgz", "x", 10).unwrap_err(),
            extract(&fx.grants, &limits(), "/staging/bomb.tgz", "/product").unwrap_err(),
        ] {
            assert_eq!(err.kind, ErrorKind::Limit, "{}", err.message);
            assert!(err.message.contains("64 KiB"), "{}", err.message);
        }
        assert!(snapshot(&fx.product()).is_empty());
    }

    #[test]
    fn long_names_within_the_bound_still_work() {
        let fx = Fixture::new();
        let long = format!("app/{}/{}/file", "d".repeat(150), "e".repeat(150));
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(2);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, &long, &b"ok"[..]).unwrap();
        fx.put("long.tar", &b.into_inner().unwrap());
        let listed = list_entries(&fx.grants, &limits(), "/staging/long.tar").unwrap();
        assert_eq!(listed[0].path, long);
        assert_eq!(
            read_entry(&fx.grants, &limits(), "/staging/long.tar", &long, 10).unwrap(),
            b"ok"
        );
        extract(&fx.grants, &limits(), "/staging/long.tar", "/product").unwrap();
        assert_eq!(stdfs::read(fx.product().join(&long)).unwrap(), b"ok");
    }

    #[test]
    fn read_entry_brings_at_most_a_few_mib_into_memory() {
        let fx = Fixture::new();
        let big = vec![7u8; (MAX_READ_ENTRY + 1) as usize];
        fx.put("big.tar", &build(vec![file("big", &big, 0o644, 0)]));
        let err =
            read_entry(&fx.grants, &limits(), "/staging/big.tar", "big", u64::MAX).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Limit, "{}", err.message);
        assert!(err.message.contains("by the host"), "{}", err.message);
    }

    #[test]
    fn a_listing_is_bounded_in_bytes() {
        let fx = Fixture::new();
        let mut b = tar::Builder::new(Vec::new());
        let each = 60_000;
        for i in 0..(MAX_LIST_BYTES / each + 2) {
            let mut h = tar::Header::new_gnu();
            h.set_size(0);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            let name = format!("{i}/{}", "n".repeat(each as usize));
            b.append_data(&mut h, &name, &[][..]).unwrap();
        }
        fx.put("names.tar", &b.into_inner().unwrap());
        let err = list_entries(&fx.grants, &limits(), "/staging/names.tar").unwrap_err();
        assert_eq!(err.kind, ErrorKind::Limit, "{}", err.message);
        assert!(err.message.contains("MiB"), "{}", err.message);
    }

    #[test]
    fn extraction_keeps_the_disk_reserve_free() {
        let fx = Fixture::new();
        fx.put("a.tar", &build(vec![file("data", b"1234", 0o644, 0)]));
        let err = super::extract(
            &fx.grants,
            &limits(),
            &Work::default(),
            u64::MAX / 2,
            "/staging/a.tar",
            "/product",
        )
        .unwrap_err();
        assert_eq!(err.kind, ErrorKind::Limit, "{}", err.message);
        assert!(err.message.contains("reserve"), "{}", err.message);
        assert!(snapshot(&fx.product()).is_empty());
    }

    #[test]
    fn a_cancelled_extraction_stops_and_changes_nothing() {
        let fx = Fixture::new();
        fx.put("a.tar", &build(vec![file("data", b"1234", 0o644, 0)]));
        let work = Work::default();
        work.cancel();
        let err = super::extract(
            &fx.grants,
            &limits(),
            &work,
            0,
            "/staging/a.tar",
            "/product",
        )
        .unwrap_err();
        assert_eq!(err.kind, ErrorKind::Timeout, "{}", err.message);
        assert!(snapshot(&fx.product()).is_empty());
    }

    /// A link in `dest` where the archive has a directory is replaced by the
    /// directory, never walked into: the folder it points at stays as it was.
    #[test]
    fn merging_replaces_a_planted_link_instead_of_walking_it() {
        let fx = Fixture::new();
        stdfs::create_dir(fx.product().join("app")).unwrap();
        std::os::unix::fs::symlink(fx.root.join("outside"), fx.product().join("app/bin")).unwrap();
        fx.put(
            "a.tar",
            &build(vec![
                dir("app", 0o755, 0),
                dir("app/bin", 0o755, 0),
                file("app/bin/run", b"new", 0o755, 0),
            ]),
        );
        extract(&fx.grants, &limits(), "/staging/a.tar", "/product").unwrap();
        assert!(snapshot(&fx.root.join("outside")).is_empty());
        let bin = stdfs::symlink_metadata(fx.product().join("app/bin")).unwrap();
        assert!(bin.is_dir());
        assert_eq!(
            stdfs::read(fx.product().join("app/bin/run")).unwrap(),
            b"new"
        );
    }

    #[test]
    fn extraction_does_not_follow_a_planted_link_to_its_destination() {
        let fx = Fixture::new();
        std::os::unix::fs::symlink(fx.root.join("outside"), fx.product().join("out")).unwrap();
        fx.put("a.tar", &build(vec![file("data", b"1234", 0o644, 0)]));
        let err = extract(&fx.grants, &limits(), "/staging/a.tar", "/product/out").unwrap_err();
        assert_eq!(err.kind, ErrorKind::Denied, "{}", err.message);
        assert!(snapshot(&fx.root.join("outside")).is_empty());
    }

    /// A granted `/staging` (archives) and `/product` (destination) in a temp dir.
    struct Fixture {
        _tmp: tempfile::TempDir,
        root: PathBuf,
        grants: Roots,
    }

    impl Fixture {
        fn new() -> Fixture {
            let tmp = tempfile::tempdir().unwrap();
            let root = tmp.path().canonicalize().unwrap();
            for d in ["staging", "product", "outside"] {
                stdfs::create_dir(root.join(d)).unwrap();
            }
            let grants = Grants {
                dirs: vec![
                    DirGrant {
                        dir: Dir::Staging,
                        host: root.join("staging"),
                        write: true,
                    },
                    DirGrant {
                        dir: Dir::Product,
                        host: root.join("product"),
                        write: true,
                    },
                ],
                ..Grants::default()
            };
            Fixture {
                _tmp: tmp,
                root,
                grants: Roots::open(&grants).unwrap(),
            }
        }

        fn put(&self, name: &str, bytes: &[u8]) {
            stdfs::write(self.root.join("staging").join(name), bytes).unwrap();
        }

        fn product(&self) -> PathBuf {
            self.root.join("product")
        }
    }

    fn limits() -> ArchiveLimits {
        ArchiveLimits::default()
    }

    /// Everything under `root` (not `root` itself): kind, mode, mtime, contents or
    /// link target. Two equal snapshots mean nothing was added, removed or changed.
    fn snapshot(root: &Path) -> BTreeMap<PathBuf, String> {
        fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, String>) {
            for e in stdfs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                let m = stdfs::symlink_metadata(&p).unwrap();
                let rel = p.strip_prefix(root).unwrap().to_path_buf();
                let what = if m.file_type().is_symlink() {
                    format!("link {}", stdfs::read_link(&p).unwrap().display())
                } else if m.is_dir() {
                    walk(root, &p, out);
                    "dir".to_string()
                } else {
                    format!("file {:?}", stdfs::read(&p).unwrap())
                };
                out.insert(
                    rel,
                    format!("{what} mode {:o} mtime {}", m.mode(), m.mtime()),
                );
            }
        }
        let mut out = BTreeMap::new();
        walk(root, root, &mut out);
        out
    }

    /// A tar header with a raw name, bypassing the `tar` crate's own path checks.
    fn raw_header(name: &[u8], kind: tar::EntryType, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(0o644);
        h.set_mtime(1_600_000_000);
        h.set_cksum();
        h
    }

    fn tar_of(entries: &[(tar::Header, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (h, data) in entries {
            b.append(h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn file(name: &str, data: &[u8], mode: u32, mtime: u64) -> (tar::Header, Vec<u8>) {
        let mut h = tar::Header::new_ustar();
        h.set_path(name).unwrap();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_mtime(mtime);
        h.set_cksum();
        (h, data.to_vec())
    }

    fn link(name: &str, target: &str, kind: tar::EntryType) -> (tar::Header, Vec<u8>) {
        let mut h = raw_header(name.as_bytes(), kind, 0);
        h.set_link_name_literal(target).unwrap();
        h.set_cksum();
        (h, Vec::new())
    }

    fn dir(name: &str, mode: u32, mtime: u64) -> (tar::Header, Vec<u8>) {
        let mut h = tar::Header::new_ustar();
        h.set_path(name).unwrap();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_size(0);
        h.set_mode(mode);
        h.set_mtime(mtime);
        h.set_cksum();
        (h, Vec::new())
    }

    fn build(entries: Vec<(tar::Header, Vec<u8>)>) -> Vec<u8> {
        let refs: Vec<(tar::Header, &[u8])> = entries
            .iter()
            .map(|(h, d)| (h.clone(), d.as_slice()))
            .collect();
        tar_of(&refs)
    }

    /// Extracts a hostile archive over a product tree that already holds files and
    /// checks that it is refused naming `entry`, and that neither the product nor
    /// the directory beside it changed.
    fn assert_refused(fx: &Fixture, bytes: &[u8], entry: &str, kind: ErrorKind) -> String {
        stdfs::create_dir_all(fx.product().join("bin")).unwrap();
        stdfs::write(fx.product().join("bin/oscar.def"), b"keep").unwrap();
        let before = snapshot(&fx.product());
        let outside = snapshot(&fx.root.join("outside"));
        fx.put("hostile.tgz", &gz(bytes));
        let err = extract(&fx.grants, &limits(), "/staging/hostile.tgz", "/product").unwrap_err();
        assert_eq!(err.kind, kind, "{}", err.message);
        assert!(
            err.message.contains(&format!("`{entry}`")),
            "{}",
            err.message
        );
        assert!(
            err.message.contains("/staging/hostile.tgz"),
            "{}",
            err.message
        );
        assert_eq!(snapshot(&fx.product()), before, "the product tree changed");
        assert_eq!(
            snapshot(&fx.root.join("outside")),
            outside,
            "something was written outside"
        );
        err.message
    }

    #[test]
    fn refuses_parent_components() {
        let fx = Fixture::new();
        let ok = file("bin/ok", b"fine", 0o644, 1);
        let bad = raw_header(b"bin/../../outside/evil", tar::EntryType::Regular, 4);
        let msg = assert_refused(
            &fx,
            &tar_of(&[(ok.0, &ok.1), (bad, b"evil")]),
            "bin/../../outside/evil",
            ErrorKind::Invalid,
        );
        assert!(msg.contains(".."), "{msg}");
    }

    #[test]
    fn refuses_absolute_paths() {
        let fx = Fixture::new();
        let evil = fx.root.join("outside/evil");
        let bad = raw_header(evil.as_os_str().as_bytes(), tar::EntryType::Regular, 4);
        let msg = assert_refused(
            &fx,
            &tar_of(&[(bad, b"evil")]),
            &evil.display().to_string(),
            ErrorKind::Invalid,
        );
        assert!(msg.contains("absolute"), "{msg}");
    }

    #[test]
    fn refuses_empty_names() {
        let fx = Fixture::new();
        let bad = raw_header(b"", tar::EntryType::Regular, 4);
        let msg = assert_refused(&fx, &tar_of(&[(bad, b"evil")]), "", ErrorKind::Invalid);
        assert!(msg.contains("empty"), "{msg}");
    }

    #[test]
    fn refuses_symlinks_leaving_dest() {
        let fx = Fixture::new();
        let msg = assert_refused(
            &fx,
            &build(vec![link(
                "bin/up",
                "../../outside",
                tar::EntryType::Symlink,
            )]),
            "bin/up",
            ErrorKind::Invalid,
        );
        assert!(msg.contains("outside the destination"), "{msg}");
        let msg = assert_refused(
            &fx,
            &build(vec![link("etc", "/etc", tar::EntryType::Symlink)]),
            "etc",
            ErrorKind::Invalid,
        );
        assert!(msg.contains("absolute"), "{msg}");
        // `sub/up` points at dest itself (allowed), but climbing again after it
        // would leave dest physically even though the text stays inside.
        let msg = assert_refused(
            &fx,
            &build(vec![
                link("sub/up", "..", tar::EntryType::Symlink),
                link("sub/esc", "up/../..", tar::EntryType::Symlink),
            ]),
            "sub/esc",
            ErrorKind::Invalid,
        );
        assert!(msg.contains("after a name"), "{msg}");
    }

    #[test]
    fn refuses_writing_through_an_earlier_symlink() {
        let fx = Fixture::new();
        // `lib` points inside dest, which is allowed; writing through it is not.
        let (h, d) = file("lib/evil", b"x", 0o644, 1);
        let msg = assert_refused(
            &fx,
            &build(vec![
                dir("real", 0o755, 1),
                link("lib", "real", tar::EntryType::Symlink),
                (h, d),
            ]),
            "lib/evil",
            ErrorKind::Invalid,
        );
        assert!(msg.contains("through the symbolic link `lib`"), "{msg}");
    }

    #[test]
    fn refuses_hardlinks_to_anything_not_extracted() {
        let fx = Fixture::new();
        let target = fx.root.join("outside/secret");
        stdfs::write(&target, b"secret").unwrap();
        let msg = assert_refused(
            &fx,
            &build(vec![link(
                "stolen",
                &target.display().to_string(),
                tar::EntryType::Link,
            )]),
            "stolen",
            ErrorKind::Invalid,
        );
        assert!(msg.contains("absolute"), "{msg}");
        let msg = assert_refused(
            &fx,
            &build(vec![link(
                "stolen",
                "../outside/secret",
                tar::EntryType::Link,
            )]),
            "stolen",
            ErrorKind::Invalid,
        );
        assert!(msg.contains(".."), "{msg}");
        // Already in dest, but not from this archive.
        let msg = assert_refused(
            &fx,
            &build(vec![link("copy", "bin/oscar.def", tar::EntryType::Link)]),
            "copy",
            ErrorKind::Invalid,
        );
        assert!(msg.contains("not a file extracted earlier"), "{msg}");
    }

    #[test]
    fn refuses_device_nodes_and_fifos() {
        let fx = Fixture::new();
        let (ok, d) = file("ok", b"ok", 0o644, 1);
        let mut dev = raw_header(b"dev/sda", tar::EntryType::Block, 0);
        dev.set_device_major(8).unwrap();
        dev.set_cksum();
        let msg = assert_refused(
            &fx,
            &tar_of(&[(ok.clone(), &d), (dev, b"")]),
            "dev/sda",
            ErrorKind::Invalid,
        );
        assert!(msg.contains("block device"), "{msg}");
        let fifo = raw_header(b"pipe", tar::EntryType::Fifo, 0);
        let msg = assert_refused(
            &fx,
            &tar_of(&[(ok, &d), (fifo, b"")]),
            "pipe",
            ErrorKind::Invalid,
        );
        assert!(msg.contains("fifo"), "{msg}");
    }

    #[test]
    fn stops_a_gzip_bomb_while_inflating() {
        let fx = Fixture::new();
        stdfs::write(fx.product().join("keep"), b"keep").unwrap();
        let before = snapshot(&fx.product());
        let zeros = vec![0u8; 8 << 20];
        let bomb = gz(&build(vec![file("zeros", &zeros, 0o644, 1)]));
        assert!(
            bomb.len() < 64 << 10,
            "the bomb should be small: {}",
            bomb.len()
        );
        fx.put("bomb.tgz", &bomb);
        let small = ArchiveLimits {
            max_entry: 1 << 20,
            max_total: 64 << 20,
            max_entries: 100,
        };
        let err = extract(&fx.grants, &small, "/staging/bomb.tgz", "/product").unwrap_err();
        assert_eq!(err.kind, ErrorKind::Limit, "{}", err.message);
        assert!(
            err.message.contains("`zeros`") && err.message.contains("per entry"),
            "{}",
            err.message
        );
        assert_eq!(snapshot(&fx.product()), before);

        // Many entries each under the per-entry limit, together over the total.
        let parts: Vec<_> = (0..8)
            .map(|i| file(&format!("part{i}"), &zeros[..1 << 20], 0o644, 1))
            .collect();
        fx.put("bomb2.tgz", &gz(&build(parts)));
        let small = ArchiveLimits {
            max_entry: 1 << 20,
            max_total: 3 << 20,
            max_entries: 100,
        };
        let err = extract(&fx.grants, &small, "/staging/bomb2.tgz", "/product").unwrap_err();
        assert_eq!(err.kind, ErrorKind::Limit, "{}", err.message);
        assert!(
            err.message.contains("`part3`") && err.message.contains("in total"),
            "{}",
            err.message
        );
        assert_eq!(snapshot(&fx.product()), before);

        let few = ArchiveLimits {
            max_entries: 2,
            ..ArchiveLimits::default()
        };
        let err = extract(&fx.grants, &few, "/staging/bomb2.tgz", "/product").unwrap_err();
        assert_eq!(err.kind, ErrorKind::Limit, "{}", err.message);
        assert_eq!(snapshot(&fx.product()), before);
        // Nothing is left behind in dest: no temporary directory either.
        assert_eq!(stdfs::read_dir(fx.product()).unwrap().count(), 1);
    }

    /// The same small tree in every format.
    fn good_tree() -> Vec<(tar::Header, Vec<u8>)> {
        vec![
            dir("app/", 0o750, 1_500_000_000),
            dir("app/bin/", 0o755, 1_500_000_100),
            file("app/bin/run", b"#!/bin/sh\necho hi\n", 0o755, 1_500_000_200),
            file("app/bin/oscar.def", b"A=1\n", 0o640, 1_500_000_300),
            link("app/bin/start", "run", tar::EntryType::Symlink),
            link("app/bin/run2", "app/bin/run", tar::EntryType::Link),
            file("app/suid", b"x", 0o4755, 1_500_000_400),
        ]
    }

    fn check_good_tree(root: &Path) {
        let app = root.join("app");
        let m = |p: &str| stdfs::symlink_metadata(app.join(p)).unwrap();
        assert_eq!(
            stdfs::read(app.join("bin/run")).unwrap(),
            b"#!/bin/sh\necho hi\n"
        );
        assert_eq!(m("bin/run").mode() & 0o7777, 0o755);
        assert_eq!(m("bin/run").mtime(), 1_500_000_200);
        assert_eq!(m("bin/oscar.def").mode() & 0o7777, 0o640);
        assert_eq!(m("bin/oscar.def").mtime(), 1_500_000_300);
        assert_eq!(
            stdfs::read_link(app.join("bin/start")).unwrap(),
            Path::new("run")
        );
        assert_eq!(m("bin/run2").ino(), m("bin/run").ino());
        assert_eq!(m("suid").mode() & 0o7777, 0o755, "setuid must be dropped");
        assert_eq!(m("").mode() & 0o7777, 0o750);
        assert_eq!(m("").mtime(), 1_500_000_000);
        assert_eq!(m("bin").mtime(), 1_500_000_100);
        let leftovers: Vec<_> = stdfs::read_dir(root)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy().starts_with(".posup-extract"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn extracts_tar_tgz_and_tbz2_keeping_modes_and_times() {
        let fx = Fixture::new();
        let tar = build(good_tree());
        let mut bz = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::default());
        bz.write_all(&tar).unwrap();
        let bz = bz.finish().unwrap();
        for (name, bytes) in [
            ("a.tar", tar.clone()),
            ("a.tgz", gz(&tar)),
            ("a.tar.bz2", bz),
        ] {
            fx.put(name, &bytes);
            let dest = format!("/product/{name}.d");
            stdfs::create_dir(fx.product().join(format!("{name}.d"))).unwrap();
            let s = extract(&fx.grants, &limits(), &format!("/staging/{name}"), &dest).unwrap();
            assert_eq!((s.files, s.directories, s.links), (3, 2, 2), "{name}");
            assert_eq!(s.bytes, 18 + 4 + 1, "{name}");
            check_good_tree(&fx.product().join(format!("{name}.d")));
        }
    }

    /// One entry of a test zip.
    enum Z<'a> {
        File(&'a str, &'a [u8], u32),
        Dir(&'a str, u32),
        Link(&'a str, &'a str),
    }

    fn zip_of(entries: &[Z<'_>]) -> Vec<u8> {
        use zip::write::SimpleFileOptions;
        let mut w = zip::ZipWriter::new(io::Cursor::new(Vec::new()));
        let time = zip::DateTime::from_date_and_time(2020, 9, 13, 12, 26, 40).unwrap();
        let opts = |mode| {
            SimpleFileOptions::default()
                .unix_permissions(mode)
                .last_modified_time(time)
        };
        for entry in entries {
            match *entry {
                Z::File(name, data, mode) => {
                    w.start_file(name, opts(mode)).unwrap();
                    w.write_all(data).unwrap();
                }
                Z::Dir(name, mode) => w.add_directory(name, opts(mode)).unwrap(),
                Z::Link(name, target) => w.add_symlink(name, target, opts(0o777)).unwrap(),
            }
        }
        w.finish().unwrap().into_inner()
    }

    #[test]
    fn extracts_zip_with_modes_times_and_symlinks() {
        let fx = Fixture::new();
        fx.put(
            "a.zip",
            &zip_of(&[
                Z::Dir("app/", 0o750),
                Z::File("app/run", b"run", 0o755),
                Z::Link("app/start", "run"),
            ]),
        );
        let s = extract(&fx.grants, &limits(), "/staging/a.zip", "/product").unwrap();
        assert_eq!((s.files, s.directories, s.links, s.bytes), (1, 1, 1, 3));
        let app = fx.product().join("app");
        let m = stdfs::metadata(app.join("run")).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o755);
        // 2020-09-13 12:26:40 UTC.
        assert_eq!(m.mtime(), 1_600_000_000);
        assert_eq!(stdfs::metadata(&app).unwrap().mode() & 0o7777, 0o750);
        assert_eq!(
            stdfs::read_link(app.join("start")).unwrap(),
            Path::new("run")
        );

        let listed = list_entries(&fx.grants, &limits(), "/staging/a.zip").unwrap();
        let kinds: Vec<_> = listed
            .iter()
            .map(|e| (e.path.as_str(), e.kind, e.link.as_str()))
            .collect();
        assert_eq!(
            kinds,
            [
                ("app/", EntryKind::Directory, ""),
                ("app/run", EntryKind::File, ""),
                ("app/start", EntryKind::Symlink, "run")
            ]
        );
        assert_eq!(
            read_entry(&fx.grants, &limits(), "/staging/a.zip", "app/run", 10).unwrap(),
            b"run"
        );
    }

    #[test]
    fn refuses_hostile_zips() {
        let fx = Fixture::new();
        stdfs::write(fx.product().join("keep"), b"keep").unwrap();
        let before = snapshot(&fx.product());
        let cases: [(&str, Vec<u8>, &str); 3] = [
            (
                "link.zip",
                zip_of(&[Z::File("ok", b"x", 0o644), Z::Link("up", "../outside")]),
                "up",
            ),
            (
                "dotdot.zip",
                zip_of(&[Z::File("a/../../evil", b"x", 0o644)]),
                "a/../../evil",
            ),
            (
                "backslash.zip",
                zip_of(&[Z::File("..\\evil", b"x", 0o644)]),
                "../evil",
            ),
        ];
        for (name, bytes, entry) in cases {
            fx.put(name, &bytes);
            let err = extract(
                &fx.grants,
                &limits(),
                &format!("/staging/{name}"),
                "/product",
            )
            .unwrap_err();
            assert_eq!(err.kind, ErrorKind::Invalid, "{}", err.message);
            assert!(
                err.message.contains(&format!("`{entry}`")),
                "{name}: {}",
                err.message
            );
            assert_eq!(snapshot(&fx.product()), before, "{name}");
        }
        assert!(
            stdfs::read_dir(fx.root.join("outside"))
                .unwrap()
                .next()
                .is_none()
        );
    }

    #[test]
    fn merges_over_an_existing_tree() {
        let fx = Fixture::new();
        let p = fx.product();
        stdfs::create_dir_all(p.join("bin")).unwrap();
        stdfs::write(p.join("bin/oscar.def"), b"old config").unwrap();
        stdfs::write(p.join("bin/oscar"), b"old program").unwrap();
        stdfs::write(p.join("work.srv"), b"data").unwrap();
        stdfs::write(fx.root.join("outside/target"), b"outside").unwrap();
        // A link in the product that a naive unpacker would write through.
        std::os::unix::fs::symlink(fx.root.join("outside/target"), p.join("bin/linked")).unwrap();
        fx.put(
            "upd.tgz",
            &gz(&build(vec![
                dir("./", 0o700, 5),
                file("./bin/oscar", b"new program", 0o755, 1_600_000_000),
                file("./bin/linked", b"replaces the link", 0o644, 1_600_000_000),
                file("./bin/new.fgl", b"form", 0o644, 1_600_000_000),
                file("./lib/libx.so", b"lib", 0o644, 1_600_000_000),
            ])),
        );
        let s = extract(&fx.grants, &limits(), "/staging/upd.tgz", "/product").unwrap();
        assert_eq!(s.files, 4);
        assert_eq!(stdfs::read(p.join("bin/oscar")).unwrap(), b"new program");
        assert_eq!(stdfs::read(p.join("bin/oscar.def")).unwrap(), b"old config");
        assert_eq!(stdfs::read(p.join("work.srv")).unwrap(), b"data");
        assert_eq!(stdfs::read(p.join("bin/new.fgl")).unwrap(), b"form");
        assert_eq!(stdfs::read(p.join("lib/libx.so")).unwrap(), b"lib");
        assert!(
            !stdfs::symlink_metadata(p.join("bin/linked"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(
            stdfs::read(fx.root.join("outside/target")).unwrap(),
            b"outside"
        );
        // `./` does not change the mode of dest itself.
        assert_ne!(stdfs::metadata(&p).unwrap().mode() & 0o777, 0o700);
        let names: Vec<_> = stdfs::read_dir(&p)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");

        // A file where the product holds a directory is refused before anything moves.
        let before = snapshot(&p);
        fx.put(
            "clash.tgz",
            &gz(&build(vec![
                file("aaa", b"first", 0o644, 1),
                file("bin", b"not a dir", 0o644, 1),
            ])),
        );
        let err = extract(&fx.grants, &limits(), "/staging/clash.tgz", "/product").unwrap_err();
        assert!(
            err.message.contains("`bin`") && err.message.contains("already holds a directory"),
            "{}",
            err.message
        );
        assert_eq!(snapshot(&p), before);
    }

    #[test]
    fn lists_and_reads_entries() {
        let fx = Fixture::new();
        fx.put("a.tgz", &gz(&build(good_tree())));
        let listed = list_entries(&fx.grants, &limits(), "/staging/a.tgz").unwrap();
        assert_eq!(listed.len(), 7);
        let start = listed.iter().find(|e| e.path == "app/bin/start").unwrap();
        assert_eq!(
            (start.kind, start.link.as_str()),
            (EntryKind::Symlink, "run")
        );
        let run = listed.iter().find(|e| e.path == "app/bin/run").unwrap();
        assert_eq!((run.kind, run.size, run.mode), (EntryKind::File, 18, 0o755));

        let def = read_entry(
            &fx.grants,
            &limits(),
            "/staging/a.tgz",
            "./app/bin/oscar.def",
            100,
        )
        .unwrap();
        assert_eq!(def, b"A=1\n");
        let err =
            read_entry(&fx.grants, &limits(), "/staging/a.tgz", "app/bin/run", 5).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Limit);
        assert!(err.message.contains("app/bin/run"), "{}", err.message);
        let err = read_entry(&fx.grants, &limits(), "/staging/a.tgz", "Rules", 100).unwrap_err();
        assert_eq!(err.kind, ErrorKind::NotFound);
        assert!(err.message.contains("`Rules`"), "{}", err.message);
        let err = read_entry(&fx.grants, &limits(), "/staging/a.tgz", "app/bin", 100).unwrap_err();
        assert!(err.message.contains("directory"), "{}", err.message);
    }

    #[test]
    fn refuses_unknown_formats_and_ungranted_paths() {
        let fx = Fixture::new();
        fx.put("notes.txt", b"just some text, not an archive");
        let err = list_entries(&fx.grants, &limits(), "/staging/notes.txt").unwrap_err();
        assert_eq!(err.kind, ErrorKind::Invalid);
        assert!(
            err.message.contains("/staging/notes.txt")
                && err.message.contains("unknown archive format"),
            "{}",
            err.message
        );
        fx.put("a.tgz", &gz(&build(good_tree())));
        let err = extract(&fx.grants, &limits(), "/staging/a.tgz", "/backup").unwrap_err();
        assert_eq!(err.kind, ErrorKind::Denied);
        let err = extract(&fx.grants, &limits(), "/staging/a.tgz", "/product/missing").unwrap_err();
        assert_eq!(err.kind, ErrorKind::NotFound);
        // A truncated gzip stream is damaged data, and nothing lands in dest.
        let whole = gz(&build(good_tree()));
        fx.put("cut.tgz", &whole[..whole.len() / 2]);
        let err = extract(&fx.grants, &limits(), "/staging/cut.tgz", "/product").unwrap_err();
        assert_eq!(err.kind, ErrorKind::Invalid, "{}", err.message);
        assert!(stdfs::read_dir(fx.product()).unwrap().next().is_none());
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// Nothing but the archive in staging and what landed in the product:
        /// the `outside` folder beside them stays empty.
        fn nothing_outside(fx: &Fixture) -> Result<(), TestCaseError> {
            prop_assert!(snapshot(&fx.root.join("outside")).is_empty());
            let staging: Vec<_> = stdfs::read_dir(fx.root.join("staging")).unwrap().collect();
            prop_assert_eq!(staging.len(), 1);
            Ok(())
        }

        fn run_all(fx: &Fixture, name: &str) {
            let archive = format!("/staging/{name}");
            let _ = list_entries(&fx.grants, &limits(), &archive);
            let _ = read_entry(&fx.grants, &limits(), &archive, "a", 1 << 20);
            let _ = extract(&fx.grants, &limits(), &archive, "/product");
        }

        /// An entry name or link target as a hostile packer writes it.
        fn path() -> impl Strategy<Value = String> {
            prop::collection::vec(prop_oneof!["a", "b", "..", ".", "", "/", "outside"], 1..5)
                .prop_map(|parts| parts.join("/"))
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(128))]

            /// Whatever bytes follow a format's magic, listing, reading and
            /// extracting answer (an error or a result) and write nowhere else.
            #[test]
            fn any_bytes_get_an_answer(
                magic in prop_oneof![
                    Just(Vec::new()),
                    Just(vec![0x1f, 0x8b]),
                    Just(b"BZh".to_vec()),
                    Just(b"PK\x03\x04".to_vec()),
                ],
                tail in prop::collection::vec(any::<u8>(), 0..2048),
            ) {
                let fx = Fixture::new();
                let mut bytes = magic;
                bytes.extend(tail);
                fx.put("any", &bytes);
                run_all(&fx, "any");
                nothing_outside(&fx)?;
            }

            /// Tar archives of hostile entries (`..`, absolute names, links to
            /// anywhere, files through links, devices), plain, gzip or bzip2:
            /// nothing is ever written outside the destination.
            #[test]
            fn hostile_tars_stay_inside(
                entries in prop::collection::vec((path(), 0u8..5, path()), 1..10),
                compression in 0u8..3,
            ) {
                let fx = Fixture::new();
                let mut raw = Vec::new();
                for (name, kind, target) in &entries {
                    let kind = match kind {
                        0 => tar::EntryType::Regular,
                        1 => tar::EntryType::Directory,
                        2 => tar::EntryType::Symlink,
                        3 => tar::EntryType::Link,
                        _ => tar::EntryType::Char,
                    };
                    let data: &[u8] = if kind == tar::EntryType::Regular { b"data" } else { b"" };
                    let mut h = raw_header(name.as_bytes(), kind, data.len() as u64);
                    if matches!(kind, tar::EntryType::Symlink | tar::EntryType::Link) {
                        h.as_old_mut().linkname[..target.len().min(100)]
                            .copy_from_slice(&target.as_bytes()[..target.len().min(100)]);
                        h.set_cksum();
                    }
                    raw.push((h, data));
                }
                let tar = tar_of(&raw);
                let bytes = match compression {
                    0 => tar,
                    1 => gz(&tar),
                    _ => {
                        let mut bz = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
                        bz.write_all(&tar).unwrap();
                        bz.finish().unwrap()
                    }
                };
                fx.put("hostile", &bytes);
                run_all(&fx, "hostile");
                nothing_outside(&fx)?;
            }
        }
    }
}
