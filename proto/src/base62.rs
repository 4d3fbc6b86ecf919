//! Base62 (`0-9A-Za-z`) digits, for key bodies, checksums and identifiers: URL-safe, no
//! separators a secret scanner or a shell could split on.

/// The 62 digits in ascending order.
pub const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Value of one base62 digit, or `None` for any other byte.
#[inline]
pub const fn digit_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'A'..=b'Z' => Some(byte - b'A' + 10),
        b'a'..=b'z' => Some(byte - b'a' + 36),
        _ => None,
    }
}

/// Marks a byte that is not a base62 digit in [`DIGIT_VALUES`].
const NOT_A_DIGIT: u8 = 0x80;

/// Every byte's digit value, or [`NOT_A_DIGIT`]: one load per digit in [`decode_short`].
static DIGIT_VALUES: [u8; 256] = {
    let mut table = [NOT_A_DIGIT; 256];
    let mut byte = 0;
    while byte < 256 {
        if let Some(value) = digit_value(byte as u8) {
            table[byte] = value;
        }
        byte += 1;
    }
    table
};

/// Whether every byte of `bytes` is a base62 digit. Branch-free range checks with no early
/// exit, so the compiler turns the loop into vector compares (16 bytes at a time with SSE2).
#[inline]
pub fn all_digits(bytes: &[u8]) -> bool {
    bytes.iter().fold(true, |ok, &byte| {
        let digit = byte.wrapping_sub(b'0') < 10;
        // ASCII letters differ from their lower case only in bit 0x20.
        let letter = (byte | 0x20).wrapping_sub(b'a') < 26;
        ok & (digit | letter)
    })
}

/// Digits peeled off per `u128` division: 62^10 < 2^64, so each chunk is then split with cheap
/// `u64` arithmetic instead of one `u128` division (a library call) per digit.
const CHUNK_DIGITS: usize = 10;
const CHUNK: u128 = 62u128.pow(CHUNK_DIGITS as u32);

/// Writes `value` as exactly `out.len()` base62 digits, most significant first, zero-padded.
/// Digits beyond what `out` holds are dropped, so callers size `out` for the value's range.
pub fn encode_fixed(mut value: u128, out: &mut [u8]) {
    for chunk_out in out.rchunks_mut(CHUNK_DIGITS) {
        // `value % CHUNK` < 62^10 < 2^64.
        let mut chunk = (value % CHUNK) as u64;
        value /= CHUNK;
        for slot in chunk_out.iter_mut().rev() {
            *slot = ALPHABET[(chunk % 62) as usize];
            chunk /= 62;
        }
    }
}

/// Reads a fixed-width base62 number; `None` on a non-digit or on overflow of `u128`.
pub fn decode_fixed(digits: &[u8]) -> Option<u128> {
    digits.iter().try_fold(0u128, |acc, &byte| {
        acc.checked_mul(62)?
            .checked_add(u128::from(digit_value(byte)?))
    })
}

/// Reads at most 10 base62 digits (62^10 < 2^64) already checked by [`all_digits`]; a byte
/// that is not a digit makes the result meaningless but never panics or overflows.
#[inline]
pub fn decode_short(digits: &[u8]) -> u64 {
    debug_assert!(digits.len() <= CHUNK_DIGITS);
    digits.iter().fold(0u64, |acc, &byte| {
        acc.wrapping_mul(62)
            .wrapping_add(u64::from(DIGIT_VALUES[usize::from(byte)]))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_digit_table_agrees_with_digit_value() {
        for byte in 0..=255u8 {
            let expected = digit_value(byte).unwrap_or(NOT_A_DIGIT);
            assert_eq!(DIGIT_VALUES[usize::from(byte)], expected, "byte {byte}");
            assert_eq!(all_digits(&[b'0', byte, b'z']), digit_value(byte).is_some());
        }
        assert!(all_digits(b""));
        assert!(all_digits(ALPHABET));
    }

    #[test]
    fn short_decoding_matches_the_wide_one() {
        for value in [0u64, 1, 61, 62, 4_294_967_295, 62u64.pow(10) - 1] {
            let mut buf = [0u8; 10];
            encode_fixed(u128::from(value), &mut buf);
            assert_eq!(decode_short(&buf), value);
            assert_eq!(
                u128::from(decode_short(&buf[4..])),
                decode_fixed(&buf[4..]).expect("digits")
            );
        }
    }

    #[test]
    fn round_trips_fixed_width() {
        for value in [0u128, 1, 61, 62, 4_294_967_295, u128::from(u64::MAX)] {
            let mut buf = [0u8; 22];
            encode_fixed(value, &mut buf);
            assert_eq!(decode_fixed(&buf), Some(value));
        }
    }

    #[test]
    fn chunked_encoding_matches_digit_by_digit_encoding() {
        fn slow(mut value: u128, out: &mut [u8]) {
            for slot in out.iter_mut().rev() {
                *slot = ALPHABET[(value % 62) as usize];
                value /= 62;
            }
        }
        let samples = [
            0,
            1,
            61,
            62,
            CHUNK - 1,
            CHUNK,
            CHUNK * 62 + 5,
            u128::from(u64::MAX),
            u128::from(u64::MAX) + 1,
            u128::MAX / 3,
            u128::MAX,
        ];
        // And values spread over the whole range (a fixed multiplicative sequence).
        let spread =
            (1..200u128).map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835));
        for value in samples.into_iter().chain(spread) {
            for width in [1, 2, 6, 9, 10, 11, 12, 19, 20, 21, 22] {
                let (mut fast, mut reference) = ([0u8; 22], [0u8; 22]);
                encode_fixed(value, &mut fast[..width]);
                slow(value, &mut reference[..width]);
                assert_eq!(
                    fast[..width],
                    reference[..width],
                    "{value} in {width} digits"
                );
            }
        }
    }

    #[test]
    fn rejects_non_digits() {
        assert_eq!(decode_fixed(b"12_3"), None);
        assert_eq!(digit_value(b'-'), None);
        assert_eq!(digit_value(b'z'), Some(61));
    }
}
