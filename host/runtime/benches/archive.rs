//! Extraction speed of the `archive` capability against GNU `tar -xzf`, measured
//! in the same run on the same file.
//!
//! Builds a package of about 200 MB with the system `tar -czf` — many small text
//! files plus some large files of partly compressible data — then extracts it
//! three times with each tool, alternating which goes first, and prints the
//! medians and their ratio (posup / tar; at most 1.0 is the target). Both write to
//! the page cache; dirty data is flushed with `sync` before every timed run so
//! neither pays for the other's writeback. Every run unpacks into a new directory
//! and nothing is removed before the end: for about 30 s after many files are
//! deleted, ext4 (without a journal) scans past their inodes when allocating new
//! ones, which multiplies the kernel time of creating files and would penalise
//! whichever side runs after a deletion.
//!
//! Wall time on a shared machine is noisy, so the CPU time each side used (user +
//! system, of the `tar` and `gzip` processes and of this process's threads) is
//! printed beside it.
//!
//! Run with `cargo bench -p posup-runtime --bench archive`. Set `POSUP_BENCH_DIR`
//! to put the scratch files (about 1.5 GB at peak) somewhere other than the
//! system temporary directory, and `POSUP_BENCH_ARCHIVE` to time a real package
//! (a .tgz) instead of the generated one.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use posup_runtime::beneath::Roots;
use posup_runtime::caps::Work;
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
    "receipt", "cashier", "terminal", "total", "discount", "article", "price", "tax", "journal",
    "drawer", "voucher", "customer", "loyalty", "printer", "scale", "barcode", "=", "0", "1",
    "true", "false", "[pos]", "timeout", "server", "backup", "update", "version", "path",
    "/opt/pos", "#", "\n", "\n", "\n",
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

/// CPU time (user + system) used so far by this process, or by its finished
/// children.
#[allow(unsafe_code)]
fn cpu_time(who: libc::c_int) -> Duration {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::uninit();
    // SAFETY: `ru` points to writable memory for one rusage, which getrusage fills
    // in when it returns 0.
    let r = unsafe { libc::getrusage(who, ru.as_mut_ptr()) };
    assert_eq!(r, 0, "getrusage failed");
    // SAFETY: getrusage returned 0, so the structure is initialised.
    let ru = unsafe { ru.assume_init() };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn sync() {
    Command::new("sync").status().expect("running sync");
}

/// Wall and CPU time of one extraction.
#[derive(Clone, Copy)]
struct Timing {
    wall: Duration,
    cpu: Duration,
}

fn median(v: &[Timing], f: impl Fn(&Timing) -> Duration) -> Duration {
    let mut d: Vec<Duration> = v.iter().map(f).collect();
    d.sort();
    d[d.len() / 2]
}

fn main() {
    let base = std::env::var_os("POSUP_BENCH_DIR").map_or_else(std::env::temp_dir, Into::into);
    let tmp = tempfile::tempdir_in(base).expect("creating the scratch directory");
    let root = tmp.path().canonicalize().unwrap();
    let out = root.join("out");
    fs::create_dir_all(&out).unwrap();

    let (pkg, generated) = match std::env::var_os("POSUP_BENCH_ARCHIVE") {
        Some(given) => (
            Path::new(&given)
                .canonicalize()
                .expect("POSUP_BENCH_ARCHIVE"),
            None,
        ),
        None => {
            eprintln!("generating the package...");
            let src = root.join("src");
            let (bytes, entries) = generate(&src);
            fs::create_dir_all(root.join("staging")).unwrap();
            let pkg = root.join("staging/pkg.tgz");
            let ok = Command::new("tar")
                .arg("-czf")
                .arg(&pkg)
                .arg("-C")
                .arg(&src)
                .arg(".")
                .status()
                .expect("running tar -czf");
            assert!(ok.success(), "tar -czf failed");
            // `src` stays until the end, like every output (see above).
            (pkg, Some((bytes, entries)))
        }
    };
    let pkg_size = fs::metadata(&pkg).unwrap().len();
    let guest_pkg = format!("/staging/{}", pkg.file_name().unwrap().to_string_lossy());

    let grants = Grants {
        dirs: vec![
            DirGrant {
                dir: Dir::Staging,
                host: pkg.parent().unwrap().to_path_buf(),
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

    let time_tar = |dest: &Path| {
        fs::create_dir(dest).unwrap();
        sync();
        let (t, cpu) = (Instant::now(), cpu_time(libc::RUSAGE_CHILDREN));
        let ok = Command::new("tar")
            .arg("-xzf")
            .arg(&pkg)
            .arg("-C")
            .arg(dest)
            .status()
            .expect("running tar -xzf");
        let timing = Timing {
            wall: t.elapsed(),
            cpu: cpu_time(libc::RUSAGE_CHILDREN) - cpu,
        };
        assert!(ok.success(), "tar -xzf failed");
        timing
    };
    let mut extracted = None;
    let mut time_posup = |dest: &Path| {
        fs::create_dir(dest).unwrap();
        sync();
        let (t, cpu) = (Instant::now(), cpu_time(libc::RUSAGE_SELF));
        let guest_dest = format!("/product/{}", dest.file_name().unwrap().to_string_lossy());
        // The same handles a step opens; opening them is part of the step's cost.
        let roots = Roots::open(&grants).expect("opening the granted roots");
        let summary = extract(
            &roots,
            &limits,
            &Work::default(),
            0,
            &guest_pkg,
            &guest_dest,
        )
        .expect("extracting");
        let timing = Timing {
            wall: t.elapsed(),
            cpu: cpu_time(libc::RUSAGE_SELF) - cpu,
        };
        extracted = Some((
            summary.bytes,
            summary.files + summary.directories + summary.links,
        ));
        timing
    };

    let (mut tar, mut posup) = (Vec::new(), Vec::new());
    for run in 0..RUNS {
        let (t_dest, p_dest) = (
            out.join(format!("tar{run}")),
            out.join(format!("posup{run}")),
        );
        if run % 2 == 0 {
            tar.push(time_tar(&t_dest));
            posup.push(time_posup(&p_dest));
        } else {
            posup.push(time_posup(&p_dest));
            tar.push(time_tar(&t_dest));
        }
        eprintln!(
            "run {}: tar -xzf {:.3} s (cpu {:.3} s), posup {:.3} s (cpu {:.3} s)",
            run + 1,
            tar[run].wall.as_secs_f64(),
            tar[run].cpu.as_secs_f64(),
            posup[run].wall.as_secs_f64(),
            posup[run].cpu.as_secs_f64(),
        );
    }
    let (bytes, entries) = extracted.expect("at least one run");
    if let Some(expected) = generated {
        assert_eq!(
            bytes, expected.0,
            "posup extracted a different amount of data"
        );
    }
    let mb = |b: u64| b as f64 / 1e6;
    let secs = |d: Duration| d.as_secs_f64();
    println!(
        "package: {} ({:.1} MB), {:.1} MB in {entries} entries",
        pkg.file_name().unwrap().to_string_lossy(),
        mb(pkg_size),
        mb(bytes)
    );
    let (tw, pw) = (median(&tar, |t| t.wall), median(&posup, |t| t.wall));
    let (tc, pc) = (median(&tar, |t| t.cpu), median(&posup, |t| t.cpu));
    println!(
        "tar -xzf: median wall {:.3} s ({:.0} MB/s of output), cpu {:.3} s",
        secs(tw),
        mb(bytes) / secs(tw),
        secs(tc)
    );
    println!(
        "posup:    median wall {:.3} s ({:.0} MB/s of output), cpu {:.3} s",
        secs(pw),
        mb(bytes) / secs(pw),
        secs(pc)
    );
    println!(
        "ratio posup / tar: wall {:.2}, cpu {:.2}",
        secs(pw) / secs(tw),
        secs(pc) / secs(tc)
    );
}
