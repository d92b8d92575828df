//! Hostile packages for the sandbox tests: archives made to exhaust a host that
//! trusts their headers.

/// A tar whose first record is a GNU long name claiming 1 GiB, followed by only
/// 1 MiB of it: a host that reads such records whole allocates the gigabyte.
pub fn long_name_bomb() -> Vec<u8> {
    let mut h = [0u8; 512];
    h[..13].copy_from_slice(b"././@LongLink");
    h[100..108].copy_from_slice(b"0000644\0");
    h[124..136].copy_from_slice(format!("{:011o}\0", 1u64 << 30).as_bytes());
    h[156] = b'L';
    h[257..265].copy_from_slice(b"ustar  \0");
    // The checksum is computed with its own field as spaces.
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    let mut out = h.to_vec();
    out.extend(std::iter::repeat_n(b'a', 1 << 20));
    out
}

/// A gzip-compressed tar holding one file of `size` zero bytes: a few hundred
/// kilobytes that unpack to `size`.
pub fn zero_bomb(size: u64) -> Vec<u8> {
    use std::io::Write;
    let mut h = tar::Header::new_gnu();
    h.set_size(size);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_path("zeros").expect("a short name");
    h.set_cksum();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(h.as_bytes()).expect("writing to memory");
    let zeros = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        gz.write_all(&zeros[..n]).expect("writing to memory");
        left -= n as u64;
    }
    let pad = (512 - size % 512) % 512 + 1024;
    gz.write_all(&vec![0u8; pad as usize])
        .expect("writing to memory");
    gz.finish().expect("writing to memory")
}
