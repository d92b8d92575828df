//! Product versions, compared the way POS vendors number releases. The host
//! (ordering rules, downgrade checks) and plugins use this one comparison.

use std::cmp::Ordering;

/// Compares two versions part by part, the parts split at `.`, `-` and `_`:
/// numerically where both parts are numbers (`8.10` after `8.9`, `877` after
/// `1.9`, `2.0.060` equal to `2.0.60`), as text otherwise; a version with more
/// parts is the later one (`8.4.1` after `8.4`).
pub fn compare(a: &str, b: &str) -> Ordering {
    let mut pa = a.split(['.', '-', '_']);
    let mut pb = b.split(['.', '-', '_']);
    loop {
        let ord = match (pa.next(), pb.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => Ordering::Less,
            (Some(_), None) => Ordering::Greater,
            (Some(x), Some(y)) => match (x.parse::<u64>(), y.parse::<u64>()) {
                (Ok(x), Ok(y)) => x.cmp(&y),
                _ => x.cmp(y),
            },
        };
        if ord != Ordering::Equal {
            return ord;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_by_number_part_by_part() {
        assert_eq!(compare("8.10.0", "8.9.3"), Ordering::Greater);
        assert_eq!(compare("8.4", "8.4.1"), Ordering::Less);
        assert_eq!(compare("8.4.2", "8.4.2"), Ordering::Equal);
        assert_eq!(compare("2.0.060", "2.0.59"), Ordering::Greater);
        assert_eq!(compare("2.0.060", "2.0.60"), Ordering::Equal);
        assert_eq!(compare("1.8_4", "1.8.4"), Ordering::Equal);
        assert_eq!(compare("877", "1.9"), Ordering::Greater);
        assert_eq!(compare("1.14.9", "1.8.4"), Ordering::Greater);
        assert_eq!(compare("3.0rc1", "3.0rc2"), Ordering::Less);
    }
}
