//! Extraction speed of the `archive` capability against GNU `tar -xzf`, measured
//! in the same run on the same file.
//!
//! Builds a package of about 200 MB with the system `tar -czf` — many small text
//! files plus some large files of partly compressible data — then extracts it
//! three times with each tool, alternating which goes first, and prints the
//! medians and their ratio (posup / tar; at most 1.0 is the target). Both write to
//! the page cache; dirty data is flushed with `sync` before every timed run so
//! neither pays for the other's writeback.
//!
//! Run with `cargo bench -p posup-runtime --bench archive`. Set `POSUP_BENCH_DIR`
//! to put the scratch files (about 1.5 GB at peak) somewhere other than the
//! system temporary directory.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use posup_runtime::caps::archive::{ArchiveLimits, extract};
use posup_runtime::types::Dir;
use posup_runtime::{DirGrant, Grants};

const RUNS: usize = 3;
const SMALL_FILES: usize = 20_000;
const LARGE_FILES: usize = 12;
const LARGE_SIZE: usize = 22 << 20;

/// xorshift64*: reproducible data without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

const WORDS: &[&str] = &[
    "receipt", "cashier", "terminal", "total", "discount", "article", "price", "tax", "journal", "drawer",
    "voucher", "customer", "loyalty", "printer", "scale", "barcode", "=", "0", "1", "true", "false", "[pos]",
    "timeout", "server", "backup", "update", "version", "path", "/opt/pos", "#", "\n", "\n", "\n",
];

fn text(rng: &mut Rng, len: usize, out: &mut Vec<u8>) {
    let end = out.len() + len;
    while out.len() < end {
        out.extend_from_slice(WORDS[(rng.next() % WORDS.len() as u64) as usize].as_bytes());
        out.push(b' ');
    }
    out.truncate(end);
}

/// The tree to pack: returns its size in bytes and its number of entries.
fn generate(root: &Path) -> (u64, usize) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut bytes = 0u64;
    let mut entries = 0;
    let mut buf = Vec::new();
    for i in 0..SMALL_FILES {
        let dir = root.join(format!("forms/group{:03}", i / 100));
        if i % 100 == 0 {
            fs::create_dir_all(&dir).unwrap();
            entries += 1;
        }
        buf.clear();
        let len = 500 + (rng.next() % 5500) as usize;
        text(&mut rng, len, &mut buf);
        fs::write(dir.join(format!("form{i:05}.fgl")), &buf).unwrap();
        bytes += buf.len() as u64;
        entries += 1;
    }
    fs::create_dir_all(root.join("bin")).unwrap();
    for i in 0..LARGE_FILES {
        let mut f = fs::File::create(root.join(format!("bin/module{i:02}.so"))).unwrap();
        let mut written = 0;
        while written < LARGE_SIZE {
            buf.clear();
            // Three blocks in five are noise, the rest text: about as compressible
            // as a mix of binaries and resources.
            if rng.next() % 5 < 3 {
                buf.extend((0..8192).flat_map(|_| rng.next().to_le_bytes()));
            } else {
                text(&mut rng, 64 << 10, &mut buf);
            }
            f.write_all(&buf).unwrap();
            written += buf.len();
        }
        bytes += written as u64;
        entries += 1;
    }
    (bytes, entries)
}

fn sync() {
    Command::new("sync").status().expect("running sync");
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let base = std::env::var_os("POSUP_BENCH_DIR").map_or_else(std::env::temp_dir, Into::into);
    let tmp = tempfile::tempdir_in(base).expect("creating the scratch directory");
    let root = tmp.path().canonicalize().unwrap();
    let (staging, out) = (root.join("staging"), root.join("out"));
    fs::create_dir_all(&staging).unwrap();
    fs::create_dir_all(&out).unwrap();

    eprintln!("generating the package...");
    let src = root.join("src");
    let (bytes, entries) = generate(&src);
    let pkg = staging.join("pkg.tgz");
    let ok = Command::new("tar")
        .arg("-czf")
        .arg(&pkg)
        .arg("-C")
        .arg(&src)
        .arg(".")
        .status()
        .expect("running tar -czf");
    assert!(ok.success(), "tar -czf failed");
    fs::remove_dir_all(&src).unwrap();
    let pkg_size = fs::metadata(&pkg).unwrap().len();

    let grants = Grants {
        dirs: vec![
            DirGrant {
                dir: Dir::Staging,
                host: staging.clone(),
                write: false,
            },
            DirGrant {
                dir: Dir::Product,
                host: out.clone(),
                write: true,
            },
        ],
        ..Grants::default()
    };
    let limits = ArchiveLimits::default();

    let time_tar = || {
        let dest = out.join("tar");
        fs::create_dir(&dest).unwrap();
        sync();
        let t = Instant::now();
        let ok = Command::new("tar")
            .arg("-xzf")
            .arg(&pkg)
            .arg("-C")
            .arg(&dest)
            .status()
            .expect("running tar -xzf");
        let d = t.elapsed();
        assert!(ok.success(), "tar -xzf failed");
        fs::remove_dir_all(&dest).unwrap();
        d
    };
    let time_posup = || {
        let dest = out.join("posup");
        fs::create_dir(&dest).unwrap();
        sync();
        let t = Instant::now();
        let summary = extract(&grants, &limits, "/staging/pkg.tgz", "/product/posup").expect("extracting");
        let d = t.elapsed();
        assert_eq!(summary.bytes, bytes, "posup extracted a different amount of data");
        fs::remove_dir_all(&dest).unwrap();
        d
    };

    let (mut tar, mut posup) = (Vec::new(), Vec::new());
    for run in 0..RUNS {
        if run % 2 == 0 {
            tar.push(time_tar());
            posup.push(time_posup());
        } else {
            posup.push(time_posup());
            tar.push(time_tar());
        }
        eprintln!(
            "run {}: tar -xzf {:.3} s, posup {:.3} s",
            run + 1,
            tar[run].as_secs_f64(),
            posup[run].as_secs_f64()
        );
    }
    let (t, p) = (median(tar), median(posup));
    let mb = |b: u64| b as f64 / 1e6;
    println!(
        "package: {:.1} MB tgz, {:.1} MB in {entries} entries",
        mb(pkg_size),
        mb(bytes)
    );
    println!(
        "tar -xzf: median {:.3} s ({:.0} MB/s of output)",
        t.as_secs_f64(),
        mb(bytes) / t.as_secs_f64()
    );
    println!(
        "posup:    median {:.3} s ({:.0} MB/s of output)",
        p.as_secs_f64(),
        mb(bytes) / p.as_secs_f64()
    );
    println!("ratio posup / tar: {:.2}", p.as_secs_f64() / t.as_secs_f64());
}
